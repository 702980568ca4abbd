"""The data report of `sdk sft --dry-run` (sdk/data/report.py): rows per --dataset entry and
split, what --max-length did, token lengths, and the flagged rows named by file:line."""

import json

import pytest

from conftest import TOKENIZERS
from sdk.config import SftArguments
from sdk.data.arrow import training_and_held_out
from sdk.data.encode import EncodeSettings
from sdk.data.report import (
    NO_TRAINED_TOKEN,
    OPEN_END,
    SYSTEM_DROPPED,
    Distribution,
    data_report,
)
from sdk.templates.engine import Template


@pytest.fixture(scope="module")
def registry():
    from sdk.plugins import load_plugins

    return load_plugins([]).registry


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")


def write(path, conversations):
    path.write_text("".join(json.dumps({"messages": messages}) + "\n"
                            for messages in conversations))
    return path


def chat(question, reply, system=None):
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": reply}]


def report(registry, tokenizer, tmp_path, template="chatml", **flags):
    args = SftArguments(output_dir=str(tmp_path / "out"), **flags)
    train, held_out = training_and_held_out(args, registry, None)
    spec = registry.get("templates", template)
    settings = EncodeSettings(Template.for_tokenizer(spec, tokenizer), tokenizer,
                              args.max_length, args.loss_scope, args.truncation_strategy)
    result = data_report(train, held_out, settings)
    assert json.loads(json.dumps(result.as_dict())) == result.as_dict()
    return result


def flagged(result, kind):
    return [flag for flag in result.flags if flag.kind == kind]


def test_rows_per_dataset_and_split_and_their_token_lengths(registry, tokenizer, tmp_path):
    first = write(tmp_path / "a.jsonl", [chat(f"q{i}", "word " * i) for i in range(1, 7)])
    second = write(tmp_path / "b.jsonl", [chat("hi", "ok")] * 3)
    result = report(registry, tokenizer, tmp_path, dataset=[str(first), f"{second}#4"],
                    split_dataset_ratio=0.2)
    train, held_out = result.split("train"), result.split("held-out")
    assert (train.rows, held_out.rows) == (8, 2)
    totals: dict[str, int] = {}
    for split in (train, held_out):
        for source in split.sources:
            totals[source.source] = totals.get(source.source, 0) + source.rows
            assert source.kept == source.rows and not (source.truncated or source.deleted)
    assert totals == {f"--dataset {first}": 6, f"--dataset {second}#4": 4}
    assert result.flags == [] and "Flags: none" in result.text()

    template = Template.for_tokenizer(registry.get("templates", "chatml"), tokenizer)
    whole = report(registry, tokenizer, tmp_path / "all", dataset=[str(first)],
                   val_dataset=[str(second)])
    lengths = [len(template.encode(tokenizer, chat(f"q{i}", "word " * i))[0])
               for i in range(1, 7)]
    assert whole.split("train").tokens == Distribution.of(lengths)
    assert whole.split("train").tokens.min == lengths[0] < lengths[-1] == whole.split(
        "train").tokens.max
    assert [source.source for source in whole.split("held-out").sources] == [
        f"--val-dataset {second}"]
    text = whole.text()
    assert f"--dataset {first}: 6 rows, 6 kept" in text
    assert f"tokens per row: {whole.split('train').tokens.text()}" in text


def test_distribution():
    assert Distribution.of(range(100, 0, -1)) == Distribution(1, 50, 91, 100, 100)
    assert Distribution.of([7, 3, 5, 4]) == Distribution(3, 4, 7, 7, 7)
    assert Distribution.of([]) is None


@pytest.fixture
def cut_data(tmp_path):
    return write(tmp_path / "cut.jsonl", [
        chat("hi", "ok"),
        chat("a long question " * 20, "ok"),  # --max-length cuts the whole reply off
        chat("short", "a very long reply " * 20),  # cut inside its reply
        chat("hi", "ok") + [{"role": "user", "content": "more " * 40},  # cut in a question
                            {"role": "assistant", "content": "fine"}],
    ])


def test_rows_with_no_trained_token_and_replies_cut_before_their_end_are_flagged(
        registry, tokenizer, tmp_path, cut_data):
    result = report(registry, tokenizer, tmp_path, dataset=[str(cut_data)], max_length=30)
    (train,) = result.splits
    (source,) = train.sources
    assert (source.rows, source.kept, source.truncated, source.dropped) == (4, 3, 2, 1)
    (empty,) = flagged(result, NO_TRAINED_TOKEN)
    assert (empty.split, empty.count, empty.rows) == ("train", 1, [f"{cut_data}:2"])
    (open_end,) = flagged(result, OPEN_END)  # not row 4: its first reply ends before the cut
    assert (open_end.count, open_end.rows) == (1, [f"{cut_data}:3"])
    assert train.longest_before_cut > 30 and train.tokens.max == 30
    text = result.text()
    assert f"train: 1 row with no trained token (left out): {cut_data}:2\n" in text
    assert "train: 1 row whose last reply --max-length 30 cuts before its end-of-turn" in text
    assert f"--truncation-strategy delete): {cut_data}:3" in text


@pytest.mark.parametrize("strategy", ["truncation_left", "delete"])
def test_a_reply_keeps_its_end_under_the_other_strategies(registry, tokenizer, tmp_path,
                                                          cut_data, strategy):
    result = report(registry, tokenizer, tmp_path, dataset=[str(cut_data)], max_length=30,
                    truncation_strategy=strategy)
    assert flagged(result, OPEN_END) == []
    (source,) = result.splits[0].sources
    assert source.deleted == (3 if strategy == "delete" else 0)


def test_a_template_that_drops_the_system_prompt_is_flagged_with_the_rows_that_have_one(
        registry, tokenizer, tmp_path):
    data = write(tmp_path / "system.jsonl", [chat("hi", "ok"),
                                             chat("who?", "Ferret.", system="You are Ferret."),
                                             chat("hi", "ok", system="Be brief.")])
    result = report(registry, tokenizer, tmp_path, "mistral-v0.3", dataset=[str(data)])
    (system,) = flagged(result, SYSTEM_DROPPED)
    assert (system.split, system.count, system.rows) == ("all", 2, [f"{data}:2", f"{data}:3"])
    assert "template mistral-v0.3 leaves the system prompt out" in result.text()
    assert flagged(report(registry, tokenizer, tmp_path / "chatml", dataset=[str(data)]),
                   SYSTEM_DROPPED) == []



def test_a_row_the_template_cannot_render_is_named_by_file_and_line(registry, tokenizer,
                                                                    tmp_path):
    from sdk.data.arrow import tokenized_dataset
    from sdk.errors import SdkError
    from sdk.specs import TemplateSpec

    data = write(tmp_path / "d.jsonl", [chat("hi", "ok"), chat("hi", "ok", system="Be brief.")])
    strict = Template(TemplateSpec(name="no-system", jinja=(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")))
    train, _ = training_and_held_out(SftArguments(dataset=[str(data)],
                                                  output_dir=str(tmp_path)), registry, None)
    with pytest.raises(SdkError, match=f"^{data}:2: the row cannot be rendered with template "
                                       "'no-system': no system role"):
        tokenized_dataset(train, EncodeSettings(strict, tokenizer, 100), 1)
