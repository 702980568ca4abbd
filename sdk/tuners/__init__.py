"""Tuners: how a model is made trainable and rebuilt from a checkpoint."""

import importlib.util
from typing import Any

from sdk.errors import SdkError
from sdk.specs import Tuner


def check_requires(tuner: Tuner) -> None:
    """Stop before any model loads when the tuner needs a package that is not installed."""
    missing = [name for name in tuner.requires if importlib.util.find_spec(name) is None]
    if missing:
        raise SdkError(f"--sft-type {tuner.name} needs {', '.join(missing)}: "
                       f"pip install {' '.join(missing)}")


def loraplus_refusal(sft_type: str) -> SdkError:
    return SdkError(f"--loraplus-lr-ratio sets the learning rate of LoRA's B matrices; "
                    f"--sft-type {sft_type} trains none. Use a LoRA tuner (lora, qlora, dora, "
                    "rslora, adalora) or leave the flag out.")


def check_not_lora(args: Any) -> None:
    """``check_arguments`` of the built-in tuners without LoRA matrices."""
    if args.loraplus_lr_ratio:
        raise loraplus_refusal(args.sft_type)
