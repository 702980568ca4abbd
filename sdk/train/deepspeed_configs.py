"""``--deepspeed``: ZeRO through DeepSpeed, as the transformers Trainer runs it.

A built-in configuration by name (ms-swift's names work too) or a DeepSpeed JSON file
(LLaMA-Factory's). The built-ins leave every size and switch the run's flags decide as
``"auto"``, which the Trainer fills in (batch size, accumulation, clipping, bf16/fp16).
ZeRO-2 shards the optimizer state and gradients over the processes, ZeRO-3 the weights as
well; ``_offload`` keeps the sharded state (and with ZeRO-3 the weights) in CPU memory.
Processes are started as for DDP (``NPROC_PER_NODE``, torchrun); a single process gets the
rendezvous settings torchrun would give it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from sdk.errors import SdkError

FLAG = "--deepspeed"
_ZERO_2 = {"stage": 2, "overlap_comm": False, "contiguous_gradients": True,
           "reduce_bucket_size": "auto", "allgather_bucket_size": 5e8}
_ZERO_3 = {"stage": 3, "overlap_comm": False, "contiguous_gradients": True,
           "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
           "stage3_param_persistence_threshold": "auto",
           # checkpoints hold the whole weights, as without DeepSpeed: `sdk infer` reads them
           "stage3_gather_16bit_weights_on_model_save": True}
_OFFLOAD = {"device": "cpu", "pin_memory": True}
_COMMON = {"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
           "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
           "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
           # the Trainer's optimizer (--optim) runs inside ZeRO, offloaded too
           "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}
BUILT_IN = {
    "zero2": {**_COMMON, "zero_optimization": _ZERO_2},
    "zero3": {**_COMMON, "zero_optimization": _ZERO_3},
    "zero2_offload": {**_COMMON, "zero_optimization": {**_ZERO_2,
                                                      "offload_optimizer": _OFFLOAD}},
    "zero3_offload": {**_COMMON, "zero_optimization": {**_ZERO_3, "offload_optimizer": _OFFLOAD,
                                                      "offload_param": _OFFLOAD}},
}
MS_SWIFT_NAMES = {"default-zero2": "zero2", "default-zero3": "zero3",
                  "zero2-offload": "zero2_offload", "zero3-offload": "zero3_offload"}


def deepspeed_config(value: str) -> dict[str, Any]:
    """The configuration ``--deepspeed value`` names: a built-in one or a JSON file's."""
    name = MS_SWIFT_NAMES.get(value, value)
    if name in BUILT_IN:
        return json.loads(json.dumps(BUILT_IN[name]))  # a copy the Trainer may fill in
    path = Path(value)
    if not path.is_file():
        raise SdkError(f"{FLAG} {value}: neither a built-in configuration "
                       f"({', '.join(BUILT_IN)}) nor a DeepSpeed JSON file.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        where = f", line {error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
        raise SdkError(f"{FLAG} {path}{where}: not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise SdkError(f"{FLAG} {path}: a DeepSpeed configuration is a JSON object; this file "
                       f"holds a {type(config).__name__}.")
    zero = config.get("zero_optimization") or {}
    if zero.get("stage") == 3:  # else checkpoints would hold no weights `sdk infer` can read
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return config


def saved_name(value: str) -> str:
    """``--deepspeed`` as a run saves it, for a resumed run to compare with: our name for a
    built-in configuration (ms-swift's works too), a file's absolute path."""
    name = MS_SWIFT_NAMES.get(value, value)
    return name if name in BUILT_IN else str(Path(name).resolve())


def zero_stage(config: dict[str, Any]) -> int:
    return int((config.get("zero_optimization") or {}).get("stage", 0))


def check_deepspeed(args: Any) -> None:
    """The configuration readable and fit for the run's other flags, before any model loads."""
    if importlib.util.find_spec("deepspeed") is None:
        raise SdkError(f"{FLAG} needs deepspeed: pip install deepspeed")
    config = deepspeed_config(args.deepspeed)
    if args.sft_type == "adalora":
        raise SdkError(f"{FLAG}: AdaLoRA scores its ranks from each weight's gradient, which "
                       "ZeRO keeps in its own sharded buffers. Train AdaLoRA without "
                       f"{FLAG} (DDP: NPROC_PER_NODE), or use --sft-type lora.")
    if args.quantization_bit and zero_stage(config) == 3:
        raise SdkError(f"{FLAG} {args.deepspeed}: ZeRO-3 cannot shard a "
                       f"{args.quantization_bit}-bit base model. Use zero2 for QLoRA.")
    if MS_SWIFT_NAMES.get(args.deepspeed, args.deepspeed) not in BUILT_IN:
        check_sections(args.deepspeed, config)


def check_sections(path: str, config: dict[str, Any]) -> None:
    """A file's fp16, bf16 and ZeRO sections as the installed DeepSpeed reads them, so that a
    value it no longer takes is named before loading rather than by a pydantic traceback when
    training starts (Chinese-LLaMA-Alpaca's ds_zero2_no_offload.json sets fp16 min_loss_scale
    1e-10, which DeepSpeed 0.19 takes only as a whole number)."""
    import deepspeed
    from pydantic import ValidationError

    try:
        from deepspeed.runtime.precision_config import get_bfloat16_config, get_float16_config
        from deepspeed.runtime.zero.config import get_zero_config
    except ImportError:  # another layout: DeepSpeed checks the file when training starts
        return
    for section, read in (("fp16", get_float16_config), ("bf16", get_bfloat16_config),
                          ("zero_optimization", get_zero_config)):
        try:
            read(config)
        except ValidationError as error:
            problem = error.errors()[0]
            key = ".".join(map(str, (section, *problem["loc"])))
            raise SdkError(f"{FLAG} {path}: DeepSpeed {deepspeed.__version__} does not take its "
                           f"{key} {problem.get('input')!r} ({problem['msg']}); change it in "
                           "the file.") from None


def single_process_rendezvous() -> None:
    """What torchrun sets for its processes, for a run of one: DeepSpeed starts its process
    group from them (without them it looks for MPI)."""
    if "RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def quiet_deepspeed_collectives() -> None:
    """DeepSpeed calls torch.distributed collectives that torch deprecates, and torch warns at
    every call (dozens a step with ZeRO-3): about DeepSpeed's code, nothing a user can change."""
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.\w+` is deprecated")
