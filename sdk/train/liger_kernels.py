"""``--use-liger-kernel``: liger-kernel's Triton RMSNorm, SwiGLU (GeGLU for Gemma) and
rotary-embedding kernels in place of the model's own.

Each keeps less for the backward than the PyTorch code it replaces (the SwiGLU kernel keeps
the gate and up projections and recomputes their product; the RMSNorm kernel keeps its bf16
input and one scale a position instead of fp32 copies) and does in one kernel what PyTorch does
in several. The loss is not touched: ``--loss-impl`` chooses it (``auto`` already picks
liger's fused linear cross-entropy on CUDA).
"""

from __future__ import annotations

import logging
from typing import Any

from sdk.errors import SdkError

FLAG = "--use-liger-kernel"


def supported_model_types() -> set[str]:
    """The ``model_type`` values liger-kernel has kernels for (it imports Triton)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def check_liger_kernels(config_model_types: tuple[str, ...], model_type: str) -> None:
    """The kernels can run here and have a version for the model type (before it loads)."""
    from sdk.train.fast_path import liger_unavailable, this_device

    why = liger_unavailable(config_model_types, model_type, this_device())
    if why:
        raise SdkError(f"{FLAG}: {why}. Leave the flag out.")


def apply_liger_kernels(model: Any) -> str:
    """Swap the kernels into ``model`` (peft-wrapped or not) in place; says what was done."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from transformers.trainer_utils import unwrap_peft_model

    # At its first call, liger looks for its optional backends (CuTe DSL, Ascend) and warns for
    # each one not installed, then runs its Triton kernels: nothing a user needs to act on.
    logging.getLogger("liger_kernel.backends.registry").setLevel(logging.ERROR)
    network = unwrap_peft_model(model)
    model_type = network.config.model_type
    if model_type not in supported_model_types():
        raise SdkError(f"{FLAG}: liger-kernel has no kernels for {model_type} models. Leave "
                       "the flag out.")
    # liger also swaps the RoPE function and the RMSNorm and MLP classes of transformers'
    # module for the architecture: models of it built later in the process get the kernels too
    # each architecture's function takes the keywords that fit it (Gemma's MLP is GeGLU: geglu,
    # and its RMSNorm scales by 1 + weight, which liger's Gemma functions patch as such)
    _apply_liger_kernel_to_instance(model=network, rope=True, rms_norm=True, swiglu=True,
                                    geglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    return (f"liger-kernel's RMSNorm, {mlp_kernel(model_type)} and RoPE kernels in the "
            f"{model_type} model")


def mlp_kernel(model_type: str) -> str:
    """The MLP kernel liger swaps into ``model_type`` models: GeGLU (Gemma) or SwiGLU."""
    import inspect

    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    apply = MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]
    return "GeGLU" if "geglu" in inspect.signature(apply).parameters else "SwiGLU"
