"""Training speed of Qwen-7B-Chat's native (Qwen2) path against its official code.

    python benchmarks/legacy_qwen.py [--steps 20] [--warmup 3] [--batch-size 4] [--length 256]

Writes a tiny random Qwen (v1) checkpoint in the official layout (the test suite's, with the
real 151,936-row vocabulary), then times forward + backward with labels, fp32, on the same
random batches, taking turns: (a) the folder converted by the plugin and loaded as transformers'
Qwen2ForCausalLM (SDPA), (b) the official modeling_qwen.py under the test-only patches (its
SDPA path). Prints tokens/s of each and the ratio; the last line is one JSON object. The timing
loop is legacy_baichuan.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins" / "sft-plugin-qwen" / "tests"),
                str(REPO / "benchmarks")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()

    import torch
    from legacy_baichuan import tokens_per_second
    from official_qwen import official_model, tiny_official_checkpoint
    from sft_plugin_qwen.native import QWEN_V1_TO_QWEN2
    from transformers import AutoModelForCausalLM

    from sdk.models.native import native_folder

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["SFT_SDK_CACHE"] = str(Path(scratch) / "cache")
        # seq_length at least the batch length: the official model applies no dynamic NTK or
        # log-n while training anyway, but its window should hold the rows as the native one
        official_folder = tiny_official_checkpoint(Path(scratch) / "official",
                                                   seq_length=max(args.length, 64))
        native = AutoModelForCausalLM.from_pretrained(
            native_folder(official_folder, QWEN_V1_TO_QWEN2), dtype=torch.float32,
            attn_implementation="sdpa")
        official = official_model(official_folder)
        generator = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, 151643, (args.batch_size, args.length), generator=generator)
                   for _ in range(args.warmup + args.steps)]
        results = tokens_per_second({"native": native, "official": official}, batches,
                                    args.warmup)
    results["ratio"] = results["native"] / results["official"]
    print(f"native (Qwen2, sdpa): {results['native']:,.0f} tokens/s", file=sys.stderr)
    print(f"official (patched remote code): {results['official']:,.0f} tokens/s",
          file=sys.stderr)
    print(f"native / official: {results['ratio']:.2f}x", file=sys.stderr)
    print(json.dumps({**{k: round(v, 2) for k, v in results.items()}, **vars(args),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
