"""--attn-impl: the attention kernel a model is loaded with, and the errors for kernels that
cannot run here (this machine has no GPU; the flash kernels are checked where one is lent)."""

import pytest
import torch

from conftest import TINY_MODEL_TYPE
from sdk.config import SftArguments
from sdk.errors import SdkError
from sdk.models.loader import attention_implementation
from sdk.train.sft import run_sft


def test_auto_leaves_the_choice_to_transformers_without_flash_attention():
    # no CUDA here: auto never asks for a flash kernel
    assert attention_implementation("auto", torch.bfloat16) is None
    assert attention_implementation("auto", torch.float32) is None


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_a_kernel_without_extra_needs_is_passed_on(kernel):
    assert attention_implementation(kernel, torch.float32) == kernel


@pytest.mark.parametrize("kernel", ["flash_attention_2", "flash_attention_3", "flex_attention"])
def test_a_gpu_kernel_without_a_gpu_is_refused_naming_the_flag(kernel):
    with pytest.raises(SdkError, match=f"--attn-impl {kernel} needs a CUDA GPU"):
        attention_implementation(kernel, torch.bfloat16)


def test_a_flash_kernel_needs_its_package_and_half_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(SdkError, match="pip install flash-attn"):
        attention_implementation("flash_attention_2", torch.bfloat16)
    assert attention_implementation("auto", torch.bfloat16) is None  # not installed: no flash
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    with pytest.raises(SdkError, match="--dtype bf16"):
        attention_implementation("flash_attention_2", torch.float32)
    assert attention_implementation("auto", torch.bfloat16) == "flash_attention_2"
    assert attention_implementation("auto", torch.float32) is None


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_training_runs_with_the_chosen_kernel_and_stays_packed(plugin_set, identity_data,
                                                               tmp_path, capsys, kernel):
    result = run_sft(SftArguments(
        model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)], attn_impl=kernel,
        output_dir=str(tmp_path), max_steps=1, batch_size=2, gradient_accumulation_steps=1,
        save_steps=1), plugin_set.registry)
    base = result.model.get_base_model()
    assert base.config._attn_implementation == kernel
    assert "packing off" not in capsys.readouterr().err  # both keep packed samples apart
    assert (result.checkpoint / "adapter_model.safetensors").is_file()


def test_a_kernel_the_model_lacks_is_an_error_naming_the_flag(run_cli, tiny_plugin_file,
                                                              tiny_model_dir, tmp_path,
                                                              identity_data):
    # a BLOOM model has no SDPA attention in transformers
    from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM

    folder = tmp_path / "bloom"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    BloomForCausalLM(BloomConfig(n_layer=1, hidden_size=16, n_head=2,
                                 vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--model-id-or-path", folder, "--dataset", identity_data,
                     "--attn-impl", "sdpa", "--output-dir", tmp_path / "out",
                     "--max-steps", "1")
    assert result.exit_code != 0
    assert "--attn-impl sdpa does not work with the model" in result.output
    assert "Traceback" not in result.output
