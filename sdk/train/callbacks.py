"""Trainer callbacks: a jsonl log of every logged step, and args saved into checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sdk.train.run_dir import write_args

LOG_FILE = "logging.jsonl"


class JsonlLogger(TrainerCallback):
    def __init__(self, run_dir: Path):
        self.path = run_dir / LOG_FILE

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class SaveArguments(TrainerCallback):
    """Writes the run's arguments into each checkpoint, so it can be used on its own."""

    def __init__(self, arguments: dict[str, Any]):
        self.arguments = arguments

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                write_args(checkpoint, self.arguments)
