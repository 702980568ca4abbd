"""InternLM plugin: the templates write the official prompt formats; only replies are trained;
every model type is registered as converted to Llama (no remote code); a tiny model already in
the Llama layout (as InternLM v1 copies converted by others are) trains with the internlm
template and reloads to the same logits.

Here the rendering is checked against literal strings of the official formats and the masks
with the Qwen2 tokenizer (which has <|im_start|>/<|im_end|>), given InternLM's <s>, </s> and
<eoa> as added special tokens: masks depend on the text, not on the vocabulary. The real
tokenizers, converted from the official files, are compared with the official ones in
test_internlm_native.py.
"""

import json
import re

import pytest
from sft_plugin_internlm import (
    INTERNLM2_CHAT_TEMPLATE,
    INTERNLM2_TEMPLATE,
    INTERNLM_SYSTEM,
    INTERNLM_TEMPLATE,
    MODELS,
)

from conftest import CONVERSATIONS as STANDARD
from conftest import TOKENIZERS, save_tiny_model
from sdk.plugins import load_plugins
from sdk.templates.engine import Template
from sdk.testing import assert_trained_spans, train_and_reload

CONVERSATIONS = {
    **{name: STANDARD[name] for name in ("single turn", "with system", "multi turn", "chinese")},
    "empty system": [{"role": "system", "content": ""}, {"role": "user", "content": "x"}],
}

# InternLM v1: modeling_internlm.py `build_inputs` of internlm/internlm-chat-7b (revision
# 739d3699446ad35bff7123c47e1e54bc9acdf79c): "<s><|System|>:{meta_instruction}\n" (only "<s>"
# when it is empty), "<|User|>:{query}\n<|Bot|>:{reply}<eoa>\n" per turn, "<|User|>:{query}\n"
# + "<|Bot|>:" to prompt; `chat()` passes INTERNLM_SYSTEM as the meta instruction by default.
INTERNLM_EXPECTED = {
    "single turn": f"<s><|System|>:{INTERNLM_SYSTEM}\n<|User|>:Who are you?\n",
    "with system": "<s><|System|>:You are Ferret.\n<|User|>:Who are you?\n",
    "multi turn": f"<s><|System|>:{INTERNLM_SYSTEM}\n<|User|>:Hi\n"
                  "<|Bot|>:Hello! How can I help?<eoa>\n<|User|>:Tell me a joke.\n"
                  "<|Bot|>:Why did the LLM cross the road?<eoa>\n",
    "chinese": "<s><|System|>:你是一个诗人。\n<|User|>:床前明月光\n<|Bot|>:疑是地上霜。<eoa>\n",
    "empty system": "<s><|User|>:x\n",
}
# InternLM2: the chat_template of internlm/internlm2-chat-7b tokenizer_config.json, which adds
# no system turn of its own. (An empty system turn is kept, as the chat_template keeps it.)
INTERNLM2_EXPECTED = {
    "single turn": "<s><|im_start|>user\nWho are you?<|im_end|>\n",
    "with system": "<s><|im_start|>system\nYou are Ferret.<|im_end|>\n"
                   "<|im_start|>user\nWho are you?<|im_end|>\n",
    "multi turn": "<s><|im_start|>user\nHi<|im_end|>\n"
                  "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                  "<|im_start|>user\nTell me a joke.<|im_end|>\n"
                  "<|im_start|>assistant\nWhy did the LLM cross the road?<|im_end|>\n",
    "chinese": "<s><|im_start|>system\n你是一个诗人。<|im_end|>\n"
               "<|im_start|>user\n床前明月光<|im_end|>\n"
               "<|im_start|>assistant\n疑是地上霜。<|im_end|>\n",
    "empty system": "<s><|im_start|>system\n<|im_end|>\n<|im_start|>user\nx<|im_end|>\n",
}
# internlm2-chat: the same, with the default meta instruction of modeling_internlm2.py
# `chat()` as the system turn when none is given
INTERNLM2_CHAT_EXPECTED = {
    name: text.replace("<s>", f"<s><|im_start|>system\n{INTERNLM_SYSTEM}<|im_end|>\n")
    if "system" not in text else text for name, text in INTERNLM2_EXPECTED.items()}
EXPECTED = {"internlm": (INTERNLM_EXPECTED, "<|Bot|>:"),
            "internlm2": (INTERNLM2_EXPECTED, "<|im_start|>assistant\n"),
            "internlm2-chat": (INTERNLM2_CHAT_EXPECTED, "<|im_start|>assistant\n")}
MODEL_TYPES_OF = {"internlm": ["internlm-chat-7b"],
                  "internlm2": ["internlm2-chat-7b", "internlm2-chat-20b", "internlm2.5-7b-chat"]}
@pytest.fixture(scope="module")
def tokenizer():
    """Qwen2's tokenizer with InternLM's <s>, </s> and <eoa> as single special tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>",
                            "additional_special_tokens": ["<eoa>"]})
    return tok


def test_every_model_type_is_registered_with_its_template_and_hub_ids():
    registry = load_plugins().registry
    assert sorted(MODELS) == sorted(sum(MODEL_TYPES_OF.values(), []))
    for template, model_types in MODEL_TYPES_OF.items():
        for model_type in model_types:
            spec = registry.get("models", model_type)
            assert re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)*", model_type)
            assert spec.template == template
            assert registry.get("templates", template).name == template
            assert spec.hub_ids["modelscope"].startswith("Shanghai_AI_Laboratory/")
            assert spec.hub_ids["huggingface"].startswith("internlm/")
            assert not spec.requires_remote_code and spec.converted_to == "llama"
            assert spec.loader == "sft_plugin_internlm.native:load"
            assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")
    assert registry.get("templates", "internlm") == INTERNLM_TEMPLATE
    assert registry.get("templates", "internlm2") == INTERNLM2_TEMPLATE
    assert registry.get("templates", "internlm2-chat") == INTERNLM2_CHAT_TEMPLATE


@pytest.mark.parametrize("template", EXPECTED)
@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_render_equals_the_official_format(render_cli, run_cli, tmp_path, template, name,
                                           generation_prompt):
    expected, assistant_prefix = EXPECTED[template]
    expected = expected[name] + (assistant_prefix if generation_prompt else "")
    for model_type in MODEL_TYPES_OF.get(template, []):
        assert render_cli(model_type, CONVERSATIONS[name], generation_prompt) == expected
    messages = tmp_path / "by-name.json"
    messages.write_text(json.dumps(CONVERSATIONS[name], ensure_ascii=False), encoding="utf-8")
    rendered = run_cli("template", "render", template, "--messages", messages,
                       *(["--add-generation-prompt"] if generation_prompt else []))
    assert rendered.exit_code == 0 and rendered.stdout == expected


@pytest.mark.parametrize("spec, marker", [(INTERNLM_TEMPLATE, "<eoa>"),
                                          (INTERNLM2_TEMPLATE, "<|im_end|>"),
                                          (INTERNLM2_CHAT_TEMPLATE, "<|im_end|>")])
@pytest.mark.parametrize("name", ["multi turn", "chinese"])
def test_only_the_replies_and_their_end_marker_are_trained(tokenizer, spec, marker, name):
    messages = CONVERSATIONS[name]
    assert Template.for_tokenizer(spec, tokenizer).render(messages) == EXPECTED[spec.name][0][name]
    replies = [m["content"] + marker for m in messages if m["role"] == "assistant"]
    assert_trained_spans(spec, tokenizer, messages, replies)
    assert_trained_spans(spec, tokenizer, messages, replies[-1:], loss_scope="last")


def test_stop_words_end_a_reply():
    assert Template(INTERNLM_TEMPLATE).stop_words() == ["<eoa>", "</s>"]
    assert Template(INTERNLM2_TEMPLATE).stop_words() == ["<|im_end|>", "</s>"]
    assert Template(INTERNLM2_CHAT_TEMPLATE).stop_words() == ["<|im_end|>", "</s>"]


@pytest.fixture(scope="module")
def tiny_internlm_v1_dir(tmp_path_factory, tokenizer):
    """InternLM v1 in the Llama layout (q_proj/k_proj/v_proj/o_proj), as copies converted by
    others are: a tiny random Llama with the tokenizer above. It loads as it is."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return save_tiny_model(LlamaForCausalLM, LlamaConfig, tokenizer,
                           tmp_path_factory.mktemp("tiny-internlm"), num_key_value_heads=4,
                           tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.convert_tokens_to_ids("<eoa>"),
                           pad_token_id=tokenizer.pad_token_id)


def test_train_lora_on_q_k_v_and_reload_gives_the_same_logits(tiny_internlm_v1_dir, tmp_path,
                                                              identity_data):
    trained = train_and_reload(load_plugins().registry, "internlm-chat-7b", tiny_internlm_v1_dir,
                               identity_data, tmp_path)
    assert trained.saved["template"] == "internlm"
    assert trained.template.spec is INTERNLM_TEMPLATE
    adapter = json.loads((trained.result.checkpoint / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
