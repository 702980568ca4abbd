"""LLaMA-Factory's output_dir used as given (--output-dir-as-run): the run is written into the
folder itself, as LLaMA-Factory and HF Trainer do; a folder holding a previous run is refused
unless overwrite_output_dir (which deletes only that run's files) or resume_from_checkpoint."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_MODEL_TYPE, folder_digest
from sdk.errors import SdkError
from sdk.runs.run_dir import RUN_FILES, claim_run_dir


def llama_factory_config(tmp_path, tiny_model_dir, identity_data, output) -> str:
    config = tmp_path / "lora_sft.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\nstage: sft\ndo_train: true\n"
                      f"finetuning_type: lora\ndataset: {identity_data}\ntemplate: qwen\n"
                      f"output_dir: {output}\nper_device_train_batch_size: 2\n"
                      "gradient_accumulation_steps: 1\nmax_steps: 1\nsave_steps: 1\n"
                      "report_to: none\n")
    return str(config)


def test_a_llama_factory_run_is_written_into_output_dir_and_never_overwritten_silently(
        run_cli, tiny_plugin_file, tiny_model_dir, identity_data, tmp_path):
    output = tmp_path / "saves" / "lora" / "sft"
    config = llama_factory_config(tmp_path, tiny_model_dir, identity_data, output)
    sft = ["--plugin", tiny_plugin_file, "sft", "--config", config, "--model-type",
           TINY_MODEL_TYPE]
    result = run_cli(*sft, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["run_folder"] == str(output) and plan["arguments"]["output_dir_as_run"]
    assert not output.exists()  # a dry run creates nothing

    result = run_cli(*sft)
    assert result.exit_code == 0, result.output
    assert (output / "checkpoint-1" / "sft_args.json").is_file()
    assert (output / "sft_args.json").is_file() and (output / "logging.jsonl").is_file()
    assert not (output / TINY_MODEL_TYPE).exists()
    from sdk.infer.load import checkpoint_or_export

    assert checkpoint_or_export(str(output)) == output / "checkpoint-1"  # sdk infer --ckpt-dir

    # the same config again: refused, nothing touched
    (output / "notes.txt").write_text("mine")
    before = folder_digest(output)
    result = run_cli(*sft)
    assert result.exit_code == 1
    assert f"--output-dir '{output}' holds a previous run (checkpoint-1," in result.stderr
    assert "overwrite_output_dir" in result.stderr
    assert f"resume_from_checkpoint {output}" in result.stderr
    assert folder_digest(output) == before

    # the plan says what overwrite_output_dir deletes and keeps
    result = run_cli(*sft, "--overwrite-output-dir", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "--overwrite-output-dir deletes the previous run's checkpoint-1, " in result.stdout
    assert "and keeps notes.txt" in result.stdout
    assert f"run folder: {output} (there already)" in result.stdout
    # resume_from_checkpoint: the folder's newest checkpoint (auto: of the folder itself, not
    # of <model-type>/v<N>), the run continues in it
    result = run_cli(*sft, "--resume-from-checkpoint", "auto", "--max-steps", "2",
                     "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert (plan["run_folder"], plan["resume_from"]) == (str(output),
                                                         str(output / "checkpoint-1"))
    assert folder_digest(output) == before


def test_overwrite_output_dir_deletes_only_the_previous_runs_files(tmp_path):
    folder = tmp_path / "out"
    (folder / "checkpoint-3").mkdir(parents=True)
    (folder / "checkpoint-3" / "sft_args.json").write_text("{}")
    for name in ("sft_args.json", "logging.jsonl", "loss.png", "train.yaml"):
        (folder / name).write_text("x")
    (folder / "data").mkdir()
    (folder / "data" / "rows.json").write_text("[]")
    with pytest.raises(SdkError, match="holds a previous run"):
        claim_run_dir(folder, overwrite=False)
    assert claim_run_dir(folder, overwrite=True) == [
        "checkpoint-3", "logging.jsonl", "loss.png", "sft_args.json"]
    assert sorted(p.name for p in folder.iterdir()) == ["data", "train.yaml"]
    with pytest.raises(SdkError, match=r"is not empty \(data, train.yaml\)"):
        claim_run_dir(folder, overwrite=False)
    assert claim_run_dir(tmp_path / "new", overwrite=False) == []
    assert (tmp_path / "new").is_dir()


def test_run_files_name_what_a_run_writes():
    from sdk.infer.predict import PREDICTIONS_DIR
    from sdk.runs.best import BEST_FILE
    from sdk.train.plot import PLOT_FILE

    assert {BEST_FILE, PLOT_FILE, PREDICTIONS_DIR} <= set(RUN_FILES)


def test_overwrite_output_dir_without_output_dir_as_run_says_it_has_no_effect(
        run_cli, tiny_plugin_file, tiny_model_dir, identity_data, tmp_path):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--model-id-or-path", tiny_model_dir, "--dataset", identity_data,
                     "--output-dir", tmp_path,
                     "--overwrite-output-dir", "--dry-run")
    assert result.exit_code == 0, result.output
    assert ("--overwrite-output-dir true ignored: each run writes a new folder under --output-dir"
            in result.stderr)
