"""ChatGLM3's tool format on LLaMA-Factory's glaive_toolcall rows (tests/data/llama_factory):
the ids and the trained call turns are those of ChatGLM3's own fine-tuning code
(THUDM/ChatGLM3 finetune_chatmodel_demo/preprocess_utils.py format_conversation), built here
from the official tokenizer's build_single_message; a prompt is its build_chat_input."""

import json

import pytest
from official_chatglm import official_tokenizer
from sft_plugin_chatglm import CHATGLM3_TOOL_PROMPT, native

from conftest import REMOTE_CODE
from sdk.plugins import load_plugins
from sdk.templates.engine import IGNORE_INDEX, Template

REGISTRY = load_plugins().registry


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(the converted tokenizer sdk trains with, the official ChatGLMTokenizer)."""
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("chatglm3-tokenizer")
    native.write_tokenizer(REMOTE_CODE / "chatglm3-6b", folder, 3)
    return (PreTrainedTokenizerFast.from_pretrained(str(folder)),
            official_tokenizer(REMOTE_CODE / "chatglm3-6b"))


def schemas(conversation):
    return [tool["function"] for tool in json.loads(conversation[0]["tools"])]


def official_messages(conversation):
    """(role, metadata, content, trained) as format_conversation builds them: the tool prompt
    first, a call as an assistant message named after the function whose content is
    ```python tool_call(key=repr(value), ...)``` (astunparse writes a constant as its repr),
    a result as an observation."""
    messages = []
    if conversation[0].get("tools"):
        messages.append(("system", "", CHATGLM3_TOOL_PROMPT + json.dumps(
            schemas(conversation), indent=4, ensure_ascii=False), False))
    for message in conversation:
        if message.get("tool_calls"):
            for call in json.loads(message["tool_calls"]):
                function = call["function"]
                arguments = ", ".join(f"{key}={value!r}"
                                      for key, value in function["arguments"].items())
                messages.append(("assistant", function["name"],
                                 f"```python\ntool_call({arguments})\n```", True))
        elif message["role"] == "tool":
            messages.append(("observation", "", message["content"], False))
        else:
            messages.append((message["role"], "", message["content"],
                             message["role"] == "assistant"))
    return messages


def official_encoding(reference, conversation):
    """format_conversation's ids and labels (each label is the token after a trained one)."""
    ids, trained = reference.get_prefix_tokens(), [False, False]
    for role, metadata, content, loss in official_messages(conversation):
        message = reference.build_single_message(role, metadata, content)
        ids += message
        trained += [loss] * len(message)
    ids.append(reference.eos_token_id)
    trained.append(False)
    return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, [False, *trained[:-1]],
                                                         strict=True)]


def test_tool_rows_have_chatglm3s_official_ids_and_train_its_call_turns(tokenizers,
                                                                         glaive_conversations):
    tokenizer, reference = tokenizers
    template = Template.for_tokenizer(REGISTRY.get("templates", "chatglm3"), tokenizer)
    observation = reference.get_command("<|observation|>")
    for conversation in glaive_conversations:
        input_ids, labels = template.encode(tokenizer, conversation)
        expected_ids, expected_labels = official_encoding(reference, conversation)
        # the sdk ends a conversation with its end-of-turn marker, the official code with eos
        assert input_ids[:-1] == expected_ids[:-1]
        assert input_ids[-1] == reference.get_command("<|user|>")
        # Each call turn (function name, code, and the <|observation|> after it) is trained as
        # officially. The official labels also train the "\n" after every <|assistant|>; the
        # sdk trains a plain reply from its text on, as it does without tools.
        calls = [i for i, token in enumerate(input_ids) if token == observation]
        assert len(calls) == (1 if conversation[0].get("tools") else 0)
        for end in calls:
            start = max(i for i in range(end) if input_ids[i] == reference.get_command(
                "<|assistant|>"))
            assert labels[start:end + 1] == expected_labels[start:end + 1]
            assert labels[start] == IGNORE_INDEX and labels[end] == observation


def test_the_prompt_before_a_call_is_build_chat_input_with_a_system_message_carrying_tools(
        tokenizers, glaive_conversations):
    tokenizer, reference = tokenizers
    template = Template.for_tokenizer(REGISTRY.get("templates", "chatglm3"), tokenizer)
    conversation = glaive_conversations[0]
    call = next(i for i, m in enumerate(conversation) if m.get("tool_calls"))
    prompt = template.tokenize_prompt(tokenizer, conversation[:call])["input_ids"][0].tolist()
    history = [{"role": "system", "content": CHATGLM3_TOOL_PROMPT.rstrip("\n"),
                "tools": schemas(conversation)},
               *({"role": m["role"], "content": m["content"]} for m in conversation[:call - 1])]
    official = reference.build_chat_input(conversation[call - 1]["content"], history=history)
    assert prompt == official["input_ids"][0].tolist()


def test_a_call_with_several_arguments_and_a_reply_text_renders_as_the_official_code():
    template = Template(REGISTRY.get("templates", "chatglm3"))
    tools = [{"name": "weather", "description": "d", "parameters": {"type": "object"}}]
    messages = [
        {"role": "user", "content": "Weather?", "tools": json.dumps(tools)},
        {"role": "assistant", "content": "Let me look.", "tool_calls": json.dumps([
            {"type": "function", "function": {"name": "weather", "arguments": {
                "city": "Xi'an", "days": 2, "metric": True, "hours": [6, 18], "opt": None}}}])},
    ]
    text = template.render(messages, add_generation_prompt=False)
    assert text.endswith(
        "<|user|>\n Weather?<|assistant|>\n Let me look.<|assistant|>weather\n ```python\n"
        "tool_call(city=\"Xi'an\", days=2, metric=True, hours=[6, 18], opt=None)\n```"
        "<|observation|>")


def test_chatglm3s_own_chat_reads_the_trained_call_back_as_the_rows_call(tokenizers,
                                                                         glaive_conversations):
    """What the model learns to write is what the official chat() parses into a call
    (modeling_chatglm.py process_response: name from the metadata line, parameters by
    evaluating the tool_call(...) code)."""
    from conftest import official_module

    tokenizer, reference = tokenizers
    template = Template.for_tokenizer(REGISTRY.get("templates", "chatglm3"), tokenizer)
    conversation = glaive_conversations[0]
    input_ids, labels = template.encode(tokenizer, conversation)
    observation = reference.get_command("<|observation|>")
    end = input_ids.index(observation)
    start = next(i for i in range(end, 0, -1) if labels[i - 1] == IGNORE_INDEX)
    # generation stops at <|observation|>, which chat() leaves out
    output = reference.decode(input_ids[start:end])
    model_class = official_module(REMOTE_CODE / "chatglm3-6b",
                                  "modeling_chatglm").ChatGLMForConditionalGeneration
    history = [{"role": "system", "content": "", "tools": schemas(conversation)}]
    call, _ = model_class.process_response(None, output, history)
    expected = json.loads(next(m for m in conversation if m.get("tool_calls"))["tool_calls"])
    assert call == {"name": expected[0]["function"]["name"],
                    "parameters": expected[0]["function"]["arguments"]}
