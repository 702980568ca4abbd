"""Mistral plugin: registrations, the official templates (render, ids, loss masks) against the
real Mistral tokenizers, and a few training steps on tiny random Mistral / Mixtral models."""

import json
import re

import pytest
from sft_plugin_mistral import (
    MISTRAL_V01_JINJA,
    MISTRAL_V02_JINJA,
    MISTRAL_V03_JINJA,
    MODELS,
    TEMPLATES,
)

from conftest import TOKENIZERS
from sdk.plugins import load_plugins
from sdk.templates.engine import IGNORE_INDEX, Template

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
}
NO_SYSTEM = {"mistral-7b-instruct-v0.1"}  # the v0.1 template has no system role

CONVERSATIONS = {
    "single turn": [{"role": "user", "content": "Who are you?"}],
    "with system": [{"role": "system", "content": "You are Ferret."},
                    {"role": "user", "content": "Who are you?"}],
    "multi turn": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Tell me a joke."},
                   {"role": "assistant", "content": "Why did the LLM cross the road?"}],
    "multi turn with system": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello!"},
                               {"role": "user", "content": "And now?"}],
    "chinese": [{"role": "system", "content": "你是一个诗人。"},
                {"role": "user", "content": "床前明月光"},
                {"role": "assistant", "content": "疑是地上霜。"},
                {"role": "user", "content": "举头望明月"},
                {"role": "assistant", "content": "低头思故乡。"}],
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
            tokenizer.chat_template = jinja
            loaded[model_type] = tokenizer
        return loaded[model_type]

    return get


def trained_text(tokenizer, input_ids, labels):
    return tokenizer.decode([i for i, label in zip(input_ids, labels, strict=True)
                             if label != IGNORE_INDEX])


# --- registrations ---------------------------------------------------------------------------

def test_every_model_type_is_registered_with_its_template_and_hub_ids():
    registry = load_plugins().registry
    assert set(MODELS) == {"mistral-7b-instruct-v0.1", "mistral-7b-instruct-v0.2",
                           "mistral-7b-instruct-v0.3", "mixtral-8x7b-instruct-v0.1"}
    for model_type in MODELS:
        spec = registry.get("models", model_type)
        assert re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)*", model_type)
        assert spec.family == "mistral"
        assert registry.get("templates", spec.template) is TEMPLATE_SPECS[spec.template]
        assert spec.hub_ids["huggingface"].startswith("mistralai/")
        assert spec.hub_ids["modelscope"].split("/")[0] in {"AI-ModelScope", "LLM-Research"}
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


# The expected strings of llama.cpp tests/test-chat-template.cpp for these two official
# templates (bos_token "" and eos_token "</s>"; the reply "   I am an assistant   " keeps its
# spaces in v0.2 and is trimmed in v0.3; v0.3 moves the system prompt into the last user turn).
LLAMA_CPP_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]


@pytest.mark.parametrize("name, expected", [
    ("mistral-v0.2", " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] "
                     "Who are you [/INST]    I am an assistant   </s> [INST] Another question "
                     "[/INST]"),
    ("mistral-v0.3", "[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST] I am an "
                     "assistant</s>[INST] You are a helpful assistant\n\nAnother question[/INST]"),
])
def test_official_templates_render_as_llama_cpp_records_them(name, expected):
    template = Template(TEMPLATE_SPECS[name], {"bos_token": "", "eos_token": "</s>"})
    assert template.render(LLAMA_CPP_CONVERSATION) == expected


# --- rendering, ids and loss masks against the real tokenizers -------------------------------

@pytest.mark.parametrize("model_type, name", cases())
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_template_render_equals_the_tokenizers_chat_template(run_cli, tmp_path, tokenizers,
                                                             model_type, name,
                                                             generation_prompt):
    messages = CONVERSATIONS[name]
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
    args = ["template", "render", "--model-type", model_type, "--messages", path]
    result = run_cli(*args, *(["--add-generation-prompt"] if generation_prompt else []))
    assert result.exit_code == 0, result.output
    assert result.stdout == tokenizers(model_type).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt)


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

def tiny_config(architecture, tokenizer):
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if architecture == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM

        return MixtralForCausalLM, MixtralConfig(num_local_experts=2, num_experts_per_tok=1,
                                                 **common)
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM, MistralConfig(**common)


@pytest.mark.parametrize("model_type, architecture", [
    ("mistral-7b-instruct-v0.3", "mistral"),
    ("mixtral-8x7b-instruct-v0.1", "mixtral"),
])
def test_train_a_tiny_model_then_reload_the_checkpoint_to_the_same_logits(
        tmp_path, tokenizers, identity_data, model_type, architecture):
    import torch

    from sdk.config import InferArguments, SftArguments
    from sdk.infer.chat import load_for_inference
    from sdk.train.sft import run_sft

    tokenizer = tokenizers(model_type)
    model_class, config = tiny_config(architecture, tokenizer)
    torch.manual_seed(0)
    tiny = tmp_path / "tiny"
    model_class(config).save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)

    registry = load_plugins().registry
    result = run_sft(SftArguments(
        model_type=model_type, model_id_or_path=str(tiny), dataset=[str(identity_data)],
        max_steps=2, batch_size=2, gradient_accumulation_steps=1, save_steps=2,
        output_dir=str(tmp_path / "output"), learning_rate=1e-2, logging_steps=1), registry)
    assert result.checkpoint.name == "checkpoint-2"
    saved = json.loads((result.checkpoint / "sft_args.json").read_text())
    assert saved["model_type"] == model_type
    assert saved["template"] == registry.get("models", model_type).template

    model, reloaded_tokenizer, _ = load_for_inference(
        InferArguments(ckpt_dir=str(result.run_dir)), registry)
    probe = Template.for_tokenizer(TEMPLATE_SPECS[saved["template"]], reloaded_tokenizer).render(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True)
    inputs = reloaded_tokenizer(probe, add_special_tokens=False, return_tensors="pt")

    def logits(m):
        with torch.no_grad():
            return m(**inputs.to(m.device)).logits.float()

    torch.testing.assert_close(logits(model), logits(result.model.eval()), rtol=1e-5,
                               atol=1e-5)
    base = model_class.from_pretrained(tiny)
    assert not torch.allclose(logits(base), logits(model), atol=1e-4)
