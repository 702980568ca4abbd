"""Training speed of the remote-code families' native paths against their official code.

    python benchmarks/legacy_families.py [--families qwen chatglm3 ...] [--steps 20]
        [--warmup 3] [--batch-size 4] [--length 256]

For each family, writes the test suite's tiny random checkpoint in the official layout (real
vocabulary, official parameter names and code files), then times forward + backward with
labels, fp32, on the same random batches, the two models taking turns on each batch (so that a
machine busy with other work slows both alike): (a) the folder the family plugin converts to
and loads as a transformers architecture (SDPA attention), (b) the official modeling file under
the test-only patches of plugins/*/tests/official_*.py. Prints tokens/s of each and the ratio;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), *(str(tests) for tests in sorted(REPO.glob("plugins/*/tests")))]


def qwen(scratch: Path, length: int) -> tuple[Path, Any, int, str]:
    from official_qwen import tiny_official_checkpoint
    from sft_plugin_qwen.native import QWEN_V1_TO_QWEN2

    # a window that holds the rows, as the native one's
    folder = tiny_official_checkpoint(scratch / "qwen", seq_length=max(length, 64))
    return folder, QWEN_V1_TO_QWEN2, 151643, "Qwen2"


def chatglm(version: int) -> Callable[[Path, int], tuple[Path, Any, int, str]]:
    def build(scratch: Path, length: int) -> tuple[Path, Any, int, str]:
        from official_chatglm import tiny_official_checkpoint
        from sft_plugin_chatglm.native import conversion

        folder = tiny_official_checkpoint(f"chatglm{version}-6b", scratch / f"glm{version}")
        return folder, conversion(version), 64789, "Glm"  # SentencePiece pieces only

    return build


def internlm(version: int) -> Callable[[Path, int], tuple[Path, Any, int, str]]:
    def build(scratch: Path, length: int) -> tuple[Path, Any, int, str]:
        from official_internlm import V1, V2, tiny_official_checkpoint
        from sft_plugin_internlm import native

        source, conversion, vocabulary = ((V1, native.V1, 103168) if version == 1
                                          else (V2, native.V2, 92544))
        # not named like the official folder: official_module names its packages by folder
        folder = tiny_official_checkpoint(source, scratch / f"tiny-internlm{version}",
                                          max_position_embeddings=max(length, 64))
        return folder, conversion, vocabulary, "Llama"

    return build


def baichuan2(scratch: Path, length: int) -> tuple[Path, Any, int, str]:
    from official_baichuan import tiny_official_checkpoint
    from sft_plugin_baichuan.native import CONVERSION

    return tiny_official_checkpoint(scratch / "baichuan2"), CONVERSION, 125696, "Llama"


FAMILIES = {"qwen": (qwen, "official_qwen"), "chatglm2": (chatglm(2), "official_chatglm"),
            "chatglm3": (chatglm(3), "official_chatglm"),
            "internlm": (internlm(1), "official_internlm"),
            "internlm2": (internlm(2), "official_internlm"),
            "baichuan2": (baichuan2, "official_baichuan")}


def train_step(model: Any, batch: Any) -> float:
    """Seconds of one forward + backward with labels."""
    started = time.perf_counter()
    model(input_ids=batch, labels=batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def tokens_per_second(models: dict[str, Any], batches: list[Any], warmup: int) -> dict[str, float]:
    seconds = dict.fromkeys(models, 0.0)
    for model in models.values():
        model.train()
    for step, batch in enumerate(batches):
        for name, model in models.items():
            spent = train_step(model, batch)
            if step >= warmup:
                seconds[name] += spent
    tokens = sum(batch.numel() for batch in batches[warmup:])
    return {name: tokens / spent for name, spent in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()

    import importlib

    import torch
    from transformers import AutoModelForCausalLM

    from sdk.models.native import native_folder

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["SFT_SDK_CACHE"] = str(Path(scratch) / "cache")
        for name in args.families:
            build, reference = FAMILIES[name]
            folder, conversion, vocabulary, architecture = build(Path(scratch), args.length)
            native = AutoModelForCausalLM.from_pretrained(
                native_folder(folder, conversion), dtype=torch.float32,
                attn_implementation="sdpa")
            official = importlib.import_module(reference).official_model(folder)
            generator = torch.Generator().manual_seed(0)
            batches = [torch.randint(3, vocabulary, (args.batch_size, args.length),
                                     generator=generator)
                       for _ in range(args.warmup + args.steps)]
            speed = tokens_per_second({"native": native, "official": official}, batches,
                                      args.warmup)
            speed["ratio"] = speed["native"] / speed["official"]
            print(f"{name}: native ({architecture}, sdpa) {speed['native']:,.0f} tokens/s, "
                  f"official (patched remote code) {speed['official']:,.0f} tokens/s: "
                  f"{speed['ratio']:.2f}x", file=sys.stderr)
            results[name] = {key: round(value, 2) for key, value in speed.items()}
            del native, official
    print(json.dumps({**results, **{k: v for k, v in vars(args).items() if k != "families"},
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
