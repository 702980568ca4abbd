"""The Trainer callback behind ``sdk sft --push-to-hub``.

Apart from `sdk/hubs/push.py` because it imports transformers, which `sdk push` does not need.

Strategies (``--push-hub-strategy``): ``end`` and ``push_last`` push the last checkpoint when
training ends (the Trainer always saves one at the end, so the two are the same here);
``push_best`` the best checkpoint (`sdk/runs/best.py`: lowest eval loss, kept through
rotation; the last one without held-out data);
``checkpoint`` each checkpoint to the repository's root, each replacing the one before;
``all_checkpoints`` each checkpoint into its own ``checkpoint-N`` folder of the repository.
A checkpoint is staged (hard links) as soon as it is pushed, so rotation by
``--save-total-limit`` cannot take its files away, and uploaded by one background thread:
training waits only when a new checkpoint comes while the previous upload still runs, and its
end waits for every upload. A failed push does not stop training; it is reported at the end.
"""

from __future__ import annotations

import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import click
from transformers import TrainerCallback

from sdk.errors import SdkError
from sdk.hubs.push import Destination, stage, upload
from sdk.registry import Registry
from sdk.runs.best import read_best
from sdk.runs.run_dir import find_checkpoint


class PushToHub(TrainerCallback):
    def __init__(self, destination: Destination, strategy: str, registry: Registry):
        self.destination = destination
        self.strategy = strategy
        self.registry = registry
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdk-push")
        self.running: Future | None = None
        self.failures: dict[str, str] = {}  # repository folder -> why its last push failed

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.strategy == "checkpoint":
            self.submit(checkpoint, "")
        elif self.strategy == "all_checkpoints":
            self.submit(checkpoint, checkpoint.name)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        best = read_best(Path(args.output_dir)) if self.strategy == "push_best" else None
        if best is not None:
            self.submit(best.checkpoint, "")
        elif self.strategy in ("end", "push_last", "push_best"):
            self.submit(find_checkpoint(args.output_dir, "the run folder"), "")
        if self.running is not None:
            self.running.result()
        self.worker.shutdown()
        if self.failures:
            raise SdkError("\n".join(self.failures.values()))

    def submit(self, checkpoint: Path, files_folder: str) -> None:
        """Stage now, upload in the background after the upload still running, if any."""
        if self.running is not None:
            self.running.result()
        staged = self.staged(checkpoint, files_folder)
        if staged is not None:
            self.start(checkpoint, staged, files_folder)

    def staged(self, checkpoint: Path, files_folder: str) -> Path | None:
        try:
            return stage(checkpoint, self.destination, self.registry, files_folder)
        except (OSError, SdkError) as error:
            self.fail(files_folder, f"Preparing {checkpoint} for the push to the "
                      f"{self.destination.where()} failed: {error}. The checkpoint is intact; this "
                      "command pushes it: "
                      f"{self.destination.resume_command(checkpoint, files_folder)}")
            return None

    def start(self, checkpoint: Path, staged: Path, files_folder: str) -> None:
        self.running = self.worker.submit(self.upload, checkpoint, staged, files_folder)

    def upload(self, checkpoint: Path, staged: Path, files_folder: str) -> None:
        try:
            url = upload(staged, self.destination, checkpoint, files_folder)
        except SdkError as error:
            self.fail(files_folder, str(error))
        else:
            self.failures.pop(files_folder, None)  # a later push of that folder makes up for it
            click.echo(f"[sdk] pushed {checkpoint.name} to {url}", err=True)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def fail(self, files_folder: str, message: str) -> None:
        self.failures[files_folder] = message
        click.echo(f"[sdk] {message}", err=True)
