"""Tuners: how a model is made trainable and rebuilt from a checkpoint."""

import importlib.util

from sdk.errors import SdkError
from sdk.specs import Tuner


def check_requires(tuner: Tuner) -> None:
    """Stop before any model loads when the tuner needs a package that is not installed."""
    missing = [name for name in tuner.requires if importlib.util.find_spec(name) is None]
    if missing:
        raise SdkError(f"--sft-type {tuner.name} needs {', '.join(missing)}: "
                       f"pip install {' '.join(missing)}")
