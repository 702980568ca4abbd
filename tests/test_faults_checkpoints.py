"""Issue 19, item 3: a damaged checkpoint is refused with "checkpoint DIR is damaged: FILE
(reason)" naming the run's last complete checkpoint, by `sdk infer`, `sdk deploy`,
`sdk export`, `sdk push` and `--resume-from-checkpoint`, before anything is loaded, written or
published, and before a resume cuts logging.jsonl back to the checkpoint's step.

The file checks are one path (sdk/runs/checkpoint_files.py): each damage is tried once
through `sdk push` (which loads no model), and each other command once on one damage. An adapter
that does not fit its base model needs the model: those damages load the tiny one, or, for
`sdk push`, build its empty skeleton from the checkpoint's base_config.json."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TYPE, folder_digest
from sdk.errors import SdkError
from sdk.runs.checkpoint_files import check_checkpoint


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def rewrite_adapter(path: Path, change) -> None:
    """The adapter's tensors, each replaced by ``change(name, tensor)`` -> (name, tensor)."""
    from safetensors.torch import load_file, save_file

    tensors = dict(change(name, tensor) for name, tensor in load_file(path).items())
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, path,
              metadata={"format": "pt"})


def rank_4(name, tensor):
    return name, tensor[:4] if ".lora_A." in name else tensor[:, :4]


def other_width(name, tensor):
    """The adapter of a model 48 wide, at the same rank: lora_A takes 48 inputs, lora_B of a
    module giving 32 outputs gives 48."""
    import torch

    rows, columns = tensor.shape
    shape = (rows, 48) if ".lora_A." in name else (48 if rows == 32 else rows, columns)
    return name, torch.zeros(shape)


def other_layers(name, tensor):
    return name.replace("layers.1.", "layers.7."), tensor


# (damaged file, damage, words of the reason[, the file the message names, if another])
FILE_DAMAGES = {
    "truncated weights": ("adapter_model.safetensors", cut_in_half, "truncated"),
    "empty weights": ("adapter_model.safetensors", lambda p: p.write_bytes(b""),
                      "too short for a safetensors file"),
    "weights without a header": ("adapter_model.safetensors",
                                 lambda p: p.write_bytes(b"\xff" * 64),
                                 "not a safetensors file"),
    "truncated adapter config": ("adapter_config.json", cut_in_half, "not valid JSON"),
    "adapter config rank not a number": ("adapter_config.json",
                                         lambda p: edit_json(p, r="eight"),
                                         'r is "eight", not an integer'),
    "adapter config not an object": ("adapter_config.json", lambda p: p.write_text("[8]"),
                                     "a JSON list, not an object"),
    "truncated tokenizer": ("tokenizer.json", cut_in_half, "not valid JSON"),
    "truncated tokenizer config": ("tokenizer_config.json", cut_in_half, "not valid JSON"),
    # which of the two files is wrong cannot be told: the message names the weights
    "config rank above the weights'": ("adapter_config.json", lambda p: edit_json(p, r=16),
                                       "has rank 8 (shape [8, 64]), adapter_config.json gives "
                                       "it r 16", "adapter_model.safetensors"),
    "weights of a lower rank": ("adapter_model.safetensors",
                                lambda p: rewrite_adapter(p, rank_4),
                                "has rank 4 (shape [4, 64]), adapter_config.json gives it r 8"),
}


def damage(run: Path, name: str, table: dict = FILE_DAMAGES) -> tuple[Path, str, str]:
    """Damage checkpoint-2 of ``run`` as ``table[name]`` says: the checkpoint, the name of
    the file the message names and the words its reason holds."""
    file, change, reason, *named = table[name]
    checkpoint = run / "checkpoint-2"
    change(checkpoint / file)
    return checkpoint, (named or [file])[0], reason


def assert_refused(result, checkpoint: Path, file: str, reason: str,
                   last: Path | None) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith(f"Error: checkpoint {checkpoint} is damaged: {file} ("), message
    assert reason in message, message
    if last is None:
        assert "last complete checkpoint" not in message
    else:
        assert message.endswith(f"The last complete checkpoint of the run is {last}."), message


def test_an_intact_checkpoint_passes_every_check(finished_lora_run):
    check_checkpoint(finished_lora_run / "checkpoint-2", resuming=True)


@pytest.mark.parametrize("name", FILE_DAMAGES)
def test_a_damaged_file_is_refused_and_not_published(run_cli, lora_run_copy, tmp_path, name):
    checkpoint, file, reason = damage(lora_run_copy, name)
    before = folder_digest(lora_run_copy)
    hub = tmp_path / "hub"
    result = run_cli("push", "--hub", "local", "--ckpt-dir", lora_run_copy, "--repo-id",
                     hub / "tiny")
    assert_refused(result, checkpoint, file, reason, lora_run_copy / "checkpoint-1")
    assert folder_digest(lora_run_copy) == before
    assert not hub.exists()


def resume_flags(identity_data: Path, checkpoint: Path) -> list:
    return ["sft", "--model-type", TINY_MODEL_TYPE, "--dataset", identity_data,
            "--max-steps", "3", "--resume-from-checkpoint", checkpoint]


# `sdk push` is the command of test_a_damaged_file_is_refused_and_not_published
@pytest.mark.parametrize("command", ["infer", "deploy", "export", "resume"])
def test_each_command_refuses_a_damaged_checkpoint(run_cli, tiny_plugin_file, identity_data,
                                                   lora_run_copy, tmp_path, command):
    checkpoint, file, reason = damage(lora_run_copy, "truncated weights")
    before = folder_digest(lora_run_copy)
    given = {
        "infer": ["infer", "--ckpt-dir", lora_run_copy, "--query", "Hi"],
        "deploy": ["deploy", "--ckpt-dir", lora_run_copy, "--port", "0"],
        "export": ["export", "--ckpt-dir", checkpoint, "--merge-lora", "true",
                   "--output-dir", tmp_path / "merged"],
        "resume": resume_flags(identity_data, checkpoint),
    }[command]
    result = run_cli("--plugin", tiny_plugin_file, *given)
    assert_refused(result, checkpoint, file, reason, lora_run_copy / "checkpoint-1")
    assert folder_digest(lora_run_copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.jsonl", "run"]


def a_crash_after_logging_step_3(run: Path) -> None:
    """logging.jsonl as a run leaves it that was killed after logging step 3, before saving
    checkpoint-3: a resume from checkpoint-2 would drop that line."""
    with (run / "logging.jsonl").open("a") as log:
        log.write(json.dumps({"step": 3, "loss": 1.0}) + "\n")


TRAINING_STATE_DAMAGES = {
    "truncated trainer state": ("trainer_state.json", cut_in_half, "not valid JSON"),
    "step given as text": ("trainer_state.json", lambda p: edit_json(p, global_step="2"),
                           'global_step is "2", not an integer'),
    "log history not a list": ("trainer_state.json", lambda p: edit_json(p, log_history={}),
                               "log_history is {}, not a list"),
    "log entry not an object": ("trainer_state.json",
                                lambda p: edit_json(p, log_history=[1.5]),
                                "log_history holds 1.5, not an object with an integer step"),
    "no trainer state": ("trainer_state.json", Path.unlink, "missing"),
    "truncated optimizer state": ("optimizer.pt", cut_in_half, "not a whole torch archive"),
}


@pytest.mark.parametrize("name", TRAINING_STATE_DAMAGES)
def test_a_resume_refuses_damaged_training_state_before_touching_the_log(
        run_cli, tiny_plugin_file, identity_data, lora_run_copy, name):
    a_crash_after_logging_step_3(lora_run_copy)
    checkpoint, file, reason = damage(lora_run_copy, name, TRAINING_STATE_DAMAGES)
    before = folder_digest(lora_run_copy)
    result = run_cli("--plugin", tiny_plugin_file, *resume_flags(identity_data, checkpoint))
    assert_refused(result, checkpoint, file, reason, lora_run_copy / "checkpoint-1")
    assert folder_digest(lora_run_copy) == before  # logging.jsonl keeps step 3


def test_the_only_checkpoint_damaged_names_no_other(run_cli, tiny_plugin_file, lora_run_copy):
    shutil.rmtree(lora_run_copy / "checkpoint-1")
    checkpoint, file, reason = damage(lora_run_copy, "truncated tokenizer")
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", lora_run_copy,
                     "--query", "Hi")
    assert_refused(result, checkpoint, file, reason, None)


# An adapter saved for another model: peft cannot load its shapes, or loads around its names.
FOREIGN_ADAPTERS = {
    "other width": ("adapter_model.safetensors", lambda p: rewrite_adapter(p, other_width),
                    "the adapter of another model, or of other settings: base_model.model."
                    "model.layers.0.self_attn.q_proj.lora_A.weight is [8, 48], this base model "
                    "needs [8, 32]"),
    "other layers": ("adapter_model.safetensors", lambda p: rewrite_adapter(p, other_layers),
                     "it holds 14 weights this base model has no place for, e.g. base_model."
                     "model.model.layers.7.mlp.down_proj.lora_A.weight"),
    "other module names": ("adapter_config.json",
                           lambda p: edit_json(p, target_modules=["W_pack"]),
                           "the adapter of another model: Target modules {'W_pack'} not found "
                           "in the base model"),
}


@pytest.mark.parametrize("name", FOREIGN_ADAPTERS)
def test_another_models_adapter_is_refused_by_infer(run_cli, tiny_plugin_file, lora_run_copy,
                                                    name):
    checkpoint, file, reason = damage(lora_run_copy, name, FOREIGN_ADAPTERS)
    check_checkpoint(checkpoint)  # its files are whole: only the base model tells
    before = folder_digest(lora_run_copy)
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", checkpoint,
                     "--query", "Hi", "--max-new-tokens", "2")
    assert_refused(result, checkpoint, file, reason, lora_run_copy / "checkpoint-1")
    assert folder_digest(lora_run_copy) == before


@pytest.mark.parametrize("name", FOREIGN_ADAPTERS)
def test_another_models_adapter_is_not_published(run_cli, lora_run_copy, tmp_path, name):
    # push loads no model: the skeleton of the base model comes from base_config.json
    checkpoint, file, reason = damage(lora_run_copy, name, FOREIGN_ADAPTERS)
    before = folder_digest(lora_run_copy)
    hub = tmp_path / "hub"
    result = run_cli("push", "--hub", "local", "--ckpt-dir", checkpoint, "--repo-id",
                     hub / "tiny")
    # the first weight found not to fit may be another than peft's first
    assert_refused(result, checkpoint, file, reason.split(":")[0],
                   lora_run_copy / "checkpoint-1")
    assert folder_digest(lora_run_copy) == before
    assert not hub.exists()


def test_a_checkpoint_from_before_base_config_is_still_published(run_cli, tiny_plugin_file,
                                                                 lora_run_copy, tmp_path):
    checkpoint = lora_run_copy / "checkpoint-2"
    (checkpoint / "base_config.json").unlink()
    result = run_cli("--plugin", tiny_plugin_file, "push", "--hub", "local", "--ckpt-dir",
                     checkpoint, "--repo-id", tmp_path / "hub" / "tiny")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hub" / "tiny" / "adapter_model.safetensors").is_file()


def test_another_models_adapter_is_refused_by_a_resume_before_the_log_is_cut(
        run_cli, tiny_plugin_file, identity_data, lora_run_copy):
    a_crash_after_logging_step_3(lora_run_copy)
    checkpoint, file, reason = damage(lora_run_copy, "other layers", FOREIGN_ADAPTERS)
    before = folder_digest(lora_run_copy)
    result = run_cli("--plugin", tiny_plugin_file, *resume_flags(identity_data, checkpoint))
    assert_refused(result, checkpoint, file, reason, lora_run_copy / "checkpoint-1")
    assert folder_digest(lora_run_copy) == before


@pytest.mark.parametrize("table, name", [(FILE_DAMAGES, "truncated weights"),
                                         (FOREIGN_ADAPTERS, "other layers")],
                         ids=["truncated weights", "other layers"])
def test_a_damaged_adapter_to_train_on_is_refused(run_cli, tiny_plugin_file, identity_data,
                                                 lora_run_copy, tmp_path, table, name):
    checkpoint, file, reason = damage(lora_run_copy, name, table)
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--max-steps", "1", "--adapter", checkpoint,
                     "--output-dir", tmp_path / "out")
    assert_refused(result, checkpoint, file, reason, lora_run_copy / "checkpoint-1")
    assert not list((tmp_path / "out").glob("*/v*"))  # no run folder


def test_an_unchanged_checkpoint_is_read_once_and_a_changed_one_again(lora_run_copy,
                                                                      monkeypatch):
    """export and `infer --dataset` resolve --ckpt-dir, then load it: its weights are read
    once, and a file damaged after that is still refused."""
    from sdk.runs import checkpoint_files

    reads: list[Path] = []
    monkeypatch.setattr(checkpoint_files, "refuse_nonfinite_weights", reads.append)
    checkpoint = lora_run_copy / "checkpoint-2"
    check_checkpoint(checkpoint)
    check_checkpoint(checkpoint)
    assert reads == [checkpoint]
    damaged, file, reason = damage(lora_run_copy, "truncated weights")
    assert damaged == checkpoint
    with pytest.raises(SdkError, match=reason):
        check_checkpoint(checkpoint)
