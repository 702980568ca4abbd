"""to_jinja: the chat template written into exported models renders, through transformers'
apply_chat_template, exactly what the engine renders."""

import pytest
from jinja2.exceptions import TemplateError
from transformers import AutoTokenizer

from conftest import CONVERSATIONS, LLAMA_CPP_CONVERSATION, TOKENIZERS
from sdk.plugins import load_plugins
from sdk.specs import TemplateSpec
from sdk.templates.engine import Template
from sdk.templates.to_jinja import to_jinja

REGISTRY = load_plugins([]).registry  # built-ins and every installed family plugin
CASES = {**CONVERSATIONS, "llama.cpp": LLAMA_CPP_CONVERSATION}
# A tokenizer's special tokens replace the spec's; where it has none (qwen2 without its bos
# token), the spec's fill in.
TOKENIZER_SETTINGS = {"qwen2": {}, "qwen2 without bos": {"bos_token": None}, "llama2": {}}


@pytest.fixture(scope="module", params=TOKENIZER_SETTINGS)
def tokenizer(request):
    name = request.param.split()[0]
    return AutoTokenizer.from_pretrained(TOKENIZERS / name, **TOKENIZER_SETTINGS[request.param])


def assert_renders_alike(template: Template, tokenizer, messages) -> None:
    jinja = to_jinja(template)
    for generation_prompt in (False, True):
        try:
            expected = template.render(messages, generation_prompt)
        except ValueError:  # the official template refuses it: so must the exported one
            with pytest.raises(TemplateError):
                tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False,
                                              add_generation_prompt=generation_prompt)
            continue
        assert tokenizer.apply_chat_template(
            messages, chat_template=jinja, tokenize=False,
            add_generation_prompt=generation_prompt) == expected, (generation_prompt, jinja)


def test_the_family_plugins_are_installed():
    assert {"baichuan", "llama3", "mistral-v0.3", "qwen2.5", "internlm2", "smollm2",
            "chinese-alpaca-2"} <= set(REGISTRY.names("templates"))


@pytest.mark.parametrize("name", REGISTRY.names("templates"))
def test_every_registered_template_renders_alike_in_transformers(name, tokenizer):
    template = Template.for_tokenizer(REGISTRY.get("templates", name), tokenizer)
    for messages in CASES.values():
        assert_renders_alike(template, tokenizer, messages)


def test_a_system_prompt_given_at_training_replaces_the_default(tokenizer):
    for name in ("chatml", "smollm2", "internlm2", "llama3"):
        spec = REGISTRY.get("templates", name)
        template = Template.for_tokenizer(
            TemplateSpec(**{**spec.__dict__, "default_system": "You are Tiny."}), tokenizer)
        for messages in CASES.values():
            assert_renders_alike(template, tokenizer, messages)
        assert "You are Tiny." in tokenizer.apply_chat_template(
            CASES["single turn"], chat_template=to_jinja(template), tokenize=False)


def test_parts_with_quotes_braces_and_unknown_tokens_are_written_as_literals(tokenizer):
    spec = TemplateSpec(
        name="odd",
        prefix="{bos_token}{unk}\\n'\"",
        system_format="{% sys %}{content}{# #}\n",
        user_format="{{ user }} {content} / {content}\t",
        assistant_prefix="🦊 {content}:",
        assistant_suffix="{eos_token}",
        turn_separator="\\\n",
        default_system="Ça va? \"yes\" {{x}}",
    )
    template = Template(spec, {"eos_token": "<|end|>"})  # no bos: written as it is
    for messages in CASES.values():
        assert_renders_alike(template, tokenizer, messages)
    assert template.render(CASES["single turn"], True).startswith("{bos_token}{unk}")
