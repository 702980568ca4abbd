"""What `sdk web-ui` builds its page from, without a browser: the Train form's command (as
`sdk sft` itself reads it), run folders' status, uploads, and the command's checks."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.errors import SdkError
from sdk.tuners.options import LoraOptions
from sdk.webui.command import sdk_command, sft_arguments
from sdk.webui.jobs import Jobs
from sdk.webui.runs import run_rows
from sdk.webui.serve import exposed, parse_auth


def test_the_form_gives_only_the_flags_it_changes(tmp_path):
    words = sft_arguments({"model_type": "m", "dataset": ["a", "b.jsonl"], "sft_type": "lora",
                           "lora_rank": 8.0, "lora_alpha": 16.0, "learning_rate": 0,
                           "max_steps": 2.0, "model_name": [], "output_dir": str(tmp_path)},
                          LoraOptions)
    assert words == ["--model-type", "m", "--dataset", "a", "b.jsonl", "--lora-alpha", "16",
                     "--max-steps", "2", "--output-dir", str(tmp_path)]
    # another tuner's options are not given to a tuner without them
    assert "--lora-alpha" not in sft_arguments({"model_type": "m", "sft_type": "full",
                                                "lora_alpha": 16}, None)


def test_the_shown_command_is_what_sdk_sft_reads(run_cli, tiny_plugin_file, tiny_model_dir,
                                                 identity_data, tmp_path):
    words = sdk_command(["--plugin", str(tiny_plugin_file)], "sft", sft_arguments(
        {"model_type": TINY_MODEL_TYPE, "dataset": [str(identity_data)], "sft_type": "lora",
         "lora_rank": 4, "max_steps": 3, "batch_size": 2, "output_dir": str(tmp_path)},
        LoraOptions))
    # the dry run reads the tokenizer alone, which the tiny plugin's loader cannot give
    result = run_cli(*shlex.split(shlex.join(words))[1:], "--model-id-or-path", tiny_model_dir,
                     "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert json.dumps(plan).count('"lora_rank": 4') == 1
    assert '"max_steps": 3' in json.dumps(plan)


def test_runs_show_status_steps_losses_and_checkpoints(finished_lora_run):
    output = finished_lora_run.parent.parent
    [row] = run_rows(output, Jobs(output))
    assert (row.run, row.status, row.step, row.max_steps) == (finished_lora_run, "finished", 2, 2)
    assert row.checkpoints == ["checkpoint-1", "checkpoint-2"]
    logged = [json.loads(line)["loss"] for line in
              (finished_lora_run / "logging.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert row.last_loss == logged[-1] and row.best_loss == min(logged)


def test_an_unfinished_run_not_started_by_the_page_is_stopped(finished_lora_run, tmp_path):
    run = Path(shutil.copytree(finished_lora_run, tmp_path / "output" / "tiny" / "v0-1"))
    state = run / "checkpoint-2" / "trainer_state.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "max_steps": 10}))
    [row] = run_rows(tmp_path / "output", Jobs(tmp_path / "output"))
    assert (row.status, row.max_steps) == ("stopped", 10)


def test_resume_runs_the_command_that_trained_the_run_again(tmp_path, monkeypatch):
    jobs = Jobs(tmp_path / "output")
    run = tmp_path / "output" / "tiny" / "v0-1"
    with pytest.raises(SdkError, match="was not trained from this page"):
        jobs.resume(run)
    jobs.folder.mkdir(parents=True)
    trained = ["sdk", "sft", "--model-type", "tiny", "--resume-from-checkpoint", "auto",
               "--max-steps", "6"]  # resumed once already
    (jobs.folder / "1.json").write_text(json.dumps({
        "number": 1, "command": trained, "pid": 0, "log": "", "state": "stopped",
        "run_dir": str(run)}))
    started: list[list[str]] = []
    monkeypatch.setattr(jobs, "start", started.append)
    jobs.resume(run)
    assert started == [["sdk", "sft", "--model-type", "tiny", "--max-steps", "6",
                        "--resume-from-checkpoint", str(run)]]


def test_a_bad_upload_is_refused_by_line_and_not_kept(plugin_set, tmp_path):
    from sdk.webui.uploads import keep_upload

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    with pytest.raises(SdkError, match=r"bad\.jsonl:1"):
        keep_upload(bad, "bad.jsonl", tmp_path / "out", plugin_set.registry)
    assert not list((tmp_path / "out" / ".webui" / "uploads").iterdir())
    with pytest.raises(SdkError, match="upload .json, .jsonl, .csv, .parquet"):
        keep_upload(bad, "../data.txt", tmp_path / "out", plugin_set.registry)


def test_web_ui_checks_auth_and_port_before_building_the_page(run_cli):
    assert parse_auth("me:secret") == ("me", "secret")
    for bad in ("me", ":secret", "me:"):
        with pytest.raises(SdkError, match="--auth takes USER:PASS"):
            parse_auth(bad)
    assert not exposed("127.0.0.1") and not exposed("localhost") and exposed("0.0.0.0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("web-ui", "--port", port)
    assert result.exit_code == 1
    assert f"--port {port} on 127.0.0.1 cannot be used" in result.output
