"""IA³ through peft: learned scaling vectors on the attention and feed-forward activations."""

from __future__ import annotations

from typing import Any

from sdk.specs import ModelSpec
from sdk.tuners.lora import continue_adapter, ready_for_adapters


def prepare(model: Any, args: Any, spec: ModelSpec) -> Any:
    from peft import IA3Config, get_peft_model

    if args.adapter:
        return continue_adapter(ready_for_adapters(model, args), args.adapter)
    # peft knows which modules IA³ scales for each architecture (k, v and the down projection)
    return get_peft_model(ready_for_adapters(model, args), IA3Config(task_type="CAUSAL_LM"))
