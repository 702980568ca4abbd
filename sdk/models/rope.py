"""``--rope-scaling``: a model's rotary positions stretched so it trains and answers on
sequences longer than the window it was pretrained with (what Qwen2.5 documents for 128k
tokens: YaRN, factor 4 over its 32k window)."""

from __future__ import annotations

import logging
import math
from typing import Any

from sdk.errors import SdkError


def check_rope_flags(kind: str | None, factor: float | None) -> None:
    """--rope-factor alone would be ignored (and saved with the run as if it applied)."""
    if factor is not None and not kind:
        raise SdkError(f"--rope-factor {factor:g} needs --rope-scaling linear, dynamic or yarn "
                       "(how to stretch the positions); give both, or neither.")


def stretch_rope(config: Any, kind: str, factor: float | None, length: int,
                 where: str) -> float:
    """Make ``config`` (a transformers config, before the model is built from it) stretch its
    rotary positions ``kind``-wise by ``factor``, by default ``length`` (--max-length) over the
    model's window, rounded up. Returns the factor."""
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        raise SdkError(f"--rope-scaling: the model in {where} ({config.model_type}) has no "
                       "rotary position settings that transformers can scale. Leave "
                       "--rope-scaling out.")
    if rope.get("rope_type", "default") != "default":
        raise SdkError(f"--rope-scaling: the model in {where} already scales its positions "
                       f"({rope['rope_type']}, factor {rope.get('factor')}). Leave "
                       "--rope-scaling out: its config is kept.")
    window = rope.get("original_max_position_embeddings") or config.max_position_embeddings
    if factor is None:
        if length <= 0:
            raise SdkError(f"--rope-scaling {kind}: give --rope-factor (how many times the "
                           f"model's {window}-position window to stretch it).")
        if length <= window:
            raise SdkError(f"--rope-scaling {kind}: --max-length {length} fits the "
                           f"{window}-position window of the model in {where}: there is "
                           "nothing to stretch. Leave --rope-scaling out, or give "
                           "--rope-factor.")
        factor = float(math.ceil(length / window))
    rope.update(rope_type=kind, factor=factor)
    if kind == "yarn":
        rope["original_max_position_embeddings"] = window
    return factor


def applied_factor(config: Any, kind: str, model_type: str) -> float:
    """The factor the loaded model stretches its positions by (what its checkpoints reload
    with); an error if the model type's loader left --rope-scaling out."""
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") != kind:
        raise SdkError(f"--rope-scaling {kind}: the loader of model type '{model_type}' does "
                       "not apply it. Leave --rope-scaling out.")
    return rope["factor"]


def context_window(config: Any) -> int | None:
    """How many positions the model answers within: its ``max_position_embeddings``, or
    its pretrained window times the factor its rotary positions are stretched by (what vLLM
    takes as the longest prompt plus reply); None when the config does not say."""
    window = getattr(config, "max_position_embeddings", None)
    if not isinstance(window, int):
        return None
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("factor") if isinstance(rope, dict) else None
    if rope.get("rope_type", "default") == "default" or not isinstance(factor, int | float):
        return window
    original = rope.get("original_max_position_embeddings") or window
    return max(window, int(original * factor))


def _not_window_reminder(record: logging.LogRecord) -> bool:
    return "predefined maximum length" not in record.getMessage()


def quiet_window_reminder(config: Any, padded: bool = False) -> None:
    """transformers' generate reminds once that a generation went past max_position_embeddings;
    for positions stretched by --rope-scaling that is not where the window ends
    (``context_window``, where `sdk infer` already stops replies), and in a ``padded`` batch the
    left padding counts toward the length it checks but takes no row's positions, so the
    reminder is dropped."""
    window = getattr(config, "max_position_embeddings", None)
    if isinstance(window, int) and (padded or (context_window(config) or 0) > window):
        logging.getLogger("transformers.generation.stopping_criteria").addFilter(
            _not_window_reminder)
