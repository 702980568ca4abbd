"""LoRA and its variants (DoRA, rank-stabilised LoRA) through peft; adapters of any peft
tuner reload with ``load``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdk.specs import ModelSpec

ALL_LINEAR = {"all", "all-linear", "all_linear"}

# peft 0.21 reads an attribute that transformers 5.24 renamed; the warning is about the two
# libraries, not about anything a user can change.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                        category=FutureWarning)


def target_modules(requested: list[str] | None, spec: ModelSpec) -> str | list[str]:
    names = list(requested or spec.lora_target_modules)
    if any(name.lower() in ALL_LINEAR for name in names):
        return "all-linear"
    return names


def ready_for_adapters(model: Any, args: Any) -> Any:
    """A frozen base that adapters can train on: quantized or gradient-checkpointed."""
    from peft import prepare_model_for_kbit_training

    if getattr(model, "hf_quantizer", None) is not None:  # bitsandbytes or GPTQ weights
        # fp32 norms and an input that carries gradients, as the QLoRA recipe does
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing)
    if args.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    return model


def with_lora(model: Any, args: Any, spec: ModelSpec, **variant: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules(args.lora_target_modules, spec),
        **variant,
    )
    return get_peft_model(ready_for_adapters(model, args), config)


def prepare(model: Any, args: Any, spec: ModelSpec) -> Any:
    return with_lora(model, args, spec)


def prepare_dora(model: Any, args: Any, spec: ModelSpec) -> Any:
    return with_lora(model, args, spec, use_dora=True)


def prepare_rslora(model: Any, args: Any, spec: ModelSpec) -> Any:
    return with_lora(model, args, spec, use_rslora=True)


def load(checkpoint_dir: Path, load_base_model: Callable[[], Any], dtype: Any) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base_model(), str(checkpoint_dir))
