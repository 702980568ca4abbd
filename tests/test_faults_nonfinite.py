"""Issue 19, item 2: no silent garbage from NaN and infinity. Every float option refuses them
before anything loads; training stops with a message naming the step and the last good
checkpoint when its numbers stop being finite, saving nothing from that step; a checkpoint
whose weights hold NaN is refused by every command that loads or pushes it."""

import dataclasses
import json

import pytest

from conftest import TINY_MODEL_TYPE, folder_digest, only_run
from sdk.config import (
    DeployArguments,
    ExportArguments,
    InferArguments,
    SftArguments,
    base_type,
    field_types,
)
from sdk.runs.checkpoint_files import holds_nonfinite, refuse_nonfinite_weights
from sdk.train.nonfinite import nonfinite_step, training_stopped

COMMANDS = {"sft": SftArguments, "infer": InferArguments, "deploy": DeployArguments,
            "export": ExportArguments}
# Every float option of every command, found from the argument classes: a new one is covered
# without a word here.
FLOAT_OPTIONS = [(command, f.name) for command, cls in COMMANDS.items()
                 for f in dataclasses.fields(cls) if base_type(field_types(cls)[f.name]) is float]


def test_the_float_options_are_found():
    assert {"learning_rate", "weight_decay", "rope_factor"} <= {name for command, name
                                                                  in FLOAT_OPTIONS
                                                                  if command == "sft"}
    assert {"temperature", "top_p", "repetition_penalty"} <= {name for command, name
                                                              in FLOAT_OPTIONS
                                                              if command == "deploy"}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("command, name", FLOAT_OPTIONS)
def test_every_float_option_refuses_nan_and_infinity(run_cli, tmp_path, monkeypatch, command,
                                                     name, value):
    monkeypatch.chdir(tmp_path)  # where sdk sft and sdk export would write by default
    flag = "--" + name.replace("_", "-")
    result = run_cli(command, flag, value)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {flag} must be a finite number; got {float(value)}.")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("name, text", [("config.yaml", "learning_rate: .nan\n"),
                                        ("config.json", '{"temperature": Infinity}')])
def test_a_config_file_value_is_refused_too(run_cli, tmp_path, name, text):
    config = tmp_path / name
    config.write_text(text)
    command = "sft" if name.endswith("yaml") else "infer"
    result = run_cli(command, "--config", config)
    assert result.exit_code == 1, result.output
    flag = "--learning-rate must be a finite number; got nan." if command == "sft" \
        else "--temperature must be a finite number; got inf."
    assert f"Error: {flag}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("loss, grad_norm, skipped, problem", [
    (2.5, 1.0, False, None),
    (float("nan"), 1.0, False, "the loss became nan"),
    (2.5, float("inf"), False, "the gradient norm became inf"),
    (2.5, None, False, None),  # no gradient norm computed
    # fp16 loss scaling skips a step whose gradients overflowed, and lowers its scale
    (2.5, float("inf"), True, None),
])
def test_what_stops_a_step(loss, grad_norm, skipped, problem):
    import torch

    assert nonfinite_step(torch.tensor(loss), grad_norm, skipped) == problem


@pytest.mark.parametrize("value, dtype, held", [
    (1.0, "float32", False), (float("nan"), "float32", True), (float("-inf"), "bfloat16", True),
    (3e38, "float32", False),  # its sum overflows, every element is finite
    (float("nan"), "float8_e5m2", True),  # torch sums no float8
])
def test_which_tensors_hold_nan_or_infinity(value, dtype, held):
    import torch

    tensor = torch.tensor([1.0, value, 3e38]).to(getattr(torch, dtype))
    assert holds_nonfinite(tensor) is held


def test_the_stop_names_the_last_good_checkpoint(lora_run_copy):
    message = str(training_stopped(3, "the loss became nan", lora_run_copy, 1e-4))
    assert message.startswith("training stopped at step 3: the loss became nan; nothing was "
                              "saved from this step. The last good checkpoint is "
                              f"{lora_run_copy / 'checkpoint-2'}. A lower --learning-rate "
                              "(this run: 0.0001)")


def sft_flags(identity_data, *flags):
    return ("sft", "--model-type", TINY_MODEL_TYPE, "--dataset", identity_data,
            "--batch-size", "2", "--learning-rate", "1e38", *flags)


@pytest.mark.slow
def test_a_loss_turned_nan_stops_training_and_saves_nothing(run_cli, tiny_plugin_file,
                                                            identity_data, tmp_path):
    # 1e38 is finite, but Adam's first step (10 times the rate) overflows the weights, so the
    # loss of step 2 is NaN; no save is due before step 10.
    result = run_cli("--plugin", tiny_plugin_file,
                     *sft_flags(identity_data, "--warmup-ratio", "0", "--max-steps", "3",
                                "--save-steps", "10", "--output-dir", tmp_path / "out"))
    run = only_run(tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert (f"Error: training stopped at step 2: the loss became nan; nothing was saved from "
            "this step. No checkpoint was saved before it. A lower --learning-rate (this run: "
            f"1e+38) or --dtype bf16 or fp32 instead of fp16 usually helps; the run's log is "
            f"in {run / 'logging.jsonl'}.") in result.output
    assert sorted(p.name for p in run.iterdir()) == ["logging.jsonl", "sft_args.json"]
    logged = [json.loads(line) for line in (run / "logging.jsonl").read_text().splitlines()]
    assert [record["step"] for record in logged] == [1]


@pytest.mark.slow
def test_weights_turned_infinite_are_not_saved(run_cli, tiny_plugin_file, identity_data,
                                               tmp_path):
    # Step 1 warms up at rate 0 and saves checkpoint-1; step 2's update overflows the weights
    # while its loss and gradient are still finite: its save is what refuses.
    result = run_cli("--plugin", tiny_plugin_file,
                     *sft_flags(identity_data, "--max-steps", "3", "--save-steps", "1",
                                "--output-dir", tmp_path / "out"))
    run = only_run(tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "Error: training stopped at step 2: the weights became NaN or infinite (" \
        in result.output
    assert (f"nothing was saved from this step. The last good checkpoint is "
            f"{run / 'checkpoint-1'}.") in result.output
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-1", "logging.jsonl", "sft_args.json"]
    refuse_nonfinite_weights(run / "checkpoint-1")  # what was kept is usable


@pytest.fixture
def nan_adapter_run(lora_run_copy):
    """lora_run_copy with one NaN in its newest checkpoint's adapter weights."""
    from safetensors.torch import load_file, save_file

    weights = lora_run_copy / "checkpoint-2" / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    return lora_run_copy, name


SFT = ("sft", "--model-type", TINY_MODEL_TYPE, "--dataset", "{data}", "--max-steps", "3")


@pytest.mark.parametrize("command", [
    ("infer", "--ckpt-dir", "{run}", "--query", "Who are you?"),
    ("deploy", "--ckpt-dir", "{run}"),
    ("export", "--ckpt-dir", "{run}", "--merge-lora", "true"),
    ("push", "--hub", "local", "--ckpt-dir", "{run}", "--repo-id", "{tmp}/hub/tiny"),
    (*SFT, "--resume-from-checkpoint", "{run}"),
    (*SFT, "--adapter", "{run}/checkpoint-2", "--output-dir", "{tmp}/out"),
], ids=["infer", "deploy", "export", "push", "resume", "adapter"])
def test_a_checkpoint_with_nan_weights_is_refused(run_cli, tiny_plugin_file, identity_data,
                                                  nan_adapter_run, tmp_path, command):
    run, name = nan_adapter_run
    before = folder_digest(tmp_path)
    result = run_cli("--plugin", tiny_plugin_file, *(
        part.format(run=run, tmp=tmp_path, data=identity_data) for part in command))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: checkpoint {run / 'checkpoint-2'} is damaged: adapter_model.safetensors (its "
        f"weights hold NaN or infinity: {name}). The last complete checkpoint of the run is "
        f"{run / 'checkpoint-1'}.")
    assert folder_digest(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.jsonl", "run"]
