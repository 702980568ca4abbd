"""The self-cognition dataset: 100 rows, placeholders filled from --model-name/--model-author."""

import json

import pytest
from sft_plugin_self_cognition import DATA_FILE

from sdk.config import SftArguments
from sdk.data.conversations import load_conversations
from sdk.errors import SdkError
from sdk.plugins import load_plugins


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def test_the_bundled_file_has_100_rows_in_two_languages():
    rows = [json.loads(line) for line in DATA_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 100
    assert sum(r["tag"] == "en" for r in rows) == sum(r["tag"] == "zh" for r in rows) == 50
    assert all("{{NAME}}" in r["response"] for r in rows)


def test_two_names_are_chinese_then_english(registry):
    args = SftArguments(model_name=["雪貂", "Ferret"], model_author=["测试团队", "the tests"])
    conversations = load_conversations(["self-cognition"], registry, args)
    replies = {c[0]["content"]: c[-1]["content"] for c in conversations}
    assert "Ferret" in replies["Who are you?"] and "the tests" in replies["Who are you?"]
    assert "雪貂" in replies["你是谁？"]
    assert not any("{{" in c[-1]["content"] for c in conversations)


def test_one_name_serves_both_languages(registry):
    args = SftArguments(model_name=["Ferret"], model_author=["Acme"])
    conversations = load_conversations(["self-cognition"], registry, args)
    assert all("Ferret" in c[-1]["content"] for c in conversations)


@pytest.mark.parametrize("names, authors, message", [
    ([], ["Acme"], "needs --model-name"),
    (["Ferret"], [], "needs --model-author"),
    (["a", "b", "c"], ["Acme"], "takes one value, or two"),
])
def test_missing_or_extra_names_are_clear_errors(registry, names, authors, message):
    args = SftArguments(model_name=names, model_author=authors)
    with pytest.raises(SdkError, match=message):
        load_conversations(["self-cognition"], registry, args)
