#!/bin/bash
# Issue 9's, 22's and 27's GPU goals in one device call of under 10 minutes
# (benchmarks/README.md, "On a GPU machine"): the CUDA-only tests, issue 22's Qwen3-8B LoRA row,
# then the qwen2.5-7b rows of the GPU table against the seed recipe while time is left (default
# flags, QLoRA, --deepspeed zero2 and zero3, --fsdp, with MFU), and with LONGEST=1 the 350k-token
# QLoRA row. (The 128k-token QLoRA row: `git show bb685cf:benchmarks/gpu_goals.sh`.) It needs
# the wheels in .whl/ and,
# where ../shared is absent, a copy of its bench/ and data/tokenizers/qwen2 in .bench-shared/.
# Each run's last JSON line goes to $OUT/results.jsonl, progress to $OUT/log.txt.
START=$(date +%s)
DEADLINE=${DEADLINE:-560}  # seconds: a call may run 600
ARCH=${ARCH:-qwen2.5-7b}  # ARCH=tiny: a dry run of the script on a CPU
QWEN3_ARCH=${QWEN3_ARCH:-qwen3-8b}  # issue 22's row; QWEN3_ARCH=qwen3-tiny on a CPU
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
export PATH=/tmp/site/ninja/data/bin:$PATH  # DeepSpeed builds its kernels with ninja
python3 -c "import torch, transformers, peft, bitsandbytes, liger_kernel, datasets, deepspeed
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__,
      'bitsandbytes', bitsandbytes.__version__, 'datasets', datasets.__version__,
      'deepspeed', deepspeed.__version__)" 2>&1 | tee -a "$LOG"

BENCH="python3 benchmarks/train_throughput.py --arch $ARCH"
OURS="$BENCH --side ours --attn-impl auto --batch 4 --samples 2000"
ROWS="--fixed_len 0 --max-len 1024"

run cuda_tests 90 python3 -m pytest -q -s -p no:cacheprovider tests/test_packing.py tests/test_liger_kernels.py -k cuda
grep "kept for the backward" /tmp/cuda_tests.out >> "$LOG"

# Issue 22: Qwen3-8B LoRA with sdk sft's default flags (the fast path: liger's Qwen3 kernels,
# 4096 tokens a step, no dropout) against the seed recipe on the same architecture; its random
# folder built first, outside the timed run.
run qwen3_build 150 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import train_throughput
print(train_throughput.random_model_folder('$QWEN3_ARCH'))"
run qwen3_8b_lora_4k_liger 200 python3 benchmarks/train_throughput.py --arch "$QWEN3_ARCH" \
  --mode lora --steps 12 --warmup 3 --max-tokens-per-batch 4096
run build 150 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import train_throughput
print(train_throughput.random_model_folder('$ARCH'))"
ln -sfn "/tmp/sdk-bench-$ARCH" "/tmp/rand-$ARCH"  # the baseline's QLoRA folder: the same model

# Issue 27's rows. Each side twice, the faster run counting: the first run of liger's Triton
# kernels on a machine compiles them within its timed steps (a cold first run measured 8,062
# tok/s, the next 13,455). lora_4k_default is sdk sft's DEFAULT flags (the fast path: packed
# rows, liger-kernel, LoRA dropout 0) with the 4096-token batches the fast path picks on a GPU.
LORA="$BENCH --mode lora --steps 12 --warmup 3 --repeats 2 $ROWS --max-tokens-per-batch 4096"
run lora_4k_default 200 $LORA
run qlora_4k_default 150 $BENCH --mode qlora --steps 8 --warmup 2 --repeats 2 $ROWS --max-tokens-per-batch 4096
run lora_4k_zero2 90 $OURS --mode lora --steps 12 --warmup 3 $ROWS --max-tokens-per-batch 4096 --deepspeed zero2
run lora_4k_zero3 90 $OURS --mode lora --steps 12 --warmup 3 $ROWS --max-tokens-per-batch 4096 --deepspeed zero3
run lora_4k_fsdp 90 $OURS --mode lora --steps 12 --warmup 3 $ROWS --max-tokens-per-batch 4096 --fsdp full_shard
run fsdp_tests 120 python3 -m pytest -q -s -p no:cacheprovider tests/test_distributed.py -k cuda_fsdp
# Unsloth's anchor: Llama-3.1-8B QLoRA, one 342,733-token row in 80 GB; ours with activation
# offload (one step of ~350k tokens takes minutes: run it in a call of its own, DEADLINE=560)
[ -n "$LONGEST" ] && run qlora_350k 540 $BENCH --arch llama3.1-8b --longest --lengths 350000 --offload --steps 2 --warmup 1
log "done"
