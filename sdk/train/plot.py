"""Loss curves of a run: training loss (and eval loss, when the run held data out) against
the step, drawn from ``logging.jsonl`` into ``<run>/loss.png`` at the end of `sdk sft`, and
again whenever ``sdk plot RUN_DIR`` asks (a run still training or resumed included: a last line
cut short is skipped, and a step logged twice counts once, with its last value).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from sdk.errors import SdkError
from sdk.runs.best import read_best
from sdk.runs.run_dir import ARGS_FILE, LOG_FILE, is_complete_checkpoint

PLOT_FILE = "loss.png"

Points = list[tuple[int, float]]


@dataclass
class LossCurves:
    train: Points = field(default_factory=list)  # (step, loss), by step
    eval: Points = field(default_factory=list)  # (step, eval_loss), by step


def loss_points(log_file: Path) -> LossCurves:
    """The training and eval losses of a ``logging.jsonl``, each ordered by step."""
    train: dict[int, float] = {}
    evaluation: dict[int, float] = {}
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line being written, or cut short by a crash
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        for key, points in (("loss", train), ("eval_loss", evaluation)):
            if isinstance(record.get(key), int | float):
                points[record["step"]] = float(record[key])
    return LossCurves(sorted(train.items()), sorted(evaluation.items()))


def run_folder(path: Path) -> Path:
    """The run folder ``path`` names (a checkpoint, or its logging.jsonl, stands for its
    run); an error if none."""
    if path.name == LOG_FILE and path.is_file():
        path = path.parent
    if not path.is_dir():
        raise SdkError(f"'{path}' is not a folder; give a run folder of `sdk sft`.")
    if is_complete_checkpoint(path):
        return path.parent
    if not (path / ARGS_FILE).is_file():
        raise SdkError(f"'{path}' is not a run folder of `sdk sft` (it has no {ARGS_FILE}); "
                       "give OUTPUT_DIR/<model-type>/v<N>-<time>.")
    return path


def plot_run(path: Path, output: Path | None = None) -> Path:
    """Draw the loss curves of the run folder ``path`` into ``output`` (default
    ``<run>/loss.png``; the extension picks the format) and return where."""
    run_dir = run_folder(path)
    log_file = run_dir / LOG_FILE
    if not log_file.is_file():
        raise SdkError(f"'{run_dir}' has no {LOG_FILE} yet: the run has not logged a step "
                       "(it logs every --logging-steps).")
    curves = loss_points(log_file)
    if not curves.train and not curves.eval:
        raise SdkError(f"{log_file} holds no loss yet: the run has not logged a step.")
    target = output or run_dir / PLOT_FILE
    draw(curves, run_dir, target)
    return target


def draw(curves: LossCurves, run_dir: Path, target: Path) -> None:
    # Under a read-only home matplotlib keeps its config and font cache in a temporary folder
    # (removed at exit) and warns in two lines about that, which concern no plot.
    importing = logging.getLogger("matplotlib")
    level = importing.level
    importing.setLevel(logging.ERROR)
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        from matplotlib import pyplot
    finally:
        importing.setLevel(level)

    figure, axes = pyplot.subplots(figsize=(8, 5))
    try:
        if curves.train:
            axes.plot(*zip(*curves.train, strict=True), label="train loss", linewidth=1.2)
        if curves.eval:
            axes.plot(*zip(*curves.eval, strict=True), label="eval loss", marker="o",
                      markersize=3)
        best = read_best(run_dir)
        if best is not None:
            axes.plot([best.step], [best.eval_loss], marker="*", markersize=14, linestyle="",
                      color="tab:red", label=f"best: {best.checkpoint.name}")
        named = run_dir.resolve()  # "." has no name
        axes.set(xlabel="step", ylabel="loss", title=f"{named.parent.name}/{named.name}")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        save(figure, target)
    finally:
        pyplot.close(figure)


def save(figure: Any, target: Path) -> None:
    """Write the figure beside ``target`` and rename it into place, so a failure keeps the
    previous plot."""
    kind = target.suffix.lstrip(".").lower() or "png"
    staged = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # as --predictions-file does
        figure.savefig(staged, format=kind, dpi=120)
        os.replace(staged, target)
    except ValueError as error:  # a format matplotlib does not write
        raise SdkError(f"Cannot write '{target}': {error} (use .png, .svg or .pdf).") from None
    except OSError as error:
        raise SdkError(f"Cannot write '{target}': {error}.") from None
    finally:
        staged.unlink(missing_ok=True)


def plot_after_training(run_dir: Path) -> None:
    """`sdk sft`'s last step: the plot, or a warning why there is none (training succeeded;
    ``sdk plot`` can make it later)."""
    try:
        click.echo(f"[sdk] loss plot: {plot_run(run_dir)}", err=True)
    except (SdkError, ImportError) as error:
        click.echo(f"warning: no loss plot: {error}", err=True)
