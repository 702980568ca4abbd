"""Where datasets come from: folders split by file name, hub repositories (through any
registered hub), --dataset-path local copies and --columns renames."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdk.data.conversations import load_conversations
from sdk.data.sources import dataset_source, local_files
from sdk.errors import SdkError
from sdk.plugins import load_plugins

ROWS = [{"instruction": "Say hi", "output": "hi"}, {"instruction": "Say bye", "output": "bye"}]


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def args(**values):
    defaults = dict(dataset_info=None, dataset_path=[], columns=[], hub=None, hub_token=None)
    return SimpleNamespace(**{**defaults, **values})


@pytest.fixture
def hub_registry(tmp_path):
    """Built-ins plus a plugin with a `folders` hub (repos are folders under `repos/`), a
    `huggingface` hub override that serves the same folders, and a hub-only dataset."""
    repos = tmp_path / "repos"
    plugin = tmp_path / "hub_plugin.py"
    plugin.write_text(textwrap.dedent(f"""
        import json
        from pathlib import Path
        from sdk import hookimpl
        from sdk.errors import SdkError
        from sdk.specs import DatasetSpec, Hub

        REPOS = Path({str(repos)!r})
        CALLS = REPOS.parent / "calls.jsonl"

        def download(repo_id, revision="main", ignore_patterns=(), *, repo_type="model",
                     token=None, endpoint=None):
            with CALLS.open("a") as handle:
                handle.write(json.dumps([repo_id, revision, repo_type]) + "\\n")
            folder = REPOS / repo_id
            if not folder.is_dir():
                raise SdkError(f"no repository {{repo_id}}")
            return folder

        def push(folder, repo_id, **settings):
            raise SdkError("read-only")

        @hookimpl
        def register_hubs(register):
            register(Hub("folders", download, push))
            register(Hub("huggingface", download, push), override=True)

        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(name="hub-only", hub_ids={{"folders": "org/hub-only"}},
                                 format="alpaca", split="train"))
    """))
    return load_plugins([str(plugin)]).registry


def calls(tmp_path):
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_folder_gives_the_files_of_its_train_split(tmp_path):
    write_rows(tmp_path / "data" / "train-00000-of-00002.jsonl", ROWS[:1])
    write_rows(tmp_path / "data" / "train-00001-of-00002.jsonl", ROWS[1:])
    write_rows(tmp_path / "data" / "test-00000-of-00001.jsonl", ROWS)
    write_rows(tmp_path / ".cache" / "train.jsonl", ROWS)
    (tmp_path / "README.md").write_text("# card")
    assert local_files(tmp_path, "train", None, "here") == tuple(
        str(tmp_path / "data" / f"train-0000{i}-of-00002.jsonl") for i in (0, 1))
    assert local_files(tmp_path, "test", None, "here") == (
        str(tmp_path / "data" / "test-00000-of-00001.jsonl"),)


def test_files_named_after_no_split_serve_every_split_and_subsets_narrow(tmp_path):
    write_rows(tmp_path / "zh" / "alpaca_gpt4_data_zh.json", ROWS)
    write_rows(tmp_path / "en" / "alpaca_gpt4_data.json", ROWS)
    assert local_files(tmp_path, "train", "zh", "here") == (
        str(tmp_path / "zh" / "alpaca_gpt4_data_zh.json"),)
    assert len(local_files(tmp_path, "train", None, "here")) == 2
    write_rows(tmp_path / "splits" / "train.json", ROWS)
    write_rows(tmp_path / "splits" / "test.json", ROWS)
    with pytest.raises(SdkError, match=r"here: no .* files of split 'validation' in subset "
                                       r"splits .*data files there: splits/test.json, "
                                       r"splits/train.json"):
        local_files(tmp_path, "validation", "splits", "here")


def test_a_registered_hub_dataset_is_downloaded_as_a_dataset_repo(hub_registry, tmp_path):
    write_rows(tmp_path / "repos" / "org" / "hub-only" / "train.jsonl", ROWS)
    write_rows(tmp_path / "repos" / "org" / "hub-only" / "test.jsonl", ROWS[:1])
    spec = dataset_source("hub-only", hub_registry, args(hub="folders"))
    assert spec.files == (str(tmp_path / "repos" / "org" / "hub-only" / "train.jsonl"),)
    assert calls(tmp_path) == [["org/hub-only", "main", "dataset"]]
    # --hub names a hub the dataset is not on: its first hub is used
    conversations = load_conversations(["hub-only"], hub_registry, args(hub="local"))
    assert [c[-1]["content"] for c in conversations] == ["hi", "bye"]


def test_a_hub_dataset_id_is_downloaded_from_the_hub(hub_registry, tmp_path):
    write_rows(tmp_path / "repos" / "someone" / "chats" / "data.jsonl", ROWS)
    conversations = load_conversations(["someone/chats#1"], hub_registry,
                                       args(hub="folders", seed=1))
    assert len(conversations) == 1
    assert calls(tmp_path) == [["someone/chats", "main", "dataset"]]
    with pytest.raises(SdkError, match=r"Dataset 'someone/missing' \(folders dataset "
                                       r"someone/missing\) could not be downloaded: no "
                                       r"repository someone/missing 'someone/missing' is not a "
                                       r"local file or folder either.*--dataset-path"):
        dataset_source("someone/missing", hub_registry, args(hub="folders"))


def test_dataset_info_hub_entries_download_through_their_hub(hub_registry, tmp_path):
    write_rows(tmp_path / "repos" / "tatsu" / "alpaca" / "sub" / "train.jsonl",
               [{"q": "Say hi", "a": "hi"}])
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"mine": {"hf_hub_url": "tatsu/alpaca", "folder": "sub",
                                         "columns": {"prompt": "q", "response": "a"}}}))
    conversations = load_conversations(["mine"], hub_registry,
                                       args(dataset_info=str(info), hub="modelscope"))
    assert conversations == [[{"role": "user", "content": "Say hi"},
                              {"role": "assistant", "content": "hi"}]]
    assert calls(tmp_path) == [["tatsu/alpaca", "main", "dataset"]]


def test_dataset_path_reads_a_local_copy_instead_of_the_hub(hub_registry, tmp_path):
    copy = write_rows(tmp_path / "copy.jsonl", ROWS[:1])
    conversations = load_conversations(
        ["hub-only"], hub_registry, args(hub="folders", dataset_path=[f"hub-only={copy}"]))
    assert [c[-1]["content"] for c in conversations] == ["hi"]
    assert calls(tmp_path) == []  # the hub was not asked
    with pytest.raises(SdkError, match=r"--dataset-path 'hub-only': give NAME=PATH"):
        dataset_source("hub-only", hub_registry, args(dataset_path=["hub-only"]))
    with pytest.raises(SdkError, match=r"--dataset-path hub-only=/nowhere: '/nowhere' does not "
                                       r"exist"):
        dataset_source("hub-only", hub_registry, args(dataset_path=["hub-only=/nowhere"]))


def test_columns_rename_fields_before_the_format_is_detected(hub_registry, tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\nWho are you?,A test.\n", encoding="utf-8")
    conversations = load_conversations(
        [str(data)], hub_registry, args(columns=["question=query", "answer=response"]))
    assert conversations == [[{"role": "user", "content": "Who are you?"},
                              {"role": "assistant", "content": "A test."}]]
    with pytest.raises(SdkError, match=r"--columns 'question': give FIELD=OURS"):
        load_conversations([str(data)], hub_registry, args(columns=["question"]))
    with pytest.raises(SdkError, match=r"qa\.csv.*cannot tell the format.*question, answer"):
        load_conversations([str(data)], hub_registry, args())


def preview(*args: str, env: dict) -> subprocess.CompletedProcess:
    """`sdk datasets preview` in its own process (the hub clients read endpoints from the
    environment there)."""
    sdk = Path(sys.executable).with_name("sdk")
    return subprocess.run([str(sdk), "datasets", "preview", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.slow
def test_a_hub_dataset_id_downloads_from_the_hugging_face_hub(hf_hub_server):
    rows = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    hf_hub_server.add_repo("someone/greetings", {"data/train-00000-of-00001.jsonl": rows,
                                                 "data/test-00000-of-00001.jsonl": b"{}\n",
                                                 "README.md": b"# card"},
                           repo_type="dataset")
    result = preview("someone/greetings", "--template", "chatml", "--hub", "huggingface",
                     env={"HF_ENDPOINT": hf_hub_server.url})
    assert result.returncode == 0, result.stderr
    assert "2 rows from someone/greetings" in result.stdout
    assert "[[bye<|im_end|>]]" in result.stdout
    assert any("/datasets/someone/greetings" in path for _, path in hf_hub_server.requests)


@pytest.mark.slow
def test_alpaca_zh_downloads_from_modelscope(ms_hub_server):
    csv = ("instruction,input,output\n将以下句子翻译成英文。,输入：今天天气很好。,"
           "The weather is nice today.\n").encode()
    ms_hub_server.add_repo("AI-ModelScope/alpaca-gpt4-data-zh", {"train.csv": csv},
                           repo_type="dataset")
    result = preview("alpaca-zh", "--template", "chatml", "--hub", "modelscope",
                     env={"MODELSCOPE_ENDPOINT": ms_hub_server.url})
    assert result.returncode == 0, result.stderr
    assert "1 rows from alpaca-zh" in result.stdout
    assert "将以下句子翻译成英文。\n今天天气很好。" in result.stdout  # the marker is dropped
