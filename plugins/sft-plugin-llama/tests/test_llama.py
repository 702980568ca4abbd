"""Llama plugin: every model type is registered with hub ids and a template; the templates
render like the official chat templates (sdk.testing's parity check; `sdk template render` for the
dated and Chinese-Alpaca-2 prompts), encode to the tokenizer's own ids and train only the replies; a
tiny Llama trains and reloads."""

import hashlib
import json
import re
from datetime import datetime

import pytest
from sft_plugin_llama import CHINESE_ALPACA_2_SYSTEM, MODELS, TEMPLATES

from conftest import CONVERSATIONS, TOKENIZERS, save_tiny_model
from sdk.plugins import load_plugins
from sdk.testing import assert_template_parity, assert_trained_spans, train_and_reload

SPECS = {spec.name: spec for spec in TEMPLATES}
# template name -> (tokenizer folder, text between a reply and its end-of-turn marker)
TOKENIZER_OF = {"llama2": ("llama2", " "), "llama3": ("llama3", ""),
                "llama3.1": ("llama3", ""), "llama3.2": ("llama3", ""),
                "chinese-alpaca-2": ("llama2", "")}
TRAINED = ["multi turn", "chinese"]


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(TOKENIZERS / name) for name in ("llama2", "llama3")}


def test_every_model_type_is_registered_with_hub_ids_and_its_template():
    registry = load_plugins().registry
    assert len(MODELS) >= 13
    for model_type in MODELS:
        spec = registry.get("models", model_type)
        assert re.fullmatch(r"[a-z0-9][a-z0-9.]*(-[a-z0-9.]+)+", model_type), model_type
        assert spec.family == "llama" and spec.revision == "main"
        assert registry.get("templates", spec.template) in TEMPLATES
        assert set(spec.hub_ids) == {"huggingface", "modelscope"}
        assert all(re.fullmatch(r"[\w.-]+/[\w.-]+", repo) for repo in spec.hub_ids.values())
        assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")
        assert not spec.requires_remote_code and not spec.requires
    for name in SPECS:
        assert registry.get("templates", name) == SPECS[name]


def test_the_packaged_llama2_and_llama3_templates_are_the_tokenizers_own(tokenizers):
    assert SPECS["llama2"].jinja == tokenizers["llama2"].chat_template
    assert SPECS["llama3"].jinja == tokenizers["llama3"].chat_template


@pytest.mark.parametrize("template", ["llama2", "llama3", "llama3.1", "llama3.2"])
def test_render_equals_the_official_chat_template(tokenizers, template):
    assert_template_parity(SPECS[template], tokenizers[TOKENIZER_OF[template][0]],
                           CONVERSATIONS.values(), chat_template=SPECS[template].jinja)


def test_llama3_3_has_the_llama3_1_template_byte_for_byte():
    # sha256 of llama.cpp's models/templates/meta-llama-Llama-3.3-70B-Instruct.jinja (the
    # chat_template of meta-llama/Llama-3.3-70B-Instruct), fork ye-NX/llama.cpp commit b354d7c9
    official = "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65"
    assert hashlib.sha256(SPECS["llama3.1"].jinja.encode()).hexdigest() == official
    assert MODELS["llama3.3-70b-instruct"][0] == "llama3.1"


def test_llama3_1_and_3_2_add_the_dated_system_block(render_cli):
    """The format of meta-llama/Llama-3.1-8B-Instruct (and 3.3-70B-Instruct) and
    Llama-3.2-1B-Instruct's tokenizer_config.json: 3.1 and 3.3 date every prompt 26 Jul 2024,
    3.2 dates it today."""
    messages = [{"role": "user", "content": "Hi"}]
    for model_type, date in [("llama3.1-70b-instruct", "26 Jul 2024"),
                             ("llama3.3-70b-instruct", "26 Jul 2024"),
                             ("llama3.2-3b-instruct", datetime.now().strftime("%d %b %Y"))]:
        assert render_cli(model_type, messages, True) == (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")


# Chinese-Alpaca-2 ships no chat template; its prompt is built in ymcui/Chinese-LLaMA-Alpaca-2
# scripts/inference/gradio_demo.py (TEMPLATE_WITH_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPT,
# " " + response + "</s>", then "<s>" + "[INST] {instruction} [/INST]" for later turns).
CHINESE_ALPACA_2_EXPECTED = {
    "single turn": "<s>[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n"
                   "<</SYS>>\n\nWho are you? [/INST]",
    "with system": "<s>[INST] <<SYS>>\nYou are Ferret.\n<</SYS>>\n\nWho are you? [/INST]",
    "multi turn": "<s>[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n"
                  "<</SYS>>\n\nHi [/INST] Hello! How can I help?</s>"
                  "<s>[INST] Tell me a joke. [/INST] Why did the LLM cross the road?</s>",
    "multi turn with system": "<s>[INST] <<SYS>>\nYou are Ferret.\n<</SYS>>\n\nHi [/INST] "
                              "Hello!</s><s>[INST] Who are you? [/INST]",
    "chinese": "<s>[INST] <<SYS>>\n你是一个诗人。\n<</SYS>>\n\n床前明月光 [/INST] 疑是地上霜。</s>",
}


@pytest.mark.parametrize("model_type", ["chinese-alpaca-2-7b", "chinese-llama-2-13b"])
@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chinese_alpaca_2_renders_its_projects_prompt(render_cli, model_type, name,
                                                      generation_prompt):
    assert SPECS["chinese-alpaca-2"].default_system == CHINESE_ALPACA_2_SYSTEM
    text = render_cli(model_type, CONVERSATIONS[name], generation_prompt)
    assert text == CHINESE_ALPACA_2_EXPECTED[name]


@pytest.mark.parametrize("template", list(TOKENIZER_OF))
@pytest.mark.parametrize("name", TRAINED)
def test_training_ids_equal_the_tokenizers_and_only_replies_train(tokenizers, template, name):
    folder, gap = TOKENIZER_OF[template]
    tokenizer, spec, messages = tokenizers[folder], SPECS[template], CONVERSATIONS[name]
    replies = [m["content"] + gap + spec.assistant_suffix
               for m in messages if m["role"] == "assistant"]
    assert_trained_spans(spec, tokenizer, messages, replies)
    assert_trained_spans(spec, tokenizer, messages, replies[-1:], loss_scope="last")


def test_a_tiny_llama_trains_and_reloads_to_the_same_logits(tmp_path, tokenizers):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizers["llama3"]
    model_dir = save_tiny_model(LlamaForCausalLM, LlamaConfig, tokenizer, tmp_path / "tiny-llama3",
                                tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": conversation}, ensure_ascii=False) + "\n"
                            for conversation in (CONVERSATIONS["multi turn"],
                                                 CONVERSATIONS["chinese"]) * 2), encoding="utf-8")

    trained = train_and_reload(load_plugins().registry, "llama3.1-8b-instruct", model_dir, data,
                               tmp_path / "output")
    assert trained.result.checkpoint.name == "checkpoint-2"
    saved = trained.saved
    assert saved["model_type"] == "llama3.1-8b-instruct" and saved["template"] == "llama3.1"
    assert trained.template.spec.name == "llama3.1"
