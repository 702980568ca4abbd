"""sft-sdk: supervised fine-tuning of chat LLMs, built from plugins."""

import logging

from sdk.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]

# Libraries that peft and transformers import warn on every command about kernels this SDK
# never calls: torchao's CUDA-only extensions that cannot load (and torch's deprecation note
# on torchao's enums), and bitsandbytes' optional CPU kernel from the hub. Errors still show.
for _name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).setLevel(logging.ERROR)
