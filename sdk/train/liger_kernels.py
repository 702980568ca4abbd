"""``--use-liger-kernel``: liger-kernel's Triton RMSNorm, SwiGLU (GeGLU for Gemma) and
rotary-embedding kernels in place of the model's own.

Each keeps less for the backward than the PyTorch code it replaces (the SwiGLU kernel keeps
the gate and up projections and recomputes their product; the RMSNorm kernel keeps its bf16
input and one scale a position instead of fp32 copies) and does in one kernel what PyTorch does
in several. The loss is not touched: ``--loss-impl`` chooses it (``auto`` already picks
liger's fused linear cross-entropy on CUDA).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from sdk.errors import SdkError

FLAG = "--use-liger-kernel"

# liger-kernel's function for each architecture (config.json's model_type) of the families
# here that it has kernels for: the entries of liger_kernel.transformers.monkey_patch's
# MODEL_TYPE_TO_APPLY_LIGER_FN (liger-kernel 0.8.5) for those types, by name, so that the plan
# names the function and refuses a type without kernels on any machine, before the model loads
# (liger imports Triton, which a CPU machine need not have). tests/test_liger_kernels.py checks
# each name against the installed liger's own table.
LIGER_FUNCTIONS = {
    "llama": "apply_liger_kernel_to_llama",
    # transformers builds InternLM3 as LlamaForCausalLM (its auto mapping): Llama's modules
    "internlm3": "apply_liger_kernel_to_llama",
    "mistral": "apply_liger_kernel_to_mistral",
    "mixtral": "apply_liger_kernel_to_mixtral",
    "qwen2": "apply_liger_kernel_to_qwen2",
    "qwen3": "apply_liger_kernel_to_qwen3",
    "qwen3_moe": "apply_liger_kernel_to_qwen3_moe",
    "gemma2": "apply_liger_kernel_to_gemma2",
    "gemma3_text": "apply_liger_kernel_to_gemma3_text",
    "gemma3": "apply_liger_kernel_to_gemma3",
    "phi3": "apply_liger_kernel_to_phi3",
    "glm4": "apply_liger_kernel_to_glm4",
}


def liger_function(config_model_types: tuple[str, ...]) -> str | None:
    """The name of liger's function for the first of ``config_model_types`` that has one;
    None where none has (or none is declared: the loaded model's is looked up)."""
    return next((LIGER_FUNCTIONS[name] for name in config_model_types
                 if name in LIGER_FUNCTIONS), None)


def installed_function(name: str) -> Any:
    """liger's function ``name`` as the installed liger-kernel exports it."""
    import liger_kernel.transformers

    function = getattr(liger_kernel.transformers, name, None)
    if function is None:
        raise SdkError(f"{FLAG}: the installed liger-kernel has no {name}; "
                       "pip install -U liger-kernel")
    return function


def apply_liger_kernels(model: Any) -> str:
    """Swap the kernels into ``model`` (peft-wrapped or not) in place; says what was done."""
    from transformers.trainer_utils import unwrap_peft_model

    # At its first call, liger looks for its optional backends (CuTe DSL, Ascend) and warns for
    # each one not installed, then runs its Triton kernels: nothing a user needs to act on.
    logging.getLogger("liger_kernel.backends.registry").setLevel(logging.ERROR)
    network = unwrap_peft_model(model)
    model_type = network.config.model_type
    if model_type not in LIGER_FUNCTIONS:
        raise SdkError(f"{FLAG}: liger-kernel has no kernels for {model_type} models. Leave "
                       "the flag out.")
    apply = installed_function(LIGER_FUNCTIONS[model_type])
    # liger also swaps the RoPE function and the RMSNorm and MLP classes of transformers'
    # module for the architecture: models of it built later in the process get the kernels too.
    # Each function takes the keywords that fit its architecture (Gemma's MLP is GeGLU: geglu,
    # and its RMSNorm scales by 1 + weight, which liger's Gemma functions patch as such); its
    # losses stay off (they default to on), so the loss is --loss-impl's
    wanted = dict(rope=True, rms_norm=True, swiglu=True, geglu=True, cross_entropy=False,
                  fused_linear_cross_entropy=False)
    accepted = inspect.signature(apply).parameters
    apply(model=network, **{key: value for key, value in wanted.items() if key in accepted})
    kernel = "GeGLU" if "geglu" in accepted else "SwiGLU"
    return f"liger-kernel's RMSNorm, {kernel} and RoPE kernels in the {model_type} model"
