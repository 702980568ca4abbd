"""Read records from local files, each paired with where it came from (file and line).

Supported: ``.jsonl``, ``.json``, ``.csv``, ``.parquet`` and folders written by
``datasets.Dataset.save_to_disk``. pyarrow and datasets are imported only when needed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.folders import os_reason

Located = tuple[str, Any]  # ("file.jsonl:12", record)
# A record nested deeper than Python's JSON parser recurses (about 1000 levels in CPython)
TOO_DEEP = "JSON nested too deeply to read; no conversation is nested like this"


@dataclass(frozen=True)
class BadRecord:
    """Yielded in place of a record that cannot be read (the rest of the file can): the loader
    stops on it, or counts and skips it with --skip-bad-records."""

    reason: str


def read_jsonl(path: Path) -> Iterator[Located]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield where, BadRecord(f"not valid UTF-8 ({error.reason} at byte "
                                       f"{error.start}); save the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                record = BadRecord(f"not valid JSON ({error.msg}, column {error.colno}); each "
                                   "line of a .jsonl file must be one JSON object")
            except RecursionError:
                record = BadRecord(TOO_DEEP)
            yield where, record


def cannot_read(path: str | Path, error: OSError) -> SdkError:
    """The one-line error for a data file the OS will not let us read."""
    return SdkError(f"cannot read {path}: {os_reason(error)}. Check the file's permissions "
                    "(or give another file).")


def load_json_file(path: Path) -> Any:
    """A whole JSON file; bad UTF-8 or JSON is an error naming the file (and line)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise cannot_read(path, error) from None
    except RecursionError:
        raise SdkError(f"{path}: {TOO_DEEP}.") from None
    except UnicodeDecodeError as error:
        raise SdkError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start}). "
                       "Save the file as UTF-8.") from None
    except json.JSONDecodeError as error:
        raise SdkError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column "
                       f"{error.colno}).") from None


def read_json(path: Path) -> Iterator[Located]:
    data = load_json_file(path)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise SdkError(f"{path}: expected a JSON list of records, got {type(data).__name__}.")
    for number, record in enumerate(data, start=1):
        yield f"{path} (record {number})", record


JSON_COLUMNS = ("history", "messages", "conversations")  # csv cells parsed as JSON text


def _first_bad_utf8_line(path: Path) -> tuple[int, UnicodeDecodeError]:
    """The (line, error) of the first line that is not valid UTF-8."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return number, error
    raise AssertionError("unreachable: the file decoded as a whole")  # pragma: no cover


def _csv_cell(column: str, cell: str | None) -> Any:
    if cell is None:
        return ""
    if column in JSON_COLUMNS and cell.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as error:
            return BadRecord(f"column '{column}' is not valid JSON ({error.msg}, "
                             f"column {error.colno})")
        except RecursionError:
            return BadRecord(f"column '{column}': {TOO_DEEP}")
    return cell


def read_csv(path: Path) -> Iterator[Located]:
    """Rows as dicts keyed by the header (as csv.DictReader does); ``where`` is the line
    the row starts on (the header is line 1). A UTF-8 byte-order mark is skipped."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header: list[str] | None = None
            while True:
                start = reader.line_num + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    raise SdkError(f"{path}:{start}: not valid CSV ({error}).") from None
                if not row:  # a blank line, skipped like csv.DictReader does
                    continue
                if header is None:
                    header = row
                    continue
                where = f"{path}:{start}"
                if len(row) > len(header):
                    yield where, BadRecord(f"{len(row)} cells but the header has "
                                           f"{len(header)} columns")
                    continue
                record = {column: _csv_cell(column, row[index] if index < len(row) else None)
                          for index, column in enumerate(header)}
                bad = [value for value in record.values() if isinstance(value, BadRecord)]
                yield where, bad[0] if bad else record
    except UnicodeDecodeError:
        number, error = _first_bad_utf8_line(path)
        raise SdkError(f"{path}:{number}: not valid UTF-8 ({error.reason} at byte "
                       f"{error.start}). Save the file as UTF-8.") from None


def read_parquet(path: Path) -> Iterator[Located]:
    """Rows read in record batches, so a large file is never loaded whole."""
    import pyarrow
    import pyarrow.parquet

    number = 0
    try:
        for batch in pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                number += 1
                yield f"{path} (row {number})", record
    except (pyarrow.ArrowException, OSError) as error:
        raise SdkError(f"{path}: cannot read it as a Parquet file ({error}).") from None


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``datasets.Dataset(Dict).save_to_disk``."""
    return path.is_dir() and ((path / "dataset_info.json").is_file()
                              and (path / "state.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def read_saved_dataset(path: Path) -> Iterator[Located]:
    """Rows of a save_to_disk folder; of a DatasetDict, its "train" split."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds
        raise SdkError(f"{path}: cannot load this saved dataset ({error}).") from None
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise SdkError(f"{path}: this saved DatasetDict has no 'train' split (its splits: "
                           f"{', '.join(dataset) or 'none'}). Save the split to train on "
                           "as 'train'.")
        dataset = dataset["train"]
    for number, record in enumerate(dataset, start=1):
        yield f"{path} (row {number})", record


READERS: dict[str, Callable[[Path], Iterator[Located]]] = {
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".parquet": read_parquet,
}
SUPPORTED = (f"{', '.join(sorted(READERS))} files, or a folder written by "
             "datasets' save_to_disk")


def read_records(path: Path) -> Iterator[Located]:
    try:
        return _records(path)
    except OSError as error:  # a folder we may not look into, a file we may not open
        raise cannot_read(Path(error.filename or path), error) from None


def _records(path: Path) -> Iterator[Located]:
    if path.is_dir():
        if not is_saved_dataset(path):
            raise SdkError(f"Dataset folder '{path}' was not written by datasets' "
                           "save_to_disk (it has no dataset_info.json and state.json, nor "
                           f"dataset_dict.json). Give --dataset one of: {SUPPORTED}.")
        return read_saved_dataset(path)
    if not path.is_file():
        raise SdkError(f"Dataset file '{path}' does not exist. Check the path given to "
                       "--dataset or --val-dataset (a registered name, see `sdk datasets`, a "
                       "data file or a save_to_disk folder).")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise SdkError(f"Dataset file '{path}' has an unsupported extension; use one of "
                       f"{SUPPORTED}.")
    path.open("rb").close()  # now: the readers open the file only for the first record
    return reader(path)
