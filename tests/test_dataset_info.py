"""--dataset-info: LLaMA-Factory / ChatGLM-Efficient-Tuning dataset_info.json files."""

import json
from types import SimpleNamespace

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.data.conversations import load_conversations
from sdk.data.dataset_info import dataset_from_info, read_dataset_info
from sdk.data.sources import dataset_source
from sdk.errors import SdkError
from sdk.plugins import load_plugins


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def write_info(folder, entries):
    path = folder / "dataset_info.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def write_json(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def load(names, registry, info):
    return load_conversations(names, registry, SimpleNamespace(dataset_info=str(info)))


def test_the_chatglm_efficient_tuning_u_need_entry(registry, tmp_path):
    write_json(tmp_path / "u_need" / "train.json", [
        {"instruction": "翻译成英文", "input": "你好", "output": "Hello"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ])
    info = write_info(tmp_path, {"u_need": {
        "file_name": "u_need/train.json",
        "columns": {"prompt": "instruction", "query": "input", "response": "output",
                    "history": ""}}})
    spec = dataset_from_info("u_need", info)
    assert spec.files == (str(tmp_path / "u_need" / "train.json"),)
    assert spec.format == "alpaca"
    assert load(["u_need"], registry, info) == [
        [{"role": "user", "content": "翻译成英文\n你好"},
         {"role": "assistant", "content": "Hello"}],
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
    ]


def test_an_alpaca_entry_with_renamed_system_and_history_columns(registry, tmp_path):
    write_json(tmp_path / "data.json", [{
        "q": "Continue the poem.", "ctx": "床前明月光", "a": "疑是地上霜",
        "sys": "You are a poet.", "past": [["Hi", "Hello"]], "unused": 1}])
    info = write_info(tmp_path, {"poems": {
        "file_name": "data.json", "formatting": "alpaca",
        "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys",
                    "history": "past"}}})
    assert load(["poems"], registry, info) == [[
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Continue the poem.\n床前明月光"},
        {"role": "assistant", "content": "疑是地上霜"},
    ]]


def test_a_sharegpt_entry_with_custom_tags(registry, tmp_path):
    write_json(tmp_path / "chat.json", [{
        "messages": [{"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "Who are you?"},
                     {"role": "assistant", "content": "A test."}],
        "system_prompt": "Be brief."}])
    info = write_info(tmp_path, {"chat": {
        "file_name": "chat.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "system": "system_prompt"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant"}}})
    assert dataset_from_info("chat", info).format == "sharegpt"
    assert load(["chat"], registry, info) == [[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "A test."},
    ]]


def test_a_sharegpt_entry_with_default_tags_and_an_unknown_role(registry, tmp_path):
    write_json(tmp_path / "chat.json", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
        {"conversations": [{"from": "human", "value": "Hi"},
                           {"from": "narrator", "value": "{}"}]}])
    info = write_info(tmp_path, {"chat": {"file_name": "chat.json", "formatting": "sharegpt"}})
    with pytest.raises(SdkError, match=r"chat\.json \(record 2\): .*role tag 'narrator'"):
        load(["chat"], registry, info)


def test_sharegpt_function_calls_are_tool_calls_and_observations_tool_results(registry,
                                                                                tmp_path):
    call = '{"name": "weather", "arguments": {"city": "Paris"}}'
    write_json(tmp_path / "agent.json", [{"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "tool_call", "content": call},
        {"role": "tool_result", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 °C."}]}])
    info = write_info(tmp_path, {"agent": {
        "file_name": "agent.json", "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "function_tag": "tool_call",
                 "observation_tag": "tool_result"}}})
    assert load(["agent"], registry, info) == [[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": '[{"type": "function", "id": '
                                                           '"call00001", "function": {"name": '
                                                           '"weather", "arguments": {"city": '
                                                           '"Paris"}}}]'},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call00001"},
        {"role": "assistant", "content": "21 °C."}]]


def test_a_function_call_written_as_text_stays_a_reply_and_its_observation_a_user_turn(
        registry, tmp_path):
    call = "Action: weather\nAction Input: Paris"
    write_json(tmp_path / "react.json", [{"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": call},
        {"from": "observation", "value": "21 °C"},
        {"from": "gpt", "value": "21 °C."}]}])
    info = write_info(tmp_path, {"react": {"file_name": "react.json",
                                           "formatting": "sharegpt"}})
    assert load(["react"], registry, info) == [[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": call},
        {"role": "user", "content": "21 °C"},
        {"role": "assistant", "content": "21 °C."}]]


def test_a_folder_file_name_reads_its_data_files_in_order(registry, tmp_path):
    folder = tmp_path / "parts"
    write_json(folder / "b.json", [{"instruction": "b", "output": "2"}])
    (folder / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "1"}) + "\n")
    (folder / "c.csv").write_text("instruction,output\nc,3\n")
    (folder / "notes.txt").write_text("not data")
    info = write_info(tmp_path, {"parts": {"file_name": "parts"}})
    spec = dataset_from_info("parts", info)
    assert spec.files == tuple(str(folder / n) for n in ("a.jsonl", "b.json", "c.csv"))
    answers = [c[-1]["content"] for c in load(["parts"], registry, info)]
    assert answers == ["1", "2", "3"]


def test_an_entry_in_the_file_wins_over_a_registered_name(registry, tmp_path):
    write_json(tmp_path / "mine.json", [{"instruction": "mine", "output": "yes"}])
    info = write_info(tmp_path, {"self-cognition": {"file_name": "mine.json"}})
    args = SimpleNamespace(dataset_info=str(info))
    assert dataset_source("self-cognition", registry, args).files == (
        str(tmp_path / "mine.json"),)
    assert dataset_source("tang-poems", registry, args).name == "tang-poems"
    assert dataset_source("self-cognition", registry).files != (str(tmp_path / "mine.json"),)


@pytest.mark.parametrize("entry, message", [
    ({"file_name": "prefs.json", "ranking": True,
      "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
     r"Dataset 'it' in .*dataset_info\.json is preference data .*DPO/RM tool"),
    ({"file_name": "wiki.json", "columns": {"prompt": "text"}},
     r"Dataset 'it' in .*dataset_info\.json is pre-training text .*prompt column 'text'"),
    ({"file_name": "c4.json", "formatting": "alpaca", "columns": {"prompt": "content"}},
     r"is pre-training text"),
    ({"script_url": "belle_multiturn"},
     r"is loaded by a script \('belle_multiturn'\), which this SDK does not run"),
    ({"columns": {"prompt": "q", "response": "a"}}, r"has no file_name \(nor hf_hub_url"),
    ({"file_name": "missing.json"}, r"file_name '.*missing\.json' does not exist"),
    ({"file_name": "x.json", "formatting": "openai"}, r"formatting 'openai'"),
])
def test_entries_this_sdk_cannot_train_are_refused(tmp_path, entry, message):
    info = write_info(tmp_path, {"it": entry})
    with pytest.raises(SdkError, match=message):
        dataset_from_info("it", info)


def test_an_unknown_name_suggests_the_closest_and_lists_the_names(registry, tmp_path):
    write_json(tmp_path / "a.json", [{"instruction": "a", "output": "b"}])
    info = write_info(tmp_path, {"alpaca_zh": {"file_name": "a.json"},
                                 "u_need": {"file_name": "a.json"}})
    with pytest.raises(SdkError, match=r"'alpaca-zh' is not defined in .*dataset_info\.json\. "
                                       r"Did you mean 'alpaca_zh'\? The names there: "
                                       r"alpaca_zh, u_need"):
        dataset_from_info("alpaca-zh", info)
    # through --dataset: neither registered nor in the file
    with pytest.raises(SdkError, match=r"Unknown dataset 'u-need'.*Nor is it defined in "
                                       r"--dataset-info .*Did you mean 'u_need'\?"):
        load(["u-need"], registry, info)


@pytest.mark.parametrize("content, message", [
    (None, r"'.*nowhere\.json' does not exist"),
    ('{"a": {"file_name": "x.json"},\n}', r"dataset_info\.json:2: not valid JSON"),
    ('["a", "b"]', r"dataset_info\.json: expected a JSON object .* got list"),
])
def test_a_bad_dataset_info_file_is_named(tmp_path, content, message):
    path = tmp_path / ("nowhere.json" if content is None else "dataset_info.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(SdkError, match=message):
        read_dataset_info(path)


def test_sft_with_dataset_info_on_the_tiny_model(run_cli, tiny_plugin_file, tmp_path):
    write_json(tmp_path / "data" / "u_need" / "train.json", [
        {"instruction": "Who are you?", "input": "", "output": "I am Tiny."},
        {"instruction": "Your name?", "input": "", "output": "Tiny."}])
    info = write_info(tmp_path / "data", {"u_need": {
        "file_name": "u_need/train.json",
        "columns": {"prompt": "instruction", "query": "input", "response": "output",
                    "history": ""}}})
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset-info", info, "--dataset", "u_need", "--max-steps", "1",
                     "--batch-size", "1", "--gradient-accumulation-steps", "1",
                     "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "2 training rows" in result.stderr
