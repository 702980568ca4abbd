"""Run folders (``<output>/<model-type>/v<N>-<YYYYMMDD-HHMMSS>/``, or ``--output-dir`` itself
with ``--output-dir-as-run``), the files that make a checkpoint self-describing, and the one
definition of a complete checkpoint."""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from sdk.errors import SdkError

ARGS_FILE = "sft_args.json"
LOG_FILE = "logging.jsonl"
# Checkpoints are written here and renamed into the run folder once complete
# (sdk/train/trainer.py); whatever is left here was cut short.
PARTIAL_DIR = ".partial"
# What a run writes into its folder besides checkpoint-N: the log, best_checkpoint.json
# (runs/best.py), loss.png (train/plot.py), predictions/ (infer/predict.py), tensorboard's runs/
# (tests/test_output_dir.py checks the names); what --overwrite-output-dir replaces.
RUN_FILES = (ARGS_FILE, LOG_FILE, LOG_FILE + ".partial", PARTIAL_DIR, "best_checkpoint.json",
             "loss.png", "predictions", "runs")
_VERSION = re.compile(r"^v(\d+)-")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def new_run_dir(output_dir: str | Path, model_type: str) -> Path:
    """A new, empty run folder whose version is one above every run already there."""
    parent = Path(output_dir) / model_type
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SdkError(f"--output-dir '{output_dir}' is a file; give a folder.") from None
    # The lock makes "find the highest version, create the next" one step across processes.
    with (parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run_dir = parent / f"v{next_version(parent)}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir.mkdir()
    return run_dir


def previous_run(folder: Path) -> tuple[list[Path], list[Path]]:
    """What ``folder`` holds: a previous run's files (RUN_FILES, checkpoint-N) and the rest."""
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    run = [p for p in entries if p.name in RUN_FILES or _CHECKPOINT.match(p.name)]
    return run, [p for p in entries if p not in run]


def refuse_previous_run(folder: Path) -> None:
    """``folder`` (--output-dir-as-run) holds nothing a new run could overwrite, else an
    SdkError naming what is there and the two ways on (HF Trainer's and LLaMA-Factory's)."""
    run, other = previous_run(folder)
    if not run and not other:
        return
    named = ", ".join(p.name for p in (run or other)[:4]) + (
        ", ..." if len(run or other) > 4 else "")
    held = f"holds a previous run ({named})" if run else f"is not empty ({named})"
    raise SdkError(f"--output-dir '{folder}' {held}, and the run is written into it as given "
                   "(--output-dir-as-run, LLaMA-Factory's output_dir). Pass "
                   "overwrite_output_dir (--overwrite-output-dir) to train a new run there (the "
                   "previous run's files are replaced, other files kept), "
                   f"resume_from_checkpoint {folder} (--resume-from-checkpoint) to continue it, "
                   "or give another output_dir.")


def claim_run_dir(folder: Path, overwrite: bool) -> list[str]:
    """Make ``folder`` the run folder (--output-dir-as-run), created if needed; with
    ``overwrite`` a previous run's files in it are deleted (their names returned), every other
    file is kept; without, a folder holding anything is refused (refuse_previous_run)."""
    if folder.exists() and not folder.is_dir():
        raise SdkError(f"--output-dir '{folder}' is a file; give a folder.")
    if not overwrite:
        refuse_previous_run(folder)
    folder.mkdir(parents=True, exist_ok=True)
    replaced = previous_run(folder)[0]
    for path in replaced:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return [p.name for p in replaced]


def next_version(parent: Path) -> int:
    """The version of the next run folder in ``parent`` (OUTPUT_DIR/<model-type>)."""
    return max(_versions(parent) if parent.is_dir() else {}, default=-1) + 1


def newest_run(output_dir: str | Path, model_type: str) -> Path | None:
    """The run folder of ``model_type`` with the highest version, if there is one."""
    parent = Path(output_dir) / model_type
    runs = _versions(parent) if parent.is_dir() else {}
    return runs[max(runs)] if runs else None


def _versions(parent: Path) -> dict[int, Path]:
    return {int(m.group(1)): p for p in parent.iterdir()
            if p.is_dir() and (m := _VERSION.match(p.name))}


def write_args(folder: Path, arguments: dict[str, Any]) -> None:
    (folder / ARGS_FILE).write_text(json.dumps(arguments, indent=2, ensure_ascii=False) + "\n",
                                    encoding="utf-8")


def damaged_checkpoint(file: Path, reason: str) -> SdkError:
    """The one error for a checkpoint file that cannot be used: "checkpoint DIR is damaged:
    FILE (reason)", naming the run's newest other complete checkpoint when there is one."""
    checkpoint = file.parent
    message = f"checkpoint {checkpoint} is damaged: {file.name} ({reason})."
    if _CHECKPOINT.match(checkpoint.name) and checkpoint.parent.is_dir():
        others = [c for c in checkpoints(checkpoint.parent) if c != checkpoint]
        if others:
            message += f" The last complete checkpoint of the run is {others[-1]}."
    return SdkError(message)


def read_saved_arguments(path: Path) -> dict[str, Any]:
    """A checkpoint's ``sft_args.json``; an error naming the file if it is damaged or foreign."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged_checkpoint(path, str(error)) from None
    missing = [key for key in ("model_type", "sft_type", "template")
               if not isinstance(saved, dict) or not isinstance(saved.get(key), str)]
    if missing:
        raise SdkError(f"{path} lacks {', '.join(missing)}; it was not written by `sdk sft`.")
    return saved


def is_complete_checkpoint(folder: Path) -> bool:
    """A ``checkpoint-N`` folder in a run folder, holding ``sft_args.json``.

    `sdk sft` writes a checkpoint under ``.partial/`` and renames it into the run folder only
    when every file, ``sft_args.json`` included, is written; checkpoints from before that
    scheme got ``sft_args.json`` last. Either way a save cut short fails this test."""
    return (folder.is_dir() and _CHECKPOINT.match(folder.name) is not None
            and folder.parent.name != PARTIAL_DIR and (folder / ARGS_FILE).is_file())


def checkpoint_step(checkpoint: Path) -> int:
    match = _CHECKPOINT.match(checkpoint.name)
    if match is None:
        raise ValueError(f"{checkpoint} is not named checkpoint-N")
    return int(match.group(1))


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest step first."""
    return sorted((p for p in run_dir.iterdir() if is_complete_checkpoint(p)),
                  key=checkpoint_step)


def find_checkpoint(path: str | Path, flag: str) -> Path:
    """A complete checkpoint folder as given, or the newest complete checkpoint of a run
    folder; ``flag`` names the option in the errors."""
    folder = Path(path)
    if not folder.is_dir():
        raise SdkError(f"{flag} '{path}' is not a folder.")
    if _CHECKPOINT.match(folder.name) is None:  # a run folder
        found = checkpoints(folder)
        if found:
            return found[-1]
        if (folder / ARGS_FILE).is_file() and any(
                (folder / name).is_file() for name in ("config.json", "adapter_config.json")):
            return folder  # a checkpoint pushed to a hub (`sdk push`) and downloaded
        if (folder / ARGS_FILE).is_file():
            raise SdkError(f"{flag} '{path}' is a run of `sdk sft` with no complete checkpoint "
                           "yet (a save cut short does not count).")
        raise SdkError(f"{flag} '{path}' holds no checkpoint written by `sdk sft` (no "
                       f"checkpoint-N folder with {ARGS_FILE}).")
    if is_complete_checkpoint(folder):
        return folder
    if folder.parent.name == PARTIAL_DIR or (folder.parent / ARGS_FILE).is_file():
        raise SdkError(f"{flag} '{path}' is an incomplete checkpoint (its save was cut short); "
                       "give its run folder to use the newest complete one.")
    raise SdkError(f"{flag} '{path}' was not written by `sdk sft` (it has no {ARGS_FILE}).")


def kept_of_run(run_dir: Path) -> str:
    """What a run keeps when a write fails: its newest complete checkpoint, if it has one."""
    complete = checkpoints(run_dir)
    return str(complete[-1]) if complete else f"no checkpoint yet, only {run_dir}'s log"
