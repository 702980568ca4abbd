"""Run folders (``<output>/<model-type>/v<N>-<YYYYMMDD-HHMMSS>/``) and the files that make a
checkpoint self-describing."""

from __future__ import annotations

import fcntl
import json
import re
import time
from pathlib import Path
from typing import Any

from sdk.errors import SdkError

ARGS_FILE = "sft_args.json"
_VERSION = re.compile(r"^v(\d+)-")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def new_run_dir(output_dir: str | Path, model_type: str) -> Path:
    """A new, empty run folder whose version is one above every run already there."""
    parent = Path(output_dir) / model_type
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SdkError(f"--output-dir '{output_dir}' is a file; give a folder.") from None
    # The lock makes "find the highest version, create the next" one step across processes.
    with (parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        used = [int(m.group(1)) for p in parent.iterdir() if (m := _VERSION.match(p.name))]
        run_dir = parent / f"v{max(used, default=-1) + 1}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir.mkdir()
    return run_dir


def write_args(folder: Path, arguments: dict[str, Any]) -> None:
    (folder / ARGS_FILE).write_text(json.dumps(arguments, indent=2, ensure_ascii=False) + "\n",
                                    encoding="utf-8")


def checkpoints(run_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]
