"""Hubs: where models and datasets are downloaded from and pushed to."""

import os

HUB_ENV_VAR = "SFT_SDK_HUB"


def default_hub() -> str:
    """The hub used without ``--hub``: ``$SFT_SDK_HUB``, else the Hugging Face Hub."""
    return os.environ.get(HUB_ENV_VAR) or "huggingface"
