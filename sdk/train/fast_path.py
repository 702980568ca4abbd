"""The fast path: what `sdk sft` turns on by itself where it pays, so that the default flags
train as fast as the best ones. Rows are packed without padding (``--packing``, everywhere);
on a CUDA GPU each batch is filled up to a token budget sized to the GPU's memory in place of
one row (``--max-tokens-per-batch``), and liger-kernel's kernels are swapped in when it is
installed and covers the model (``--use-liger-kernel``); the LoRA dropout is 0 by default
(``sdk.tuners.lora.lora_dropout``). Each is a choice of the plan whose ``off`` names the flag
that turns it off, said once at the start on one ``[sdk] fast path: ...`` line. On a CPU the
batches stay --batch-size rows and there are no Triton kernels: nothing there changes.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from sdk.train.liger_kernels import liger_function

GIB = 2**30
# Tokens a batch on a GPU of at least this many GiB: 4096 tokens already keep an H100/H200
# busy on a 7B model (13,455 tokens/s, 33 GiB with liger-kernel; benchmarks/README.md), and a
# bigger batch would only take more memory and make fewer optimizer steps.
TOKEN_BUDGETS = ((40, 4096), (20, 2048), (0, 1024))


@dataclass(frozen=True)
class Device:
    """What the automatic choices need to know of the machine (plain data: tests fake a GPU)."""

    gpu: bool
    memory_gib: float = 0.0  # the GPU's


def this_device() -> Device:
    import torch

    if not torch.cuda.is_available():
        return Device(gpu=False)
    properties = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", 0)))
    return Device(gpu=True, memory_gib=properties.total_memory / GIB)


def token_budget(device: Device) -> int | None:
    """Tokens a batch holds on ``device`` by default; None on a CPU (batches of --batch-size)."""
    if not device.gpu:
        return None
    return next(tokens for memory, tokens in TOKEN_BUDGETS if device.memory_gib >= memory)


def liger_unavailable(model_types: tuple[str, ...], model_type: str, device: Device) -> str | None:
    """Why liger-kernel's kernels cannot run for ``model_types`` here (None: they can; a model
    type that declares no architecture is checked once loaded). A family without kernels is
    said first, on any machine."""
    if model_types and liger_function(model_types) is None:
        return (f"liger-kernel has no kernels for --model-type {model_type} "
                f"({', '.join(model_types)} models)")
    if not device.gpu:
        return "liger-kernel needs a CUDA GPU (its kernels are written in Triton)"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None
