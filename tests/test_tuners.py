"""The built-in tuners beyond lora/full: each trains a few steps and reloads to equal logits."""

import json

import pytest
import torch

from conftest import TINY_MODEL_TYPE, train_and_reload
from sdk.errors import SdkError


@pytest.mark.parametrize("sft_type, adapter_setting", [
    ("dora", ("use_dora", True)),
    ("rslora", ("use_rslora", True)),
    ("ia3", ("peft_type", "IA3")),
])
def test_peft_tuners_train_and_reload(plugin_set, tiny_model_dir, identity_data, tmp_path,
                                      sft_type, adapter_setting):
    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                                identity_data, tmp_path, sft_type=sft_type)
    config = json.loads((reloaded.result.checkpoint / "adapter_config.json").read_text())
    key, value = adapter_setting
    assert config[key] == value
    assert reloaded.saved["sft_type"] == sft_type


def test_freeze_trains_only_the_last_layers(plugin_set, tiny_model_dir, identity_data,
                                            tmp_path):
    from transformers import AutoModelForCausalLM

    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                                identity_data, tmp_path, sft_type="freeze",
                                freeze_trainable_layers=1, learning_rate=1e-2)
    assert (reloaded.result.checkpoint / "model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).model
    trained = reloaded.model.model
    first, last = (lambda m: m.layers[0].mlp.down_proj.weight), (
        lambda m: m.layers[-1].mlp.down_proj.weight)
    assert torch.equal(first(base), first(trained))  # frozen
    assert not torch.equal(last(base), last(trained))  # trained
    assert torch.equal(base.embed_tokens.weight, trained.embed_tokens.weight)


def test_freeze_with_nothing_to_train_is_an_error(plugin_set, tiny_model_dir, identity_data,
                                                  tmp_path):
    with pytest.raises(SdkError, match="found nothing to train"):
        train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir, identity_data,
                         tmp_path, sft_type="freeze", freeze_trainable_layers=0)


def test_tuners_are_listed_with_a_description(run_cli):
    rows = {row["name"]: row for row in json.loads(run_cli("tuners", "--json").stdout)}
    assert {"lora", "dora", "rslora", "ia3", "freeze", "full"} <= set(rows)
    assert all(row["description"] for row in rows.values())


def test_training_continues_from_a_saved_adapter_in_either_file_layout(
        plugin_set, tiny_model_dir, identity_data, tmp_path):
    from safetensors.torch import load_file

    from sdk.config import SftArguments
    from sdk.train.sft import run_sft

    first = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                             identity_data, tmp_path / "first")
    older = tmp_path / "older-adapter"  # as Chinese-Vicuna / alpaca-lora saved adapters
    older.mkdir()
    (older / "adapter_config.json").write_text(
        (first.result.checkpoint / "adapter_config.json").read_text())
    torch.save(load_file(first.result.checkpoint / "adapter_model.safetensors"),
               older / "pytorch_model.bin")
    for adapter in (first.result.checkpoint, older):
        # a learning rate of ~0: the continued model must be the adapter's model
        result = run_sft(SftArguments(
            model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
            dataset=[str(identity_data)], max_steps=1, batch_size=2,
            gradient_accumulation_steps=1, learning_rate=1e-30, warmup_ratio=0.0,
            output_dir=str(tmp_path / "continued"), adapter=str(adapter)),
            plugin_set.registry)
        assert any(p.requires_grad for p in result.model.parameters())
        with torch.no_grad():
            inputs = first.inputs.to(result.model.device)
            torch.testing.assert_close(result.model.eval()(**inputs).logits,
                                       first.model(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_an_adapter_for_another_model_or_tuner_is_refused(plugin_set, tiny_model_dir,
                                                          identity_data, tmp_path):
    from sdk.config import SftArguments
    from sdk.train.sft import run_sft

    def sft(**overrides):
        settings = dict(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                        dataset=[str(identity_data)], max_steps=1,
                        output_dir=str(tmp_path / "out"))
        return run_sft(SftArguments(**{**settings, **overrides}), plugin_set.registry)

    with pytest.raises(SdkError, match="has no adapter_config.json"):
        sft(adapter=str(tmp_path))
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
         "target_modules": ["q_proj"]}))
    torch.save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                torch.zeros(4, 999)}, alien / "adapter_model.bin")
    with pytest.raises(SdkError, match="does not fit this base model"):
        sft(adapter=str(alien))
    with pytest.raises(SdkError, match="--sft-type full does not train one"):
        sft(adapter=str(alien), sft_type="full")
