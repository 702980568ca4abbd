"""Training speed of Baichuan2-7B-Chat's native (Llama) path against its official code.

    python benchmarks/legacy_baichuan.py [--steps 20] [--warmup 3] [--batch-size 4] [--length 256]

Writes a tiny random Baichuan2 checkpoint in the official layout (the test suite's, with the
real 125,696-token vocabulary), then times forward + backward with labels, fp32, on the same
random batches, taking turns: (a) the folder converted by the plugin and loaded as transformers'
LlamaForCausalLM (SDPA), (b) the official modeling_baichuan.py under the test-only patches.
Prints tokens/s of each and the ratio; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins" / "sft-plugin-baichuan" / "tests")]


def train_step(model, batch) -> float:
    """Seconds of one forward + backward with labels."""
    started = time.perf_counter()
    model(input_ids=batch, labels=batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def tokens_per_second(models: dict, batches, warmup: int) -> dict[str, float]:
    """Each model's training tokens/s; the models take turns on each batch, so that a machine
    busy with other work slows both alike."""
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
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()

    import torch
    from official_baichuan import official_model, tiny_official_checkpoint
    from sft_plugin_baichuan.native import CONVERSION
    from transformers import AutoModelForCausalLM

    from sdk.models.native import native_folder

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["SFT_SDK_CACHE"] = str(Path(scratch) / "cache")
        official_folder = tiny_official_checkpoint(Path(scratch) / "official")
        native = AutoModelForCausalLM.from_pretrained(native_folder(official_folder, CONVERSION),
                                                      dtype=torch.float32,
                                                      attn_implementation="sdpa")
        official = official_model(official_folder)
        generator = torch.Generator().manual_seed(0)
        batches = [torch.randint(3, 125696, (args.batch_size, args.length), generator=generator)
                   for _ in range(args.warmup + args.steps)]
        results = tokens_per_second({"native": native, "official": official}, batches,
                                    args.warmup)
    results["ratio"] = results["native"] / results["official"]
    print(f"native (Llama, sdpa): {results['native']:,.0f} tokens/s")
    print(f"official (patched remote code): {results['official']:,.0f} tokens/s")
    print(f"native / official: {results['ratio']:.2f}x")
    print(json.dumps({**{k: round(v, 2) for k, v in results.items()}, **vars(args),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
