"""InternLM3-8B-Instruct: registered as a native type (transformers' internlm3 config, built as
Llama), with InternLM2's chat format (its verbatim chat_template renders as the internlm2
template under apply_chat_template); a tiny checkpoint in the official layout (config.json as
internlm/internlm3-8b-instruct writes it: InternLM3ForCausalLM with auto_map, qkv_bias, bias,
dynamic rope scaling; the official parameter names; tokenizer.model with the remote-code
tokenizer's tokenizer_config.json) trains LoRA packed, reloads to the same logits and exports
a merged model that loads without remote code.

InternLM3's own tokenizer.model cannot be had offline here: Mistral v0.1's (sentencepiece, the
same kind, and small, which keeps the test quick) stands in."""

import hashlib
import json
import shutil

import pytest
from sft_plugin_internlm import INTERNLM2_TEMPLATE, INTERNLM3_SPEC

from conftest import CONVERSATIONS, REMOTE_CODE, TINY_SIZE, TOKENIZERS
from sdk.plugins import load_plugins
from sdk.testing import assert_template_parity, export_merged, train_and_reload

OFFICIAL_CONFIG = {  # internlm/internlm3-8b-instruct config.json, at TINY_SIZE
    "architectures": ["InternLM3ForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_internlm3.InternLM3Config",
                 "AutoModel": "modeling_internlm3.InternLM3Model",
                 "AutoModelForCausalLM": "modeling_internlm3.InternLM3ForCausalLM"},
    "model_type": "internlm3", "bias": False, "qkv_bias": False, "head_dim": 8,
    "hidden_act": "silu", "rope_scaling": {"factor": 6.0, "rope_type": "dynamic"},
    "rope_theta": 50000000, "rms_norm_eps": 1e-05, "bos_token_id": 1, "eos_token_id": 2,
    "pad_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "float32",
    **{key: TINY_SIZE[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads",
                                       "max_position_embeddings")},
}
# The chat_template of internlm/internlm3-8b-instruct's tokenizer_config.json, verbatim, as
# xorbitsai/inference holds it: xinference/model/llm/llm_family.json, entry "internlm3-instruct"
# (internlm/internlm3-8b-instruct), commit 7ecec16b63383e18e4af790c4b522fb7d79f7e77 (added in
# 0ee8d142, "Support internlm3").
OFFICIAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOKENIZER_CONFIG = {  # the remote-code tokenizer's: transformers builds a fast one instead
    "auto_map": {"AutoTokenizer": ["tokenization_internlm3.InternLM3Tokenizer", None]},
    "tokenizer_class": "InternLM3Tokenizer", "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "pad_token": "</s>", "add_bos_token": True, "add_eos_token": False,
}


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory):
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("internlm3-8b-instruct")
    shutil.copy(TOKENIZERS / "mistral-v0.1" / "tokenizer.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    config = {**OFFICIAL_CONFIG, "vocab_size": 32000}  # the stand-in tokenizer's
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    # the official modeling_internlm3.py names its parameters as Llama does
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim")}))
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()},
              folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_internlm3_is_native_with_the_internlm2_format(render_cli):
    spec = load_plugins().registry.get("models", "internlm3-8b-instruct")
    assert spec == INTERNLM3_SPEC and spec.template == INTERNLM2_TEMPLATE.name
    assert spec.loader is None and not spec.converted_to and not spec.requires_remote_code
    assert spec.config_model_types == ("internlm3",)
    assert render_cli("internlm3-8b-instruct", CONVERSATIONS["with system"], True) == (
        "<s><|im_start|>system\nYou are Ferret.<|im_end|>\n<|im_start|>user\nWho are you?"
        "<|im_end|>\n<|im_start|>assistant\n")


def test_the_template_renders_as_internlm3s_verbatim_chat_template(official_folder):
    assert hashlib.sha256(OFFICIAL_CHAT_TEMPLATE.encode()).hexdigest() == (
        "49aa7cb516942cc5a17d45ed2939828e3b5e4188dc487a3c4b64a570e5b5111f")
    # byte for byte internlm2-chat-7b's, the template internlm2 is already checked against
    internlm2 = json.loads((REMOTE_CODE / "internlm2-chat-7b" / "tokenizer_config.json")
                           .read_text(encoding="utf-8"))["chat_template"]
    assert OFFICIAL_CHAT_TEMPLATE == internlm2
    assert_template_parity(INTERNLM2_TEMPLATE, official_folder, CONVERSATIONS.values(),
                           chat_template=OFFICIAL_CHAT_TEMPLATE)


def test_the_official_layout_trains_packed_reloads_and_exports_merged(
        official_folder, identity_data, tmp_path):

    trained = train_and_reload(load_plugins().registry, "internlm3-8b-instruct",
                               official_folder, identity_data, tmp_path / "output",
                               lora_dropout=0.0)
    model = trained.model.get_base_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.rope_parameters["rope_type"] == "dynamic"
    assert trained.saved["packing"] is True  # the packing probe passed
    merged = export_merged(load_plugins().registry, trained, tmp_path / "merged")  # no remote code
    assert merged.config.model_type == "internlm3"
