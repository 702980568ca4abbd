"""Qwen plugin: model types, the official chat templates rendered and encoded like the Qwen2
tokenizer renders them, Qwen v1's prompt format, the packages Qwen v1 needs, and a tiny Qwen2
model trained, saved and reloaded (Qwen v1 against its official code: test_qwen_native.py)."""

import json
import re

import pytest
from sft_plugin_qwen import (
    QWEN1_5,
    QWEN1_5_TEMPLATE,
    QWEN2,
    QWEN2_5,
    QWEN2_5_JINJA,
    QWEN2_5_TEMPLATE,
    QWEN_JINJA,
    QWEN_TEMPLATE,
    QWEN_V1,
)

from conftest import CHINESE_SECOND_TURN, TOKENIZERS, save_tiny_model, trained_text
from conftest import CONVERSATIONS as STANDARD
from sdk.plugins import load_plugins
from sdk.templates.engine import Template
from sdk.testing import assert_template_parity, train_and_reload

QWEN2_TOKENIZER = TOKENIZERS / "qwen2"
TEMPLATES = {"qwen": QWEN_TEMPLATE, "qwen1.5": QWEN1_5_TEMPLATE, "qwen2.5": QWEN2_5_TEMPLATE}
MODEL_TYPE_PER_TEMPLATE = {
    "qwen": ["qwen-7b-chat", "qwen2-7b-instruct"],
    "qwen1.5": ["qwen1.5-7b-chat"],
    "qwen2.5": ["qwen2.5-7b-instruct"],
}
CONVERSATIONS = {
    "single turn": STANDARD["single turn"],
    "with system": [*STANDARD["with system"], {"role": "assistant", "content": "I am Ferret."}],
    "multi turn": STANDARD["multi turn"],
    "chinese": [*STANDARD["chinese"], *CHINESE_SECOND_TURN],
    "chinese without system": [{"role": "user", "content": "你好"},
                               {"role": "assistant", "content": "你好！有什么可以帮你？"}],
}
WITH_REPLIES = [name for name, messages in CONVERSATIONS.items()
                if any(m["role"] == "assistant" for m in messages)]

# tokenizer_config.json of Qwen/Qwen2-72B-Instruct (and Qwen2-7B-Instruct), "chat_template" as
# it stands in the JSON file (quoted from the model repo in instructkr/LogicKor pull request 27).
OFFICIAL_QWEN2_INSTRUCT_JSON = (
    r'''"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}'''
    r'''{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}'''
    r'''{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}'''
    r'''{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"'''
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


# --- registrations ------------------------------------------------------------------------------

def test_every_model_type_is_registered_with_its_template_and_hub_ids(registry):
    model_types = [*QWEN_V1, *QWEN1_5, *QWEN2, *QWEN2_5]
    assert len(model_types) == len(set(model_types)) >= 25
    for model_type in model_types:
        assert re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)+", model_type), model_type
        spec = registry.get("models", model_type)
        assert spec.family == "qwen"
        assert registry.get("templates", spec.template) == TEMPLATES[spec.template]
        assert set(spec.hub_ids) == {"huggingface", "modelscope"}
        assert all(hub_id.startswith("Qwen/") for hub_id in spec.hub_ids.values())
        assert spec.revision == "main"


@pytest.mark.parametrize("model_type, hub_id, template", [
    ("qwen-7b-chat", "Qwen/Qwen-7B-Chat", "qwen"),
    ("qwen-14b-chat-int4", "Qwen/Qwen-14B-Chat-Int4", "qwen"),
    ("qwen1.5-0.5b-chat", "Qwen/Qwen1.5-0.5B-Chat", "qwen1.5"),
    ("qwen2-1.5b-instruct", "Qwen/Qwen2-1.5B-Instruct", "qwen"),
    ("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", "qwen2.5"),
])
def test_hub_ids_and_templates_per_generation(registry, model_type, hub_id, template):
    spec = registry.get("models", model_type)
    assert spec.hub_ids["huggingface"] == spec.hub_ids["modelscope"] == hub_id
    assert spec.template == template


def test_qwen_v1_and_its_gptq_types_are_converted_to_qwen2(registry):
    for model_type in QWEN_V1:
        spec = registry.get("models", model_type)
        # optimum/gptqmodel are checked by the GPTQ loader (--quantization-bit works without)
        assert spec.requires == ("tiktoken",)
        assert not spec.requires_remote_code and spec.converted_to == "qwen2"
        assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")
    for model_type in [*QWEN1_5, *QWEN2, *QWEN2_5]:
        spec = registry.get("models", model_type)
        assert not spec.requires_remote_code and not spec.requires
        assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")


def test_qwen2_architecture_is_native_to_transformers():
    import transformers

    assert hasattr(transformers, "Qwen2ForCausalLM")


# --- template text ------------------------------------------------------------------------------

def test_qwen_template_is_the_official_qwen2_instruct_text(tokenizer):
    assert QWEN_JINJA == json.loads(OFFICIAL_QWEN2_INSTRUCT_JSON)
    # The tokenizer here carries Qwen1.5's template, whose default system lacks the period.
    assert tokenizer.chat_template.replace(
        "You are a helpful assistant<", "You are a helpful assistant.<") == QWEN_JINJA


def test_qwen1_5_template_is_the_tokenizers_own(tokenizer):
    assert QWEN1_5_TEMPLATE.jinja == tokenizer.chat_template


def test_qwen2_5_template_has_its_default_system_and_tool_calls(tokenizer):
    tools = [{"type": "function", "function": {"name": "now", "description": "The time",
                                               "parameters": {"type": "object"}}}]
    text = tokenizer.apply_chat_template(CONVERSATIONS["single turn"], tools=tools,
                                         tokenize=False, chat_template=QWEN2_5_JINJA)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
                           "You are a helpful assistant.\n\n# Tools\n\n")
    assert '\n<tools>\n{"type": "function", "function": {"name": "now"' in text
    assert ('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
            '</tool_call><|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n') in text


@pytest.mark.parametrize("template, expected", [
    ("qwen", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
             "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("qwen1.5", "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("qwen2.5", "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
])
def test_default_system_prompts_literally(template, expected):
    messages = [{"role": "user", "content": "Hi"}]
    assert Template(TEMPLATES[template]).render(messages, True) == expected


def test_qwen_v1_prompt_equals_make_context():
    """Qwen/Qwen-7B-Chat qwen_generation_utils.make_context (chat_format "chatml"), with
    QWenLMHeadModel.chat's default system "You are a helpful assistant.":
    raw_text = f"{im_start}system\\n{system}{im_end}"
      + for each past turn: f"\\n{im_start}user\\n{q}{im_end}"
                            f"\\n{im_start}assistant\\n{r}{im_end}"
      + f"\\n{im_start}user\\n{query}{im_end}\\n{im_start}assistant\\n"
    """
    def make_context(query, history, system="You are a helpful assistant."):
        raw_text = f"<|im_start|>system\n{system}<|im_end|>"
        for turn_query, turn_response in history:
            raw_text += (f"\n<|im_start|>user\n{turn_query}<|im_end|>"
                         f"\n<|im_start|>assistant\n{turn_response}<|im_end|>")
        return raw_text + f"\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"

    template = Template(QWEN_TEMPLATE)
    assert template.render([{"role": "user", "content": "你好"}], True) == make_context("你好", [])
    messages = [{"role": "system", "content": "You are Ferret."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Who are you?"}]
    assert template.render(messages, True) == make_context(
        "Who are you?", [("Hi", "Hello!")], system="You are Ferret.")
    # Training text (QwenLM/Qwen finetune.py): every turn, the last included, ends "<|im_end|>\n".
    prompt = make_context("Hi", [], system="You are Ferret.")
    assert template.render(messages[:3]) == prompt + "Hello!<|im_end|>\n"


# --- rendering, like the tokenizer -------------------------------------------------------------

@pytest.mark.parametrize("template", TEMPLATES)
def test_render_equals_apply_chat_template(registry, tokenizer, template):
    for model_type in MODEL_TYPE_PER_TEMPLATE[template]:
        assert registry.get("models", model_type).template == template
    assert_template_parity(TEMPLATES[template], tokenizer, CONVERSATIONS.values(),
                           chat_template=TEMPLATES[template].jinja)
    # Only the default system differs from the tokenizer's own template.
    same = [m for m in CONVERSATIONS.values()
            if template == "qwen1.5" or (template == "qwen" and m[0]["role"] == "system")]
    assert_template_parity(TEMPLATES[template], tokenizer, same)


# --- ids and loss masks -------------------------------------------------------------------------

@pytest.mark.parametrize("name", WITH_REPLIES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_ids_equal_the_tokenizers_and_only_replies_are_trained(tokenizer, template, name):
    messages = CONVERSATIONS[name]
    bound = Template.for_tokenizer(TEMPLATES[template], tokenizer)
    text = bound.render(messages)
    input_ids, labels = bound.encode(tokenizer, messages)
    assert input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert trained_text(tokenizer, input_ids, labels) == "".join(replies)
    _, last_only = bound.encode(tokenizer, messages, loss_scope="last")
    assert trained_text(tokenizer, input_ids, last_only) == replies[-1]


def test_stop_words_end_on_im_end_and_endoftext(tokenizer):
    for spec in TEMPLATES.values():
        assert Template.for_tokenizer(spec, tokenizer).stop_words() == [
            "<|im_end|>", "<|endoftext|>", "<|im_start|>"]


# --- packages -----------------------------------------------------------------------------------

def test_qwen_v1_names_the_package_its_conversion_needs(run_cli, tmp_path, identity_data,
                                                        monkeypatch):
    import importlib.util

    found = importlib.util.find_spec  # the plugin installs it: hide it, as if removed
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tiktoken" else found(name, *a))
    result = run_cli("sft", "--model-type", "qwen-7b-chat", "--dataset", identity_data,
                     "--model-id-or-path", tmp_path)  # no --trust-remote-code: none runs
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(
        "Model type 'qwen-7b-chat' needs the package(s) tiktoken: pip install tiktoken")


# --- a tiny Qwen2 model: train, save, reload ----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return save_tiny_model(Qwen2ForCausalLM, Qwen2Config, tokenizer,
                           tmp_path_factory.mktemp("tiny-qwen2"), tie_word_embeddings=True,
                           eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                           pad_token_id=tokenizer.pad_token_id)


def test_tiny_qwen2_trains_saves_and_reloads_to_the_same_logits(tiny_qwen2_dir, identity_data,
                                                                tmp_path, registry):
    model_type = "qwen2.5-0.5b-instruct"
    trained = train_and_reload(registry, model_type, tiny_qwen2_dir, identity_data,
                               tmp_path / "out", seed=0)
    result, saved = trained.result, trained.saved
    assert result.checkpoint.name == "checkpoint-2"
    assert (result.checkpoint / "adapter_model.safetensors").is_file()
    assert saved["model_type"] == model_type and saved["template"] == "qwen2.5"
    adapter = json.loads((result.checkpoint / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj"}
    assert trained.template.spec == QWEN2_5_TEMPLATE
