"""The Tang poem datasets: 5001 training rows and 15 test rows joined with their ground truth."""

import json

import pytest
from sft_plugin_tang_poems import (
    GROUND_TRUTH_FILE,
    TESTING_FILE,
    TESTING_WITH_GT_FILE,
    TRAINING_FILE,
)
from sft_plugin_tang_poems.build import build_rows, ground_truth_to_output

from conftest import TINY_MODEL_TYPE
from sdk.data.conversations import load_conversations
from sdk.plugins import load_plugins


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_bundled_files_have_5001_and_15_rows():
    training = json.loads(TRAINING_FILE.read_text(encoding="utf-8"))
    assert len(training) == 5001
    assert all(set(row) == {"instruction", "input", "output"} and all(row.values())
               for row in training)
    assert len(json.loads(TESTING_FILE.read_text(encoding="utf-8"))) == 15
    assert len(GROUND_TRUTH_FILE.read_text(encoding="utf-8").splitlines()) == 15
    assert len(read_jsonl(TESTING_WITH_GT_FILE)) == 15


def test_tabs_become_the_punctuation_of_the_training_outputs():
    assert (ground_truth_to_output("何當共剪西窗燭\t卻話巴山夜雨時")
            == "何當共剪西窗燭，卻話巴山夜雨時。")
    assert ground_truth_to_output("a\tb\tc\td\n") == "a，b。c，d。"


def test_every_test_row_is_its_prompt_with_the_ground_truth_as_output():
    rows = read_jsonl(TESTING_WITH_GT_FILE)
    prompts = json.loads(TESTING_FILE.read_text(encoding="utf-8"))
    truths = GROUND_TRUTH_FILE.read_text(encoding="utf-8").splitlines()
    for row, prompt, truth in zip(rows, prompts, truths, strict=True):
        assert set(row) == {"instruction", "input", "output"} and all(row.values())
        assert (row["instruction"], row["input"]) == (prompt["instruction"], prompt["input"])
        assert row["output"] == ground_truth_to_output(truth)
        assert "\t" not in row["output"] and row["output"].endswith("。")
    assert rows == build_rows()  # the shipped file is what the build script makes now


def test_training_conversations_ask_with_instruction_and_first_couplet(registry):
    rows = json.loads(TRAINING_FILE.read_text(encoding="utf-8"))
    conversations = load_conversations(["tang-poems"], registry, None)
    assert len(conversations) == 5001
    for row, conversation in zip(rows, conversations, strict=True):
        assert conversation == [
            {"role": "user", "content": row["instruction"] + "\n" + row["input"]},
            {"role": "assistant", "content": row["output"]},
        ]
    assert len(load_conversations(["tang-poems-test"], registry, None)) == 15


def test_sdk_datasets_lists_both_with_the_mit_licence(run_cli):
    result = run_cli("datasets", "--json")
    assert result.exit_code == 0, result.output
    listed = {entry["name"]: entry for entry in json.loads(result.stdout)}
    for name in ("tang-poems", "tang-poems-test"):
        assert listed[name]["license"] == "MIT"
        assert listed[name]["plugin"] == "sft-plugin-tang-poems"


def test_two_training_steps_on_the_test_set(run_cli, tiny_plugin_file, tmp_path):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", "tang-poems-test", "--max-steps", "2", "--batch-size", "2",
                     "--gradient-accumulation-steps", "1", "--output-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert list(tmp_path.glob(f"{TINY_MODEL_TYPE}/v*/checkpoint-2/sft_args.json"))
