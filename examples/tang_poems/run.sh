#!/usr/bin/env bash
# The Tang poem course flow (NTU GenAI Spring 2024, HW5) with the sdk CLI: given a poem's first
# couplet, write the rest. Scores the base model on the 15 test poems, fine-tunes it with LoRA
# on tang-poems, scores the checkpoint, and prints a before/after table and sample poems.
# Every setting is an environment variable; see examples/tang_poems/README.md.
set -euo pipefail

if ! command -v sdk >/dev/null 2>&1; then
    echo "error: the 'sdk' command is not on PATH. From the repository root run 'make install'," \
        "then: PATH=.venv/bin:\$PATH bash examples/tang_poems/run.sh" >&2
    exit 1
fi
# The table is printed by the Python that runs sdk (a venv's), else python3.
python=$(dirname "$(command -v sdk)")/python
[[ -x $python ]] || python=python3

MODEL_TYPE=${MODEL_TYPE:-smollm2-135m-instruct}
MODEL_ID_OR_PATH=${MODEL_ID_OR_PATH:-}       # a local copy of the model, if any
SFT_TYPE=${SFT_TYPE:-lora}                   # qlora: lora on a 4-bit base (GPU)
QUANTIZATION_BIT=${QUANTIZATION_BIT:-}       # 4 or 8: load the base quantized (also to predict)
ROWS=${ROWS:-192}                            # training poems, sampled from 5001; all: every one
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:--1}                   # above 0: stop after this many optimizer steps
LEARNING_RATE=${LEARNING_RATE:-2e-3}
BATCH_SIZE=${BATCH_SIZE:-4}
GRADIENT_ACCUMULATION_STEPS=${GRADIENT_ACCUMULATION_STEPS:-2}
LORA_TARGET_MODULES=${LORA_TARGET_MODULES:-ALL}  # the course put LoRA on every projection
MAX_LENGTH=${MAX_LENGTH:-256}                # the course's CUTOFF_LEN
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-128}        # the course's max_len
NO_REPEAT_NGRAM_SIZE=${NO_REPEAT_NGRAM_SIZE:-3}  # the course's: no 3 tokens repeated in a reply
TEST_ROWS=${TEST_ROWS:-all}                  # test poems to predict (of 15)
PREDICT_BATCH_SIZE=${PREDICT_BATCH_SIZE:-15}
SAMPLES=${SAMPLES:-3}                        # sample poems printed at the end
SEED=${SEED:-42}
SYSTEM=${SYSTEM:-"You are a helpful assistant and good at writing Tang poem. 你是一個樂於助人的助手且擅長寫唐詩。"}
OUTPUT_DIR=${OUTPUT_DIR:-output/tang_poems}

train_data=tang-poems
[[ $ROWS == all ]] || train_data="tang-poems#$ROWS"
test_data=tang-poems-test
[[ $TEST_ROWS == all ]] || test_data="tang-poems-test#$TEST_ROWS"
# Each run of this script gets its own folder, so nothing written before is replaced.
work="$OUTPUT_DIR/$MODEL_TYPE-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$work"

model_flags=(--model-type "$MODEL_TYPE")
[[ -z $MODEL_ID_OR_PATH ]] || model_flags+=(--model-id-or-path "$MODEL_ID_OR_PATH")
[[ -z $QUANTIZATION_BIT ]] || model_flags+=(--quantization-bit "$QUANTIZATION_BIT")
# Greedy decoding: the course sampled at temperature 0.1 within top-p 0.3, which is nearly
# greedy; greedy makes the numbers repeatable.
predict_flags=(--dataset "$test_data" --max-new-tokens "$MAX_NEW_TOKENS"
               --no-repeat-ngram-size "$NO_REPEAT_NGRAM_SIZE"
               --batch-size "$PREDICT_BATCH_SIZE" --seed "$SEED")

start=$(date +%s)
phase_start=$start
phase_done() {
    local now
    now=$(date +%s)
    echo "== $1 took $((now - phase_start)) s"
    phase_start=$now
}

# sdk infer scores the predictions against the ground truth (as `sdk eval --predictions F`
# does) into before.metrics.json and after.metrics.json.
echo "== Before fine-tuning: $MODEL_TYPE writes the $test_data poems"
sdk infer "${model_flags[@]}" --system "$SYSTEM" "${predict_flags[@]}" \
    --predictions-file "$work/before.jsonl"
phase_done "Predicting with the base model"

echo "== Fine-tuning ($SFT_TYPE) on $train_data"
sdk sft "${model_flags[@]}" --sft-type "$SFT_TYPE" --dataset "$train_data" --system "$SYSTEM" \
    --num-train-epochs "$EPOCHS" --max-steps "$MAX_STEPS" --learning-rate "$LEARNING_RATE" \
    --batch-size "$BATCH_SIZE" --gradient-accumulation-steps "$GRADIENT_ACCUMULATION_STEPS" \
    --lora-target-modules "$LORA_TARGET_MODULES" --max-length "$MAX_LENGTH" --seed "$SEED" \
    --logging-steps 5 --save-steps 100000 --only-save-model --output-dir "$work"
run=$(ls -td "$work/$MODEL_TYPE"/v*/ | head -n 1)
run=${run%/}
phase_done "Fine-tuning"

echo "== After fine-tuning: $run writes the $test_data poems"
sdk infer --ckpt-dir "$run" "${predict_flags[@]}" --predictions-file "$work/after.jsonl"
phase_done "Predicting with the fine-tuned model"

"$python" - "$work" "$SAMPLES" <<'EOF'
import json
import sys
from pathlib import Path

work, samples = Path(sys.argv[1]), int(sys.argv[2])
before, after = (json.loads((work / f"{name}.metrics.json").read_text()) for name in ("before", "after"))
print(f"\n== Test poems scored against the ground truth (percent, {before.pop('method')} method)\n")
after.pop("method")
print("| metric  | before | after  |\n|---------|--------|--------|")
for name in before:
    print(f"| {name:<7} | {before[name]:6.2f} | {after[name]:6.2f} |")

def rows(name):
    return [json.loads(line) for line in (work / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]

def short(text, width=60):
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width] + "…"

for old, new in list(zip(rows("before"), rows("after")))[:samples]:
    print(f"\nfirst couplet: {old['query'].splitlines()[-1]}")
    print(f"  before:       {short(old['response'])}")
    print(f"  after:        {short(new['response'])}")
    print(f"  ground truth: {old['label']}")
EOF
echo
echo "== The whole flow took $(( $(date +%s) - start )) s. Files: $work"
echo "   Chat with the fine-tuned model: sdk infer --ckpt-dir $run"
