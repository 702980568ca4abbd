"""Phi plugin: registrations; the official templates render as transformers renders the
official text (sdk.testing's parity check; `sdk template render` for Phi-3.5's empty system
prompt), encode to the tokenizer's ids and train only the replies; a tiny random Phi3 trains
LoRA packed, reloads to the same logits and exports merged.

No Phi tokenizer can be had offline, so the tests use stand-ins with the same special tokens:
Phi-3.5-mini's is Llama 2's vocabulary with Phi's added tokens (as the real one is), Phi-4's
and Phi-4-mini's are Qwen2's byte-level BPE with theirs (the real ones are tiktoken-style BPE).
"""

import re

import pytest
from sft_plugin_phi import MODELS, TEMPLATES

from conftest import CONVERSATIONS, TOKENIZERS, save_tiny_model, trained_text
from sdk import compat
from sdk.errors import SdkError
from sdk.plugins import load_plugins
from sdk.templates.engine import Template
from sdk.testing import assert_template_parity, export_merged, train_and_reload

SPECS = {spec.name: spec for spec in TEMPLATES}
# template -> (stand-in tokenizer folder, added tokens that strip the whitespace after them)
STAND_INS = {
    # Phi-3.5-mini's tokenizer.json: Llama 2's 32000 pieces, then <|endoftext|> and the role
    # tokens, which strip the newline after them (rstrip)
    "phi3.5": ("llama2", ["<|endoftext|>"], ["<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]),
    "phi4": ("qwen2", ["<|im_sep|>"], []),
    "phi4-mini": ("qwen2", ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|tool|>",
                            "<|/tool|>"], []),
}
# What the official templates render for the "multi turn with system" conversation, written
# out from their text: the parity below compares with transformers' rendering of that text,
# this pins the text itself.
MULTI_TURN_WITH_SYSTEM = {
    "phi3.5": "<|system|>\nYou are Ferret.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!"
              "<|end|>\n<|user|>\nWho are you?<|end|>\n<|assistant|>\n",
    "phi4": "<|im_start|>system<|im_sep|>You are Ferret.<|im_end|><|im_start|>user<|im_sep|>Hi"
            "<|im_end|><|im_start|>assistant<|im_sep|>Hello!<|im_end|><|im_start|>user<|im_sep|>"
            "Who are you?<|im_end|><|im_start|>assistant<|im_sep|>",
    "phi4-mini": "<|system|>You are Ferret.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>"
                 "<|user|>Who are you?<|end|><|assistant|>",
}


def stand_in(template):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    folder, plain, stripping = STAND_INS[template]
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / folder)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        *plain, *(AddedToken(token, rstrip=True, normalized=False) for token in stripping)]})
    for name, token in SPECS[template].special_tokens.items():
        setattr(tokenizer, name, token)
    tokenizer.add_tokens([t for t in SPECS[template].special_tokens.values()
                          if t not in tokenizer.get_vocab()], special_tokens=True)
    return tokenizer


@pytest.fixture(scope="module")
def tokenizers():
    return {template: stand_in(template) for template in STAND_INS}


def test_every_model_type_is_a_native_phi3_with_hub_ids_and_its_template():
    registry = load_plugins().registry
    assert set(MODELS) == {"phi3.5-mini-instruct", "phi4-14b", "phi4-mini-instruct"}
    for model_type in MODELS:
        spec = registry.get("models", model_type)
        assert spec.family == "phi" and spec.config_model_types == ("phi3",)
        assert registry.get("templates", spec.template) is SPECS[spec.template]
        assert spec.hub_ids["huggingface"].startswith("microsoft/")
        assert spec.hub_ids["modelscope"].startswith("LLM-Research/")
        assert spec.hub_ids["huggingface"].split("/")[1].lower() == \
            spec.hub_ids["modelscope"].split("/")[1].lower()
        assert spec.lora_target_modules == ("qkv_proj",)
        assert not spec.requires_remote_code and not spec.requires
    # the templates the parity test below checks are those of every model type
    assert {registry.get("models", m).template for m in MODELS} == set(STAND_INS)


def test_ms_swift_3s_phi4_family_resolves_by_the_hub_id():
    registry = load_plugins().registry
    for hub_id, ours in [("microsoft/Phi-4-mini-instruct", "phi4-mini-instruct"),
                         ("LLM-Research/phi-4", "phi4-14b")]:
        assert compat.resolve_names({"model_type": "phi4", "#model": hub_id},
                                    registry)["model_type"] == ours
    with pytest.raises(SdkError, match="phi4-14b, phi4-mini-instruct"):
        compat.resolve_names({"model_type": "phi4"}, registry)


@pytest.mark.parametrize("template", list(STAND_INS))
def test_render_equals_the_official_chat_template(tokenizers, template):
    assert_template_parity(SPECS[template], tokenizers[template], CONVERSATIONS.values(),
                           chat_template=SPECS[template].jinja)
    assert Template(SPECS[template]).render(CONVERSATIONS["multi turn with system"], True) == (
        MULTI_TURN_WITH_SYSTEM[template])


def test_phi3_5_leaves_an_empty_system_prompt_out_and_ends_a_conversation_with_eos(render_cli):
    messages = [{"role": "system", "content": ""}, *CONVERSATIONS["chinese"][1:]]
    assert render_cli("phi3.5-mini-instruct", messages) == (
        "<|user|>\n床前明月光<|end|>\n<|assistant|>\n疑是地上霜。<|end|>\n<|endoftext|>")


def test_phi4_mini_refuses_tools_rather_than_dropping_them():
    # its tool format reads a `tools` string on the system message, which sdk messages do not
    # carry to templates: rendered, the schemas would silently vanish
    tools = '[{"type": "function", "function": {"name": "f", "parameters": {}}}]'
    messages = [{"role": "system", "content": "Be brief.", "tools": tools},
                {"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="template 'phi4-mini' has no tool format"):
        Template(SPECS["phi4-mini"]).render(messages)


@pytest.mark.parametrize("template", list(STAND_INS))
@pytest.mark.parametrize("name", ["multi turn", "chinese"])
def test_training_ids_equal_the_tokenizers_and_only_replies_train(tokenizers, template, name):
    tokenizer, spec, messages = tokenizers[template], SPECS[template], CONVERSATIONS[name]
    encoder = Template.for_tokenizer(spec, tokenizer)
    rendered = encoder.render(messages)
    input_ids, labels = encoder.encode(tokenizer, messages)
    assert input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    replies = [m["content"] + spec.assistant_suffix for m in messages if m["role"] == "assistant"]
    # a reply's first word may bring the newline or space before it (one BPE token)
    assert re.fullmatch("".join(r"\s?" + re.escape(r) + r"\s?" for r in replies),
                        trained_text(tokenizer, input_ids, labels))
    _, last_only = encoder.encode(tokenizer, messages, loss_scope="last")
    assert re.fullmatch(r"\s?" + re.escape(replies[-1]) + r"\s?",
                        trained_text(tokenizer, input_ids, last_only))


def test_a_tiny_phi3_trains_packed_reloads_and_exports_merged(tmp_path, tokenizers,
                                                              identity_data):
    from transformers import Phi3Config, Phi3ForCausalLM

    tokenizer = tokenizers["phi3.5"]  # the smallest vocabulary
    # Phi-4-mini's shape of Phi3: a quarter of each head without rotary, tied embeddings
    folder = save_tiny_model(Phi3ForCausalLM, Phi3Config, tokenizer, tmp_path / "tiny-phi3",
                             partial_rotary_factor=0.75, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id)
    trained = train_and_reload(load_plugins().registry, "phi3.5-mini-instruct", folder,
                               identity_data, tmp_path / "output", lora_dropout=0.0)
    assert trained.saved["packing"] is True  # the packing probe passed
    assert trained.saved["template"] == "phi3.5"
    adapter = (trained.result.checkpoint / "adapter_config.json").read_text()
    assert '"qkv_proj"' in adapter

    merged = export_merged(load_plugins().registry, trained, tmp_path / "merged")
    assert type(merged).__name__ == "Phi3ForCausalLM"
