"""The transformers Trainer, with checkpoints that appear complete or not at all.

Why a staging folder renamed into place rather than a completion marker: transformers 5.24
writes ``checkpoint-N`` in place over several calls (weights, tokenizer, optimizer, RNG,
trainer state) and rotates old checkpoints (``save_total_limit``) inside that same call,
before any callback could mark the new one complete. A marker would also have to be known to
every reader: resume, `sdk infer`, the Trainer's own ``get_last_checkpoint``, users' scripts.
Here the Trainer writes into ``<run>/.partial/``; ``sft_args.json`` goes in last, the files are
synced, and one rename (atomic within a filesystem) gives the folder its ``checkpoint-N``
name. Only then are old checkpoints rotated, each renamed away before it is deleted, so a
half-deleted folder never carries a checkpoint name either. Callbacks' ``on_save`` (the hub
push) runs after this and sees the finished checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from transformers import Trainer

from sdk.train.run_dir import PARTIAL_DIR, checkpoints, write_args


class SftTrainer(Trainer):
    def __init__(self, *args: Any, run_arguments: dict[str, Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.run_arguments = run_arguments  # written into each checkpoint as sft_args.json
        self._saving_into: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        # The Trainer writes checkpoint-N under this folder and rotates there: while it saves,
        # that is the staging folder, which holds nothing else.
        return self._saving_into or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        staging = run_dir / PARTIAL_DIR
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a save cut short left behind
        self.accelerator.wait_for_everyone()
        self._saving_into = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_into = None
        self.accelerator.wait_for_everyone()  # every process has written its part
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            publish(staging / name, run_dir / name, self.run_arguments)
            limit = self.args.save_total_limit or 0
            if limit > 0:
                for old in checkpoints(run_dir)[:-limit]:
                    discard(old)
            shutil.rmtree(staging)


def publish(staged: Path, target: Path, arguments: dict[str, Any]) -> None:
    """Complete a staged checkpoint and give it its name in the run folder."""
    write_args(staged, arguments)
    # On disk before the name says complete, so a power cut cannot leave empty files under it.
    for file in staged.rglob("*"):
        if file.is_file():
            _sync(file)
    if target.exists():  # left by a run from before staging (a save cut short)
        discard(target)
    staged.rename(target)
    _sync(target.parent)


def discard(checkpoint: Path) -> None:
    """Delete a checkpoint folder; renamed away first, so no half-deleted folder keeps its
    name."""
    doomed = checkpoint.parent / PARTIAL_DIR / f"deleting-{checkpoint.name}"
    doomed.parent.mkdir(exist_ok=True)
    shutil.rmtree(doomed, ignore_errors=True)
    checkpoint.rename(doomed)
    shutil.rmtree(doomed)


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
