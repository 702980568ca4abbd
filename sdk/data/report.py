"""The data report of `sdk sft --dry-run`: what the training and held-out rows become under the
template and --max-length (rows per --dataset entry, truncated, deleted, dropped), their token
lengths, and the rows that would train the model wrong, each named where a user finds it
(file:line). Plain data: ``as_dict()`` is JSON; ``text()`` is for people."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sdk.data.arrow import encoded_rows
from sdk.data.encode import DELETED, DROPPED, KEPT, TRUNCATED, EncodeSettings, drops_system_prompt

FIRST_ROWS = 5  # rows named per flag

NO_TRAINED_TOKEN = "no_trained_token"
OPEN_END = "reply_cut_before_end_of_turn"
SYSTEM_DROPPED = "system_prompt_dropped"


def _rows(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class Distribution:
    """Per-row counts: the median (of the middle two, rounded down), and the percentiles as
    the value at that fraction of the sorted rows."""

    min: int
    median: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, values: Sequence[int]) -> Distribution | None:
        if not values:
            return None
        ordered = sorted(values)

        def at(fraction: float) -> int:
            return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

        return cls(ordered[0], int(statistics.median(ordered)), at(0.9), at(0.99), ordered[-1])

    def text(self) -> str:
        return (f"min {self.min}, median {self.median}, p90 {self.p90}, p99 {self.p99}, "
                f"max {self.max}")


@dataclass(frozen=True)
class SourceRows:
    """What became of the rows one --dataset (or --val-dataset) entry gave a split."""

    source: str  # the entry as given, e.g. "--dataset data.jsonl#500"
    rows: int
    kept: int  # truncated ones included
    truncated: int
    deleted: int
    dropped: int

    def text(self) -> str:
        parts = [f"{self.kept} kept"
                 + (f" ({self.truncated} of them cut to --max-length)" if self.truncated
                    else "")]
        if self.deleted:
            parts.append(f"{self.deleted} deleted (longer than --max-length)")
        if self.dropped:
            parts.append(f"{self.dropped} dropped (no trained token)")
        return f"{self.source}: {_rows(self.rows)}, {', '.join(parts)}"


@dataclass(frozen=True)
class SplitReport:
    split: str  # "train" or "held-out"
    sources: list[SourceRows]
    tokens: Distribution | None  # per kept row
    trained_tokens: Distribution | None  # per kept row
    longest_before_cut: int  # tokens of the longest row --max-length cut or deleted; 0: none

    @property
    def rows(self) -> int:
        return sum(source.rows for source in self.sources)

    @property
    def kept(self) -> int:
        return sum(source.kept for source in self.sources)


@dataclass(frozen=True)
class Flag:
    """Rows that would train the model wrong, and the first of them."""

    kind: str  # NO_TRAINED_TOKEN, OPEN_END or SYSTEM_DROPPED
    split: str  # "train", "held-out", or "all" (a property of the template)
    count: int
    rows: list[str]  # the first FIRST_ROWS, as file:line
    message: str

    def text(self) -> str:
        more = f", and {self.count - len(self.rows)} more" if self.count > len(self.rows) else ""
        where = f"{self.split}: " if self.split != "all" else ""
        return f"{where}{self.message}: {', '.join(self.rows)}{more}"


@dataclass(frozen=True)
class DataReport:
    template: str
    max_length: int
    truncation_strategy: str
    splits: list[SplitReport]
    flags: list[Flag]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def split(self, name: str) -> SplitReport | None:
        return next((split for split in self.splits if split.split == name), None)

    def text(self) -> str:
        limit = f"--max-length {self.max_length}" if self.max_length > 0 else "no --max-length"
        lines = [f"Data (template {self.template}, {limit}, --truncation-strategy "
                 f"{self.truncation_strategy}):"]
        for split in self.splits:
            lines.append(f"  {split.split}: {_rows(split.rows)}, {split.kept} kept")
            lines += [f"    {source.text()}" for source in split.sources]
            if split.longest_before_cut:
                lines.append(f"    longest row before --max-length: {split.longest_before_cut} "
                             "tokens")
            if split.tokens is not None and split.trained_tokens is not None:
                lines.append(f"    tokens per row: {split.tokens.text()}")
                lines.append(f"    trained tokens per row: {split.trained_tokens.text()}")
        lines.append("Flags:" if self.flags else "Flags: none")
        lines += [f"  {flag.text()}" for flag in self.flags]
        return "\n".join(lines)


def _columns(encoded: Any, names: Sequence[str]) -> dict[str, list]:
    # plain lists through Arrow: element access on datasets' lazy columns is slow
    return {name: encoded.data.column(name).to_pylist() for name in names}


def _first_rows(encoded: Any, chosen: Sequence[bool]) -> tuple[int, list[str]]:
    indices = [index for index, yes in enumerate(chosen) if yes]
    where = encoded.data.column("where")
    return len(indices), [where[index].as_py() for index in indices[:FIRST_ROWS]]


def _split_report(name: str, encoded: Any, settings: EncodeSettings,
                  ) -> tuple[SplitReport, list[Flag]]:
    columns = _columns(encoded, ("source", "status", "length", "full_length", "trained",
                                 "open_end"))
    statuses = columns["status"]
    counts = Counter(zip(columns["source"], statuses, strict=True))
    sources = [SourceRows(source, rows=sum(n for (s, _), n in counts.items() if s == source),
                          kept=counts[source, KEPT] + counts[source, TRUNCATED],
                          truncated=counts[source, TRUNCATED], deleted=counts[source, DELETED],
                          dropped=counts[source, DROPPED])
               for source in sorted(set(columns["source"]))]
    kept = [i for i, status in enumerate(statuses) if status in (KEPT, TRUNCATED)]
    report = SplitReport(
        name, sources, Distribution.of([columns["length"][i] for i in kept]),
        Distribution.of([columns["trained"][i] for i in kept]),
        max((length for length, status in zip(columns["full_length"], statuses, strict=True)
             if status in (TRUNCATED, DELETED)), default=0))
    flags = []
    count, rows = _first_rows(encoded, [status == DROPPED for status in statuses])
    if count:
        flags.append(Flag(NO_TRAINED_TOKEN, name, count, rows,
                          f"{_rows(count)} with no trained token (left out)"))
    count, rows = _first_rows(encoded, columns["open_end"])
    if count:
        flags.append(Flag(OPEN_END, name, count, rows, (
            f"{_rows(count)} whose last reply --max-length {settings.max_length} cuts before "
            "its end-of-turn marker (training on it teaches the model not to stop; raise "
            "--max-length or use --truncation-strategy delete)")))
    return report, flags


def data_report(train: Any, held_out: Any | None, settings: EncodeSettings,
                num_proc: int = 1) -> DataReport:
    """The report on a run's training and held-out conversations (``training_and_held_out``),
    encoded as training encodes them (the same cached ``map``, so a run that goes on to train
    tokenizes once)."""
    splits, flags = [], []
    system_rows: list[str] = []
    system_count, system_example = 0, None
    for name, conversations in (("train", train), ("held-out", held_out)):
        if conversations is None:
            continue
        encoded = encoded_rows(conversations, settings, num_proc)
        report, split_flags = _split_report(name, encoded, settings)
        splits.append(report)
        flags += split_flags
        has_system = _columns(encoded, ["system"])["system"]
        count, rows = _first_rows(encoded, has_system)
        system_count += count
        system_rows += rows
        if system_example is None and count:
            system_example = conversations[has_system.index(True)]["messages"]
    # a property of the template: one conversation with a system prompt tells
    if system_example is not None and drops_system_prompt(settings.template, [system_example]):
        flags.append(Flag(SYSTEM_DROPPED, "all", system_count, system_rows[:FIRST_ROWS], (
            f"template {settings.template.spec.name} leaves the system prompt out of samples "
            f"that end with a reply, so training never sees it; {_rows(system_count)} with "
            "one")))
    return DataReport(settings.template.spec.name, settings.max_length,
                      settings.truncation_strategy, splits, flags)
