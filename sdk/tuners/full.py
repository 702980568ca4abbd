"""Full fine-tuning: all weights train, and a checkpoint holds the whole model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdk.specs import ModelSpec


def prepare(model: Any, args: Any, spec: ModelSpec) -> Any:
    model.requires_grad_(True)
    return model


def load(checkpoint_dir: Path, load_base_model: Callable[[], Any], dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), dtype=dtype)
