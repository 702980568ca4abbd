"""Trial forwards that check a model before training (packing, the loss's output layer)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def probing(model: Any) -> Iterator[None]:
    """Eval mode (no dropout) without gradients, then the model's mode back.

    bitsandbytes 4-bit layers stay in training mode: on a CPU with AVX512-bf16 their first
    forward in eval mode repacks the weights into an inference layout for good, and the model
    would then train and save different numbers than a freshly loaded one (they have no dropout,
    so training mode changes nothing else)."""
    was_training = model.training
    model.eval()
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            module.train()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
