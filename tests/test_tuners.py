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
