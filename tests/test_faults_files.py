"""Issue 19, items 1 and 4: files and folders. `sdk export --overwrite` deletes only what an
export wrote; an unreadable data file, an output folder that cannot be written (refused before
the model loads) and a disk that fills while a checkpoint, an export or a local push is written
are one-line errors that leave no staging folder behind; a record nested too deeply for the
JSON parser is a bad record like any other."""

import errno
import functools
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY_MODEL_TYPE, folder_digest, only_run
from sdk.errors import SdkError
from sdk.folders import is_disk_full
from sdk.train.callbacks import JsonlLogger

DISK_FULL = os.strerror(errno.ENOSPC)


def fills_the_disk(path, data: bytes = b"half") -> None:
    """What a full disk does to a write: some bytes land, then ENOSPC."""
    with open(path, "wb") as handle:
        handle.write(data)
    raise OSError(errno.ENOSPC, DISK_FULL, str(path))


def one_line_error(result, *words: str) -> str:
    """The CLI's message, asserted to be one line with every one of ``words``."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Error: " in result.stderr, result.output
    message = result.stderr[result.stderr.index("Error: "):].splitlines()[0]
    for word in words:
        assert str(word) in message, message
    return message


@pytest.fixture
def sdk(run_cli, tiny_plugin_file):
    """`sdk --plugin TINY_PLUGIN ARGS...` in-process: the tiny model type is known."""
    return functools.partial(run_cli, "--plugin", tiny_plugin_file)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if sdk sft or sdk export gets as far as loading a model."""
    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr("sdk.train.sft.load_model", loaded)
    monkeypatch.setattr("sdk.export.load_for_inference", loaded)


def test_export_overwrite_replaces_only_what_an_export_wrote(sdk, finished_lora_run,
                                                            tmp_path):
    export = ("export", "--ckpt-dir", finished_lora_run, "--merge-lora", "true",
              "--output-dir", tmp_path / "merged")
    assert sdk(*export).exit_code == 0
    exported_from = json.loads((tmp_path / "merged" / "sft_args.json").read_text())[
        "exported_from"]
    assert sorted(exported_from["files"]) == sorted(p.name for p in
                                                    (tmp_path / "merged").iterdir())
    (tmp_path / "merged" / "notes.txt").write_text("the user's own")
    before = folder_digest(tmp_path)
    message = one_line_error(sdk(*export, "--overwrite", "true"), "notes.txt",
                             "Nothing was deleted", "move those away")
    assert "--output-dir" in message
    assert folder_digest(tmp_path) == before

    # An export from before the list: any file an export would not write is the user's.
    saved = json.loads((tmp_path / "merged" / "sft_args.json").read_text())
    del saved["exported_from"]["files"]
    (tmp_path / "merged" / "sft_args.json").write_text(json.dumps(saved))
    (tmp_path / "merged" / "mine").mkdir()
    before = folder_digest(tmp_path)
    one_line_error(sdk(*export, "--overwrite", "true"), "mine, notes.txt")
    assert folder_digest(tmp_path) == before

    shutil.rmtree(tmp_path / "merged" / "mine")
    (tmp_path / "merged" / "notes.txt").unlink()
    result = sdk(*export, "--overwrite", "true")
    assert result.exit_code == 0, result.output
    assert "files" in json.loads((tmp_path / "merged" / "sft_args.json").read_text())[
        "exported_from"]


@pytest.mark.parametrize("case, command", [
    ("data.jsonl", "sft"), ("data.jsonl", "preview"), ("data.json", "preview"),
    ("data.csv", "sft"), ("data.json", "template render"),
    ("locked/data.jsonl", "preview"),  # a folder on the way without permission
    ("saved/dataset_info.json", "sft"),  # a save_to_disk folder without permission
])
def test_an_unreadable_data_file_is_named(sdk, permissions_bind, tmp_path, case, command):
    unreadable = tmp_path / case
    unreadable.parent.mkdir(exist_ok=True)
    unreadable.write_text({".jsonl": '{"messages": []}\n', ".json": "[]"}.get(
        unreadable.suffix, "query,response\nhi,hello\n"))
    if case.startswith("saved"):
        (unreadable.parent / "state.json").write_text("{}")
    (unreadable if unreadable.parent == tmp_path else unreadable.parent).chmod(0)
    given = unreadable.parent if case.startswith("saved") else unreadable
    if command == "sft":
        result = sdk("sft", "--model-type", TINY_MODEL_TYPE, "--dataset", given,
                     "--output-dir", tmp_path / "out")
    elif command == "preview":
        result = sdk("datasets", "preview", given, "--template", "chatml")
    else:
        result = sdk("template", "render", "chatml", "--messages", given)
    one_line_error(result, f"cannot read {unreadable}: permission denied")
    assert [p.name for p in tmp_path.iterdir()] == [case.split("/")[0]]  # nothing written


@pytest.mark.parametrize("case", ["output-dir", "model-type folder", "inside a file",
                                  "under a locked folder", "resumed run"])
def test_sft_refuses_an_output_folder_it_cannot_write_before_loading(
        sdk, identity_data, lora_run_copy, permissions_bind,
        no_model_load, tmp_path, case):
    output, flags = tmp_path / "out", []
    words = ["--output-dir", "permission denied"]
    if case == "output-dir":
        output.mkdir()
        output.chmod(0o555)
    elif case == "model-type folder":
        (output / TINY_MODEL_TYPE).mkdir(parents=True)
        (output / TINY_MODEL_TYPE).chmod(0o555)
        words.append(str(output / TINY_MODEL_TYPE))
    elif case == "inside a file":
        (tmp_path / "a_file").write_text("in the way")
        output = tmp_path / "a_file" / "sub"
        words = [f"'{tmp_path / 'a_file'}' is a file in the way"]
    elif case == "under a locked folder":
        (tmp_path / "locked").mkdir(mode=0)
        output = tmp_path / "locked" / "out"
        words.append(f"(in '{tmp_path / 'locked'}', where it would be created)")
    else:
        lora_run_copy.chmod(0o555)
        flags = ["--resume-from-checkpoint", lora_run_copy, "--max-steps", "3"]
        words = ["--resume-from-checkpoint", str(lora_run_copy), "permission denied"]
    before = folder_digest(tmp_path)
    result = sdk("sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--output-dir", output, *flags)
    one_line_error(result, *words)
    assert folder_digest(tmp_path) == before


@pytest.mark.parametrize("case", ["unwritable", "inside a file"])
def test_export_refuses_an_output_folder_it_cannot_write_before_loading(
        sdk, finished_lora_run, permissions_bind, no_model_load, tmp_path, case):
    (tmp_path / "parent").write_text("in the way") if case == "inside a file" else \
        (tmp_path / "parent").mkdir(mode=0o555)
    before = folder_digest(tmp_path)
    result = sdk("export", "--ckpt-dir", finished_lora_run, "--merge-lora", "true",
                     "--output-dir", tmp_path / "parent" / "merged")
    one_line_error(result, "--output-dir", "permission denied" if case == "unwritable"
                   else f"'{tmp_path / 'parent'}' is a file in the way")
    assert folder_digest(tmp_path) == before


def test_a_full_disk_at_a_checkpoint_keeps_the_last_complete_one(
        sdk, identity_data, monkeypatch, tmp_path):
    import torch

    def save(obj, file, *args, **kwargs):  # the second checkpoint's optimizer state
        if "checkpoint-2" in str(file):
            fills_the_disk(file)
        return real_save(obj, file, *args, **kwargs)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", save)
    result = sdk("sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--max-steps", "2", "--save-steps", "1",
                     "--batch-size", "2", "--output-dir", tmp_path / "out")
    run = only_run(tmp_path / "out")
    one_line_error(result, f"no space left on device while writing {run}/.partial/checkpoint-2/",
                   f"kept: {run / 'checkpoint-1'}")
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoint-1"]
    assert (run / "checkpoint-1" / "sft_args.json").is_file()


def test_a_full_disk_as_a_run_starts_leaves_no_run_folder(sdk, identity_data, monkeypatch,
                                                          tmp_path):
    monkeypatch.setattr("sdk.train.sft.write_args",
                        lambda folder, arguments: fills_the_disk(folder / "sft_args.json"))
    result = sdk("sft", "--model-type", TINY_MODEL_TYPE, "--dataset", identity_data,
                 "--max-steps", "1", "--output-dir", tmp_path / "out")
    one_line_error(result, "no space left on device while writing ", "sft_args.json",
                   "kept: nothing, the new run folder was removed")
    assert list((tmp_path / "out" / TINY_MODEL_TYPE).glob("v*")) == []


def test_a_full_disk_during_an_export_leaves_the_earlier_one(sdk, finished_lora_run,
                                                             monkeypatch, tmp_path):
    earlier = tmp_path / "merged"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    (earlier / "sft_args.json").write_text(json.dumps(
        {"exported_from": {"files": ["config.json", "sft_args.json"]}}))
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file",
                        lambda tensors, file, **kwargs: fills_the_disk(file))
    before = folder_digest(tmp_path)
    result = sdk("export", "--ckpt-dir", finished_lora_run, "--merge-lora", "true",
                     "--output-dir", earlier, "--overwrite", "true")
    one_line_error(result, "no space left on device while writing ", "model.safetensors",
                   f"kept: '{earlier}' as it was")
    assert folder_digest(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging folder


def test_a_full_disk_during_a_local_push_leaves_nothing(sdk, finished_lora_run,
                                                        monkeypatch, tmp_path):
    copied = []

    def copy(source, destination, **kwargs):
        copied.append(destination)
        if len(copied) > 2:
            fills_the_disk(destination)
        return shutil.copy2(source, destination, **kwargs)

    monkeypatch.setattr(shutil, "copytree", functools.partial(shutil.copytree,
                                                              copy_function=copy))
    (tmp_path / "hub").mkdir()
    result = sdk("push", "--hub", "local", "--ckpt-dir", finished_lora_run, "--repo-id",
                     tmp_path / "hub" / "tiny")
    one_line_error(result, f"no space left on device while writing {copied[2]}",
                   f"kept: nothing, {tmp_path / 'hub' / 'tiny'} was not made")
    assert list((tmp_path / "hub").iterdir()) == []


def test_a_full_disk_while_a_push_is_staged_leaves_the_checkpoint(sdk, finished_lora_run,
                                                                  monkeypatch, tmp_path):
    checkpoint = next(finished_lora_run.glob("checkpoint-*"))
    before, copied = folder_digest(finished_lora_run), []

    def no_link(source, target):  # another filesystem: the staging copies instead
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def copy(source, target, **kwargs):
        copied.append(target)
        if len(copied) > 1:
            fills_the_disk(target)
        return shutil.copyfile(source, target)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copy2", copy)
    result = sdk("push", "--hub", "local", "--ckpt-dir", checkpoint, "--repo-id",
                 tmp_path / "hub" / "tiny")
    one_line_error(result, f"no space left on device while writing {copied[1]}",
                   f"kept: {checkpoint} as it was; nothing was pushed")
    assert folder_digest(finished_lora_run) == before
    assert not list(finished_lora_run.glob(".sdk-push-*"))  # the staging folder beside it
    assert not (tmp_path / "hub").exists()


def test_a_full_disk_while_logging_leaves_the_log_whole(lora_run_copy, monkeypatch):
    log, real_open = lora_run_copy / "logging.jsonl", Path.open
    before = log.read_bytes()

    def open_log(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if path == log and "a" in mode:
            with handle:
                handle.write('{"step": 3, "lo')  # what lands before the disk is full
            raise OSError(errno.ENOSPC, DISK_FULL, str(path))
        return handle

    monkeypatch.setattr(Path, "open", open_log)
    state = SimpleNamespace(is_world_process_zero=True, global_step=3, epoch=1.5)
    with pytest.raises(SdkError) as refused:
        JsonlLogger(lora_run_copy).on_log(None, state, None, logs={"loss": 1.0})
    assert str(refused.value).startswith(
        f"no space left on device while writing {log}; kept: {lora_run_copy / 'checkpoint-2'}.")
    assert log.read_bytes() == before


def test_a_full_disk_is_recognised_in_other_libraries_words(tmp_path):
    # what safetensors' SafetensorError says on a full disk (a 2 MB tmpfs)
    safetensors = Exception("Error while serializing: I/O error: No space left on device (os "
                            "error 28)")
    assert is_disk_full(safetensors, tmp_path)
    assert is_disk_full(OSError(errno.EDQUOT, "quota"), tmp_path)
    # not when the disk has room: a write error for another reason stays what it is
    # torch.save's words on a full disk, which say nothing of it: only a nearly full disk does
    assert not is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . "
                                         "unexpected pos 576 vs 534"), tmp_path)
    assert not is_disk_full(PermissionError(errno.EACCES, "denied"), tmp_path)


DEEP = "[" * 50_000 + "]" * 50_000  # under csv's cell limit (131072)


@pytest.mark.parametrize("name, text, where", [
    ("deep.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
     '"content": "hello"}]}\n' + DEEP + "\n", "deep.jsonl:2"),
    ("deep.csv", f'query,response,history\nhi,hello,[]\nhi,hello,"{DEEP}"\n', "deep.csv:3"),
])
def test_a_record_nested_too_deeply_is_a_bad_record(sdk, tmp_path, name, text, where):
    data = tmp_path / name
    data.write_text(text)
    preview = ("datasets", "preview", data, "--template", "chatml")
    one_line_error(sdk(*preview), where, "nested too deeply", "--skip-bad-records")
    skipped = sdk(*preview, "--skip-bad-records", "true")
    assert skipped.exit_code == 0, skipped.output
    assert f"1 bad records skipped, first at: {data.parent}/{where}" in skipped.output


def test_a_json_file_nested_too_deeply_is_named(sdk, tmp_path):
    data = tmp_path / "deep.json"
    data.write_text(DEEP)
    one_line_error(sdk("datasets", "preview", data, "--template", "chatml"),
                   f"{data}: JSON nested too deeply")
