"""Atomic checkpoints and --resume-from-checkpoint: `sdk sft` killed with SIGKILL and resumed
trains to the same per-step losses and weights as a run never interrupted."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import TINY_MODEL_TYPE, only_run, run_folders
from sdk.config import SftArguments
from sdk.plugins import load_plugins
from sdk.runs.run_dir import PARTIAL_DIR, is_complete_checkpoint
from sdk.train.resume import keep_log_until, resume_checkpoint
from sdk.train.sft import run_sft

SDK = Path(sys.executable).with_name("sdk")
# 6 rows at batch size 2: 3 steps an epoch, so checkpoint-4 falls mid-epoch and resuming has
# to skip the batches already trained; lora dropout draws random numbers every step.
TRAINING = dict(max_steps=8, save_steps=2, logging_steps=1, batch_size=2,
                gradient_accumulation_steps=1, learning_rate=1e-2, lora_dropout=0.3, seed=0,
                dtype="fp32")


def flags(**settings) -> list[str]:
    return [part for name, value in settings.items()
            for part in ("--" + name.replace("_", "-"), str(value))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "six.jsonl"
    rows = [(f"Question {n}?", f"Answer number {n} from Tiny.") for n in range(6)]
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer}]}) + "\n" for question, answer in rows))
    return path


class Sft(NamedTuple):
    process: subprocess.Popen
    log: Path  # its stdout and stderr: a file, so a full pipe never stalls it


def sft_process(plugin: Path, dataset: Path, output: Path, *extra: str,
                pause_at_save: int | None = None, signal_file: Path | None = None) -> Sft:
    """`sdk sft` in a process of its own; with pause_at_save, a second plugin file makes that
    step's save stop halfway (model and optimizer written, trainer state not) and touch
    signal_file."""
    plugins = ["--plugin", str(plugin)]
    if pause_at_save is not None:
        pause = output.parent / f"pause_{output.name}.py"
        pause.write_text(textwrap.dedent(f"""
            import time
            from transformers import Trainer

            save_rng_state = Trainer._save_rng_state

            def paused(self, output_dir):
                save_rng_state(self, output_dir)
                if self.state.global_step == {pause_at_save}:
                    open({str(signal_file)!r}, "w").close()
                    time.sleep(600)

            Trainer._save_rng_state = paused
        """))
        plugins += ["--plugin", str(pause)]
    command = [str(SDK), *plugins, "sft", "--model-type", TINY_MODEL_TYPE, "--dataset",
               str(dataset), "--output-dir", str(output), *flags(**TRAINING), *extra]
    # One thread: the same arithmetic in every process, and room for two on a shared machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = output.parent / f"sdk-{time.monotonic_ns()}.log"
    with log.open("w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    return Sft(process, log)


def finish(sft: Sft) -> str:
    """Wait for the process to succeed; its output."""
    try:
        sft.process.wait(timeout=300)
    finally:
        if sft.process.poll() is None:
            kill(sft)
    assert sft.process.returncode == 0, sft.log.read_text()
    return sft.log.read_text()


def kill(sft: Sft) -> None:
    sft.process.send_signal(signal.SIGKILL)
    sft.process.wait(timeout=60)


def wait_for(condition, sft: Sft, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        if sft.process.poll() is not None:
            raise AssertionError(f"sdk sft ended before {what}: {sft.log.read_text()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "logging.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)), steps  # each step logged once, in order
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def adapter_weights(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(checkpoint / "adapter_model.safetensors")


def assert_same_training(run: Path, reference: Path) -> None:
    import torch

    assert losses(run) == pytest.approx(losses(reference), rel=1e-6, abs=0)
    assert list(losses(run)) == list(range(1, 9))
    trained, expected = (adapter_weights(r / "checkpoint-8") for r in (run, reference))
    assert trained.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-6, atol=0, msg=name)


@pytest.fixture
def start_sft(tiny_plugin_file, dataset):
    """Starts `sdk sft` processes; kills any still running when the test ends."""
    started = []

    def start(output: Path, *extra: str, **pause) -> Sft:
        started.append(sft_process(tiny_plugin_file, dataset, output, *extra, **pause))
        return started[-1]

    yield start
    for sft in started:
        if sft.process.poll() is None:
            kill(sft)


class Reference:
    """The run never interrupted, trained in a process of its own while a test goes on."""

    def __init__(self, sft: Sft, output: Path):
        self.sft, self.output = sft, output

    @functools.cached_property
    def run(self) -> Path:
        finish(self.sft)
        return only_run(self.output)


@pytest.fixture(scope="module")
def reference(tiny_plugin_file, dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference")
    started = Reference(sft_process(tiny_plugin_file, dataset, output), output)
    yield started
    if started.sft.process.poll() is None:
        kill(started.sft)


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_auto_trains_like_an_uninterrupted_run(
        start_sft, tmp_path, reference):
    output = tmp_path / "output"
    killed = start_sft(output)
    wait_for(lambda: any(is_complete_checkpoint(run / "checkpoint-4")
                         for run in run_folders(output)),
             killed, "checkpoint-4")
    kill(killed)
    run = only_run(output)
    assert not (run / "checkpoint-8").exists()

    output_text = finish(start_sft(output, "--resume-from-checkpoint", "auto"))
    resumed_from = int(re.search(rf"resuming {re.escape(str(run))} from checkpoint-(\d+)",
                                 output_text).group(1))
    assert resumed_from in (4, 6)  # 6 only if the run got that far before the kill landed
    assert only_run(output) == run
    assert_same_training(run, reference.run)
    saved = json.loads((run / "checkpoint-8" / "sft_args.json").read_text())
    assert Path(saved["resume_from_checkpoint"]).parent == run  # the path, not "auto"


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_in_use(
        start_sft, tiny_plugin_file, tmp_path, reference, run_cli):
    output, signal_file = tmp_path / "output", tmp_path / "saving"
    killed = start_sft(output, "--save-total-limit", "1", pause_at_save=6,
                       signal_file=signal_file)
    wait_for(signal_file.exists, killed, "the save of checkpoint-6")
    kill(killed)
    run = only_run(output)
    assert (run / PARTIAL_DIR / "checkpoint-6" / "optimizer.pt").is_file()  # killed mid-save
    assert not (run / "checkpoint-6").exists()
    # --save-total-limit 1 removed checkpoint-2 only once checkpoint-4 was complete, and keeps
    # checkpoint-4 while checkpoint-6 is written.
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4"]
    assert is_complete_checkpoint(run / "checkpoint-4")

    answer = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", run, "--query", "hi",
                     "--max-new-tokens", "2")
    assert answer.exit_code == 0, answer.output
    assert f"loading {run / 'checkpoint-4'}" in answer.stderr
    partial = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir",
                      run / PARTIAL_DIR / "checkpoint-6", "--query", "hi")
    assert partial.exit_code == 1 and "incomplete checkpoint" in partial.stderr

    args = SftArguments(model_type=TINY_MODEL_TYPE, output_dir=str(output),
                        resume_from_checkpoint="auto")
    assert resume_checkpoint(args) == run / "checkpoint-4"
    resumed = finish(start_sft(output, "--save-total-limit", "1", "--resume-from-checkpoint",
                               "auto"))
    assert f"deleted {run / PARTIAL_DIR}: an unfinished save" in resumed
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-8", "logging.jsonl", "loss.png", "sft_args.json"]  # staging, rotation cleaned
    assert_same_training(run, reference.run)


@pytest.fixture(scope="module")
def saved_runs(tiny_plugin_file, dataset, tmp_path_factory) -> dict[str, Path]:
    """Two short runs in this process: "full" keeps checkpoint-1 and checkpoint-2, "lean" was
    saved with --only-save-model."""
    registry = load_plugins([str(tiny_plugin_file)]).registry
    runs = {}
    for name, extra in [("full", {}), ("lean", {"only_save_model": True})]:
        output = tmp_path_factory.mktemp(name)
        run_sft(SftArguments(model_type=TINY_MODEL_TYPE, dataset=[str(dataset)],
                             output_dir=str(output), max_steps=2, save_steps=1,
                             save_total_limit=0, batch_size=2, gradient_accumulation_steps=1,
                             **extra), registry)
        runs[name] = only_run(output)
    return runs


def foreign_checkpoint(runs, tmp_path) -> list:
    folder = tmp_path / "other-tool" / "checkpoint-3"  # a Trainer checkpoint, not from sdk sft
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    return ["--resume-from-checkpoint", folder]


def foreign_arguments(runs, tmp_path) -> list:
    folder = tmp_path / "run" / "checkpoint-3"
    shutil.copytree(runs["full"] / "checkpoint-2", folder)
    (folder / "sft_args.json").write_text('{"model_type": "tiny-qwen2-chat"}')
    return ["--resume-from-checkpoint", folder]


def cut_short(runs, tmp_path) -> list:
    run = shutil.copytree(runs["full"], tmp_path / "run")
    (run / "checkpoint-2" / "sft_args.json").unlink()  # as left by sdk sft before .partial/
    return ["--resume-from-checkpoint", run / "checkpoint-2"]


def staged(runs, tmp_path) -> list:
    run = shutil.copytree(runs["full"], tmp_path / "run")
    (run / PARTIAL_DIR).mkdir()
    (run / "checkpoint-2").rename(run / PARTIAL_DIR / "checkpoint-2")
    return ["--resume-from-checkpoint", run / PARTIAL_DIR / "checkpoint-2"]


def pushed(runs, tmp_path) -> list:
    # a checkpoint uploaded with --push-training-state and downloaded: its files, no run
    folder = shutil.copytree(runs["full"] / "checkpoint-2", tmp_path / "downloaded")
    return ["--resume-from-checkpoint", folder]


def newest_run_without_checkpoint(runs, tmp_path) -> list:
    shutil.copytree(runs["full"], tmp_path / TINY_MODEL_TYPE / "v0-20260101-000000")
    newest = tmp_path / TINY_MODEL_TYPE / "v1-20260101-000001"
    newest.mkdir()
    (newest / "sft_args.json").write_text((runs["full"] / "sft_args.json").read_text())
    return ["--resume-from-checkpoint", "auto", "--output-dir", tmp_path]


@pytest.mark.parametrize("setup, message", [
    (lambda runs, tmp: ["--resume-from-checkpoint", runs["lean"]],
     r"saved with --only-save-model, without the optimizer state .* \(--adapter "),
    (lambda runs, tmp: ["--resume-from-checkpoint", runs["full"], "--sft-type", "full"],
     "was trained with --sft-type lora, this run has --sft-type full"),
    (lambda runs, tmp: ["--resume-from-checkpoint", runs["full"], "--model-type",
                        "smollm2-135m-instruct"],
     "was trained with --model-type tiny-qwen2-chat, this run has --model-type smollm2"),
    (foreign_checkpoint, "checkpoint-3' was not written by `sdk sft` \\(it has no sft_args"),
    (foreign_arguments, "sft_args.json lacks sft_type, template; it was not written by"),
    (cut_short, "checkpoint-2' is an incomplete checkpoint \\(its save was cut short\\)"),
    (staged, "checkpoint-2' is an incomplete checkpoint"),
    (lambda runs, tmp: ["--resume-from-checkpoint", runs["full"] / "checkpoint-1"],
     "already has checkpoints after checkpoint-1 \\(checkpoint-2\\)"),
    (lambda runs, tmp: ["--resume-from-checkpoint", "auto", "--output-dir", tmp],
     "auto: there is no run of tiny-qwen2-chat under --output-dir"),
    (newest_run_without_checkpoint, "auto: the newest run .*v1-20260101-000001' is a run of "
     "`sdk sft` with no complete checkpoint"),
    (lambda runs, tmp: ["--resume-from-checkpoint", tmp / "missing"], "is not a folder"),
    (lambda runs, tmp: ["--resume-from-checkpoint", runs["full"], "--lora-rank", "16"],
     r"was trained with other tuner or optimizer settings \(--lora-rank 8 there, 16 now\)"),
    (pushed, "downloaded' is a checkpoint outside its run folder .* Copy it into an empty "
     "folder as checkpoint-<its step>"),
], ids=["only-save-model", "sft-type", "model-type", "foreign checkpoint",
        "foreign arguments", "cut short", "staged", "later checkpoints", "auto without a run",
        "auto without a checkpoint", "missing", "lora-rank", "pushed"])
def test_a_checkpoint_that_cannot_be_resumed_is_refused_before_the_model_loads(
        setup, message, saved_runs, tiny_plugin_file, dataset, tmp_path, run_cli):
    # A flag given again after the defaults wins; the model cannot load, so the refusal must
    # come before the model does.
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--dataset", dataset, "--model-type",
                     TINY_MODEL_TYPE, "--model-id-or-path", tmp_path / "no-model",
                     *setup(saved_runs, tmp_path))
    assert result.exit_code == 1, result.output
    assert re.search(message, result.stderr), result.stderr


def test_a_run_folder_resumes_from_its_newest_complete_checkpoint(saved_runs):
    args = SftArguments(model_type=TINY_MODEL_TYPE,
                        resume_from_checkpoint=str(saved_runs["full"]))
    assert resume_checkpoint(args) == saved_runs["full"] / "checkpoint-2"
    auto = SftArguments(model_type=TINY_MODEL_TYPE, resume_from_checkpoint="auto",
                        output_dir=str(saved_runs["full"].parent.parent))
    assert resume_checkpoint(auto) == saved_runs["full"] / "checkpoint-2"


def test_the_log_keeps_the_records_up_to_the_resumed_step(tmp_path):
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 1.0},
               {"step": 3, "loss": 1.5}]
    log = tmp_path / "logging.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    keep_log_until(tmp_path, 2)
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:3]


@pytest.mark.slow
def test_ctrl_c_says_how_to_go_on(start_sft, tmp_path):
    output = tmp_path / "output"
    interrupted = start_sft(output, "--max-steps", "1000")
    wait_for(lambda: any(output.glob(f"{TINY_MODEL_TYPE}/*/checkpoint-2")), interrupted,
             "checkpoint-2")
    interrupted.process.send_signal(signal.SIGINT)
    assert interrupted.process.wait(timeout=60) == 1
    said = interrupted.log.read_text()
    assert "[sdk] interrupted; the checkpoints saved so far are complete" in said
    assert "--resume-from-checkpoint auto" in said and "Traceback" not in said
    assert is_complete_checkpoint(only_run(output) / "checkpoint-2")
