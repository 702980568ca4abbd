"""NaN and infinity in training and in checkpoints: a run whose loss, gradient norm or weights
stop being finite stops with a message instead of saving NaN weights, and a checkpoint whose
weights hold NaN or infinity is refused wherever it is loaded or pushed (a model with them
answers empty strings without a word)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.train.run_dir import checkpoints, damaged_checkpoint

NONFINITE_WEIGHTS = "its weights hold NaN or infinity"


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


def holds_nonfinite(tensor: Any) -> bool:
    """Whether a float tensor holds NaN or infinity. Its sum is one when an element is, and
    takes a twentieth of ``isfinite`` on a CPU (a whole model's checkpoint is read before it
    loads); only a sum that overflowed needs the element-wise look."""
    import torch

    if not tensor.is_floating_point():
        return False
    if tensor.element_size() == 1:  # float8: torch sums and checks none of them
        tensor = tensor.to(torch.float16)
    return not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all()


def training_stopped(step: int, what: str, run_dir: Path, learning_rate: float) -> SdkError:
    """The error that ends a run whose numbers stopped being finite at ``step``."""
    saved = checkpoints(run_dir) if run_dir.is_dir() else []
    last = (f"The last good checkpoint is {saved[-1]}." if saved
            else "No checkpoint was saved before it.")
    return SdkError(f"training stopped at step {step}: {what}; nothing was saved from this "
                    f"step. {last} A lower --learning-rate (this run: {learning_rate:g}) or "
                    "--dtype bf16 or fp32 instead of fp16 usually helps; the run's log is in "
                    f"{run_dir / 'logging.jsonl'}.")


def refuse_nonfinite_weights(checkpoint: Path) -> None:
    """Refuse a checkpoint whose weight files (an adapter's or a whole model's safetensors)
    hold NaN or infinity; read before anything loads them. A file that cannot be read at all
    is left to the loader, which names what is damaged."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(checkpoint.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                for name in weights.keys():
                    if holds_nonfinite(weights.get_tensor(name)):
                        raise damaged_checkpoint(file, f"{NONFINITE_WEIGHTS}: {name}")
        except (OSError, SafetensorError):
            continue
