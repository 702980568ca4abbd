"""How much faster `sdk infer --dataset` generates in batches than one row at a time.

    python benchmarks/batch_predict.py [--rows 32] [--batch-size 8] [--max-new-tokens 32]

Builds a small random Llama with the real Qwen2 tokenizer (or loads --model-dir), then predicts
the same rows twice through the code `sdk infer --dataset` runs (greedy, batches of rows):
with --batch-size 1 and with --batch-size N. Checks that both give the same replies and prints
rows/s for each and the speed-up; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO.parent / "shared" / "data" / "tokenizers" / "qwen2"
QUESTIONS = ["Who are you?", "Write a short poem about the sea.", "床前明月光，下一句是什么？",
             "Explain LoRA in one sentence.", "What is 12 times 7?", "Name three colours.",
             "Translate 'good morning' into French.", "以下是一首唐詩的第一句話：春眠不覺曉。"]


def small_model(folder: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def timed_predict(loaded, rows, batch_size: int, max_new_tokens: int, folder: Path):
    from sdk.config import InferArguments
    from sdk.infer.predict import predict

    path = folder / f"batch-{batch_size}.jsonl"
    # repetition_penalty: a random model would repeat one token; this varies the replies
    args = InferArguments(batch_size=batch_size, max_new_tokens=max_new_tokens,
                          repetition_penalty=1.3)
    started = time.perf_counter()
    predict(rows, path, lambda: loaded, args, "benchmark")
    seconds = time.perf_counter() - started
    replies = [json.loads(line)["response"] for line in path.read_text().splitlines()]
    return seconds, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: a small "
                        "random Llama)")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    options = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdk.infer.predict import prompt_rows
    from sdk.templates.builtin import CHATML
    from sdk.templates.engine import Template

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model_dir = options.model_dir or small_model(folder / "model", options.tokenizer)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        loaded = (model, tokenizer, Template.for_tokenizer(CHATML, tokenizer))
        rows = prompt_rows([[{"role": "user", "content": f"{QUESTIONS[n % len(QUESTIONS)]} #{n}"},
                             {"role": "assistant", "content": "reference"}]
                            for n in range(options.rows)])
        single, single_replies = timed_predict(loaded, rows, 1, options.max_new_tokens, folder)
        batched, batched_replies = timed_predict(loaded, rows, options.batch_size,
                                                 options.max_new_tokens, folder)
    result = {"rows": options.rows, "batch_size": options.batch_size,
              "max_new_tokens": options.max_new_tokens,
              "rows_per_s_one_at_a_time": round(options.rows / single, 2),
              "rows_per_s_batched": round(options.rows / batched, 2),
              "speedup": round(single / batched, 2),
              "same_replies": single_replies == batched_replies}
    print(f"one at a time: {result['rows_per_s_one_at_a_time']} rows/s; batches of "
          f"{options.batch_size}: {result['rows_per_s_batched']} rows/s; batched is "
          f"{result['speedup']}x faster; same replies: {result['same_replies']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
