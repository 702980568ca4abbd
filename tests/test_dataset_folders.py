"""A dataset folder whose files are in different record formats: each file's format is
detected on its own first record (as when the files are given as separate --dataset entries);
a format that is forced applies to every file."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.data.conversations import load_conversations
from sdk.errors import SdkError
from sdk.plugins import load_plugins

REGISTRY = load_plugins().registry
ALPACA = [{"instruction": "Say hi", "input": "", "output": "hi"},
          {"instruction": "Translate", "input": "chat", "output": "cat"}]
SHAREGPT = [{"conversations": [{"from": "human", "value": "Who are you?"},
                               {"from": "gpt", "value": "Tiny."}]}]


def args(**values):
    defaults = dict(dataset_info=None, dataset_path=[], columns=[], hub=None, hub_token=None)
    return SimpleNamespace(**{**defaults, **values})


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """An alpaca .json file and a sharegpt .jsonl file side by side."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_alpaca.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    (folder / "b_chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SHAREGPT),
                                          encoding="utf-8")
    return folder


def test_each_file_of_a_folder_is_read_in_its_own_format(mixed_folder):
    assert load_conversations([str(mixed_folder)], REGISTRY, args()) == [
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "Translate\nchat"}, {"role": "assistant", "content": "cat"}],
        [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Tiny."}],
    ]


def test_a_forced_format_applies_to_every_file(mixed_folder):
    with pytest.raises(SdkError) as error:
        load_conversations([str(mixed_folder)], REGISTRY, args(), format_name="alpaca")
    assert str(error.value).startswith(f"{mixed_folder / 'b_chats.jsonl'}:1: ")
    assert "(read as alpaca format)" in str(error.value)


def test_a_dataset_info_entry_reads_every_file_of_its_folder_with_its_formatting(
        mixed_folder, tmp_path):
    """A dataset_info.json entry declares its formatting (alpaca by default), as LLaMA-Factory
    reads it: every file of its folder is read that way, so the sharegpt file is refused."""
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"mine": {"file_name": str(mixed_folder)}}))
    with pytest.raises(SdkError, match=r"b_chats\.jsonl:1: .*\(read as alpaca format\)"):
        load_conversations(["mine"], REGISTRY, args(dataset_info=str(info)))


def test_sft_trains_on_every_file_of_a_mixed_folder(run_cli, tiny_plugin_file, mixed_folder,
                                                    tmp_path):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", mixed_folder, "--max-steps", "1", "--batch-size", "2",
                     "--gradient-accumulation-steps", "1", "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert int(re.search(r"\[sdk\] data: (\d+) training rows", result.stderr).group(1)) == 3
