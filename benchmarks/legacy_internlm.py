"""Training speed of InternLM v1's and InternLM2's native (Llama) paths against their official
code.

    python benchmarks/legacy_internlm.py [--steps 20] [--warmup 3] [--batch-size 4] [--length 256]

For each family writes a tiny random checkpoint in the official layout (the test suite's:
hidden 64, 2 layers, 4 heads, InternLM2 in 2 key-value groups, the real vocabularies of
103,168 and 92,544 rows, a window of at least --length), then times forward + backward with
labels, fp32, on the same random batches, taking turns: (a) the folder converted by the plugin
and loaded as transformers' LlamaForCausalLM (SDPA), (b) the official modeling_internlm.py /
modeling_internlm2.py under the test-only patches (their eager attention, the only one they
have on a CPU). Prints tokens/s of each and the ratio; the last line is one JSON object. The
timing loop is legacy_baichuan.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins" / "sft-plugin-internlm" / "tests"),
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
    from official_internlm import V1, V2, official_model, tiny_official_checkpoint
    from sft_plugin_internlm.native import V1 as V1_TO_LLAMA
    from sft_plugin_internlm.native import V2 as V2_TO_LLAMA
    from transformers import AutoModelForCausalLM

    from sdk.models.native import native_folder

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["SFT_SDK_CACHE"] = str(Path(scratch) / "cache")
        for name, source, conversion, vocabulary in (
                ("internlm", V1, V1_TO_LLAMA, 103168), ("internlm2", V2, V2_TO_LLAMA, 92544)):
            # not named like official_internlm.py: official_module names packages by folder
            official_folder = tiny_official_checkpoint(
                source, Path(scratch) / f"tiny-{name}",
                max_position_embeddings=max(args.length, 64))
            native = AutoModelForCausalLM.from_pretrained(
                native_folder(official_folder, conversion), dtype=torch.float32,
                attn_implementation="sdpa")
            official = official_model(official_folder)
            generator = torch.Generator().manual_seed(0)
            batches = [torch.randint(3, vocabulary, (args.batch_size, args.length),
                                     generator=generator)
                       for _ in range(args.warmup + args.steps)]
            speed = tokens_per_second({"native": native, "official": official}, batches,
                                      args.warmup)
            speed["ratio"] = speed["native"] / speed["official"]
            print(f"{name} native (Llama, sdpa): {speed['native']:,.0f} tokens/s; official "
                  f"(patched remote code): {speed['official']:,.0f} tokens/s; native / "
                  f"official: {speed['ratio']:.2f}x", file=sys.stderr)
            results[name] = {key: round(value, 2) for key, value in speed.items()}
    print(json.dumps({**results, **vars(args), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
