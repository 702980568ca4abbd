"""The Runs tab's result tables, read back from the files that the `sdk` command the tab ran
names in its output: the files of an export or of a repository pushed to a folder, the scores
and replies of a prediction."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sdk.eval.metrics import METRICS
from sdk.eval.predictions import metrics_file

# `sdk infer --val-dataset-from-run` names its predictions file on stderr (sdk/infer/predict.py)
_PREDICTIONS = re.compile(r"^\[sdk\] predictions: (.+)$", re.MULTILINE)
FILE_COLUMNS = ("file", "bytes")
SCORE_COLUMNS = ("method", *METRICS)
PREDICTION_COLUMNS = ("query", "response", "label")


def written_folder(stdout: str) -> Path | None:
    """The folder `sdk export` or `sdk push` printed last (a hub's URL is no folder)."""
    lines = stdout.strip().splitlines()
    folder = Path(lines[-1]) if lines else None
    return folder if folder is not None and folder.is_dir() else None


def files_table(folder: Path) -> list[list[str | int]]:
    return [[path.relative_to(folder).as_posix(), path.stat().st_size]
            for path in sorted(folder.rglob("*")) if path.is_file()]


def predictions_file(stderr: str) -> Path | None:
    found = _PREDICTIONS.findall(stderr)
    return Path(found[-1]) if found else None


def scores_table(predictions: Path) -> list[list[str | float]]:
    """The metrics file's method and scores, as `sdk infer` wrote them; none when the rows had
    no reply to score against."""
    path = metrics_file(predictions)
    if not path.is_file():
        return []
    scores = json.loads(path.read_text(encoding="utf-8"))
    return [[scores[name] for name in SCORE_COLUMNS]]


def predictions_table(predictions: Path) -> list[list[str]]:
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return [[row["query"], row["response"], row.get("label") or ""] for row in rows]
