"""Trainer callbacks: a jsonl log of every logged step."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from sdk.train.run_dir import LOG_FILE


class JsonlLogger(TrainerCallback):
    def __init__(self, run_dir: Path):
        self.path = run_dir / LOG_FILE

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
