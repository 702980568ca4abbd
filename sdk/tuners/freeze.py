"""Freeze tuning: only the last N decoder layers (and named modules) train, the rest stays as
it was; a checkpoint holds the whole model, as with full fine-tuning."""

from __future__ import annotations

from typing import Any

from sdk.errors import SdkError
from sdk.specs import ModelSpec


def prepare(model: Any, args: Any, spec: ModelSpec) -> Any:
    layers = model.config.num_hidden_layers
    trained_layers = [f".layers.{i}." for i in range(
        max(0, layers - args.freeze_trainable_layers), layers)]
    extra = set(args.freeze_trainable_modules)
    trainable = 0
    for name, parameter in model.named_parameters():
        train = (any(layer in f".{name}" for layer in trained_layers)
                 or not extra.isdisjoint(name.split(".")))
        parameter.requires_grad_(train)
        trainable += train
    if not trainable:
        raise SdkError("--sft-type freeze found nothing to train: raise "
                       "--freeze-trainable-layers, or name modules with "
                       "--freeze-trainable-modules (e.g. lm_head).")
    return model
