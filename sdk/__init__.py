"""sft-sdk: supervised fine-tuning of chat LLMs, built from plugins."""

from sdk.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
