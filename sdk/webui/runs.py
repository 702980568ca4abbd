"""The Runs table: every run folder under --output-dir, its status, steps, losses and
checkpoints, read from the folder itself (and the page's job records for how a run ended)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sdk.infer.load import is_export
from sdk.runs.run_dir import ARGS_FILE, LOG_FILE, checkpoints
from sdk.train.plot import LossCurves, loss_points
from sdk.webui.jobs import Job, Jobs

COLUMNS = ("run", "status", "steps", "last loss", "best loss", "checkpoints")


@dataclasses.dataclass
class RunRow:
    run: Path
    status: str  # running, finished, stopped, failed
    step: int  # the last step logged or saved
    max_steps: int | None  # from the newest checkpoint's trainer state
    last_loss: float | None
    best_loss: float | None  # the lowest eval loss, else the lowest training loss
    checkpoints: list[str]

    def cells(self, output_dir: Path) -> list[str]:
        """The table's row; the run folder named within ``output_dir``."""
        def number(value: float | None) -> str:
            return "" if value is None else f"{value:.4f}"

        steps = f"{self.step}/{self.max_steps}" if self.max_steps else str(self.step)
        return [str(self.run.relative_to(output_dir)), self.status, steps, number(self.last_loss),
                number(self.best_loss), ", ".join(self.checkpoints)]


def run_folders(output_dir: Path) -> list[Path]:
    """``<output-dir>/<model-type>/v<N>-<time>`` folders holding sft_args.json, newest first."""
    if not output_dir.is_dir():
        return []
    found = [run for parent in output_dir.iterdir()
             if parent.is_dir() and not parent.name.startswith(".")
             for run in parent.iterdir() if (run / ARGS_FILE).is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def exports(run: Path) -> list[Path]:
    """The folders `sdk export` wrote into the run folder (beside their checkpoints)."""
    return sorted(folder for folder in run.iterdir() if folder.is_dir() and is_export(folder))


def curves(run: Path) -> LossCurves:
    log = run / LOG_FILE
    return loss_points(log) if log.is_file() else LossCurves()


def trainer_steps(checkpoint: Path) -> tuple[int, int | None]:
    """A checkpoint's global step and the run's max steps (trainer_state.json)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state["global_step"]), int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, None


def status(run: Path, job: Job | None, finished_steps: tuple[int, int | None]) -> str:
    """running while its `sdk sft` runs; finished when its newest checkpoint is its last
    step; else how its job ended (stopped or failed); a run not started by the page that
    did not finish counts as stopped (it may be resumed from its last checkpoint)."""
    if job is not None and job.state == "running":
        return "running"
    step, max_steps = finished_steps
    if max_steps and step >= max_steps:
        return "finished"
    if job is not None and job.state in ("stopped", "failed"):
        return job.state
    return "stopped"


def run_row(run: Path, jobs: Jobs) -> RunRow:
    complete = checkpoints(run)
    steps = trainer_steps(complete[-1]) if complete else (0, None)
    losses = curves(run)
    best = losses.eval or losses.train
    return RunRow(run, status(run, jobs.job_of_run(run), steps),
                  max([steps[0]] + [s for s, _ in losses.train]), steps[1],
                  losses.train[-1][1] if losses.train else None,
                  min(loss for _, loss in best) if best else None, [c.name for c in complete])


def run_rows(output_dir: Path, jobs: Jobs) -> list[RunRow]:
    return [run_row(run, jobs) for run in run_folders(output_dir)]
