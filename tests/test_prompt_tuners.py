"""The virtual-token tuners (prefix, ptuning, prompt): each trains, reloads to equal logits, and
generates after the reload exactly as full forward passes predict."""

import json

import pytest
import torch

from conftest import CONVERSATIONS, TINY_MODEL_TYPE
from sdk.errors import SdkError
from sdk.testing import train_and_reload

STEPS = 4


def greedy_without_cache(model, input_ids):
    """Logits of each greedy step, every step a full forward pass over the whole sequence."""
    steps = []
    for _ in range(STEPS):
        with torch.no_grad():
            last = model(input_ids=input_ids).logits[:, -1]
        steps.append(last)
        input_ids = torch.cat([input_ids, last.argmax(-1, keepdim=True)], dim=1)
    return torch.stack(steps, dim=1), input_ids


@pytest.mark.parametrize("sft_type, peft_type", [
    ("prefix", "PREFIX_TUNING"), ("ptuning", "P_TUNING"), ("prompt", "PROMPT_TUNING")])
def test_virtual_token_tuners_train_reload_and_generate(plugin_set, tiny_model_dir, identity_data,
                                                        tmp_path, run_cli, tiny_plugin_file,
                                                        sft_type, peft_type):
    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                                identity_data, tmp_path, sft_type=sft_type, num_virtual_tokens=4)
    config = json.loads((reloaded.result.checkpoint / "adapter_config.json").read_text())
    assert (config["peft_type"], config["num_virtual_tokens"]) == (peft_type, 4)

    # generate() keeps an attention cache that the virtual tokens must be in exactly once
    prompt = reloaded.inputs["input_ids"]
    expected_logits, expected_ids = greedy_without_cache(reloaded.model, prompt)
    with torch.no_grad():
        generated = reloaded.model.generate(
            **reloaded.inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
            output_logits=True, return_dict_in_generate=True)
    assert torch.equal(generated.sequences, expected_ids)
    torch.testing.assert_close(torch.stack(generated.logits, dim=1), expected_logits,
                               rtol=1e-4, atol=1e-4)

    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir",
                     reloaded.result.run_dir, "--query", CONVERSATIONS["single turn"][0]["content"],
                     "--max-new-tokens", STEPS, "--stream", "false")
    assert result.exit_code == 0, result.output
    reply = reloaded.tokenizer.decode(expected_ids[0, prompt.shape[1]:], skip_special_tokens=True)
    assert result.stdout.strip() == reply.strip()


def test_prefix_tuning_refuses_gradient_checkpointing(plugin_set, tiny_model_dir, identity_data,
                                                      tmp_path):
    with pytest.raises(SdkError, match="--sft-type prefix cannot train with "
                                       "--gradient-checkpointing"):
        train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir, identity_data,
                         tmp_path, sft_type="prefix", gradient_checkpointing=True)


def test_saved_virtual_tokens_cannot_be_trained_further(plugin_set, tiny_model_dir,
                                                        identity_data, tmp_path):
    from sdk.config import SftArguments
    from sdk.train.sft import run_sft

    adapter = tmp_path / "prefix-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")

    def sft(sft_type):
        run_sft(SftArguments(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                             dataset=[str(identity_data)], max_steps=1, sft_type=sft_type,
                             adapter=str(adapter), output_dir=str(tmp_path / "out")),
                plugin_set.registry)

    for sft_type in ("prefix", "lora"):
        with pytest.raises(SdkError, match="holds a PREFIX_TUNING adapter; peft cannot train "
                                           "saved virtual tokens further"):
            sft(sft_type)
