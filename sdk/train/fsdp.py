"""``--fsdp``: PyTorch FSDP2 as the transformers Trainer runs it (``TrainingArguments.fsdp`` and
``fsdp_config`` with version 2, through accelerate): the weights, gradients and optimizer
state sharded over the processes, each decoder layer gathered in turn.

``--fsdp`` takes transformers' option words, which ms-swift and LLaMA-Factory pass on as they
are (``"full_shard auto_wrap"``): ``full_shard`` (the default: the weights resharded after
each layer's forward), ``shard_grad_op`` (kept whole until the backward: faster, more memory),
``offload`` (shards in CPU memory), ``auto_wrap`` (no effect: each decoder layer is always
its own unit). ``--fsdp-config`` gives transformers' ``fsdp_config`` (a JSON file or text;
keys with or without ``fsdp_``) for anything else. Checkpoints hold the whole model or adapter
(``FULL_STATE_DICT``), so `sdk infer` loads them on one device, next to FSDP's own files for
resuming. ``--gradient-checkpointing`` becomes FSDP's activation checkpointing (the Trainer
refuses both together).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdk.errors import SdkError

FLAG = "--fsdp"
OPTIONS = ("full_shard", "shard_grad_op", "offload", "auto_wrap")


def fsdp_options(value: str) -> list[str]:
    """The option words of ``--fsdp VALUE`` (spaces or commas between them)."""
    words = value.replace(",", " ").lower().split()
    unknown = [word for word in words if word not in OPTIONS]
    if unknown or not words:
        raise SdkError(f"{FLAG} '{value}': give FSDP options among {', '.join(OPTIONS)} "
                       "(e.g. --fsdp full_shard, or \"full_shard offload\"). FSDP2 has no "
                       "hybrid or no_shard strategies.")
    if {"full_shard", "shard_grad_op"} <= set(words):
        raise SdkError(f"{FLAG} '{value}': full_shard and shard_grad_op are two strategies; "
                       "give one.")
    return words


def saved_name(value: str) -> str:
    """``--fsdp`` as a run saves it, for a resumed run to compare with: the strategy, then
    offload if given (``"full_shard auto_wrap"`` is ``full_shard``)."""
    words = fsdp_options(value)
    strategy = "shard_grad_op" if "shard_grad_op" in words else "full_shard"
    return f"{strategy} offload" if "offload" in words else strategy


def user_config(value: str | None) -> dict[str, Any]:
    """``--fsdp-config``: a JSON object, in a file or as text; ``fsdp_`` prefixes dropped."""
    if not value:
        return {}
    text, where = value, "--fsdp-config"
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise SdkError(f"--fsdp-config {value}: no such file; give a JSON file or a JSON "
                           "object.")
        text, where = path.read_text(encoding="utf-8"), f"--fsdp-config {path}"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise SdkError(f"{where}, line {error.lineno}: not valid JSON ({error.msg}).") from None
    if not isinstance(config, dict):
        raise SdkError(f"{where}: transformers' fsdp_config is a JSON object; this holds a "
                       f"{type(config).__name__}.")
    return {key.removeprefix("fsdp_"): item for key, item in config.items()}


def fsdp_config(args: Any) -> dict[str, Any]:
    """transformers' ``fsdp_config`` for the run: FSDP2, each decoder layer its own unit
    (accelerate's transformer-based wrapping finds them in the model's ``_no_split_modules``),
    whole weights in checkpoints."""
    words = fsdp_options(args.fsdp)
    config = user_config(args.fsdp_config)
    config.update(version=2, state_dict_type="FULL_STATE_DICT")
    config.setdefault("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
    config.setdefault("reshard_after_forward", "shard_grad_op" not in words)
    if "offload" in words:
        config["cpu_offload"] = True
    if args.gradient_checkpointing:
        config["activation_checkpointing"] = True
    return config


def check_fsdp(args: Any) -> None:
    """What FSDP cannot run with, and a machine where accelerate would not run it, named
    before anything loads."""
    fsdp_options(args.fsdp)
    config = user_config(args.fsdp_config)
    if int(config.get("version", 2)) != 2:
        raise SdkError(f"--fsdp-config: version {config['version']}: {FLAG} runs FSDP2 "
                       "(transformers deprecates FSDP1); leave version out.")
    if str(config.get("state_dict_type", "FULL_STATE_DICT")).upper() != "FULL_STATE_DICT":
        raise SdkError(f"--fsdp-config: state_dict_type {config['state_dict_type']}: "
                       "checkpoints hold the whole weights (FULL_STATE_DICT) so that sdk infer, "
                       "export and push read them; leave it out.")
    if args.deepspeed:
        raise SdkError(f"{FLAG} and --deepspeed both shard the training state; give one.")
    if args.sft_type == "adalora":
        raise SdkError(f"{FLAG}: AdaLoRA scores its ranks from each weight's whole gradient, "
                       "which FSDP keeps sharded. Train AdaLoRA with DDP (NPROC_PER_NODE) or "
                       "use --sft-type lora.")
    if args.quantization_bit:
        raise SdkError(f"{FLAG} cannot shard a {args.quantization_bit}-bit (bitsandbytes) base "
                       "model here. Use --deepspeed zero2 for QLoRA, or drop "
                       "--quantization-bit.")
    if not runs_here():
        raise SdkError(f"{FLAG} needs GPUs: accelerate runs FSDP on accelerators only (on "
                       "CPUs it would train plain DDP without a word). Leave the flag out "
                       "here; NPROC_PER_NODE=N runs DDP over gloo.")


def runs_here() -> bool:
    """Whether accelerate enables FSDP on this machine's device (CUDA here)."""
    import torch

    return torch.cuda.is_available()

