"""CSV, Parquet and save_to_disk readers: rows become conversations; errors name the place."""

import csv
import json

import pytest

from sdk.data.conversations import load_conversations
from sdk.data.readers import read_records
from sdk.data.sources import dataset_source
from sdk.errors import SdkError
from sdk.plugins import load_plugins

ALPACA = [
    {"instruction": "Continue the poem.", "input": "床前明月光", "output": "疑是地上霜",
     "system": "You are a poet.", "history": [["Hi", "Hello"]]},
    {"instruction": "Say hi", "input": "", "output": "hi", "system": "", "history": []},
]
QUERY_RESPONSE = [{"query": "q1", "response": "r1"}, {"query": "q2", "response": "r2"}]
POEM = [
    {"role": "system", "content": "You are a poet."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Continue the poem.\n床前明月光"},
    {"role": "assistant", "content": "疑是地上霜"},
]
SAY_HI = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def write_csv(path, records):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        for record in records:
            writer.writerow({key: json.dumps(value, ensure_ascii=False)
                             if isinstance(value, list) else value
                             for key, value in record.items()})
    return path


def test_csv_alpaca_with_history_column_as_json(registry, tmp_path):
    data = write_csv(tmp_path / "alpaca.csv", ALPACA)
    assert load_conversations([str(data)], registry, None) == [POEM, SAY_HI]


def test_csv_query_response_and_lines_count_from_the_header(registry, tmp_path):
    data = write_csv(tmp_path / "qr.csv", QUERY_RESPONSE)
    conversations = load_conversations([str(data)], registry, None)
    assert [c[-1]["content"] for c in conversations] == ["r1", "r2"]
    assert conversations[0][0] == {"role": "user", "content": "q1"}
    assert [where for where, _ in read_records(data)] == [f"{data}:2", f"{data}:3"]


def test_csv_where_is_the_line_a_row_starts_on(tmp_path):
    data = tmp_path / "multi.csv"
    data.write_text('query,response\n\n"two\nlines",r1\nq2,\n', encoding="utf-8")
    rows = list(read_records(data))
    assert rows == [(f"{data}:3", {"query": "two\nlines", "response": "r1"}),
                    (f"{data}:5", {"query": "q2", "response": ""})]


def test_csv_messages_and_sharegpt_cells_are_json(registry, tmp_path):
    data = tmp_path / "chat.csv"
    data.write_text('conversations\n"[{""from"": ""human"", ""value"": ""a""}, '
                    '{""from"": ""gpt"", ""value"": ""[b]""}]"\n', encoding="utf-8")
    [messages] = load_conversations([str(data)], registry, None)
    assert messages[-1] == {"role": "assistant", "content": "[b]"}


@pytest.mark.parametrize("content, message", [
    (b'instruction,output\na,b\n\xff\xfe,b\n', r"bad\.csv:3: not valid UTF-8"),
    (b'instruction,output,history\na,b,[]\nc,d,"[[""x"", ]"\n',
     r"bad\.csv:3: column 'history' is not valid JSON"),
    (b'instruction,output\na,b\nc,\n',
     r"bad\.csv:3: field 'output' is missing or empty \(read as alpaca format\)"),
    (b'instruction,output\na,b,c\n', r"bad\.csv:2: 3 cells but the header has 2 columns"),
])
def test_bad_csv_names_the_file_and_line(registry, tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    with pytest.raises(SdkError, match=message):
        load_conversations([str(bad)], registry, None)


def test_parquet_rows_in_batches(registry, tmp_path):
    import pyarrow
    import pyarrow.parquet

    data = tmp_path / "alpaca.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(ALPACA), data, row_group_size=1)
    assert load_conversations([str(data)], registry, None) == [POEM, SAY_HI]
    assert [where for where, _ in read_records(data)] == [f"{data} (row 1)", f"{data} (row 2)"]

    many = tmp_path / "qr.parquet"
    rows = [{"query": f"q{i}", "response": f"r{i}"} for i in range(2500)]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), many)
    conversations = load_conversations([str(many)], registry, None)
    assert [c[-1]["content"] for c in conversations] == [r["response"] for r in rows]


def test_bad_parquet_names_the_file(registry, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(SdkError, match=r"bad\.parquet: cannot read it as a Parquet file"):
        load_conversations([str(bad)], registry, None)


def test_save_to_disk_folder(registry, tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(folder))
    assert dataset_source(str(folder), registry).files == (str(folder),)
    assert load_conversations([str(folder)], registry, None) == [POEM, SAY_HI]
    assert [where for where, _ in read_records(folder)] == [f"{folder} (row 1)",
                                                            f"{folder} (row 2)"]


def test_dataset_dict_folder_uses_train_or_names_the_splits(registry, tmp_path):
    import datasets

    folder = tmp_path / "dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(QUERY_RESPONSE),
        "test": datasets.Dataset.from_list([{"query": "t", "response": "t"}]),
    }).save_to_disk(str(folder))
    conversations = load_conversations([str(folder)], registry, None)
    assert [c[-1]["content"] for c in conversations] == ["r1", "r2"]

    no_train = tmp_path / "no_train"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(QUERY_RESPONSE),
                          "test": datasets.Dataset.from_list(QUERY_RESPONSE)}
                         ).save_to_disk(str(no_train))
    with pytest.raises(SdkError, match=r"no 'train' split \(its splits: validation, test\)"):
        load_conversations([str(no_train)], registry, None)


def test_plain_folder_and_unknown_extension(registry, tmp_path):
    with pytest.raises(SdkError, match="holds no data files; give a .* or a folder written by "
                                       "datasets' save_to_disk"):
        load_conversations([str(tmp_path)], registry, None)
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(SdkError, match=r"\.csv, \.json, \.jsonl, \.parquet files, or a folder"):
        load_conversations([str(other)], registry, None)
