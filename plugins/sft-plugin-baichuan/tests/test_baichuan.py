"""Baichuan plugin: the templates write the official prompt formats; only replies are trained;
every model type is registered, baichuan2-7b-chat as a converted (native Llama) type and the
others refused with their reason.

The masks are checked here with the Qwen2 tokenizer, given the reserved tokens as added special
tokens as Baichuan's vocabulary has them (ids 195/196 there): masks depend on the text, not on
the vocabulary. test_baichuan_native.py checks the real (converted) tokenizer against the
official one and the training ids against the official chat format.
"""

import re

import pytest
from sft_plugin_baichuan import BAICHUAN2_TEMPLATE, BAICHUAN_TEMPLATE, MODELS

from conftest import CONVERSATIONS as STANDARD
from conftest import TOKENIZERS
from sdk.plugins import load_plugins
from sdk.templates.engine import Template
from sdk.testing import assert_trained_spans

CONVERSATIONS = {name: STANDARD[name]
                 for name in ("single turn", "with system", "multi turn", "chinese")}

# Baichuan-13B-Chat, modeling_baichuan.py `_build_chat_input`: [195] query [196] reply [eos]
# per turn, [196] to prompt a reply; <reserved_102>/<reserved_103> are ids 195/196 in its
# vocabulary. (A system prompt, which the official code rejects, is plain text in front.)
BAICHUAN_EXPECTED = {
    "single turn": "<reserved_102>Who are you?",
    "with system": "You are Ferret.<reserved_102>Who are you?",
    "multi turn": "<reserved_102>Hi<reserved_103>Hello! How can I help?</s>"
                  "<reserved_102>Tell me a joke.<reserved_103>Why did the LLM cross the road?</s>",
    "chinese": "你是一个诗人。<reserved_102>床前明月光<reserved_103>疑是地上霜。</s>",
}
# Baichuan2, generation_utils.py `build_chat_input`: encode(system), then [195] query [196]
# reply per turn with no eos between turns, [196] to prompt a reply; <reserved_106> /
# <reserved_107> are ids 195/196 in the Baichuan2 vocabulary. The final </s> is the training
# target that ends the conversation (ms-swift's "baichuan" template: chat_sep [], suffix eos).
BAICHUAN2_EXPECTED = {
    "single turn": "<reserved_106>Who are you?",
    "with system": "You are Ferret.<reserved_106>Who are you?",
    "multi turn": "<reserved_106>Hi<reserved_107>Hello! How can I help?"
                  "<reserved_106>Tell me a joke.<reserved_107>Why did the LLM cross the road?</s>",
    "chinese": "你是一个诗人。<reserved_106>床前明月光<reserved_107>疑是地上霜。</s>",
}
EXPECTED = {"baichuan": (BAICHUAN_EXPECTED, "<reserved_103>"),
            "baichuan2": (BAICHUAN2_EXPECTED, "<reserved_107>")}
MODEL_TYPE_OF = {"baichuan": "baichuan-13b-chat", "baichuan2": "baichuan2-7b-chat"}


@pytest.fixture(scope="module")
def tokenizer():
    """Qwen2's tokenizer with Baichuan's turn tokens and eos as single special tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    tok.add_special_tokens({"additional_special_tokens": [
        "<reserved_102>", "<reserved_103>", "<reserved_106>", "<reserved_107>", "</s>"]})
    return tok


def test_every_model_type_is_registered_with_its_template_and_hub_ids():
    registry = load_plugins().registry
    assert len(MODELS) == 5
    for model_type in MODELS:
        spec = registry.get("models", model_type)
        assert re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)*", model_type)
        assert registry.get("templates", spec.template).name == spec.template
        assert spec.hub_ids["modelscope"].startswith("baichuan-inc/")
        assert spec.hub_ids["huggingface"].startswith("baichuan-inc/")
        assert not spec.requires_remote_code
        if model_type == "baichuan2-7b-chat":  # converted to Llama: LoRA where W_pack was
            assert not spec.unsupported and spec.converted_to == "llama"
            assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")
            assert spec.loader == "sft_plugin_baichuan.native:load"
        else:
            assert "baichuan2-7b-chat" in spec.unsupported and spec.loader is None
    assert registry.get("models", "baichuan-13b-chat").template == "baichuan"
    assert registry.get("templates", "baichuan") == BAICHUAN_TEMPLATE
    assert registry.get("templates", "baichuan2") == BAICHUAN2_TEMPLATE


@pytest.mark.parametrize("template", EXPECTED)
@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_render_equals_the_official_format(render_cli, template, name, generation_prompt):
    expected, assistant_token = EXPECTED[template]
    text = render_cli(MODEL_TYPE_OF[template], CONVERSATIONS[name], generation_prompt)
    assert text == expected[name] + (assistant_token if generation_prompt else "")


@pytest.mark.parametrize("spec, replies, last_only", [
    (BAICHUAN_TEMPLATE, ["Hello! How can I help?</s>", "Why did the LLM cross the road?</s>"],
     ["Why did the LLM cross the road?</s>"]),
    # Baichuan2: no eos after a reply of the history; the last reply ends with </s>.
    (BAICHUAN2_TEMPLATE, ["Hello! How can I help?", "Why did the LLM cross the road?</s>"],
     ["Why did the LLM cross the road?</s>"]),
])
def test_only_the_replies_and_their_end_marker_are_trained(tokenizer, spec, replies, last_only):
    template = Template(spec)  # Baichuan's </s> from the spec, not Qwen2's eos
    messages = CONVERSATIONS["multi turn"]
    assert_trained_spans(template, tokenizer, messages, replies)
    assert_trained_spans(template, tokenizer, messages, last_only, loss_scope="last")
    input_ids, _ = template.encode(tokenizer, messages)
    rendered = template.render(messages)
    for token in ("<reserved_102>", "<reserved_106>", "</s>"):
        if token in rendered:  # one id each, as in Baichuan's vocabulary
            assert tokenizer.convert_tokens_to_ids(token) in input_ids


def test_chinese_reply_and_system_prompt_are_placed(tokenizer):
    for spec in (BAICHUAN_TEMPLATE, BAICHUAN2_TEMPLATE):
        assert_trained_spans(Template(spec), tokenizer, CONVERSATIONS["chinese"],
                             ["疑是地上霜。</s>"])


def test_stop_words_end_a_reply():
    assert Template(BAICHUAN_TEMPLATE).stop_words() == ["</s>", "<reserved_102>"]
    assert Template(BAICHUAN2_TEMPLATE).stop_words() == ["</s>", "<reserved_106>"]
