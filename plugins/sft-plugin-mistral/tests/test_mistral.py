"""Mistral plugin: registrations, the official templates (render with sdk.testing's parity
check, ids, loss masks) against the real Mistral tokenizers, and a few training steps on tiny
random Mistral / Mixtral models."""

import hashlib
import json
import re
from datetime import datetime

import pytest
from sft_plugin_mistral import (
    MISTRAL_NEMO_JINJA,
    MISTRAL_SMALL_2501_JINJA,
    MISTRAL_V01_JINJA,
    MISTRAL_V02_JINJA,
    MISTRAL_V03_JINJA,
    MODELS,
    TEMPLATES,
)

from conftest import (
    CHINESE_SECOND_TURN,
    LLAMA_CPP_CONVERSATION,
    TOKENIZERS,
    save_tiny_model,
    trained_text,
)
from conftest import CONVERSATIONS as STANDARD
from sdk.plugins import load_plugins
from sdk.templates.engine import IGNORE_INDEX, Template
from sdk.testing import assert_template_parity, train_and_reload

TEMPLATE_SPECS = {spec.name: spec for spec in TEMPLATES}

# model type -> (tokenizer folder, the official chat template that its hub repo ships).
# The v0.3 tokenizer files here carry no chat template and v0.2 / Mixtral use the V1
# tokenizer (same vocab as v0.1), so the official template text is set on the tokenizer, as
# the model's own tokenizer_config.json does.
TOKENIZER_OF = {
    "mistral-7b-instruct-v0.1": ("mistral-v0.1", MISTRAL_V01_JINJA),
    "mistral-7b-instruct-v0.2": ("mistral-v0.1", MISTRAL_V02_JINJA),
    "mistral-7b-instruct-v0.3": ("mistral-v0.3", MISTRAL_V03_JINJA),
    "mixtral-8x7b-instruct-v0.1": ("mistral-v0.1", MISTRAL_V02_JINJA),
    # Nemo's Tekken tokenizer cannot be had offline: v0.3's stands in (the same <s>, </s>,
    # [INST] and [/INST] control tokens), so its ids here are v0.3's, not Tekken's
    "mistral-nemo-instruct-2407": ("mistral-v0.3", MISTRAL_NEMO_JINJA),
    # likewise for Mistral Small 3's (Tekken V7), with its [SYSTEM_PROMPT] control tokens added
    "mistral-small-24b-instruct-2501": ("mistral-v0.3", MISTRAL_SMALL_2501_JINJA),
}
ADDED_TOKENS = {"mistral-small-24b-instruct-2501": ["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]}
NO_SYSTEM = {"mistral-7b-instruct-v0.1"}  # the v0.1 template has no system role

CONVERSATIONS = {
    **STANDARD,
    "multi turn with system": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello!"},
                               {"role": "user", "content": "And now?"}],
    "chinese": [*STANDARD["chinese"], *CHINESE_SECOND_TURN],
}


def conversations_for(model_type):
    return {name: messages for name, messages in CONVERSATIONS.items()
            if not (model_type in NO_SYSTEM and messages[0]["role"] == "system")}


def cases():
    return [(model_type, name) for model_type in MODELS for name in conversations_for(model_type)]


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    loaded = {}

    def get(model_type):
        if model_type not in loaded:
            folder, jinja = TOKENIZER_OF[model_type]
            tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / folder)
            tokenizer.add_special_tokens(
                {"additional_special_tokens": ADDED_TOKENS.get(model_type, [])})
            tokenizer.chat_template = jinja
            loaded[model_type] = tokenizer
        return loaded[model_type]

    return get


# --- registrations ---------------------------------------------------------------------------

def test_every_model_type_is_registered_with_its_template_and_hub_ids():
    registry = load_plugins().registry
    assert set(MODELS) == {"mistral-7b-instruct-v0.1", "mistral-7b-instruct-v0.2",
                           "mistral-7b-instruct-v0.3", "mistral-nemo-instruct-2407",
                           "mistral-small-24b-instruct-2501", "mixtral-8x7b-instruct-v0.1"}
    for model_type in MODELS:
        spec = registry.get("models", model_type)
        assert re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)*", model_type)
        assert spec.family == "mistral"
        assert registry.get("templates", spec.template) is TEMPLATE_SPECS[spec.template]
        assert spec.hub_ids["huggingface"].startswith("mistralai/")
        assert spec.hub_ids["modelscope"].split("/")[0] in {"AI-ModelScope", "LLM-Research",
                                                            "mistralai"}
        assert spec.hub_ids["huggingface"].split("/")[1].lower() == \
            spec.hub_ids["modelscope"].split("/")[1].lower()
        assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")
        assert not spec.requires_remote_code and spec.requires == ()


def test_templates_end_replies_with_eos_and_know_their_special_tokens():
    for spec in TEMPLATES:
        assert spec.assistant_suffix == "</s>"
        assert spec.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}


def test_the_v01_template_is_the_one_shipped_with_the_v01_tokenizer():
    shipped = (TOKENIZERS / "mistral-v0.1" / "chat_template.jinja").read_text(encoding="utf-8")
    assert MISTRAL_V01_JINJA == shipped


def test_the_nemo_template_is_llama_cpps_copy_of_the_official_one():
    # sha256 of ggerganov/llama.cpp models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja
    # (commit 7b5e0803), the chat_template of mistralai/Mistral-Nemo-Instruct-2407
    assert hashlib.sha256(MISTRAL_NEMO_JINJA.encode()).hexdigest() == (
        "e4676cb56dffea7782fd3e2b577cfaf1e123537e6ef49b3ec7caa6c095c62272")


def test_the_small_2501_template_writes_the_default_system_prompt_dated_today(render_cli):
    # sha256 of the template as floneum/floneum models/kalosm-llama/src/chat_template.rs quotes
    # it, and that test's expected output (there checked against transformers)
    assert hashlib.sha256(MISTRAL_SMALL_2501_JINJA.encode()).hexdigest() == (
        "3934d199bfe5b6fab5cba1b5f8ee475e8d5738ac315f21cb09545b4e665cc005")
    messages = [{"role": "user", "content": "Hello, how are you?"},
                {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
                {"role": "user", "content": "I'd like to show off how chat templating works!"}]
    today = datetime.now().strftime("%Y-%m-%d")
    assert render_cli("mistral-small-24b-instruct-2501", messages) == (
        "<s>[SYSTEM_PROMPT]You are Mistral Small 3, a Large Language Model (LLM) created by "
        "Mistral AI, a French startup headquartered in Paris.\nYour knowledge base was last "
        f"updated on 2023-10-01. The current date is {today}.\n\nWhen you're not sure about "
        "some information, you say that you don't have the information and don't make up "
        "anything.\nIf the user's question is not clear, ambiguous, or does not provide enough "
        "context for you to accurately answer the question, you do not try to answer it right "
        "away and you rather ask the user to clarify their request (e.g. \"What are some good "
        "restaurants around me?\" => \"Where are you?\" or \"When is the next flight to "
        "Tokyo\" => \"Where do you travel from?\")[/SYSTEM_PROMPT][INST]Hello, how are you?"
        "[/INST]I'm doing great. How can I help you today?</s>[INST]I'd like to show off how "
        "chat templating works![/INST]")
    assert render_cli("mistral-small-24b-instruct-2501", CONVERSATIONS["with system"], True) == (
        "<s>[SYSTEM_PROMPT]You are Ferret.[/SYSTEM_PROMPT][INST]Who are you?[/INST]")


# The expected strings of llama.cpp tests/test-chat-template.cpp for these official templates
# (bos_token "" and eos_token "</s>"; the reply "   I am an assistant   " keeps its spaces in
# v0.2 and Nemo and is trimmed in v0.3; v0.3 and Nemo move the system prompt into the last user
# turn, and Nemo puts no space around [INST] / [/INST]).
@pytest.mark.parametrize("name, expected", [
    ("mistral-v0.2", " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] "
                     "Who are you [/INST]    I am an assistant   </s> [INST] Another question "
                     "[/INST]"),
    ("mistral-v0.3", "[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST] I am an "
                     "assistant</s>[INST] You are a helpful assistant\n\nAnother question[/INST]"),
    ("mistral-nemo", "[INST]Hello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an assistant   "
                     "</s>[INST]You are a helpful assistant\n\nAnother question[/INST]"),
])
def test_official_templates_render_as_llama_cpp_records_them(name, expected):
    template = Template(TEMPLATE_SPECS[name], {"bos_token": "", "eos_token": "</s>"})
    assert template.render(LLAMA_CPP_CONVERSATION) == expected


# --- rendering, ids and loss masks against the real tokenizers -------------------------------

@pytest.mark.parametrize("model_type", MODELS)
def test_the_model_types_template_renders_as_the_tokenizers_chat_template(tokenizers,
                                                                          model_type):
    template = load_plugins().registry.get("models", model_type).template
    assert_template_parity(TEMPLATE_SPECS[template], tokenizers(model_type),
                           conversations_for(model_type).values())


def test_the_v01_template_refuses_a_system_prompt(run_cli, tmp_path):
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(CONVERSATIONS["with system"]), encoding="utf-8")
    result = run_cli("template", "render", "--model-type", "mistral-7b-instruct-v0.1",
                     "--messages", path)
    assert result.exit_code == 1
    assert "roles must alternate" in result.stderr


def test_v03_puts_the_system_prompt_into_the_last_user_turn(tokenizers):
    messages = CONVERSATIONS["multi turn with system"]
    text = Template.for_tokenizer(TEMPLATE_SPECS["mistral-v0.3"],
                                  tokenizers("mistral-7b-instruct-v0.3")).render(messages)
    assert text == "<s>[INST] Hi[/INST] Hello!</s>[INST] Be brief.\n\nAnd now?[/INST]"
    ids = tokenizers("mistral-7b-instruct-v0.3")(text, add_special_tokens=False)["input_ids"]
    tokens = tokenizers("mistral-7b-instruct-v0.3").convert_ids_to_tokens(ids)
    assert tokens.count("[INST]") == 2 and tokens.count("[/INST]") == 2  # control tokens
    # Official behaviour, kept as is: a conversation that ends with a reply (every training
    # sample) renders without the system prompt, since no user turn is the last message.
    with_reply = [*messages, {"role": "assistant", "content": "Done."}]
    assert "Be brief." not in Template(TEMPLATE_SPECS["mistral-v0.3"]).render(with_reply)


@pytest.mark.parametrize("model_type, name", [
    (model_type, name) for model_type, name in cases()
    if any(m["role"] == "assistant" for m in CONVERSATIONS[name])])
def test_ids_equal_the_tokenizers_and_only_replies_carry_loss(tokenizers, model_type, name):
    tokenizer = tokenizers(model_type)
    messages = CONVERSATIONS[name]
    spec = TEMPLATE_SPECS[load_plugins().registry.get("models", model_type).template]
    template = Template.for_tokenizer(spec, tokenizer)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert template.render(messages) == rendered

    input_ids, labels = template.encode(tokenizer, messages)
    assert input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert labels[0] == IGNORE_INDEX
    # Each reply and its </s>; the space that the template puts before a reply may come along,
    # as sentencepiece merges it into the reply's first word ("▁Why").
    replies = [re.escape(m["content"].strip() + "</s>") for m in messages
               if m["role"] == "assistant"]
    trained = trained_text(tokenizer, input_ids, labels)
    assert re.fullmatch("".join(" ?" + reply for reply in replies), trained), trained

    last_ids, last_labels = template.encode(tokenizer, messages, loss_scope="last")
    assert last_ids == input_ids
    assert re.fullmatch(" ?" + replies[-1], trained_text(tokenizer, last_ids, last_labels))


# --- a few training steps on tiny random models of both architectures ------------------------

def tiny_classes(architecture):
    """The model and config classes of a tiny model of the architecture, and its extra settings."""
    if architecture == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM

        return MixtralForCausalLM, MixtralConfig, dict(num_local_experts=2, num_experts_per_tok=1)
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM, MistralConfig, {}


@pytest.mark.parametrize("model_type, architecture", [
    ("mistral-7b-instruct-v0.3", "mistral"),
    ("mixtral-8x7b-instruct-v0.1", "mixtral"),
])
def test_train_a_tiny_model_then_reload_the_checkpoint_to_the_same_logits(
        tmp_path, tokenizers, identity_data, model_type, architecture):
    tokenizer = tokenizers(model_type)
    model_class, config_class, extra = tiny_classes(architecture)
    tiny = save_tiny_model(model_class, config_class, tokenizer, tmp_path / "tiny",
                           bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, **extra)

    registry = load_plugins().registry
    trained = train_and_reload(registry, model_type, tiny, identity_data, tmp_path / "output",
                               logging_steps=1)
    assert trained.result.checkpoint.name == "checkpoint-2"
    saved = trained.saved
    assert saved["model_type"] == model_type
    assert saved["template"] == registry.get("models", model_type).template
    assert trained.template.spec is TEMPLATE_SPECS[saved["template"]]
