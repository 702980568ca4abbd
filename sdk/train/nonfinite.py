"""NaN and infinity in training: a run whose loss, gradient norm or weights stop being finite
stops with a message instead of saving NaN weights (a model with them answers empty strings
without a word). A checkpoint whose weights hold them is refused wherever it is loaded or
pushed: ``sdk.runs.checkpoint_files.refuse_nonfinite_weights``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.runs.checkpoint_files import holds_nonfinite
from sdk.runs.run_dir import checkpoints


def nonfinite_step(loss: Any, grad_norm: Any, step_was_skipped: bool) -> str | None:
    """What became non-finite in an optimizer step, from what the Trainer computed anyway:
    its accumulated loss and the gradient norm. fp16 loss scaling meets infinite gradients
    on purpose now and then, and skips that step (``step_was_skipped``): that is no fault."""
    value = float(loss)
    if not math.isfinite(value):
        return f"the loss became {value}"
    if grad_norm is not None and not step_was_skipped:
        value = float(grad_norm)
        if not math.isfinite(value):
            return f"the gradient norm became {value}"
    return None


def nonfinite_parameter(model: Any) -> str | None:
    """The name of the first trainable parameter holding NaN or infinity, if one does: only
    these change in training, so only these are checked (LoRA's are a small part)."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and holds_nonfinite(parameter.detach()):
            return name
    return None


def training_stopped(step: int, what: str, run_dir: Path, learning_rate: float) -> SdkError:
    """The error that ends a run whose numbers stopped being finite at ``step``."""
    saved = checkpoints(run_dir) if run_dir.is_dir() else []
    last = (f"The last good checkpoint is {saved[-1]}." if saved
            else "No checkpoint was saved before it.")
    return SdkError(f"training stopped at step {step}: {what}; nothing was saved from this "
                    f"step. {last} A lower --learning-rate (this run: {learning_rate:g}) or "
                    "--dtype bf16 or fp32 instead of fp16 usually helps; the run's log is in "
                    f"{run_dir / 'logging.jsonl'}.")
