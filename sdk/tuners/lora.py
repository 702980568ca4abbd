"""LoRA through peft."""

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


def prepare(model: Any, args: Any, spec: ModelSpec) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "hf_quantizer", None) is not None:  # bitsandbytes or GPTQ weights
        # fp32 norms and an input that carries gradients, as the QLoRA recipe does
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules(args.lora_target_modules, spec),
    )
    return get_peft_model(model, config)


def load(checkpoint_dir: Path, load_base_model: Callable[[], Any], dtype: Any) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base_model(), str(checkpoint_dir))
