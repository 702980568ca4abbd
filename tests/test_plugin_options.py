"""Options owned by plugins (issue 20, item 2): a third-party tuner's own flag, end to end."""

import json
import re
import textwrap

from conftest import TINY_MODEL_TYPE, only_run
from sdk.testing import AnyTunerArguments

HEAD_TUNER = """
    from dataclasses import dataclass
    from pathlib import Path

    from sdk import hookimpl
    from sdk.config import arg
    from sdk.specs import Tuner

    @dataclass
    class HeadOptions:
        train_prefix: str = arg("lm_head", "--sft-type head: train the weights whose names "
                                "start with this.", kept_on_resume=True)

    def prepare(model, args, spec):
        Path(args.output_dir, "prepared-with.txt").write_text(args.train_prefix)
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(args.train_prefix)
        return model

    @hookimpl
    def register_tuners(register):
        register(Tuner(name="head", prepare=prepare, load="sdk.tuners.full:load",
                       options=HeadOptions))
"""

# lora_rank is a built-in tuner's option; this plugin defines it otherwise
CLASHING_TUNER = """
    from dataclasses import dataclass

    from sdk import hookimpl
    from sdk.config import arg
    from sdk.specs import Tuner

    @dataclass
    class Clash:
        lora_rank: str = arg("eight", "Another rank.")

    @hookimpl
    def register_tuners(register):
        register(Tuner(name="clash", prepare="sdk.tuners.full:prepare",
                       load="sdk.tuners.full:load", options=Clash))
"""

# a record format that needs an option: the system prompt its rows lack
QA_FORMAT = """
    from dataclasses import dataclass

    from sdk import hookimpl
    from sdk.config import arg
    from sdk.specs import DataFormat

    @dataclass
    class QaOptions:
        qa_system: str = arg("You answer.", "qa format: the system prompt of every row.")

    def to_messages(record, args):
        return [{"role": "system", "content": args.qa_system},
                {"role": "user", "content": record["q"]},
                {"role": "assistant", "content": record["a"]}]

    @hookimpl
    def register_formats(register):
        register(DataFormat(name="qa", detect=lambda record: set(record) == {"q", "a"},
                            to_messages=to_messages, options=QaOptions))
"""


def plugin(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_third_party_tuners_flag_reaches_its_prepare_and_is_saved(
        run_cli, tiny_plugin_file, identity_data, tmp_path):
    head = plugin(tmp_path, "head_tuner", HEAD_TUNER)
    plugins = ("--plugin", tiny_plugin_file, "--plugin", head)
    help_text = run_cli(*plugins, "sft", "--help").stdout
    assert "--train-prefix" in help_text and "train the weights whose names" in help_text
    output = tmp_path / "out"
    output.mkdir()
    result = run_cli(*plugins, "sft", "--model-type", TINY_MODEL_TYPE, "--dataset",
                     identity_data, "--sft-type", "head", "--train_prefix", "model.norm",
                     "--max-steps", "1", "--batch-size", "2", "--save-steps", "1",
                     "--output-dir", output)
    assert result.exit_code == 0, result.output
    assert (output / "prepared-with.txt").read_text() == "model.norm"
    saved = json.loads((only_run(output) / "sft_args.json").read_text())
    assert saved["train_prefix"] == "model.norm"
    assert "lora_rank" not in saved and "num_virtual_tokens" not in saved  # not this tuner's
    refused = run_cli(*plugins, "sft", "--model-type", TINY_MODEL_TYPE, "--dataset",
                      identity_data, "--train-prefix", "model.norm", "--output-dir", output)
    assert refused.exit_code == 1
    assert ("--train-prefix is an option of --sft-type head; this run is --sft-type lora."
            in refused.stderr)
    # its weights' shape depends on the option: a resumed run keeps it
    resumed = run_cli(*plugins, "sft", "--model-type", TINY_MODEL_TYPE, "--dataset",
                      identity_data, "--sft-type", "head", "--train-prefix", "lm_head",
                      "--max-steps", "2", "--output-dir", output,
                      "--resume-from-checkpoint", "auto")
    assert resumed.exit_code == 1
    assert "(--train-prefix 'model.norm' there, 'lm_head' now)" in resumed.stderr


def test_an_option_declared_twice_otherwise_is_an_error_of_that_plugin(run_cli, tmp_path):
    clash = plugin(tmp_path, "clash", CLASHING_TUNER)
    report = {row["name"]: row for row in json.loads(
        run_cli("--plugin", clash, "plugins", "--json").stdout)}
    assert report[str(clash)]["error"] == (
        "tuner 'clash' declares option --lora-rank unlike tuner 'lora' of plugin "
        "sdk.tuners.builtin (type, default, help or range); the first one is used")
    assert report["sdk.tuners.builtin"]["error"] is None
    help_result = run_cli("--plugin", clash, "sft", "--help")
    assert help_result.exit_code == 0 and "LoRA rank." in help_result.stdout


def test_a_tuners_flags_carry_the_help_group_and_the_tuners_that_own_them():
    import click

    from sdk.cli import cli

    root = cli.make_context("sdk", [], resilient_parsing=True)
    sft = cli.get_command(root, "sft")
    flags = {param.name: param for param in sft.get_params(click.Context(sft, parent=root))}
    assert (flags["lora_rank"].group, flags["lora_rank"].tuners) == (
        "tuner", ("lora", "dora", "rslora", "qlora"))
    assert flags["num_virtual_tokens"].tuners == ("prefix", "ptuning", "prompt")


def test_a_run_saved_with_every_tuners_options_still_resumes(lora_run_copy, plugin_set):
    # sft_args.json of runs saved before options moved to their tuners holds every tuner's
    import dataclasses

    from sdk.options import run_arguments
    from sdk.train.resume import resume_checkpoint

    checkpoint = lora_run_copy / "checkpoint-2"
    saved = json.loads((checkpoint / "sft_args.json").read_text())
    older = {**saved, "num_virtual_tokens": 20, "adalora_init_rank": 12,
             "freeze_trainable_layers": 2, "prompt_encoder_hidden_size": 128}
    (checkpoint / "sft_args.json").write_text(json.dumps(older))
    known = {f.name for f in dataclasses.fields(AnyTunerArguments)}
    args = AnyTunerArguments(**{**{key: value for key, value in older.items() if key in known},
                                "resume_from_checkpoint": str(lora_run_copy)})
    registry = plugin_set.registry
    lora = run_arguments(args, registry.get("tuners", "lora"), registry)
    assert not hasattr(lora, "num_virtual_tokens")
    assert resume_checkpoint(lora) == checkpoint


def test_a_tuners_flags_parse_as_core_flags_do(run_cli):
    # several values after a list flag; another tool's spelling gets ours
    listed = run_cli("sft", "--sft-type", "full", "--lora-target-modules", "q_proj", "v_proj")
    assert listed.exit_code == 1
    assert "--lora-target-modules is an option of --sft-type adalora" in listed.stderr
    assert "here it is --lora-rank" in run_cli("sft", "--lora_r", "4").stderr


def test_a_formats_option_reaches_its_conversion(run_cli, tmp_path):
    qa = plugin(tmp_path, "qa_format", QA_FORMAT)
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"q": "Hi?", "a": "Hello."}) + "\n")
    preview = ("--plugin", qa, "datasets", "preview", data, "--template", "chatml")
    assert "system\nBe brief.<|im_end|>" in run_cli(*preview, "--qa-system", "Be brief.").stdout
    assert "system\nYou answer.<|im_end|>" in run_cli(*preview).stdout
    # a run's config file: a tuner's options left out, the format's read
    config = tmp_path / "run.yaml"
    config.write_text("lora_rank: 4\nqa_system: From the config.\n")
    assert "system\nFrom the config.<|im_end|>" in run_cli(*preview, "--config", config).stdout


MIRROR_HUB = """
    from dataclasses import dataclass
    from pathlib import Path

    from sdk import hookimpl
    from sdk.config import arg
    from sdk.hubs import local
    from sdk.specs import DatasetSpec, Hub

    @dataclass
    class MirrorOptions:
        mirror_region: str = arg("eu", "--hub mirror: the region to download from.")

    def download(repo_id, revision="main", ignore_patterns=(), *, options, **keywords):
        return local.download(str(Path(repo_id, options.mirror_region)), revision,
                              ignore_patterns, **keywords)

    def push(folder, repo_id, *, options, **keywords):
        Path(folder, "region.txt").write_text(options.mirror_region)
        return local.push(folder, repo_id, **keywords)

    @hookimpl
    def register_hubs(register):
        register(Hub(name="mirror", download=download, push=push, options=MirrorOptions))

    @hookimpl
    def register_datasets(register):
        register(DatasetSpec(name="mirrored", hub_ids={"mirror": "REPO"}))
"""


def test_a_hubs_options_are_listed_under_hub_and_taken_by_sft(run_cli, tmp_path):
    mirror = plugin(tmp_path, "mirror_hub", MIRROR_HUB.replace("REPO", str(tmp_path)))
    help_text = run_cli("--plugin", mirror, "sft", "--help").stdout
    assert re.search(r"^Hub options:\n(?:  .*\n)*  --mirror-region TEXT", help_text, re.M)
    # not a tuner's: no refusal whatever the tuner
    config = tmp_path / "run.yaml"
    config.write_text("mirror_region: us\nsft_type: full\n")
    refused = run_cli("--plugin", mirror, "sft", "--config", config, "--mirror-region", "asia")
    assert refused.exit_code == 1 and "--model-type is required" in refused.stderr


def test_a_hubs_options_reach_its_download_and_push(run_cli, tmp_path, lora_run_copy,
                                                    tiny_plugin_file):
    mirror = plugin(tmp_path, "mirror_hub", MIRROR_HUB.replace("REPO", str(tmp_path / "repo")))
    for region in ("eu", "us"):
        (tmp_path / "repo" / region).mkdir(parents=True)
        (tmp_path / "repo" / region / "data.jsonl").write_text(json.dumps(
            {"query": "Where?", "response": f"In {region}."}) + "\n")
    preview = ("--plugin", mirror, "datasets", "preview", "mirrored", "--hub", "mirror",
               "--template", "chatml")
    assert "In eu." in run_cli(*preview).stdout  # the option's default
    assert "In us." in run_cli(*preview, "--mirror-region", "us").stdout
    # sdk push: the value the checkpoint was trained with
    checkpoint = lora_run_copy / "checkpoint-2"
    saved = json.loads((checkpoint / "sft_args.json").read_text())
    (checkpoint / "sft_args.json").write_text(json.dumps({**saved, "mirror_region": "asia"}))
    pushed = run_cli("--plugin", mirror, "--plugin", tiny_plugin_file, "push", "--hub", "mirror",
                     "--ckpt-dir", checkpoint, "--repo-id", tmp_path / "pushed")
    assert pushed.exit_code == 0, pushed.output
    assert (tmp_path / "pushed" / "region.txt").read_text() == "asia"
