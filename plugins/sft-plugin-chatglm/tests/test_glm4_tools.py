"""GLM-4's and GLM-4-0414's tool formats on LLaMA-Factory's glaive_toolcall rows
(tests/data/llama_factory): the text is the official chat template's (official_glm4.py, both
verbatim), rendered by transformers' jinja renderer from the messages those templates read: the
schemas (glm-4-9b-chat: on a message's `tools`; GLM-4-0414: apply_chat_template's `tools`), a
call as an assistant message whose metadata is the function name, a result as an observation."""

import hashlib
import json

import pytest
from official_glm4 import OFFICIAL_GLM4_0414_CHAT_TEMPLATE, OFFICIAL_GLM4_CHAT_TEMPLATE

from conftest import CONVERSATIONS, TOKENIZERS
from sdk.plugins import load_plugins
from sdk.templates.engine import Template
from sdk.testing import trained_spans

REGISTRY = load_plugins().registry
CHAT_TEMPLATES = {"glm4": OFFICIAL_GLM4_CHAT_TEMPLATE,
                  "glm4-0414": OFFICIAL_GLM4_0414_CHAT_TEMPLATE}


def official_messages(template, conversation):
    """The conversation as the official template reads it: glm4's schemas first, on a system
    message without content (glm4-0414 takes them as `tools`); each call an assistant message
    {metadata: name, content: the arguments as JSON}, each result an observation."""
    messages = []
    if conversation[0].get("tools") and template == "glm4":
        messages.append({"role": "system", "content": "",
                         "tools": json.loads(conversation[0]["tools"])})
    for message in conversation:
        if message["role"] == "tool":
            messages.append({"role": "observation", "content": message["content"]})
            continue
        if message["content"] or not message.get("tool_calls"):
            messages.append({"role": message["role"], "content": message["content"]})
        for call in json.loads(message.get("tool_calls") or "[]"):
            arguments = call["function"]["arguments"]
            messages.append({"role": "assistant", "metadata": call["function"]["name"],
                             "content": arguments if isinstance(arguments, str)
                             else json.dumps(arguments, ensure_ascii=False)})
    return messages


def official_text(template, conversation, add_generation_prompt=False):
    from transformers.utils.chat_template_utils import render_jinja_template

    tools = json.loads(conversation[0].get("tools") or "null") if template == "glm4-0414" else None
    rendered, _ = render_jinja_template([official_messages(template, conversation)], tools=tools,
                                        chat_template=CHAT_TEMPLATES[template],
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]


def test_glm4_0414_renders_the_conversations_as_its_verbatim_template_but_the_final_end():
    assert hashlib.sha256(OFFICIAL_GLM4_0414_CHAT_TEMPLATE.encode()).hexdigest() == (
        "854b703e44ca06bdb196cc471c728d15dbab61e744fe6cdce980086b61646ed1")
    template = Template(REGISTRY.get("templates", "glm4-0414"))
    for messages in CONVERSATIONS.values():
        for generation_prompt in (False, True):
            expected = official_text("glm4-0414", messages, generation_prompt)
            if messages[-1]["role"] == "assistant":  # sdk's end-of-turn after a final reply
                expected = expected.removesuffix("<|assistant|>") + "<|user|>" + (
                    "<|assistant|>" if generation_prompt else "")
            assert template.render(messages, add_generation_prompt=generation_prompt) == expected


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_tool_rows_render_as_the_official_template_but_the_final_end_of_turn(glaive_conversations,
                                                                             name):
    template = Template(REGISTRY.get("templates", name))
    for conversation in glaive_conversations:
        # sdk ends a conversation whose last message is a reply with its end-of-turn marker
        assert conversation[-1]["role"] == "assistant"
        assert template.render(conversation) == official_text(name, conversation) + "<|user|>"
        for end, message in enumerate(conversation):  # every prompt before a reply or a call
            if message["role"] == "assistant":
                assert (template.render(conversation[:end], add_generation_prompt=True)
                        == official_text(name, conversation[:end], True))


def test_the_texts_of_the_schemas_and_the_call():
    conversation = [{"role": "user", "content": "Hi", "tools": json.dumps([{
        "type": "function", "function": {"name": "now", "parameters": {}}}])},
        {"role": "assistant", "content": "", "tool_calls": json.dumps([
            {"type": "function", "function": {"name": "now", "arguments": {"tz": "上海"}}}])}]
    schema = '## now\n\n{\n    "name": "now",\n    "parameters": {}\n}\n在调用上述函数时'
    glm4 = Template(REGISTRY.get("templates", "glm4")).render(conversation)
    # transformers' trim_blocks drops the first "\n" after the official {% if %} tag
    assert glm4.startswith("[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。")
    assert "。\n\n# 可用工具\n" + schema in glm4
    assert glm4.endswith('<|user|>\nHi<|assistant|>now\n{"tz": "上海"}<|observation|>')
    glm4_0414 = Template(REGISTRY.get("templates", "glm4-0414")).render(conversation)
    assert glm4_0414.startswith("[gMASK]<sop><|system|>\n# 可用工具\n\n" + schema)
    assert glm4_0414.endswith('<|user|>\nHi<|assistant|>now \n{"tz": "上海"}<|observation|>')


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_a_call_with_text_several_calls_and_plain_schemas_render_as_official_messages(name):
    template = Template(REGISTRY.get("templates", name))
    tools = [{"name": "weather", "description": "天气", "parameters": {"type": "object"}}]
    conversation = [
        {"role": "system", "content": "Be brief.", "tools": json.dumps(tools)},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": json.dumps([
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "西安"}}},
            # arguments given as JSON text are written as given
            {"type": "function", "function": {"name": "weather",
                                              "arguments": '{"city":"Paris"}'}}])},
    ]
    wrapped = [{**conversation[0], "tools": json.dumps([{"type": "function",
                                                          "function": tools[0]}])},
               *conversation[1:]]
    assert template.render(conversation) == official_text(name, wrapped) + "<|observation|>"
    assert template.render(conversation).endswith(
        '<|system|>\nBe brief.<|user|>\nWeather?<|assistant|>\nLet me look.<|assistant|>'
        'weather{0}\n{{"city": "西安"}}<|assistant|>weather{0}\n{{"city":"Paris"}}'
        '<|observation|>'.format(" " if name == "glm4-0414" else ""))


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_call_turns_are_trained_with_their_observation_and_results_are_not(glaive_conversations,
                                                                           name):
    from transformers import AutoTokenizer

    # GLM-4's tokenizer is a tiktoken BPE; Qwen2's BPE with GLM-4's role tokens stands in
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]})
    template = Template(REGISTRY.get("templates", name))
    conversation = glaive_conversations[0]
    input_ids, labels = template.encode(tokenizer, conversation)
    replies = [m["content"] for m in conversation if m["role"] == "assistant" and m["content"]]
    spans = trained_spans(tokenizer, input_ids, labels)
    # a reply is trained from its text on, as without tools; a call from the function name on
    # (what the model writes after <|assistant|>) through the <|observation|> that stops it
    separator = " \n" if name == "glm4-0414" else "\n"
    assert spans == [
        replies[0] + "<|user|>",
        'search_recipes' + separator
        + '{"ingredients": ["chicken", "bell peppers", "rice"]}<|observation|>',
        replies[1] + "<|user|>",
        replies[2] + "<|user|>"]
    result = next(m["content"] for m in conversation if m["role"] == "tool")
    assert all(result not in span for span in spans)
