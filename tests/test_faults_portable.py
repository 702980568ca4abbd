"""Issue 19, item 7: a run is portable and no command writes outside the folders it names.
sft_args.json saves local paths absolute (so `sdk infer --ckpt-dir` works from any folder)
while the published card shows none; the whole CLI runs under a read-only home and caches."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_deploy import call, sdk_deploy

from conftest import REPO, TINY_MODEL_TYPE, folder_digest
from sdk.config import SftArguments, absolute_paths
from sdk.data.sources import is_dataset_name
from sdk.hubs.card import public_arguments
from sdk.plugins import load_plugins


def test_saved_arguments_name_local_paths_absolute_and_keep_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("model", "data", "adapter"):
        (tmp_path / name).mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "alpaca-zh").mkdir()  # a folder named like a registered dataset: not read
    registry = load_plugins().registry
    args = SftArguments(model_type=TINY_MODEL_TYPE, model_id_or_path="model",
                        dataset=["data/train.jsonl#3", "./data/train.jsonl", "alpaca-zh#10",
                                 "owner/hub-dataset", str(tmp_path / "data" / "train.jsonl")],
                        val_dataset=["data/train.jsonl"], dataset_path=["tang-poems=data"],
                        adapter="adapter", output_dir="out")
    saved = absolute_paths(args, lambda name: is_dataset_name(name, registry, args))
    data = str(tmp_path / "data" / "train.jsonl")
    assert saved.model_id_or_path == str(tmp_path / "model")
    assert saved.dataset == [f"{data}#3", data, "alpaca-zh#10", "owner/hub-dataset", data]
    assert saved.val_dataset == [data]
    assert saved.dataset_path == [f"tang-poems={tmp_path / 'data'}"]
    assert saved.adapter == str(tmp_path / "adapter")
    assert saved.output_dir == "out"  # not there yet: a name only, kept as given
    (tmp_path / "alpaca-zh").rmdir()  # else the card takes the name for a folder, and hides it
    public = public_arguments(vars(saved))
    assert public["dataset"] == ["alpaca-zh#10", "owner/hub-dataset"]
    assert str(tmp_path) not in json.dumps(public)


# One process (the variables take effect when the libraries are imported) runs the commands
# in-process, each from its folder (a path with * is the one it matches once there, e.g. the
# run folder that sft made), and writes what each gave.
SURFACE_SCRIPT = textwrap.dedent("""
    import glob, json, os, sys, traceback
    from click.testing import CliRunner
    from sdk.cli import cli

    results = []
    for folder, args in json.loads(sys.argv[1]):
        os.chdir(folder)
        args = [(glob.glob(arg) or [arg])[0] if "*" in arg else arg for arg in args]
        result = CliRunner().invoke(cli, args, prog_name="sdk")
        error = result.exception
        if error is not None and not isinstance(error, SystemExit):
            error = "".join(traceback.format_exception(error))
        results.append({"args": args, "exit": result.exit_code, "output": result.output,
                        "traceback": error if isinstance(error, str) else None})
    print(json.dumps(results))
""")


MODES_STOP_ROOT = os.geteuid() == 0 and shutil.which("setpriv") is not None
MODES_OBEYED = os.geteuid() != 0 or MODES_STOP_ROOT


def unprivileged() -> list[str]:
    """A command prefix under which root, too, obeys file modes (root's DAC override
    dropped); none when not root. Root without setpriv: the digests alone prove it."""
    if not MODES_STOP_ROOT:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner",
            "--inh-caps=-all", "--"]


@pytest.fixture(scope="module")
def read_only_surface(tiny_plugin_file, tiny_model_dir, tmp_path_factory):
    """Every command, from a work folder and from another one, with HOME and every cache
    read-only: the run is trained there with relative paths, then used from elsewhere."""
    root = tmp_path_factory.mktemp("read-only-surface")
    work, elsewhere, home = root / "work", root / "elsewhere", root / "home"
    for folder in (work, elsewhere, home / "cache", home / "config", home / "hf",
                   home / "sdk", home / "modelscope"):
        folder.mkdir(parents=True)
    data = work / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "I am Tiny."}]}) + "\n"
        for question in ["Who are you?", "Your name?", "Introduce yourself."]))
    (work / "messages.json").write_text('[{"role": "user", "content": "hi"}]')
    model = os.path.relpath(tiny_model_dir, work)
    run = work / "out" / TINY_MODEL_TYPE  # its one run folder, v0-<time>
    plugin = ["--plugin", str(tiny_plugin_file)]
    query = ["--query", "hi", "--max-new-tokens", "2", "--stream", "false"]
    commands = [
        (work, ["--help"]), (work, ["models"]), (work, ["templates"]), (work, ["tuners"]),
        (work, ["hubs"]), (work, ["datasets"]), (work, ["formats"]), (work, ["plugins"]),
        (work, ["datasets", "preview", "identity.jsonl", "--template", "chatml", "-n", "1"]),
        (work, ["template", "render", "chatml", "--messages", "messages.json"]),
        (work, [*plugin, "sft", "--model-type", TINY_MODEL_TYPE, "--model-id-or-path", model,
                "--dataset", "identity.jsonl#2", "--val-dataset", "./identity.jsonl",
                "--max-steps", "1", "--batch-size", "2", "--output-dir", "out"]),
        (elsewhere, [*plugin, "infer", "--ckpt-dir", f"{run}/v0-*", *query]),
        (elsewhere, [*plugin, "infer", "--ckpt-dir", f"{run}/v0-*", "--val-dataset-from-run",
                     "--max-new-tokens", "2", "--predictions-file", "predictions.jsonl"]),
        (elsewhere, ["eval", "--predictions", "predictions.jsonl"]),
        (elsewhere, [*plugin, "export", "--ckpt-dir", f"{run}/v0-*", "--merge-lora", "true",
                     "--output-dir", "merged"]),
        (elsewhere, [*plugin, "push", "--hub", "local", "--ckpt-dir", f"{run}/v0-*",
                     "--repo-id", "pushed"]),
        (elsewhere, ["plot", f"{run}/v0-*", "--output", "loss.png"]),
    ]
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
           "XDG_CONFIG_HOME": str(home / "config"), "HF_HOME": str(home / "hf"),
           "SFT_SDK_CACHE": str(home / "sdk"), "MODELSCOPE_CACHE": str(home / "modelscope"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    model_before = folder_digest(tiny_model_dir)
    with read_only(home):
        done = subprocess.run([*unprivileged(), sys.executable, "-c", SURFACE_SCRIPT,
                               json.dumps([(str(f), a) for f, a in commands])],
                              env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"results": json.loads(done.stdout.splitlines()[-1]), "home": home, "env": env,
            "work": work, "elsewhere": elsewhere, "run": next(run.glob("v0-*")), "model": model,
            "model_unchanged": folder_digest(tiny_model_dir) == model_before}


@contextmanager
def read_only(home: Path) -> Iterator[None]:
    folders = [home, *home.rglob("*")]
    for folder in folders:
        folder.chmod(0o555)
    try:
        yield
    finally:
        for folder in folders:
            folder.chmod(0o755)


@pytest.mark.slow
def test_every_command_runs_under_a_read_only_home_and_writes_nothing_there(
        read_only_surface):
    for result in read_only_surface["results"]:
        command = " ".join(result["args"][2:] if result["args"][0] == "--plugin"
                           else result["args"])
        assert result["traceback"] is None, f"sdk {command}:\n{result['traceback']}"
        assert result["exit"] == 0, f"sdk {command}:\n{result['output']}"
    written = folder_digest(read_only_surface["home"])
    if not MODES_OBEYED:  # root could write the data cache, so the run used it
        written = {name: digest for name, digest in written.items()
                   if not name.startswith("sdk/")}
    assert written == {}  # nothing in HOME or a cache
    assert read_only_surface["model_unchanged"]
    # from the other folder, only what the commands name (the predictions file's scores and
    # settings beside it)
    assert sorted(p.name for p in read_only_surface["elsewhere"].iterdir()) == [
        "loss.png", "merged", "predictions.jsonl", "predictions.metrics.json",
        "predictions.settings.json", "pushed"]


@pytest.mark.slow
@pytest.mark.skipif(not MODES_OBEYED, reason="root without setpriv writes to read-only folders")
def test_an_unwritable_data_cache_moves_to_the_output_dir_with_a_notice(read_only_surface):
    sft = next(r for r in read_only_surface["results"] if "sft" in r["args"])
    cache = read_only_surface["home"] / "sdk" / "datasets"
    fallback = Path("out") / ".sft-sdk-cache" / "datasets"
    notice = (f"[sdk] the data cache {cache} cannot be written (Permission denied): caching "
              f"in {fallback} instead (SFT_SDK_CACHE sets the cache).")
    assert sft["output"].count(notice) == 1, sft["output"]
    assert any((read_only_surface["work"] / fallback).iterdir())


@pytest.mark.slow
def test_sdk_deploy_serves_and_stops_under_a_read_only_home(read_only_surface,
                                                            tiny_plugin_file):
    home, elsewhere = read_only_surface["home"], read_only_surface["elsewhere"]
    before = folder_digest(elsewhere)
    with read_only(home), sdk_deploy(
            "--plugin", tiny_plugin_file, "deploy", "--ckpt-dir", read_only_surface["run"],
            "--max-new-tokens", "2", env=read_only_surface["env"], prefix=unprivileged(),
            cwd=elsewhere) as deployed:
        status, answer = call(deployed.url, "/v1/chat/completions", {
            "model": deployed.name, "messages": [{"role": "user", "content": "hi"}]})
        deployed.process.terminate()
        exit_status, log = deployed.ended(30)
    assert status == 200 and answer["choices"][0]["message"]["role"] == "assistant", answer
    assert exit_status == 0 and "Traceback" not in log, log
    assert folder_digest(home) == {} and folder_digest(elsewhere) == before


@pytest.mark.slow
def test_a_run_trained_with_relative_paths_works_from_another_folder(read_only_surface):
    run, work = read_only_surface["run"], read_only_surface["work"]
    saved = json.loads((run / "checkpoint-1" / "sft_args.json").read_text())
    data = str(work / "identity.jsonl")
    assert saved["model_id_or_path"] == os.path.normpath(work / read_only_surface["model"])
    assert saved["dataset"] == [f"{data}#2"] and saved["val_dataset"] == [data]
    assert saved["output_dir"] == str(work / "out")
    # from the other folder: infer --query, --val-dataset-from-run, export --merge-lora
    used = [r for r in read_only_surface["results"] if r["args"][2:3] in (["infer"], ["export"])]
    assert [r["exit"] for r in used] == [0, 0, 0], [r["output"] for r in used]
    predictions = read_only_surface["elsewhere"] / "predictions.jsonl"
    assert predictions.read_text().count("\n") == 3
    assert (read_only_surface["elsewhere"] / "merged" / "config.json").is_file()


@pytest.mark.slow
def test_the_pushed_card_and_arguments_show_no_local_path(read_only_surface):
    pushed = read_only_surface["elsewhere"] / "pushed"
    root = str(read_only_surface["work"].parent)
    for name in ("README.md", "sft_args.json"):
        assert root not in (pushed / name).read_text(), name
    published = json.loads((pushed / "sft_args.json").read_text())
    assert published["model_id_or_path"] is None and published["dataset"] == []


def test_a_run_saved_with_a_relative_model_folder_says_where_it_is_relative_to(
        run_cli, tiny_plugin_file, tmp_path, monkeypatch):
    checkpoint = tmp_path / "run" / "checkpoint-1"  # as an older sdk saved it
    checkpoint.mkdir(parents=True)
    (checkpoint / "sft_args.json").write_text(json.dumps({
        "model_type": TINY_MODEL_TYPE, "sft_type": "lora", "template": "chatml",
        "model_id_or_path": "models/tiny"}))
    monkeypatch.chdir(tmp_path)
    before = folder_digest(tmp_path)
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", "run", "--query", "hi")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {Path('run', 'checkpoint-1')} was trained from the model folder 'models/tiny', "
        "saved relative to the folder `sdk sft` ran in: run this from that folder, or give "
        "--model-id-or-path.")
    assert "Traceback" not in result.output
    assert folder_digest(tmp_path) == before


def test_a_model_cache_that_cannot_be_written_is_named_before_converting(tmp_path, monkeypatch):
    from sdk.errors import SdkError
    from sdk.models.native import Conversion, native_folder

    official = tmp_path / "official"
    official.mkdir()
    (official / "config.json").write_text("{}")
    (tmp_path / "cache").write_text("a file where the cache would be")
    monkeypatch.setenv("SFT_SDK_CACHE", str(tmp_path / "cache"))
    before = folder_digest(tmp_path)
    never = Conversion(layout="llama", version=1, config=dict, tensors=lambda *a: [],
                       tokenizer=lambda *a: None)
    with pytest.raises(SdkError) as refused:
        native_folder(official, never)
    assert str(refused.value).startswith(f"The model cache {tmp_path / 'cache' / 'native'} "
                                         "cannot be written (")
    assert str(refused.value).endswith(f"and {official} is converted into it; set "
                                       "SFT_SDK_CACHE to a writable folder.")
    assert folder_digest(tmp_path) == before
