"""`sdk sft` in two processes (NPROC_PER_NODE=2: torchrun, DDP over gloo on this CPU) trains,
and resumes, what one process trains with the two processes' rows in each batch, into one run
folder."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL_TYPE, only_run
from sdk.config import SftArguments
from sdk.errors import SdkError
from sdk.train.distributed import torchrun_command
from sdk.train.sft import run_sft


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for number in range(16):
            handle.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question {number}?"},
                {"role": "assistant", "content": f"Answer number {number} from Tiny."},
            ]}) + "\n")
    return path


# a constant learning rate: the first two-process run stops at step 2 and a resumed one
# goes on to step 4
SETTINGS = dict(gradient_accumulation_steps=1, save_steps=2, logging_steps=1, lora_dropout=0.0,
                seed=0, lr_scheduler_type="constant", warmup_ratio=0.0)


def logged_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def sdk_in_two_processes(plugin_file, rows, output, *flags):
    environment = {**os.environ, "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(
        [sys.executable, "-m", "sdk", "--plugin", str(plugin_file), "sft", "--model-type",
         TINY_MODEL_TYPE, "--dataset", str(rows), "--batch-size", "1",
         *[str(part) for name, value in SETTINGS.items() for part in (f"--{name}", value)],
         "--output-dir", str(output), *flags],
        env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stderr


@pytest.mark.slow
def test_two_processes_train_and_resume_like_one_process_with_both_their_rows(
        tiny_plugin_file, plugin_set, rows, tmp_path):
    first = sdk_in_two_processes(tiny_plugin_file, rows, tmp_path / "two", "--max-steps", "2")
    assert first.count("[sdk] run folder:") == 1  # the main process reports
    resumed = sdk_in_two_processes(tiny_plugin_file, rows, tmp_path / "two", "--max-steps", "4",
                                   "--resume-from-checkpoint", "auto")
    assert "resuming" in resumed
    two = only_run(tmp_path / "two")  # one run folder for both processes and both runs

    one = run_sft(SftArguments(model_type=TINY_MODEL_TYPE, dataset=[str(rows)], batch_size=2,
                               max_steps=4, output_dir=str(tmp_path / "one"), **SETTINGS),
                  plugin_set.registry).run_dir

    assert sorted(p.name for p in two.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert logged_losses(two) == pytest.approx(logged_losses(one), rel=1e-5)
    trained = load_file(two / "checkpoint-4" / "adapter_model.safetensors")
    expected = load_file(one / "checkpoint-4" / "adapter_model.safetensors")
    assert trained.keys() == expected.keys()
    for name, weight in trained.items():
        torch.testing.assert_close(weight, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_bad_process_count_is_named(run_cli, tiny_plugin_file, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("NPROC_PER_NODE", "two")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", rows, "--output-dir", tmp_path)
    assert result.exit_code != 0
    assert "NPROC_PER_NODE=two: give the number of processes" in result.output


def test_the_launcher_builds_torchrun_commands_for_one_or_several_machines():
    argv = ["sft", "--model-type", "m"]
    assert torchrun_command(argv, {}) is None
    assert torchrun_command(argv, {"NPROC_PER_NODE": "1"}) is None
    assert torchrun_command(argv, {"NPROC_PER_NODE": "4", "LOCAL_RANK": "0"}) is None  # inside
    assert torchrun_command(argv, {"NPROC_PER_NODE": "4"})[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "sdk", *argv]
    several = {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}
    assert torchrun_command(argv, several)[3:8] == [
        "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29500",
        "--nproc-per-node=8"]
    with pytest.raises(SdkError, match="NNODES=2 needs MASTER_ADDR too"):
        torchrun_command(argv, {**several, "MASTER_ADDR": ""})

