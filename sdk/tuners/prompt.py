"""Virtual-token tuners through peft: prefix tuning (P-tuning v2: learned keys and values in
every layer), P-tuning (virtual token embeddings made by a small MLP) and prompt tuning
(virtual token embeddings learned directly). The base model stays frozen."""

from __future__ import annotations

from typing import Any

from sdk.errors import SdkError
from sdk.specs import ModelSpec
from sdk.tuners.generation import generates_with_virtual_tokens
from sdk.tuners.lora import continue_adapter, ready_for_adapters


def with_virtual_tokens(model: Any, args: Any, config: Any) -> Any:
    from peft import get_peft_model

    model = ready_for_adapters(model, args)
    if args.adapter:  # refused for saved virtual tokens; another kind continues as it was saved
        return continue_adapter(model, args.adapter)
    return generates_with_virtual_tokens(get_peft_model(model, config))


def prepare_prefix(model: Any, args: Any, spec: ModelSpec) -> Any:
    from peft import PrefixTuningConfig

    if args.gradient_checkpointing:
        # the prefix is handed to every layer as attention cache, which checkpointed layers
        # do not keep
        raise SdkError("--sft-type prefix cannot train with --gradient-checkpointing; drop the "
                       "flag, or use --sft-type ptuning or prompt.")
    return with_virtual_tokens(model, args, PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=args.num_virtual_tokens))


def prepare_ptuning(model: Any, args: Any, spec: ModelSpec) -> Any:
    from peft import PromptEncoderConfig

    return with_virtual_tokens(model, args, PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=args.num_virtual_tokens,
        encoder_hidden_size=args.prompt_encoder_hidden_size))


def prepare_prompt(model: Any, args: Any, spec: ModelSpec) -> Any:
    from peft import PromptTuningConfig

    return with_virtual_tokens(model, args, PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=args.num_virtual_tokens))
