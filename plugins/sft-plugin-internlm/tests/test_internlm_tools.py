"""InternLM2's tool format on LLaMA-Factory's glaive_toolcall rows (tests/data/llama_factory),
against InternLM2-Chat's documented function-call format (InternLM/InternLM
chat/chat_format.md), written out here in Python from that document; the ids through the
converted tokenizer are the official slow tokenizer's (shared/data/remote_code), with
<|action_start|>, <|plugin|>, ... as their single official ids."""

import json

import pytest
from official_internlm import official_tokenizer
from sft_plugin_internlm import INTERNLM2_JINJA, INTERNLM_SYSTEM, native

from conftest import CONVERSATIONS, REMOTE_CODE
from sdk.plugins import load_plugins
from sdk.templates.engine import IGNORE_INDEX, Template, compile_jinja

REGISTRY = load_plugins().registry
# "chat_template" of internlm/internlm2-chat-7b tokenizer_config.json
OFFICIAL_CHAT_TEMPLATE = json.loads(
    (REMOTE_CODE / "internlm2-chat-7b" / "tokenizer_config.json").read_text())["chat_template"]


def documented(conversation, system=None):
    """The text chat_format.md shows: <s>, the system turn, the plugin system turn with the
    schemas, ChatML turns, a call as <|action_start|><|plugin|>\\n{"name", "parameters"}
    <|action_end|> at the end of the assistant's turn, a result as an environment turn."""
    text = "<s>"
    if system is not None:
        text += f"<|im_start|>system\n{system}<|im_end|>\n"
    if conversation[0].get("tools"):
        schemas = [tool["function"] for tool in json.loads(conversation[0]["tools"])]
        text += ("<|im_start|>system name=<|plugin|>\n"
                 f"{json.dumps(schemas, ensure_ascii=False, indent=4)}<|im_end|>\n")
    for message in conversation:
        if message["role"] == "tool":
            text += f"<|im_start|>environment name=<|plugin|>\n{message['content']}<|im_end|>\n"
            continue
        text += f"<|im_start|>{message['role']}\n{message['content']}"
        for call in json.loads(message.get("tool_calls") or "[]"):
            action = {"name": call["function"]["name"],
                      "parameters": call["function"]["arguments"]}
            text += ("<|action_start|><|plugin|>\n"
                     f"{json.dumps(action, ensure_ascii=False)}<|action_end|>")
        text += "<|im_end|>\n"
    return text


@pytest.mark.parametrize("template, system", [("internlm2", None),
                                              ("internlm2-chat", INTERNLM_SYSTEM)])
def test_tool_rows_render_in_the_documented_function_call_format(glaive_conversations, template,
                                                                 system):
    spec = REGISTRY.get("templates", template)
    for conversation in glaive_conversations:
        assert Template(spec).render(conversation) == documented(conversation, system)
    assert ('<|im_start|>assistant\n<|action_start|><|plugin|>\n{"name": "search_recipes", '
            '"parameters": {"ingredients": ["chicken", "bell peppers", "rice"]}}<|action_end|>'
            '<|im_end|>\n<|im_start|>environment name=<|plugin|>\n{"recipes": ') in (
        Template(spec).render(glaive_conversations[0]))


def test_the_schemas_follow_a_given_system_turn():
    tools = json.dumps([{"type": "function", "function": {"name": "now"}}])
    messages = [{"role": "system", "content": "Be brief.", "tools": tools},
                {"role": "user", "content": "Time?"}]
    assert Template(REGISTRY.get("templates", "internlm2")).render(
        messages, add_generation_prompt=True) == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>system name=<|plugin|>\n"
        '[\n    {\n        "name": "now"\n    }\n]<|im_end|>\n<|im_start|>user\nTime?<|im_end|>\n'
        "<|im_start|>assistant\n")


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_without_tools_the_text_is_the_official_chat_template(name):
    for generation_prompt in (False, True):
        arguments = dict(messages=CONVERSATIONS[name], add_generation_prompt=generation_prompt,
                         bos_token="<s>")
        assert compile_jinja(INTERNLM2_JINJA).render(**arguments) == compile_jinja(
            OFFICIAL_CHAT_TEMPLATE).render(**arguments)


def test_the_ids_are_the_official_tokenizers_and_the_call_turn_is_trained(glaive_conversations,
                                                                          tmp_path):
    from transformers import PreTrainedTokenizerFast

    native.write_tokenizer(REMOTE_CODE / "internlm2-chat-7b", tmp_path, [])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    reference = official_tokenizer(REMOTE_CODE / "internlm2-chat-7b")
    template = Template.for_tokenizer(REGISTRY.get("templates", "internlm2"), tokenizer)
    conversation = glaive_conversations[0]
    input_ids, labels = template.encode(tokenizer, conversation)
    text = template.render(conversation)
    assert input_ids == reference(text, add_special_tokens=False)["input_ids"]
    start = input_ids.index(reference.convert_tokens_to_ids("<|action_start|>"))
    end = input_ids.index(reference.convert_tokens_to_ids("<|im_end|>"), start)
    assert reference.convert_ids_to_tokens(input_ids[start:start + 2]) == [
        "<|action_start|>", "<|plugin|>"]
    assert input_ids[end - 1] == reference.convert_tokens_to_ids("<|action_end|>")
    # the call, through its <|im_end|>, and nothing of the turns around it
    assert labels[start:end + 1] == input_ids[start:end + 1]
    assert labels[start - 1] == labels[end + 1] == IGNORE_INDEX
    assert reference.decode([t for t in labels[:start] if t != IGNORE_INDEX]).strip() == (
        "Of course! I can help you with that. Please tell me what ingredients you have."
        "<|im_end|>")
