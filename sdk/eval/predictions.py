"""Predictions files (one JSON object a line: query, response, label, ...) and the metrics
file written next to one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sdk.data.readers import BadRecord, read_jsonl
from sdk.errors import SdkError
from sdk.eval.metrics import average_scores


def metrics_file(predictions: Path) -> Path:
    """``OUT.jsonl`` -> ``OUT.metrics.json``."""
    return predictions.with_suffix(".metrics.json")


def read_pairs(path: Path, flag: str = "--predictions") -> list[tuple[str, str]]:
    """(response, label) of every row; an error names the file and line of a bad row."""
    if not path.is_file():
        raise SdkError(f"Predictions file '{path}' ({flag}) does not exist; write one with "
                       "`sdk infer --ckpt-dir DIR --dataset D --predictions-file FILE`.")
    pairs = []
    for where, row in read_jsonl(path):
        if isinstance(row, BadRecord):
            raise SdkError(f"{where}: {row.reason}. If `sdk infer` was cut short while "
                           "writing it, rerun it with the same --predictions-file to finish.")
        if not isinstance(row, dict):
            raise SdkError(f"{where}: expected a JSON object, got {type(row).__name__}.")
        # LLaMA-Factory's generated_predictions.jsonl calls the reply 'predict'
        response = row.get("response", row.get("predict"))
        for key, value in (("response", response), ("label", row.get("label"))):
            if not isinstance(value, str):
                raise SdkError(f"{where}: the row has no text '{key}' (each row needs the "
                               "generated 'response' and the reference 'label').")
        pairs.append((response, row["label"]))
    if not pairs:
        raise SdkError(f"Predictions file '{path}' ({flag}) holds no rows.")
    return pairs


def evaluate_file(path: Path, flag: str = "--predictions",
                  method: str = "llama-factory") -> dict[str, float | str]:
    """The method and the ROUGE-1/2/L and BLEU-4 (percent) of a predictions file."""
    return average_scores(read_pairs(path, flag), method)


def write_metrics(predictions: Path, scores: dict[str, float | str]) -> Path:
    """Write ``scores`` to the metrics file of ``predictions`` whole (through a rename)."""
    target = metrics_file(predictions)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, target)
    return target
