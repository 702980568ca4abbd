"""Read records from local files, each paired with where it came from (file and line)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sdk.errors import SdkError

Located = tuple[str, Any]  # ("file.jsonl:12", record)


def read_jsonl(path: Path) -> Iterator[Located]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise SdkError(f"{where}: not valid UTF-8 ({error.reason} at byte "
                               f"{error.start}). Save the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise SdkError(f"{where}: not valid JSON ({error.msg}, column {error.colno})."
                               " Each line of a .jsonl file must be one JSON object.") from None


def read_json(path: Path) -> Iterator[Located]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise SdkError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start}). "
                       "Save the file as UTF-8.") from None
    except json.JSONDecodeError as error:
        raise SdkError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column "
                       f"{error.colno}).") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise SdkError(f"{path}: expected a JSON list of records, got {type(data).__name__}.")
    for number, record in enumerate(data, start=1):
        yield f"{path} (record {number})", record


READERS: dict[str, Callable[[Path], Iterator[Located]]] = {
    ".jsonl": read_jsonl,
    ".json": read_json,
}


def read_records(path: Path) -> Iterator[Located]:
    if not path.is_file():
        raise SdkError(f"Dataset file '{path}' does not exist. Check the path given to "
                       "--dataset (a registered name, see `sdk datasets`, or a data file).")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise SdkError(f"Dataset file '{path}' has an unsupported extension; use one of "
                       f"{', '.join(sorted(READERS))}.")
    return reader(path)
