"""GLM-4's tool format on LLaMA-Factory's glaive_toolcall rows (tests/data/llama_factory): the
text is the official glm-4-9b-chat chat template's (official_glm4.py), rendered by transformers'
jinja renderer from the messages that template reads (schemas on a message's `tools`, a call as
an assistant message whose metadata is the function name, a result as an observation)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from official_glm4 import OFFICIAL_GLM4_CHAT_TEMPLATE

from conftest import TOKENIZERS, trained_spans
from sdk.data.conversations import load_conversations
from sdk.plugins import load_plugins
from sdk.templates.engine import Template

DATA = Path(__file__).parents[3] / "tests" / "data" / "llama_factory"
REGISTRY = load_plugins().registry


@pytest.fixture(scope="module")
def conversations():
    rows = load_conversations(["glaive_toolcall_en_demo"], REGISTRY,
                              SimpleNamespace(dataset_info=str(DATA)))
    assert rows[0][0].get("tools") and not rows[1][0].get("tools")
    return rows


def official_messages(conversation):
    """The conversation as the official template reads it: the schemas on a first system
    message without content, each call an assistant message {metadata: name, content: the
    arguments as JSON}, each result an observation."""
    messages = []
    if conversation[0].get("tools"):
        messages.append({"role": "system", "content": "",
                         "tools": json.loads(conversation[0]["tools"])})
    for message in conversation:
        if message["role"] == "tool":
            messages.append({"role": "observation", "content": message["content"]})
            continue
        if message["content"] or not message.get("tool_calls"):
            messages.append({"role": message["role"], "content": message["content"]})
        for call in json.loads(message.get("tool_calls") or "[]"):
            messages.append({"role": "assistant", "metadata": call["function"]["name"],
                             "content": json.dumps(call["function"]["arguments"],
                                                   ensure_ascii=False)})
    return messages


def official_text(conversation, add_generation_prompt):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([official_messages(conversation)],
                                        chat_template=OFFICIAL_GLM4_CHAT_TEMPLATE,
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]


def test_tool_rows_render_as_the_official_template_but_the_final_end_of_turn(conversations):
    template = Template(REGISTRY.get("templates", "glm4"))
    for conversation in conversations:
        # sdk ends a conversation whose last message is a reply with its end-of-turn marker
        assert conversation[-1]["role"] == "assistant"
        assert template.render(conversation) == official_text(conversation, False) + "<|user|>"
    text = template.render(conversations[0])
    assert text.startswith(
        "[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。")
    # transformers' trim_blocks drops the first "\n" after the official {% if %} tag
    assert '# 可用工具\n## search_recipes\n\n{\n    "name": "search_recipes",' in text
    assert ('<|user|>\nI have chicken, bell peppers, and rice.<|assistant|>search_recipes\n'
            '{"ingredients": ["chicken", "bell peppers", "rice"]}<|observation|>\n{"recipes": '
            in text)


def test_every_prompt_before_a_reply_or_call_is_the_official_generation_prompt(conversations):
    template = Template(REGISTRY.get("templates", "glm4"))
    for conversation in conversations:
        for end, message in enumerate(conversation):
            if message["role"] == "assistant":
                assert (template.render(conversation[:end], add_generation_prompt=True)
                        == official_text(conversation[:end], True))


def test_a_call_with_text_several_calls_and_plain_schemas_render_as_official_messages():
    template = Template(REGISTRY.get("templates", "glm4"))
    tools = [{"name": "weather", "description": "天气", "parameters": {"type": "object"}}]
    conversation = [
        {"role": "system", "content": "Be brief.", "tools": json.dumps(tools)},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": json.dumps([
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "西安"}}},
            {"type": "function", "function": {"name": "weather",
                                              "arguments": '{"city": "Paris"}'}}])},
    ]
    text = template.render(conversation)
    official = official_messages(
        [{**conversation[0], "tools": json.dumps([{"type": "function", "function": tools[0]}])},
         *conversation[1:]])
    official[-1]["content"] = '{"city": "Paris"}'  # a string of arguments is written as given
    from transformers.utils.chat_template_utils import render_jinja_template

    expected = render_jinja_template([official], chat_template=OFFICIAL_GLM4_CHAT_TEMPLATE)[0][0]
    assert text == expected + "<|observation|>"
    assert text.endswith('<|system|>\nBe brief.<|user|>\nWeather?<|assistant|>\nLet me look.'
                         '<|assistant|>weather\n{"city": "西安"}<|assistant|>weather\n'
                         '{"city": "Paris"}<|observation|>')


def test_call_turns_are_trained_with_their_observation_and_results_are_not(conversations):
    from transformers import AutoTokenizer

    # GLM-4's tokenizer is a tiktoken BPE; Qwen2's BPE with GLM-4's role tokens stands in
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]})
    template = Template(REGISTRY.get("templates", "glm4"))
    conversation = conversations[0]
    input_ids, labels = template.encode(tokenizer, conversation)
    replies = [m["content"] for m in conversation if m["role"] == "assistant" and m["content"]]
    spans = trained_spans(tokenizer, input_ids, labels)
    # a reply is trained from its text on, as without tools; a call from the function name on
    # (what the model writes after <|assistant|>) through the <|observation|> that stops it
    assert spans == [
        replies[0] + "<|user|>",
        'search_recipes\n{"ingredients": ["chicken", "bell peppers", "rice"]}<|observation|>',
        replies[1] + "<|user|>",
        replies[2] + "<|user|>"]
    result = next(m["content"] for m in conversation if m["role"] == "tool")
    assert all(result not in span for span in spans)
