"""Trainer callbacks: a jsonl log of every logged step."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback

from sdk.errors import SdkError
from sdk.folders import is_disk_full
from sdk.runs.run_dir import LOG_FILE, kept_of_run


class JsonlLogger(TrainerCallback):
    def __init__(self, run_dir: Path):
        self.path = run_dir / LOG_FILE

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            size = self.path.stat().st_size if self.path.exists() else 0
            try:
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            except OSError as error:
                if not is_disk_full(error, self.path):
                    raise
                if self.path.exists():
                    os.truncate(self.path, size)  # no half line for a resume to trip on
                raise SdkError(f"no space left on device while writing {self.path}; kept: "
                               f"{kept_of_run(self.path.parent)}. Free some space and resume "
                               "the run (--resume-from-checkpoint).") from None
