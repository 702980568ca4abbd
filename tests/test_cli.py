"""The command line: light startup, flag spellings, config files, clean errors."""

import json
import re
import subprocess
import sys

import pytest

from sdk.config import SftArguments, build_arguments
from sdk.errors import SdkError

LIGHT_COMMANDS = [["--help"], ["plugins"], ["plugins", "check"], ["models"], ["templates"],
                  ["datasets"], ["tuners"], ["hubs"], ["sft", "--help"],
                  ["datasets", "preview", "--help"], ["web-ui", "--help"]]


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_listing_commands_import_neither_torch_nor_transformers(args):
    code = ("import sys; from sdk.cli import main; sys.argv = ['sdk', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'gradio') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_loading_libraries_after_sdk_prints_no_kernel_warnings():
    # torchao (via peft) and bitsandbytes warn at import about kernels the SDK never uses;
    # every `sdk infer` and `sdk sft` printed those lines before its own output
    result = subprocess.run([sys.executable, "-c", "import sdk, peft, bitsandbytes"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_version(run_cli):
    from sdk import __version__

    result = run_cli("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_models_json_lists_ids_per_hub_and_plugin(run_cli):
    rows = json.loads(run_cli("models", "--json").stdout)
    smollm = next(r for r in rows if r["model_type"] == "smollm2-135m-instruct")
    assert smollm["family"] == "smollm" and smollm["template"] == "smollm2"
    assert smollm["hub_ids"]["huggingface"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert smollm["plugin"] == "sft-plugin-smollm"


def test_models_says_how_each_type_loads(run_cli):
    lines = {line.split()[0]: line for line in run_cli("models").stdout.splitlines()[1:]}
    assert "converted to qwen2" in lines["qwen-7b-chat-int4"]
    assert "converted to glm" in lines["chatglm3-6b"]
    assert "as published" in lines["qwen2.5-7b-instruct"]
    assert " refused " in lines["baichuan2-13b-chat"]
    rows = {r["model_type"]: r for r in json.loads(run_cli("models", "--json").stdout)}
    assert rows["internlm2-chat-7b"]["converted_to"] == "llama"
    assert "ALiBi" in rows["baichuan2-13b-chat"]["unsupported"]
    assert rows["llama3-8b-instruct"]["unsupported"] is None


@pytest.mark.parametrize("spelling", ["--model-type", "--model_type"])
def test_both_flag_spellings_are_accepted(run_cli, spelling):
    result = run_cli("sft", spelling, "smollm2-135m-instrct", "--dataset", "x.jsonl")
    assert result.exit_code == 1
    assert "Unknown model type 'smollm2-135m-instrct'" in result.stderr
    assert "Did you mean 'smollm2-135m-instruct'?" in result.stderr


def test_an_unknown_flag_is_a_usage_error_with_a_suggestion(run_cli):
    result = run_cli("sft", "--model-type", "x", "--learning-rat", "1")
    assert result.exit_code == 2
    assert "No such option '--learning-rat'" in result.stderr
    assert "--learning-rate" in result.stderr


def test_a_missing_dataset_file_fails_before_the_model_loads(run_cli, tmp_path, monkeypatch):
    def load_model(*args, **kwargs):
        raise AssertionError("the model loaded before the data was read")

    monkeypatch.setattr("sdk.train.sft.load_model", load_model)
    result = run_cli("sft", "--model-type", "smollm2-135m-instruct",
                     "--dataset", tmp_path / "missing.jsonl")
    assert result.exit_code == 1
    assert "missing.jsonl' does not exist" in result.stderr


def test_a_record_without_the_fields_its_format_needs_names_file_and_line(run_cli, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    result = run_cli("sft", "--model-type", "smollm2-135m-instruct", "--dataset", data)
    assert result.exit_code == 1
    assert f"{data}:2: field 'output' is missing or empty" in result.stderr


def test_list_flags_take_several_values_and_booleans_work_with_or_without_value(tmp_path):
    from click.testing import CliRunner

    from sdk.cli import SdkCommand, given, options_from

    seen = {}

    @options_from(SftArguments)
    def command(config_file, **params):
        seen.update(given(params))

    runner = CliRunner()
    cli = SdkCommand("sft", callback=command, params=command.__click_params__)
    result = runner.invoke(cli, ["--dataset", "a", "b,c", "--model_name", "雪貂", "Ferret",
                                 "--gradient-checkpointing", "--trust_remote_code", "false"])
    assert result.exit_code == 0, result.output
    arguments = build_arguments(SftArguments, seen)
    assert arguments.dataset == ["a", "b", "c"]
    assert arguments.model_name == ["雪貂", "Ferret"]
    assert arguments.gradient_checkpointing is True and arguments.trust_remote_code is False


def test_config_file_values_are_overridden_by_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model_type: smollm2-135m-instruct\nlearning-rate: 1e-4\n"
                      "dataset: [a, b]\nnum_train_epochs: 2\n")
    arguments = build_arguments(SftArguments, {"num_train_epochs": 5.0}, str(config))
    assert arguments.model_type == "smollm2-135m-instruct"
    assert arguments.learning_rate == 1e-4 and arguments.dataset == ["a", "b"]
    assert arguments.num_train_epochs == 5.0


@pytest.mark.parametrize("text, message", [
    ("learning_rat: 1e-4\n", "unknown option 'learning_rat' (did you mean 'learning_rate'?)"),
    ("max_steps: many\n", "option 'max_steps': expected int"),
    ("- a\n- b\n", "should hold a mapping"),
    ("dataset: {a.jsonl: 1}\n",
     "option 'dataset': expected a list of values (or one text, commas between values)"),
    ("model_type: [qwen]\n", "option 'model_type': expected one value, got ['qwen']"),
    ("max-length: 512\nmax_length: 1024\n",
     "sets an option twice: 'max-length' and 'max_length'. Keep one of each."),
])
def test_bad_config_files_are_named(tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with pytest.raises(SdkError, match=re.escape(message)):
        build_arguments(SftArguments, {}, str(config))


def test_a_llama_factory_config_reads_as_ours_and_names_its_unknown_keys(tmp_path):
    config = tmp_path / "llama_factory.yaml"
    config.write_text("model_name_or_path: /models/qwen\nstage: sft\nfinetuning_type: lora\n"
                      "cutoff_len: 1024\nbf16: true\ndataset: alpaca_zh\n")
    arguments = build_arguments(SftArguments, {}, str(config))
    assert (arguments.model_id_or_path, arguments.sft_type, arguments.max_length,
            arguments.dtype, arguments.dataset) == ("/models/qwen", "lora", 1024, "bf16",
                                                    ["alpaca_zh"])
    config.write_text("cutoff_len: 1024\nlr: 1.0e-4\nmax_sample: 3\n")
    with pytest.raises(SdkError) as error:
        build_arguments(SftArguments, {}, str(config))
    assert str(error.value) == (
        f"Config file '{config}': unknown options 'lr' (here: learning_rate), 'max_sample' "
        "(did you mean 'max_samples'?). `sdk sft --help` lists the options.")


def test_a_bad_choice_names_the_flag():
    with pytest.raises(SdkError, match="--loss-scope must be one of all, last"):
        build_arguments(SftArguments, {"loss_scope": "first"})


def sdk_subprocess(*args, cwd=None):
    """`sdk ARGS` as a user runs it: a separate process, so a traceback would show."""
    from pathlib import Path

    sdk = str(Path(sys.executable).with_name("sdk"))
    return subprocess.run([sdk, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("config_text, message", [
    ("model_type: [a\n", "is not valid YAML"),
    ("a: 1\n---\nb: 2\n", "is not valid YAML"),
    ("model_type: 123\n", "option 'model_type': expected text"),
    ("batch_size: true\n", "option 'batch_size': expected int"),
    ("max_length: 1.5\n", "option 'max_length': expected int"),
])
def test_bad_config_files_give_a_message_not_a_traceback(tmp_path, config_text, message):
    config = tmp_path / "run.yaml"
    config.write_text(config_text)
    result = sdk_subprocess("sft", "--config", config)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_config_file_that_is_not_utf8(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"model_type: \xff\xfe\n")
    result = sdk_subprocess("sft", "--config", config)
    assert result.returncode == 1 and "is not UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1; got 0"),
    (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be at least 1"),
    (["--logging-steps", "0"], "--logging-steps must be at least 1"),
    (["--lora-rank", "0"], "--lora-rank must be at least 1"),
    (["--warmup-ratio", "1.0"], "--warmup-ratio must be below 1"),
    (["--lr-scheduler-type", "bogus"], "Invalid value for '--lr-scheduler-type'"),
])
def test_out_of_range_flags_are_rejected_before_anything_runs(tmp_path, flags, message):
    result = sdk_subprocess("sft", "--model-type", "smollm2-135m-instruct", "--dataset",
                            "self-cognition", "--output-dir", tmp_path / "out", *flags)
    assert result.returncode in (1, 2)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_scheduler_choices_are_transformers_schedulers():
    from transformers import SchedulerType

    from sdk.config import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}


def test_output_dir_that_is_a_file(run_cli, tmp_path, tiny_plugin_file, identity_data):
    from conftest import TINY_MODEL_TYPE

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("keep me")
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--output-dir", not_a_folder)
    assert result.exit_code == 1 and "is a file; give a folder" in result.stderr
    assert not_a_folder.read_text() == "keep me"


def test_flags_not_given_do_not_override_the_config_file(run_cli, tmp_path, monkeypatch):
    import sdk.train.sft

    seen = []
    monkeypatch.setattr(sdk.train.sft, "run_sft", lambda args, registry: seen.append(args))
    config = tmp_path / "run.yaml"
    config.write_text("model_type: smollm2-135m-instruct\nnum_train_epochs: 2\n"
                      "gradient_checkpointing: true\nlearning_rate: 1e-4\n")
    result = run_cli("sft", "--config", config, "--dataset=a.jsonl", "b.jsonl",
                     "--learning_rate", "3e-4")
    assert result.exit_code == 0, result.output
    [args] = seen
    assert args.num_train_epochs == 2 and args.gradient_checkpointing is True
    assert args.learning_rate == 3e-4 and args.dataset == ["a.jsonl", "b.jsonl"]
