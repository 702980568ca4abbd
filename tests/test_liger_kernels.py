"""--use-liger-kernel on a CUDA GPU (liger-kernel's kernels are Triton): the same loss and
adapter gradients as the model's own modules, with less memory kept for the backward. On a
machine without CUDA the flag is refused (tests/test_bad_input.py)."""

import pytest
import torch

from sdk.errors import SdkError
from sdk.train.liger_kernels import apply_liger_kernels, check_liger_kernels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="liger-kernel's Triton kernels run on CUDA")


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


def test_on_cuda_a_family_liger_has_no_kernels_for_is_refused_before_loading():
    with pytest.raises(SdkError, match="liger-kernel has no kernels for --model-type "
                                       "chatglm3-6b"):
        check_liger_kernels(("chatglm",), "chatglm3-6b")
    check_liger_kernels(("qwen2",), "qwen2-7b-instruct")
    check_liger_kernels(("gemma2",), "gemma2-9b-it")
    check_liger_kernels(("gemma3_text", "gemma3"), "gemma3-4b-it")
    check_liger_kernels((), "third-party-type")  # declares no architecture: checked on load


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
