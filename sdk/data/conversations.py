"""Turn ``--dataset`` names and files into validated chat conversations."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from sdk.config import key_value_pairs
from sdk.data.readers import BadRecord, read_records
from sdk.data.sources import dataset_source
from sdk.errors import SdkError
from sdk.registry import Registry
from sdk.specs import DataFormat, DatasetSpec, resolve_callable
from sdk.templates.engine import check_messages

Conversation = list[dict[str, str]]


def detect_format(where: str, record: dict, registry: Registry,
                  hint: str = "Rename the fields, or pick one with --dataset-format.",
                  ) -> DataFormat:
    data_format = format_of(record, registry)
    if data_format is not None:
        return data_format
    formats = ", ".join(registry.names("formats"))
    raise SdkError(f"{where}: cannot tell the format of this record (its fields: "
                   f"{', '.join(map(str, record)) or 'none'}). Known formats: {formats}. "
                   f"{hint}")


def format_of(record: dict, registry: Registry) -> DataFormat | None:
    """The first format, in name order, whose ``detect`` accepts the record."""
    for name in registry.names("formats"):
        data_format = registry.get("formats", name)
        if resolve_callable(data_format.detect)(record):
            return data_format
    return None


def split_sample_size(name: str) -> tuple[str, int | None]:
    """``alpaca-zh#500`` -> ("alpaca-zh", 500); a name without ``#N`` -> (name, None)."""
    base, hash_sign, count = name.rpartition("#")
    if not hash_sign:
        return name, None
    if not count.isdigit() or int(count) == 0:
        raise SdkError(f"--dataset '{name}': after '#' give how many rows to sample, e.g. "
                       f"{base or name}#500.")
    return base, int(count)


def sample_indices(size: int, count: int, seed: int) -> list[int]:
    """``count`` row indices, the same for the same seed: drawn without replacement up to the
    dataset's size; past it every row is kept and the rest is drawn with replacement."""
    generator = random.Random(seed)
    if count <= size:
        return generator.sample(range(size), count)
    return list(range(size)) + generator.choices(range(size), k=count - size)


def split_indices(size: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held out) row indices: a seeded shuffle, then ``ratio`` of the rows (at least
    one) apart; from 1 up, ``ratio`` is a number of rows (as LLaMA-Factory's val_size and
    Chinese-Vicuna's test_size count them)."""
    if ratio <= 0:
        return list(range(size)), []
    if ratio >= 1 and not float(ratio).is_integer():
        raise SdkError(f"--split-dataset-ratio {ratio}: give a fraction below 1 or a whole "
                       "number of rows.")
    held_out = int(ratio) if ratio >= 1 else max(1, round(size * ratio))
    if held_out >= size:
        raise SdkError(f"--split-dataset-ratio {ratio} leaves no training rows out of "
                       f"{size}; lower it or pass --val-dataset.")
    shuffled = random.Random(seed).sample(range(size), size)
    return shuffled[held_out:], shuffled[:held_out]


def split_off(rows: list[Conversation], ratio: float,
              seed: int) -> tuple[list[Conversation], list[Conversation]]:
    train, held_out = split_indices(len(rows), ratio, seed)
    return [rows[i] for i in train], [rows[i] for i in held_out]


def load_conversations(names: Sequence[str], registry: Registry, args: Any,
                       format_name: str | None = None,
                       skipped: list[str] | None = None) -> list[Conversation]:
    """Read every dataset, preprocess, convert to messages. A bad record stops the load with
    an error naming its file and line, or, when ``skipped`` is a list, is left out and its
    location appended there."""
    conversations: list[Conversation] = []
    seed = getattr(args, "seed", 42)
    for name_and_count in names:
        name, count = split_sample_size(name_and_count)
        source = dataset_source(name, registry, args)
        rows = [messages for _, messages in iter_dataset(source, registry, args, format_name,
                                                         skipped)]
        if count is not None:
            rows = [rows[i] for i in sample_indices(len(rows), count, seed)]
        conversations += rows[:getattr(args, "max_samples", None)]
    if not conversations:
        raise SdkError(f"No training records found in {', '.join(names)}.")
    return conversations


def iter_dataset(source: DatasetSpec, registry: Registry, args: Any, format_name: str | None,
                 skipped: list[str] | None,
                 notices: list[str] | None = None) -> Iterator[tuple[str, Conversation]]:
    """One dataset's conversations, each with where its record is (file:line), in file order,
    read as they are needed; ``source`` from :func:`sdk.data.sources.dataset_source`. How many
    records its preprocess left out, and why, is said once they are all read: appended to
    ``notices``, or printed when it is None."""

    def reject(where: str, reason: str, skipped_as: str = "") -> None:
        if skipped is None:
            raise SdkError(f"{where}: {reason}. Fix the record or remove it, or pass "
                           "--skip-bad-records to leave such records out.")
        skipped.append(f"{where}{skipped_as}")

    renames = key_value_pairs("--columns", getattr(args, "columns", None) or [],
                              "FIELD=OURS, e.g. question=instruction (the record's field, then "
                              "the name a format reads)")
    preprocess = resolve_callable(source.preprocess) if source.preprocess else None
    forced_format = (registry.get("formats", format_name) if format_name else
                     registry.referenced("formats", source.format, ("datasets", source.name),
                                         "format") if source.format else None)
    read = left_out = 0
    for file in source.files:
        # Detected per file: the files of a folder may come from different sources, each
        # in its own shape, as separate --dataset files may.
        data_format, detected_at = forced_format, None
        for where, record in read_records(Path(file)):
            if isinstance(record, BadRecord):
                reject(where, record.reason)
                continue
            if not isinstance(record, dict):
                reject(where, f"expected a JSON object, got {type(record).__name__}")
                continue
            if renames:
                record = {renames.get(key, key): value for key, value in record.items()}
            read += 1
            if preprocess is not None:
                record = preprocess(record, args)
                if record is None:
                    left_out += 1
                    continue
            if data_format is None:
                data_format, detected_at = detect_format(where, record, registry), where
            try:
                convert = resolve_callable(data_format.to_messages)
                # a format that declares options reads them from the run's arguments
                messages = convert(record, args) if data_format.options else convert(record)
                check_messages(messages)
                if not any(message["role"] == "assistant" for message in messages):
                    raise ValueError("the conversation has no assistant message to learn from")
            except ValueError as error:
                own = format_of(record, registry) if detected_at else None
                if own is not None and own.name != data_format.name:
                    reject(where, f"a record in {own.name} format, in a file whose format is "
                                  f"{data_format.name}, set by its first record ({detected_at}); "
                                  "a file holds one format. Split the file by format, or give "
                                  "this record the fields of the others",
                           f" ({own.name} format in a {data_format.name} file)")
                else:
                    reject(where, f"{error} (read as {data_format.name} format)")
                continue
            yield where, messages
    if left_out:
        notice = (f"[sdk] {source.name}: {left_out} of {read} rows left out"
                  f"{f' ({source.left_out})' if source.left_out else ''}.")
        if notices is None:
            click.echo(notice, err=True)
        else:
            notices.append(notice)
