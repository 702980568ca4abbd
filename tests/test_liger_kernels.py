"""--use-liger-kernel: the plan names liger-kernel's function for each family's architecture and
refuses one liger has no kernels for, on any machine, before the model loads; on a CUDA GPU
(liger-kernel's kernels are Triton) the same loss and adapter gradients as the model's own
modules, with less memory kept for the backward. On a machine without CUDA the flag is refused
(tests/test_bad_input.py)."""

import importlib.util

import pytest
import torch

from sdk.config import SftArguments
from sdk.errors import SdkError
from sdk.train import liger_kernels
from sdk.train.fast_path import Device, liger_unavailable
from sdk.train.liger_kernels import LIGER_FUNCTIONS, apply_liger_kernels, liger_function
from sdk.train.plan import resolve_plan

on_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                             reason="liger-kernel's Triton kernels run on CUDA")

# model type: the function liger-kernel's own table (MODEL_TYPE_TO_APPLY_LIGER_FN, 0.8.5) gives
# its architecture, one model type a layout
PLANNED = {
    "qwen3-8b": "apply_liger_kernel_to_qwen3",
    "qwen3-4b-thinking-2507": "apply_liger_kernel_to_qwen3",
    "qwen3-30b-a3b": "apply_liger_kernel_to_qwen3_moe",
    "qwen3-30b-a3b-instruct-2507": "apply_liger_kernel_to_qwen3_moe",
    "gemma2-9b-it": "apply_liger_kernel_to_gemma2",
    "gemma3-1b-it": "apply_liger_kernel_to_gemma3_text",
    "gemma3-4b-it": "apply_liger_kernel_to_gemma3_text",  # loaded as its text model
    "phi3.5-mini-instruct": "apply_liger_kernel_to_phi3",
    "phi4-14b": "apply_liger_kernel_to_phi3",
    "glm4-9b-0414": "apply_liger_kernel_to_glm4",
    "internlm3-8b-instruct": "apply_liger_kernel_to_llama",  # built as LlamaForCausalLM
    "deepseek-r1-distill-qwen-7b": "apply_liger_kernel_to_qwen2",
    "deepseek-r1-distill-llama-8b": "apply_liger_kernel_to_llama",
    "mistral-nemo-instruct-2407": "apply_liger_kernel_to_mistral",
    "qwen-7b-chat": "apply_liger_kernel_to_qwen2",  # converted to Qwen2 on load
}


@pytest.fixture
def liger_machine(monkeypatch):
    """The machine as the plan sees it: a CUDA GPU with liger-kernel installed."""
    monkeypatch.setattr("sdk.train.plan.this_device", lambda: Device(gpu=True, memory_gib=80))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: object()
                        if name == "liger_kernel" else find_spec(name, *rest))


def liger_plan(registry, model_type: str, tmp_path):
    return resolve_plan(SftArguments(model_type=model_type, dataset=["self-cognition"],
                                     output_dir=str(tmp_path), use_liger_kernel=True), registry)


@pytest.mark.parametrize("model_type", sorted(PLANNED))
def test_the_plan_names_ligers_function_for_the_architecture(model_type, liger_machine,
                                                              tmp_path, sdk_registry):
    assert sdk_registry.get("models", model_type)  # a registered model type
    choice = liger_plan(sdk_registry, model_type, tmp_path).as_dict()["choices"]["liger_kernel"]
    assert choice == {"value": True, "why": f"--use-liger-kernel true: {PLANNED[model_type]}",
                      "off": None}


@pytest.mark.parametrize("model_type, architectures", [
    ("chatglm3-6b", "glm"), ("glm4-9b-chat", "glm, chatglm"), ("glm4-9b-chat-hf", "glm")])
def test_a_family_liger_has_no_kernels_for_is_refused_on_any_machine(model_type, architectures,
                                                                     tmp_path, sdk_registry):
    with pytest.raises(SdkError, match=f"liger-kernel has no kernels for --model-type "
                                       f"{model_type} \\({architectures} models\\)"):
        liger_plan(sdk_registry, model_type, tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None,
                    reason="liger-kernel is not installed")
def test_each_function_is_the_one_installed_liger_keeps_for_the_architecture():
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    for model_type, name in LIGER_FUNCTIONS.items():
        # liger lists no internlm3: transformers builds it with Llama's modules
        own = MODEL_TYPE_TO_APPLY_LIGER_FN["llama" if model_type == "internlm3" else model_type]
        assert own.__name__ == name
        assert liger_kernels.installed_function(name) is own


def lora_qwen2(seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=1024, hidden_size=512, intermediate_size=2816,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa")
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules="all-linear", init_lora_weights=False))


def loss_gradients_and_kept_bytes(model, tokens: torch.Tensor):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = model(input_ids=tokens, labels=tokens).loss
    kept = torch.cuda.memory_allocated() - before  # what the forward leaves for the backward
    loss.backward()
    gradients = {name: parameter.grad.float().clone()
                 for name, parameter in model.named_parameters() if parameter.requires_grad}
    return loss.item(), gradients, kept


@on_cuda
def test_on_cuda_liger_kernels_keep_losses_and_gradients_in_less_memory(monkeypatch):
    from transformers.models.qwen2 import modeling_qwen2

    for name in ("apply_rotary_pos_emb", "Qwen2RMSNorm", "Qwen2MLP"):  # liger replaces them
        monkeypatch.setattr(modeling_qwen2, name, getattr(modeling_qwen2, name))
    tokens = torch.randint(0, 1024, (1, 4096), device="cuda")
    own = loss_gradients_and_kept_bytes(lora_qwen2(seed=0), tokens)
    patched_model = lora_qwen2(seed=0)
    assert "RMSNorm, SwiGLU and RoPE kernels in the qwen2 model" in apply_liger_kernels(
        patched_model)
    patched = loss_gradients_and_kept_bytes(patched_model, tokens)
    print(f"kept for the backward: own modules {own[2] / 2**20:.1f} MiB, "
          f"liger {patched[2] / 2**20:.1f} MiB")
    assert patched[0] == pytest.approx(own[0], rel=1e-2)
    for name, gradient in own[1].items():
        similarity = torch.nn.functional.cosine_similarity(
            gradient.flatten(), patched[1][name].flatten(), dim=0)
        assert similarity > 0.99, name
    assert patched[2] < 0.9 * own[2]


def test_the_machine_is_checked_after_the_family():
    gpu, cpu = Device(gpu=True, memory_gib=80), Device(gpu=False)
    assert liger_unavailable(("chatglm",), "chatglm3-6b", cpu) == (
        "liger-kernel has no kernels for --model-type chatglm3-6b (chatglm models)")
    assert "needs a CUDA GPU" in liger_unavailable(("qwen2",), "qwen2-7b-instruct", cpu)
    if importlib.util.find_spec("liger_kernel") is None:
        assert "not installed" in liger_unavailable(("qwen2",), "qwen2-7b-instruct", gpu)
    assert liger_function(("gemma3_text", "gemma3")) == "apply_liger_kernel_to_gemma3_text"
    assert liger_function(()) is None  # declares no architecture: checked on load


@on_cuda
def test_on_cuda_a_packed_run_with_liger_kernels_stays_packed(plugin_set, identity_data,
                                                             tmp_path, capsys):
    # the model loads on the CPU; the packing probe must run it where liger's kernels run
    from conftest import TINY_MODEL_TYPE
    from sdk.config import SftArguments
    from sdk.train.sft import run_sft

    run_sft(SftArguments(model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)],
                         output_dir=str(tmp_path / "output"), max_steps=2, batch_size=2,
                         use_liger_kernel=True, dtype="bf16"), plugin_set.registry)
    err = capsys.readouterr().err
    assert "liger-kernel's RMSNorm, SwiGLU and RoPE kernels" in err
    assert "packing off" not in err
