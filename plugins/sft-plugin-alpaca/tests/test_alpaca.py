"""The Alpaca-GPT4 datasets: registered by hub id, readable from a local copy."""

from types import SimpleNamespace

import pytest

from sdk.data.conversations import load_conversations
from sdk.plugins import load_plugins

# The first rows of AI-ModelScope/alpaca-gpt4-data-zh's train.csv, in its layout
ZH_CSV = """instruction,input,output
保持健康的三个提示。,,以下是保持健康的三个提示：……
将以下句子翻译成英文。,输入：今天天气很好。,The weather is nice today.
"""


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def test_both_languages_are_registered_on_both_hubs(registry):
    for name in ("alpaca-zh", "alpaca-en"):
        spec = registry.get("datasets", name)
        assert set(spec.hub_ids) == {"huggingface", "modelscope"}
        assert spec.files == () and spec.format == "alpaca"


def test_a_local_copy_is_read_and_the_input_marker_dropped(registry, tmp_path):
    copy = tmp_path / "alpaca-gpt4-data-zh"
    copy.mkdir()
    (copy / "train.csv").write_text(ZH_CSV, encoding="utf-8")
    args = SimpleNamespace(dataset_path=[f"alpaca-zh={copy}"], hub="modelscope")
    conversations = load_conversations(["alpaca-zh"], registry, args)
    assert conversations[1] == [
        {"role": "user", "content": "将以下句子翻译成英文。\n今天天气很好。"},
        {"role": "assistant", "content": "The weather is nice today."}]
    assert conversations[0][0] == {"role": "user", "content": "保持健康的三个提示。"}
