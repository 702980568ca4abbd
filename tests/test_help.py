"""`--help` of the commands built from arguments dataclasses: options under headings by
concern, only the chosen tuner's options with `--sft-type X`, and a preview's options only."""

import dataclasses
import re

import pytest
from click.testing import CliRunner

from sdk.cli import Flag, SdkCommand, sft
from sdk.config import (
    OPTION_GROUPS,
    DeployArguments,
    ExportArguments,
    InferArguments,
    PreviewArguments,
    SftArguments,
)


def sections(help_text: str) -> dict[str, str]:
    """Each heading of a help text (``Data options``) with the lines under it."""
    parts = re.split(r"^(\S[^\n]*) options(?: \(--sft-type \S+\))?:$", help_text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def flags_in(text: str) -> list[str]:
    return re.findall(r"^  (?:-\w, )?(--[\w-]+)", text, flags=re.M)


def test_sft_help_lists_the_options_by_concern_in_order(run_cli):
    result = run_cli("sft", "--help")
    assert result.exit_code == 0, result.output
    found = sections(result.stdout)
    assert list(found) == ["Model", "Data", "Tuner", "Training", "Performance", "Checkpoint",
                           "Hub", "Logging and evaluation", "Other"]
    assert "--deepspeed" in flags_in(found["Performance"])
    assert flags_in(found["Tuner"])[0] == "--sft-type"
    assert {"--lora-rank", "--adalora-init-rank", "--num-virtual-tokens"} <= set(
        flags_in(found["Tuner"]))
    assert flags_in(found["Hub"]) == ["--hub", "--push-to-hub", "--hub-model-id",
                                      "--hub-private-repo", "--hub-token",
                                      "--push-hub-strategy", "--push-training-state",
                                      "--push-gguf"]
    assert flags_in(found["Other"]) == ["--config", "--dry-run", "--json", "--help"]
    listed = [flag for text in found.values() for flag in flags_in(text)]
    assert len(listed) == len(set(listed)) and {p.opts[0] for p in sft.params} <= set(listed)
    # the descriptions of all sections in one column, as in click's single list
    columns = {match.end(2) - match.start()
               for match in re.finditer(r"^  (--\S+(?: \S+)?)( {2,})\S", result.stdout, re.M)}
    assert len(columns) == 1


@pytest.mark.parametrize("command, headings", [
    ("infer", ["Model", "Generation", "Prediction (--dataset)", "Performance", "Hub", "Other"]),
    ("deploy", ["Model", "Generation", "Server", "Performance", "Hub", "Other"]),
    ("export", ["Model", "Output", "Other"]),
])
def test_other_commands_group_their_options_too(run_cli, command, headings):
    result = run_cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert list(sections(result.stdout)) == headings


@pytest.mark.parametrize("cls", [InferArguments, DeployArguments, ExportArguments,
                                 PreviewArguments, SftArguments])
def test_every_core_field_has_a_heading(cls):
    groups = {f.name: f.metadata["group"] for f in dataclasses.fields(cls)}
    assert set(groups.values()) <= set(OPTION_GROUPS)


def fake_sft() -> SdkCommand:
    """`sdk sft` with two options as a tuner's options class gives them."""
    rank = Flag(["--fake-rank"], group="tuner", type=int, help="Rank of the fake adapters.")
    tokens = Flag(["--fake-tokens"], group="tuner", type=int, help="Fake virtual tokens.")
    rank.tuners, tokens.tuners = ("lora", "dora"), ("prefix",)
    return SdkCommand("sft", params=[*sft.params, rank, tokens], callback=sft.callback)


@pytest.mark.parametrize("chosen", [["--sft-type", "dora"], ["--sft_type=dora"],
                                    ["--sft-type", "full", "--sft-type", "dora"]])
def test_sft_help_with_a_tuner_shows_only_that_tuners_options(chosen):
    result = CliRunner().invoke(fake_sft(), [*chosen, "--help"], prog_name="sdk sft")
    assert result.exit_code == 0, result.output
    assert "\nTuner options (--sft-type dora):\n" in result.stdout
    assert "--fake-rank INTEGER" in result.stdout and "--fake-tokens" not in result.stdout
    assert "[tuners:" not in result.stdout


def test_sft_help_without_a_tuner_says_which_tuners_use_an_option():
    result = CliRunner().invoke(fake_sft(), ["--help"], prog_name="sdk sft")
    assert result.exit_code == 0, result.output
    tuner = " ".join(sections(result.stdout)["Tuner"].split())
    assert "Rank of the fake adapters. [tuners: lora, dora]" in tuner
    assert "Fake virtual tokens. [tuners: prefix]" in tuner


def test_preview_help_lists_only_what_changes_a_preview(run_cli):
    result = run_cli("datasets", "preview", "--help")
    assert result.exit_code == 0, result.output
    found = sections(result.stdout)
    assert list(found) == ["Model", "Data", "Hub", "Other"]
    listed = {flag for text in found.values() for flag in flags_in(text)}
    assert {"--model-type", "--template", "--system", "--dataset", "--max-length",
            "--truncation-strategy", "--loss-scope", "--skip-bad-records", "--model-name",
            "--seed", "--num", "--hub", "--trust-remote-code"} <= listed
    for flag in ("--deepspeed", "--learning-rate", "--lora-rank", "--push-to-hub",
                 "--output-dir", "--dtype", "--packing"):
        assert flag not in listed
    refused = run_cli("datasets", "preview", "x.jsonl", "--learning-rate", "1e-4")
    assert refused.exit_code == 2
    assert ("No such option '--learning-rate': it is an option of `sdk sft` that does not "
            "change what this command does; leave it out.") in refused.stderr
