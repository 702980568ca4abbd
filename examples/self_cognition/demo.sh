#!/usr/bin/env bash
# Ask SmolLM2 who it is, teach it a new name with LoRA on the self-cognition set, ask again.
# Runs offline on CPU; `make demo` calls it with the project's venv first on PATH.
set -euo pipefail
model=smollm2-135m-instruct
out=${DEMO_OUTPUT:-output/demo}
start=$(date +%s)

echo "== Before fine-tuning: Who are you?"
sdk infer --model-type "$model" --query "Who are you?"

sdk sft --model-type "$model" --sft-type lora --dataset self-cognition \
    --model-name 雪貂 Ferret --model-author "sft-sdk 团队" "the sft-sdk team" \
    --num-train-epochs 3 --batch-size 4 --gradient-accumulation-steps 2 \
    --learning-rate 1e-3 --save-steps 1000 --output-dir "$out"
run=$(ls -td "$out/$model"/v*/ | head -n 1)

echo "== After fine-tuning ($run): Who are you?"
sdk infer --ckpt-dir "$run" --query "Who are you?"
echo "== After fine-tuning: 你是谁？"
sdk infer --ckpt-dir "$run" --query "你是谁？"
echo "== Demo took $(( $(date +%s) - start )) s. Chat with it: sdk infer --ckpt-dir $run"
