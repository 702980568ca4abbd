"""The best checkpoint of a run with held-out data: the complete checkpoint with the lowest
eval loss logged at its own step (a checkpoint saved between evals has none and cannot be
judged). `SftTrainer` records it in ``<run>/best_checkpoint.json`` at every save and never lets
``--save-total-limit`` delete it; `sdk sft` prints it at the end.

Why not transformers' ``metric_for_best_model``: its best step can be an eval step at which
no checkpoint was saved, its ``best_model_checkpoint`` is built from the folder the Trainer
saves into (our ``.partial`` staging folder), and at the end of training with
``save_total_limit=1`` it deletes every checkpoint but that path. Here the run folder and the
log decide, and resuming needs nothing more: the log history comes back with the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.runs.run_dir import checkpoint_step, checkpoints

BEST_FILE = "best_checkpoint.json"


@dataclass(frozen=True)
class Best:
    checkpoint: Path
    step: int
    eval_loss: float


def best_checkpoint(run_dir: Path, log_history: Iterable[dict[str, Any]]) -> Best | None:
    """The complete checkpoint of ``run_dir`` with the lowest eval loss at its step in
    ``log_history`` (the Trainer's log records); the earlier one on a tie."""
    losses = {record["step"]: record["eval_loss"] for record in log_history
              if "step" in record and math.isfinite(record.get("eval_loss", math.nan))}
    scored = [(losses[step], step, checkpoint) for checkpoint in checkpoints(run_dir)
              if (step := checkpoint_step(checkpoint)) in losses]
    if not scored:
        return None
    loss, step, checkpoint = min(scored)
    return Best(checkpoint, step, loss)


def record_best(run_dir: Path, log_history: Iterable[dict[str, Any]]) -> Path | None:
    """Write the best checkpoint to ``<run>/best_checkpoint.json`` (when there is one) and
    return it."""
    best = best_checkpoint(run_dir, log_history)
    if best is None:
        return None
    path = run_dir / BEST_FILE
    staged = path.with_name(BEST_FILE + ".partial")
    staged.write_text(json.dumps({"checkpoint": best.checkpoint.name, "step": best.step,
                                  "eval_loss": best.eval_loss}, indent=2) + "\n",
                      encoding="utf-8")
    os.replace(staged, path)  # a crash leaves the previous record whole
    return best.checkpoint


def read_best(run_dir: Path) -> Best | None:
    """The best checkpoint recorded in a run folder; None if none is (no held-out data)."""
    try:
        record = json.loads((run_dir / BEST_FILE).read_text(encoding="utf-8"))
        return Best(run_dir / record["checkpoint"], record["step"], record["eval_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rotated(found: Sequence[Path], limit: int, best: Path | None) -> list[Path]:
    """The checkpoints (oldest first) that ``--save-total-limit`` ``limit`` deletes: all but
    the newest ``limit``, never ``best``, which then takes the place of the oldest kept (with
    a limit of 1 the newest and the best are both kept), as transformers' rotation does."""
    kept = list(found[-limit:])
    if best is not None and best in found and best not in kept:
        kept = [*found[-max(limit - 1, 1):], best]
    return [checkpoint for checkpoint in found if checkpoint not in kept]
