#!/bin/bash
# Issue 9's GPU goals, qwen2.5-7b, in one device call of under 10 minutes (benchmarks/README.md,
# "On a GPU machine"): the packed-attention kernel check, LoRA and QLoRA against the seed recipe,
# one 128k-token QLoRA row, then other LoRA settings while time is left. It needs the wheels in
# .whl/ and, where ../shared is absent, a copy of its bench/ and data/tokenizers/qwen2 in
# .bench-shared/. Each run's last JSON line goes to $OUT/results.jsonl, progress to $OUT/log.txt.
START=$(date +%s)
DEADLINE=${DEADLINE:-560}  # seconds: a call may run 600
ARCH=${ARCH:-qwen2.5-7b}  # ARCH=tiny LONG=2048: a dry run of the script on a CPU
LONG=${LONG:-131072}
OUT=${OUT:-/tmp/gpu-goals}
mkdir -p "$OUT"
LOG=$OUT/log.txt
RESULTS=$OUT/results.jsonl

left() { echo $((DEADLINE - ($(date +%s) - START))); }
log() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# run NAME LIMIT COMMAND...: within LIMIT seconds and the time left; stderr's tail to the log
run() {
  local name=$1 limit=$2 remaining last status
  shift 2
  remaining=$(left)
  if [ "$remaining" -lt 40 ]; then log "SKIP $name ($remaining s left)"; return 1; fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  log "START $name (limit ${limit}s): $*"
  timeout -k 5 "$limit" "$@" > "/tmp/$name.out" 2> "/tmp/$name.err"
  status=$?
  grep -v -E 'it/s\]|s/it\]|^\s*$' "/tmp/$name.err" | tail -20 >> "$LOG"
  last=$(tail -1 "/tmp/$name.out")
  log "END $name rc=$status: $last"
  if [ $status -eq 0 ] && [ "${last:0:1}" = "{" ]; then
    echo "{\"name\": \"$name\", \"result\": $last}" >> "$RESULTS"
  fi
  return $status
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
mkdir -p /tmp/site
for wheel in .whl/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site; done
[ -e ../shared ] || cp -r .bench-shared ../shared
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, peft, bitsandbytes, liger_kernel, datasets
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__,
      'bitsandbytes', bitsandbytes.__version__, 'datasets', datasets.__version__)" 2>&1 | tee -a "$LOG"

BENCH="python3 benchmarks/train_throughput.py --arch $ARCH"
OURS="$BENCH --side ours --attn-impl auto --batch 4 --warmup 2 --samples 2000"
ROWS="--fixed_len 0 --max-len 1024"
ONE_ROW="--mode qlora --gc --batch 1 --steps 2 --warmup 1 --samples 4 --fixed_len $LONG --max-len $LONG"

run varlen_test 90 python3 -m pytest -q -p no:cacheprovider tests/test_packing.py -k cuda
run varlen_kernel 60 python3 benchmarks/packed_attention.py --arch $ARCH --tokens 16384
run build 150 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import train_throughput
print(train_throughput.random_model_folder('$ARCH'))"
ln -sfn "/tmp/sdk-bench-$ARCH" "/tmp/rand-$ARCH"  # the baseline's QLoRA folder: the same model

run lora_4k 150 $BENCH --mode lora --steps 10 --warmup 2 --max-tokens-per-batch 4096
run lora_gc_16k 90 $OURS --mode lora --steps 8 $ROWS --max-tokens-per-batch 16384 --gc
run qlora_16k 120 $BENCH --mode qlora --steps 6 --warmup 2 --max-tokens-per-batch 16384
run qlora_one_128k_row 160 $OURS $ONE_ROW
run lora_4k_profile 70 $OURS --mode lora --steps 4 $ROWS --max-tokens-per-batch 4096 --profile "$OUT/profile_lora_4k.txt"
run lora_4k_no_dropout 70 $OURS --mode lora --steps 10 $ROWS --max-tokens-per-batch 4096 --lora-dropout 0
run lora_8k_no_dropout 70 $OURS --mode lora --steps 10 $ROWS --max-tokens-per-batch 8192 --lora-dropout 0
log "done"
