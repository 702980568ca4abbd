"""Training data as Arrow datasets: records are read and converted as a stream into the datasets
cache and tokenized with ``datasets.map`` (cached, ``--dataset-num-proc`` processes), so a large
file is never held in memory whole."""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from sdk.data.conversations import iter_dataset, sample_indices, split_indices, split_sample_size
from sdk.data.encode import (
    DELETED,
    DROPPED,
    EncodeSettings,
    EncodeStats,
    drops_system_prompt,
    encode_row,
    stats_of,
)
from sdk.data.sources import dataset_source
from sdk.errors import SdkError
from sdk.models.loader import cache_dir
from sdk.registry import Registry
from sdk.specs import DatasetSpec
from sdk.templates.engine import IGNORE_INDEX

SYSTEM_CHECK_ROWS = 100  # enough to meet a system prompt if the data has them
EXAMPLE_COLUMNS = ("input_ids", "labels", "attention_mask")
# What happened to each row when it was encoded (sdk/data/encode.py); `system`: it has a
# system prompt.
ROW_COLUMNS = ("status", "length", "full_length", "trained", "open_end", "system")


@functools.cache
def sdk_code_digest() -> str:
    """A digest of this SDK's source: cached data converted or tokenized by other code (an
    upgrade, or a fix between releases of one version number) is not reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _messages_features() -> Any:
    from datasets import Features, List, Value

    # tool use and reasoning (sdk/data/formats.py): null on a message without them
    return Features({"messages": List({"role": Value("string"), "content": Value("string"),
                                       "tool_calls": Value("string"),
                                       "tool_call_id": Value("string"),
                                       "tools": Value("string"),
                                       "reasoning_content": Value("string")}),
                     "where": Value("string")})


def _fingerprint(name: str, files: Sequence[str], args: Any, format_name: str | None) -> str:
    """Changes when the files, the arguments a preprocess may read, or this SDK's code
    change."""
    stats = []
    for file in files:
        for path in sorted(Path(file).rglob("*")) if Path(file).is_dir() else [Path(file)]:
            if path.is_file():
                info = path.stat()
                stats.append([str(path.resolve()), info.st_size, info.st_mtime_ns])
    settings = {key: value for key, value in vars(args).items() if key not in ("output_dir",)}
    text = json.dumps([sdk_code_digest(), name, format_name, stats, settings], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _generate(source: DatasetSpec, registry: Registry, args: Any, format_name: str | None,
              skip_bad: bool, notes_file: str):
    skipped: list[str] | None = [] if skip_bad else None
    notices: list[str] = []
    for where, messages in iter_dataset(source, registry, args, format_name, skipped, notices):
        yield {"messages": messages, "where": where}
    # kept next to the cached rows: a run that reuses them says the same
    Path(notes_file).write_text(json.dumps({"skipped": skipped or [], "notices": notices}),
                                encoding="utf-8")


def data_cache(output_dir: str) -> Path:
    """Where read and tokenized data is cached: ``$SFT_SDK_CACHE/datasets``, else (a read-only
    home or cache) ``OUTPUT_DIR/.sft-sdk-cache/datasets``, said in one line."""
    folder = cache_dir() / "datasets"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # a folder may exist and still be read-only
        return folder
    except OSError as error:
        reason = error.strerror or str(error)
    fallback = Path(output_dir) / ".sft-sdk-cache" / "datasets"
    try:
        fallback.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SdkError(f"The data cache {folder} cannot be written ({reason}), nor "
                       f"{fallback} ({error.strerror or error}); set SFT_SDK_CACHE to a "
                       "writable folder.") from None
    click.echo(f"[sdk] the data cache {folder} cannot be written ({reason}): caching in "
               f"{fallback} instead (SFT_SDK_CACHE sets the cache).", err=True)
    return fallback


def conversations_dataset(names: Sequence[str], registry: Registry, args: Any,
                          skipped: list[str] | None, folder: Path,
                          flag: str = "--dataset") -> Any:
    """The ``--dataset`` entries (``NAME#N`` sampled) as one Arrow dataset of messages, cached
    in ``folder``; each row also says where its record is (``where``: file:line) and which
    entry gave it (``source``: ``--dataset NAME#N``)."""
    from datasets import Dataset, concatenate_datasets
    from datasets.exceptions import DatasetGenerationError

    parts = []
    given_as: dict[tuple[str, ...], list[str]] = {}  # the files read -> the entries naming them
    for name_and_count in names:
        name, count = split_sample_size(name_and_count)
        source = dataset_source(name, registry, args)
        given_as.setdefault(tuple(str(Path(file).resolve()) for file in source.files),
                            []).append(name_and_count)
        fingerprint = _fingerprint(name, source.files, args, args.dataset_format)
        notes_file = folder / f"{fingerprint}.notes.json"
        try:
            part = Dataset.from_generator(
                _generate, features=_messages_features(), cache_dir=str(folder),
                fingerprint=fingerprint,
                gen_kwargs={"source": source, "registry": registry, "args": args,
                            "format_name": args.dataset_format, "skip_bad": skipped is not None,
                            "notes_file": str(notes_file)})
        except DatasetGenerationError as error:
            cause = error.__cause__ or error.__context__
            if isinstance(cause, SdkError):  # a bad record: say which, not where datasets was
                raise cause from None
            raise
        except ValueError as error:  # datasets' "corresponds to no data": nothing was read
            if "no data" not in str(error):
                raise
            raise SdkError(f"No records found in {name} ({', '.join(map(str, source.files))}): "
                           "an empty file?") from None
        # before sampling: a column added to a selection would copy the rows it selects
        part = part.add_column("source", [f"{flag} {name_and_count}"] * len(part))
        if notes_file.is_file():  # written when the rows were read
            notes = json.loads(notes_file.read_text(encoding="utf-8"))
            for notice in notes["notices"]:
                click.echo(notice, err=True)
            if skipped is not None:
                skipped += notes["skipped"]
        if count is not None:
            if count > len(part):
                click.echo(f"[sdk] {name_and_count}: {count} rows from {len(part)}, so rows "
                           "repeat (every row once, the rest drawn again).", err=True)
            part = part.select(sample_indices(len(part), count, args.seed))
        limit = getattr(args, "max_samples", None)
        if limit is not None and limit < len(part):
            part = part.select(range(limit))
        parts.append(part)
    for entries in given_as.values():
        if len(entries) > 1:  # used as given, but often a slip: one path written two ways
            click.echo(f"[sdk] {flag} names the same data {len(entries)} times "
                       f"({', '.join(entries)}): each entry adds its rows, as given.",
                       err=True)
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(dataset) == 0:
        raise SdkError(f"No training records found in {', '.join(names)}.")
    return dataset


def training_and_held_out(args: Any, registry: Registry,
                          skipped: list[str] | None) -> tuple[Any, Any | None]:
    """A run's training rows and its held-out rows (None when it holds none out): the
    ``--val-dataset`` entries, else a seeded ``--split-dataset-ratio`` of ``--dataset`` (of
    which ``--held-out-sample`` rows, as ms-swift's val_dataset_sample)."""
    folder = data_cache(args.output_dir)
    conversations = conversations_dataset(args.dataset, registry, args, skipped, folder)
    if args.val_dataset:
        return conversations, conversations_dataset(args.val_dataset, registry, args, skipped,
                                                    folder, "--val-dataset")
    train_rows, held_rows = split_indices(len(conversations), args.split_dataset_ratio,
                                          args.seed)
    if not held_rows:
        return conversations, None
    if args.held_out_sample is not None and args.held_out_sample < len(held_rows):
        held_rows = [held_rows[i] for i in sample_indices(len(held_rows),
                                                          args.held_out_sample, args.seed)]
    return conversations.select(train_rows), conversations.select(held_rows)


def _encode_batch(batch: dict[str, list], settings: EncodeSettings) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in (*EXAMPLE_COLUMNS, *ROW_COLUMNS)}
    for messages, where in zip(batch["messages"], batch["where"], strict=True):
        encoded = encode_row(settings, messages, where)
        columns["input_ids"].append(encoded.input_ids)
        columns["labels"].append(encoded.labels)
        columns["attention_mask"].append([1] * len(encoded.input_ids))
        columns["status"].append(encoded.status)
        columns["length"].append(len(encoded.input_ids))
        columns["full_length"].append(encoded.full_length)
        columns["trained"].append(sum(label != IGNORE_INDEX for label in encoded.labels))
        columns["open_end"].append(encoded.open_end)
        columns["system"].append(messages[0]["role"] == "system"
                                 and bool(messages[0]["content"].strip()))
    return columns


def _encoding_fingerprint(conversations: Any, settings: EncodeSettings) -> str:
    """What the tokenized rows depend on. datasets cannot hash a fast tokenizer that has been
    used the same way twice, so without this its map cache would never be hit."""
    tokenizer = settings.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else repr(sorted(
        tokenizer.get_vocab().items()))
    text = json.dumps([conversations._fingerprint, repr(settings.template.spec),
                       settings.template.special_tokens, settings.max_length,
                       settings.loss_scope, settings.truncation_strategy,
                       hashlib.sha256(vocabulary.encode()).hexdigest()], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def encoded_rows(conversations: Any, settings: EncodeSettings, num_proc: int) -> Any:
    """Every row encoded (a cached ``map``), with what happened to it (``ROW_COLUMNS``) and
    the conversations' ``where`` and ``source``; the rows deleted or dropped have no tokens."""
    return conversations.map(
        _encode_batch, batched=True, fn_kwargs={"settings": settings},
        remove_columns=["messages"], num_proc=num_proc if num_proc > 1 else None,
        new_fingerprint=_encoding_fingerprint(conversations, settings), desc="Tokenizing")


def system_dropped(conversations: Any, settings: EncodeSettings) -> bool:
    """Whether the template leaves out the system prompts of these conversations."""
    first = conversations.select(range(min(SYSTEM_CHECK_ROWS, len(conversations))))
    return drops_system_prompt(settings.template, first["messages"])


def tokenized_dataset(conversations: Any, settings: EncodeSettings,
                      num_proc: int) -> tuple[Any, EncodeStats]:
    """Examples for the rows that are kept (a cached ``map``), and what happened to all."""
    encoded = encoded_rows(conversations, settings, num_proc)
    # plain lists through Arrow: element access on datasets' lazy columns is slow
    column = encoded.data.column
    stats = stats_of(*(column(name).to_pylist() for name in ("status", "length", "trained")))
    stats.system_dropped = system_dropped(conversations, settings)
    if stats.deleted or stats.dropped:
        encoded = encoded.filter(lambda status: status not in (DELETED, DROPPED),
                                 input_columns="status")
    return encoded.select_columns(list(EXAMPLE_COLUMNS)), stats
