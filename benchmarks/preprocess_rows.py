"""Preprocessing throughput and memory of `sdk sft`'s data path on a large jsonl file.

    python benchmarks/preprocess_rows.py --rows 1000000 [--num-proc 2]

Writes an alpaca-format jsonl file of ROWS rows (varied lengths, Chinese and English), then
runs exactly what `sdk sft` runs before training (read and convert into the datasets cache,
tokenize with datasets' map) twice: cold, then from the cache. Prints rows/s and the peak
resident memory of this process and its workers; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO.parent / "shared" / "data" / "tokenizers" / "qwen2"
WORDS = ["the", "model", "learns", "to", "answer", "questions", "about", "poems", "and",
         "code", "床前", "明月光", "疑是", "地上霜", "举头", "望明月", "低头", "思故乡"]


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    generator = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for number in range(rows):
            def text(low: int, high: int) -> str:
                return " ".join(generator.choices(WORDS, k=generator.randint(low, high)))

            handle.write(json.dumps({"instruction": f"#{number} {text(3, 20)}",
                                     "input": text(0, 10), "output": text(5, 60)},
                                    ensure_ascii=False) + "\n")


def peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, workers) / 1024  # Linux reports KiB


def preprocess(data: Path, tokenizer_dir: Path, num_proc: int) -> tuple[int, float]:
    from transformers import AutoTokenizer

    from sdk.config import SftArguments
    from sdk.data.arrow import conversations_dataset, tokenized_dataset
    from sdk.data.encode import EncodeSettings
    from sdk.plugins import load_plugins
    from sdk.templates.builtin import CHATML
    from sdk.templates.engine import Template

    registry = load_plugins().registry
    args = SftArguments(dataset=[str(data)], dataset_num_proc=num_proc)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = EncodeSettings(Template.for_tokenizer(CHATML, tokenizer), tokenizer,
                              args.max_length)
    started = time.perf_counter()
    conversations = conversations_dataset(args.dataset, registry, args, None)
    examples, stats = tokenized_dataset(conversations, settings, num_proc)
    seconds = time.perf_counter() - started
    print(f"  {stats.summary()}", file=sys.stderr)
    return len(examples), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["SFT_SDK_CACHE"] = str(Path(folder) / "cache")  # a cold cache to start
        data = Path(folder) / "rows.jsonl"
        started = time.perf_counter()
        write_rows(data, options.rows)
        file_mib = data.stat().st_size / 2**20
        print(f"wrote {options.rows} rows ({file_mib:.0f} MiB) in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        result = {"rows": options.rows, "file_mib": round(file_mib), "num_proc": options.num_proc}
        for run in ("cold", "cached"):
            kept, seconds = preprocess(data, options.tokenizer, options.num_proc)
            result[f"{run}_s"] = round(seconds, 1)
            result[f"{run}_rows_per_s"] = round(options.rows / seconds)
            print(f"{run}: {kept} rows kept, {seconds:.1f} s, {options.rows / seconds:.0f} "
                  f"rows/s", file=sys.stderr)
        result["peak_rss_mib"] = round(peak_rss_mib())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
