"""The packed-row attention of ``sdpa_varlen`` on a CUDA GPU: torch's varlen kernel against one
SDPA call per sample, forward + backward, at an architecture's attention shapes.

    python benchmarks/packed_attention.py --arch qwen2.5-7b --tokens 16384

The row holds samples of the baseline's synthetic lengths (../shared/bench/hf_baseline.py, seed 0)
up to ``--tokens``. Times are per layer, the median of ``--repeats`` after warm-up. The last line
is one JSON object with per_sample_ms, varlen_ms, ratio and the largest difference of outputs
and gradients between the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "bench"))

from hf_baseline import ARCH, lengths  # noqa: E402

from sdk.train.packed_attention import (  # noqa: E402
    per_sample_attention,
    varlen_attention,
    varlen_fits,
)


def row_bounds(tokens: int) -> list[int]:
    bounds = [0]
    for length in lengths(10 * tokens // 16, 0, 1024):
        if bounds[-1] + length > tokens:
            break
        bounds.append(bounds[-1] + length)
    return bounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="qwen2.5-7b")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=20)
    options = parser.parse_args()
    _, hidden, _, heads, kv_heads, *_ = ARCH[options.arch]
    head_dim = hidden // heads
    bounds = row_bounds(options.tokens)
    total = bounds[-1]
    attention = torch.nn.Module()
    attention.is_causal, attention.num_key_value_groups = True, heads // kv_heads
    torch.manual_seed(0)
    query = torch.randn(1, heads, total, head_dim, device="cuda", dtype=torch.bfloat16,
                        requires_grad=True)
    key, value = (torch.randn(1, kv_heads, total, head_dim, device="cuda",
                              dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    scaling = head_dim**-0.5
    assert varlen_fits(attention, query, {"dropout": 0.0, "scaling": scaling})
    gradient = torch.randn(1, total, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    kernels = {
        "per_sample": lambda: per_sample_attention(attention, query, key, value, bounds,
                                                   scaling=scaling),
        "varlen": lambda: varlen_attention(query, key, value, bounds, scaling),
    }
    results, times = {}, {}
    for name, attend in kernels.items():
        for tensor in (query, key, value):
            tensor.grad = None
        output = attend()
        output.backward(gradient)
        results[name] = [output.detach().float(),
                         *(tensor.grad.float() for tensor in (query, key, value))]
        laps = []
        for _ in range(options.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            attend().backward(gradient)
            end.record()
            torch.cuda.synchronize()
            laps.append(start.elapsed_time(end))
        times[name] = statistics.median(laps)
        print(f"{name}: {times[name]:.3f} ms a layer (forward + backward)", file=sys.stderr)
    difference = max((a - b).abs().max().item()
                     for a, b in zip(results["per_sample"], results["varlen"], strict=True))
    print(json.dumps({"arch": options.arch, "tokens": total, "samples": len(bounds) - 1,
                      "per_sample_ms": round(times["per_sample"], 3),
                      "varlen_ms": round(times["varlen"], 3),
                      "ratio": round(times["per_sample"] / times["varlen"], 2),
                      "max_abs_difference": difference}))


if __name__ == "__main__":
    main()
