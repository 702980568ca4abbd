"""Datasets uploaded in the page: kept under ``<output-dir>/.webui/uploads/`` and read as
`sdk sft --dataset FILE` reads them before they are offered to a run."""

from __future__ import annotations

import shutil
from pathlib import Path

from sdk.config import SftArguments
from sdk.data.conversations import load_conversations
from sdk.errors import SdkError
from sdk.registry import Registry
from sdk.webui.jobs import WEBUI_DIR

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def keep_upload(uploaded: Path, original_name: str, output_dir: Path,
                registry: Registry) -> Path:
    """Copy ``uploaded`` into the uploads folder under its own name (a number added when
    another file has it) and check every record as a --dataset; a file that fails is removed
    again and the error names its line."""
    name = Path(original_name).name
    if Path(name).suffix.lower() not in SUFFIXES:
        raise SdkError(f"'{name}' is not a dataset file: upload {', '.join(SUFFIXES)}.")
    folder = output_dir / WEBUI_DIR / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target, number = folder / name, 1
    while target.exists():
        number += 1
        target = folder / f"{Path(name).stem}-{number}{Path(name).suffix}"
    shutil.copyfile(uploaded, target)
    try:
        rows = load_conversations([str(target)], registry, SftArguments(dataset=[str(target)]))
    except SdkError:
        target.unlink()
        raise
    if not rows:
        target.unlink()
        raise SdkError(f"'{name}' holds no records.")
    return target
