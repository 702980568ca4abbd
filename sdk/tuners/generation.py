"""Generation with peft's virtual-token adapters (prefix, p-tuning, prompt tuning).

peft up to 0.21 looks for generate's attention cache under ``past_key_values``; transformers
5.24 passes it as ``cache``. That peft then takes every step for the first one: prefix tuning
hands the model a fresh prefix as ``past_key_values``, which the model drops because ``cache``
is also set (so the prefix is never seen), and prompt/p-tuning prepend the virtual tokens again
at every step. Giving such a peft the cache under the name it looks for, and the model under
the name it takes, makes cached generation equal a full forward pass (tests check both). peft
0.22 asks transformers' name itself (``peft.import_utils.get_transformers_cache_name``) and
is left alone: renaming again would hide the cache from it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

OLD_NAME, NEW_NAME = "past_key_values", "cache"


def renamed(inputs: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    if old in inputs:
        inputs[new] = inputs.pop(old)
    return inputs


def peft_names_the_cache() -> bool:
    """Whether the installed peft passes the cache under the name transformers takes."""
    return hasattr(importlib.import_module("peft.import_utils"), "get_transformers_cache_name")


def generates_with_virtual_tokens(model: Any) -> Any:
    """``model`` (a PeftModel) with generation fixed if its adapter learns virtual tokens, its
    base model takes the cache as ``cache`` and peft does not pass it so."""
    forward = inspect.signature(model.get_base_model().forward).parameters
    if (not model.active_peft_config.is_prompt_learning or NEW_NAME not in forward
            or peft_names_the_cache()):
        return model
    base_prepare = model.base_model_prepare_inputs_for_generation
    peft_prepare = model.prepare_inputs_for_generation

    def base_inputs(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return renamed(base_prepare(*args, **kwargs), NEW_NAME, OLD_NAME)

    def inputs(*args: Any, **kwargs: Any) -> dict[str, Any]:
        # only while peft prepares: its generate() later puts base_prepare back on the model
        model.base_model_prepare_inputs_for_generation = base_inputs
        try:
            return renamed(peft_prepare(*args, **kwargs), OLD_NAME, NEW_NAME)
        finally:
            model.base_model_prepare_inputs_for_generation = base_prepare

    model.prepare_inputs_for_generation = inputs
    return model
