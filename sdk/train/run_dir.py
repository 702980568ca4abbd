"""Run folders (``<output>/<model-type>/v<N>-<YYYYMMDD-HHMMSS>/``) and the files that make a
checkpoint self-describing."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

ARGS_FILE = "sft_args.json"
_VERSION = re.compile(r"^v(\d+)-")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def new_run_dir(output_dir: str | Path, model_type: str) -> Path:
    parent = Path(output_dir) / model_type
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        used = [int(m.group(1)) for p in parent.iterdir() if (m := _VERSION.match(p.name))]
        version = max(used, default=-1) + 1
        run_dir = parent / f"v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            run_dir.mkdir()  # never reuse a folder another run already wrote to
            return run_dir
        except FileExistsError:
            time.sleep(1)


def write_args(folder: Path, arguments: dict[str, Any]) -> None:
    (folder / ARGS_FILE).write_text(json.dumps(arguments, indent=2, ensure_ascii=False) + "\n",
                                    encoding="utf-8")


def checkpoints(run_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]
