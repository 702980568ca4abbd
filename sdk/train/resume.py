"""``--resume-from-checkpoint``: find the checkpoint, check that it fits this run, and make its
run folder read as one uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from sdk.config import SftArguments
from sdk.errors import SdkError
from sdk.runs.checkpoint_files import check_checkpoint
from sdk.runs.run_dir import (
    ARGS_FILE,
    LOG_FILE,
    PARTIAL_DIR,
    checkpoint_step,
    checkpoints,
    find_checkpoint,
    is_complete_checkpoint,
    newest_run,
    read_saved_arguments,
)

FLAG = "--resume-from-checkpoint"
def resume_checkpoint(args: SftArguments) -> Path | None:
    """The complete checkpoint that ``--resume-from-checkpoint`` names (a checkpoint or run
    folder, or ``auto``: the newest run of ``--model-type`` under ``--output-dir``, or
    ``--output-dir`` itself with ``--output-dir-as-run``), checked against this run's
    arguments; None without the flag. Reads no model."""
    given = args.resume_from_checkpoint
    if not given:
        return None
    if given == "auto" and args.output_dir_as_run:
        checkpoint = find_checkpoint(args.output_dir, f"{FLAG} auto: --output-dir")
    elif given == "auto":
        run = newest_run(args.output_dir, args.model_type)
        if run is None:
            raise SdkError(f"{FLAG} auto: there is no run of {args.model_type} under "
                           f"--output-dir '{args.output_dir}'. Give the --output-dir of the run "
                           "to resume, or its checkpoint folder.")
        checkpoint = find_checkpoint(run, f"{FLAG} auto: the newest run")
    else:
        checkpoint = find_checkpoint(given, FLAG)
    if not is_complete_checkpoint(checkpoint):  # a checkpoint copied out of its run
        raise SdkError(f"{FLAG} '{checkpoint}' is a checkpoint outside its run folder (pushed "
                       "or copied), and a resumed run writes its later checkpoints and log "
                       "into the run folder. Copy it into an empty folder as checkpoint-<its "
                       "step> and resume from that, or train on from its weights (--adapter "
                       "for an adapter tuner).")
    saved = read_saved_arguments(checkpoint / ARGS_FILE)
    # before anything is loaded or the run's log is cut back to the checkpoint's step
    check_checkpoint(checkpoint, resuming=True)
    for name in ("model_type", "sft_type"):
        if saved[name] != getattr(args, name):
            flag = "--" + name.replace("_", "-")
            raise SdkError(f"{FLAG}: {checkpoint} was trained with {flag} {saved[name]}, this "
                           f"run has {flag} {getattr(args, name)}. Give {flag} {saved[name]} "
                           f"to resume it, or leave out {FLAG} for a fresh run.")
    # what shapes the trainable weights or the optimizer state (the core's settings and the
    # tuner's options marked kept_on_resume); older runs saved every tuner's options
    changed = [f.name for f in dataclasses.fields(args) if f.metadata.get("kept_on_resume")
               and f.name in saved and not same_setting(f.name, saved[f.name],
                                                        getattr(args, f.name))]
    if changed:
        given = "; ".join(f"--{name.replace('_', '-')} {saved[name]!r} there, "
                          f"{getattr(args, name)!r} now" for name in changed)
        raise SdkError(f"{FLAG}: {checkpoint} was trained with other tuner or optimizer "
                       f"settings ({given}). Resume with the settings it was trained with, "
                       f"or leave out {FLAG} for a fresh run.")
    if saved.get("only_save_model"):
        raise SdkError(f"{FLAG}: {checkpoint} was saved with --only-save-model, without the "
                       "optimizer state that resuming needs. Start a fresh run from its "
                       f"weights instead (--adapter {checkpoint} for an adapter tuner).")
    later = [c.name for c in checkpoints(checkpoint.parent)
             if checkpoint_step(c) > checkpoint_step(checkpoint)]
    if later:
        raise SdkError(f"{FLAG}: {checkpoint.parent} already has checkpoints after "
                       f"{checkpoint.name} ({', '.join(later)}), which the resumed run would "
                       "replace. Resume from the run folder (its newest checkpoint), or move "
                       "the later ones out of it.")
    return checkpoint


def same_setting(name: str, saved: object, given: object) -> bool:
    if name == "adapter" and saved and given:  # saved absolute; by older runs as given
        return os.path.abspath(str(saved)) == os.path.abspath(str(given))
    return (saved or None) == (given or None)


def keep_log_until(run_dir: Path, step: int) -> None:
    """Drop the log records after ``step`` (and a last line cut short by a crash), so a run
    resumed from checkpoint-``step`` logs as one uninterrupted run."""
    path = run_dir / LOG_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    # Written aside and renamed over the log: a crash here keeps the whole old log.
    rewritten = path.with_name(LOG_FILE + ".partial")
    rewritten.write_text("".join(kept), encoding="utf-8")
    os.replace(rewritten, path)


def discard_unfinished_save(run_dir: Path) -> bool:
    """Delete the staging folder of a save that the interrupted run did not finish (never a
    complete checkpoint: those are renamed out of it); whether there was one."""
    staging = run_dir / PARTIAL_DIR
    if not staging.exists():
        return False
    shutil.rmtree(staging)
    return True
