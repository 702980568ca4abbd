"""Record formats, readers and bad input: errors name the file and line."""

import json

import pytest

from sdk.data.conversations import load_conversations
from sdk.errors import SdkError
from sdk.plugins import load_plugins


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def test_alpaca_records_with_input_system_and_history(registry, tmp_path):
    data = write_jsonl(tmp_path / "alpaca.jsonl", [{
        "instruction": "Continue the poem.", "input": "床前明月光", "output": "疑是地上霜",
        "system": "You are a poet.", "history": [["Hi", "Hello"]],
    }])
    [messages] = load_conversations([str(data)], registry, None)
    assert messages == [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Continue the poem.\n床前明月光"},
        {"role": "assistant", "content": "疑是地上霜"},
    ]


def test_alpaca_json_list_and_messages_and_query_response(registry, tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": "hi"}]))
    messages = write_jsonl(tmp_path / "messages.jsonl", [{"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    query = write_jsonl(tmp_path / "qr.jsonl", [{"query": "q", "response": "r"}])
    conversations = load_conversations([str(alpaca), str(messages), str(query)], registry, None)
    assert [c[-1]["content"] for c in conversations] == ["hi", "b", "r"]
    assert conversations[0][0] == {"role": "user", "content": "Say hi"}


@pytest.mark.parametrize("content, message", [
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n',
     r"bad\.jsonl:2: not valid JSON"),
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n',
     r"bad\.jsonl:2: field 'output' is missing or empty \(read as alpaca format\)"),
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": 3}\n',
     r"bad\.jsonl:2: field 'output' should be text, got int"),
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff\xfe", "output": "b"}\n',
     r"bad\.jsonl:2: not valid UTF-8"),
    (b'{"messages": [{"role": "user", "content": "only a question"}]}\n',
     r"bad\.jsonl:1: the conversation has no assistant message"),
    (b'{"text": "pre-training text"}\n', r"bad\.jsonl:1: cannot tell the format"),
    (b'[1, 2]\n', r"bad\.jsonl:1: expected a JSON object"),
])
def test_bad_records_name_the_file_and_line(registry, tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    with pytest.raises(SdkError, match=message):
        load_conversations([str(bad)], registry, None)


def test_missing_file_and_unknown_dataset_name(registry, tmp_path):
    with pytest.raises(SdkError, match="does not exist"):
        load_conversations([str(tmp_path / "nope.jsonl")], registry, None)
    with pytest.raises(SdkError, match="Did you mean 'self-cognition'"):
        load_conversations(["self-cognitoin"], registry, None)


def test_empty_dataset_is_an_error(registry, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SdkError, match="No training records"):
        load_conversations([str(empty)], registry, None)


def test_sharegpt_records_with_system_and_role_tags(registry, tmp_path):
    data = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"system": "Be brief.", "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]},
        {"conversations": [{"role": "user", "content": "a"},
                           {"role": "assistant", "content": "b"}]},
    ])
    first, second = load_conversations([str(data)], registry, None)
    assert first == [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]
    assert second[-1] == {"role": "assistant", "content": "b"}


def test_chatglm_prompt_query_response_history_schema(registry, tmp_path):
    data = write_jsonl(tmp_path / "chatglm.jsonl", [
        {"prompt": "Translate to English.", "query": "你好", "response": "Hello",
         "history": [["Hi", "Hi there"]]},
        {"prompt": "Say hi.", "response": "hi"},
    ])
    first, second = load_conversations([str(data)], registry, None)
    assert first[-2:] == [{"role": "user", "content": "Translate to English.\n你好"},
                          {"role": "assistant", "content": "Hello"}]
    assert first[0] == {"role": "user", "content": "Hi"}
    assert second[0] == {"role": "user", "content": "Say hi."}


@pytest.mark.parametrize("record, message", [
    ({"conversations": [{"from": "robot", "value": "x"}]}, "role tag 'robot'"),
    ({"conversations": [{"from": "human", "value": "only a question"}]},
     "no assistant message"),
    ({"prompt": "", "query": "", "response": "r"}, "'query' \\(or 'prompt'\\) is missing"),
])
def test_bad_sharegpt_and_chatglm_records(registry, tmp_path, record, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(SdkError, match=r"bad\.jsonl:1: .*" + message):
        load_conversations([str(bad)], registry, None)


def test_name_hash_n_samples_rows_deterministically(registry, tmp_path):
    from sdk.config import SftArguments

    data = write_jsonl(tmp_path / "d.jsonl", [{"query": f"q{i}", "response": f"r{i}"}
                                              for i in range(10)])
    replies = lambda rows: [c[-1]["content"] for c in rows]  # noqa: E731
    three = load_conversations([f"{data}#3"], registry, SftArguments(seed=1))
    assert len(three) == 3 and len(set(replies(three))) == 3  # no repeats below the size
    assert replies(three) == replies(load_conversations([f"{data}#3"], registry,
                                                         SftArguments(seed=1)))
    assert replies(three) != replies(load_conversations([f"{data}#3"], registry,
                                                         SftArguments(seed=2)))
    many = load_conversations([f"{data}#25"], registry, SftArguments(seed=1))
    assert len(many) == 25 and set(replies(many)) == {f"r{i}" for i in range(10)}
    with pytest.raises(SdkError, match="after '#' give how many rows"):
        load_conversations([f"{data}#lots"], registry, None)


def test_skip_bad_records_counts_and_locates_them(registry, tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_bytes(b'{"query": "q1", "response": "r1"}\n'
                     b'{"query": "q2", "response": \n'
                     b'{"query": "\xff", "response": "r3"}\n'
                     b'{"query": "q4"}\n'
                     b'[1]\n'
                     b'{"query": "q6", "response": "r6"}\n')
    skipped: list[str] = []
    rows = load_conversations([str(data)], registry, None, skipped=skipped)
    assert [r[-1]["content"] for r in rows] == ["r1", "r6"]
    assert skipped == [f"{data}:{n}" for n in (2, 3, 4, 5)]
    with pytest.raises(SdkError, match=r"mixed\.jsonl:2: .*pass --skip-bad-records"):
        load_conversations([str(data)], registry, None)


def test_skipping_every_record_is_an_error_before_training(registry, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"x": 1}\n{"x": 2}\n')
    with pytest.raises(SdkError, match="cannot tell the format"):
        load_conversations([str(data)], registry, None, skipped=[])
    data.write_text('{"query": "a", "response": ""}\n')  # read as query-response, but empty
    with pytest.raises(SdkError, match="No training records"):
        load_conversations([str(data)], registry, None, skipped=[])


@pytest.mark.parametrize("strategy, kept", [
    ("truncation_right", "start"), ("truncation_left", "end"), ("delete", None)])
def test_truncation_strategies(strategy, kept):
    from transformers import AutoTokenizer

    from conftest import TOKENIZERS
    from sdk.data.encode import encode_conversations
    from sdk.templates.builtin import CHATML
    from sdk.templates.engine import Template

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    long = [{"role": "user", "content": "start " + "word " * 10},
            {"role": "assistant", "content": "reply " * 50 + "end"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    full, _ = Template(CHATML).encode(tokenizer, long)
    examples, stats = encode_conversations(Template(CHATML), tokenizer, [long, short], 40,
                                           truncation_strategy=strategy)
    if kept is None:
        assert len(examples) == 1 and stats.deleted == 1 and stats.truncated == 0
        return
    assert len(examples) == 2 and stats.truncated == 1 and len(examples[0]["input_ids"]) == 40
    expected = full[:40] if kept == "start" else full[-40:]
    assert examples[0]["input_ids"] == expected


def test_openai_messages_with_tools_keep_schemas_calls_and_results():
    from sdk.data.formats import messages_to_messages

    call = {"type": "function", "function": {"name": "now", "arguments": {}}}
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    assert messages_to_messages({"tools": [tool], "messages": [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "Noon."}]}) == [
        {"role": "user", "content": "Time?", "tools": json.dumps([tool])},
        {"role": "assistant", "content": "", "tool_calls": json.dumps([call])},
        {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "Noon."}]
    with pytest.raises(ValueError, match="messages\\[1\\] tool_calls should be a list"):
        messages_to_messages({"messages": [{"role": "user", "content": "Time?"},
                                           {"role": "assistant", "tool_calls": call}]})


def test_call_arguments_written_as_json_text_are_read_as_an_object():
    """OpenAI's API writes a call's arguments as JSON text; the templates read an object."""
    from sdk.data.formats import messages_to_messages, sharegpt_to_messages

    def call(arguments):
        return {"type": "function", "function": {"name": "now", "arguments": arguments}}

    messages = messages_to_messages({"messages": [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "", "tool_calls": [call('{"zone": "UTC"}')]}]})
    assert json.loads(messages[1]["tool_calls"]) == [call({"zone": "UTC"})]
    shared = sharegpt_to_messages({"conversations": [
        {"from": "human", "value": "Time?"},
        {"from": "function_call", "value": '{"name": "now", "arguments": "{\\"zone\\": 1}"}'}]})
    assert json.loads(shared[1]["tool_calls"])[0]["function"]["arguments"] == {"zone": 1}
    with pytest.raises(ValueError, match=r"messages\[1\] tool_calls\[0\] arguments should be "
                                         "a JSON object"):
        messages_to_messages({"messages": [{"role": "user", "content": "Time?"},
                                           {"role": "assistant", "tool_calls": [call("[1]")]}]})
