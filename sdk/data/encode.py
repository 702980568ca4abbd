"""Tokenize conversations with a template into training examples, with length statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sdk.errors import SdkError
from sdk.templates.engine import IGNORE_INDEX, Template


@dataclass
class EncodeStats:
    rows: int = 0
    truncated: int = 0  # cut to max_length
    deleted: int = 0  # longer than max_length, left out (truncation strategy "delete")
    dropped: int = 0  # no trained token left after truncation
    tokens: int = 0
    trained_tokens: int = 0
    longest: int = 0
    system_dropped: bool = False  # the template renders samples without their system prompt

    def summary(self) -> str:
        kept = self.rows - self.deleted - self.dropped
        text = (f"{kept} training rows, {self.tokens} tokens ({self.trained_tokens} trained), "
                f"longest {self.longest}; {self.truncated} cut to --max-length, "
                f"{self.deleted} longer ones deleted, "
                f"{self.dropped} dropped with no trained token left")
        if self.system_dropped:
            text += ("; WARNING: this template leaves the system prompt out of samples that "
                     "end with a reply (its official format), so training never sees it")
        return text


def drops_system_prompt(template: Template,
                        conversations: Sequence[Sequence[dict[str, str]]]) -> bool:
    """Whether the template renders a conversation without its system prompt (checked on the
    first one that has a non-empty system prompt; it is a property of the format)."""
    for messages in conversations:
        system = messages[0]["content"].strip() if messages[0]["role"] == "system" else ""
        if system:
            try:
                return system not in template.render(messages)
            except ValueError:
                return False  # encoding reports the row the template cannot render
    return False


# What happened to a row when it was encoded.
KEPT, TRUNCATED, DELETED, DROPPED = "kept", "truncated", "deleted", "dropped"


@dataclass(frozen=True)
class EncodeSettings:
    template: Template
    tokenizer: Any
    max_length: int
    loss_scope: str = "all"
    truncation_strategy: str = "truncation_right"


class Encoded(NamedTuple):
    status: str
    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before --max-length
    # cut inside a reply (truncation_right): it lost its end-of-turn marker, and training on it
    # teaches the model to go on where it should stop
    open_end: bool = False


def encode_row(settings: EncodeSettings, messages: Sequence[dict[str, str]],
               where: str) -> Encoded:
    """The encoding of one conversation and what happened to it; ``where`` names the row in
    errors (file:line)."""
    try:
        input_ids, labels = settings.template.encode(settings.tokenizer, messages,
                                                     settings.loss_scope)
    except ValueError as error:
        raise SdkError(f"{where}: the row cannot be rendered with template "
                       f"'{settings.template.spec.name}': {error}. Pick another --template or "
                       "fix the data.") from None
    status, open_end, full_length = KEPT, False, len(input_ids)
    max_length = settings.max_length
    if max_length > 0 and full_length > max_length:
        if settings.truncation_strategy == "delete":
            return Encoded(DELETED, [], [], full_length)
        status = TRUNCATED
        if settings.truncation_strategy == "truncation_left":
            kept = slice(-max_length, None)
        else:  # the first token cut off trained: the reply it belongs to goes on past the cut
            kept, open_end = slice(max_length), labels[max_length] != IGNORE_INDEX
        input_ids, labels = input_ids[kept], labels[kept]
    if all(label == IGNORE_INDEX for label in labels):
        return Encoded(DROPPED, [], [], full_length)
    return Encoded(status, input_ids, labels, full_length, open_end)


def example(input_ids: list[int], labels: list[int]) -> dict[str, list[int]]:
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def stats_of(statuses: Sequence[str], lengths: Sequence[int],
             trained: Sequence[int]) -> EncodeStats:
    """Statistics from each row's status, length and trained-token count."""
    kept = [i for i, status in enumerate(statuses) if status in (KEPT, TRUNCATED)]
    return EncodeStats(rows=len(statuses), truncated=statuses.count(TRUNCATED),
                       deleted=statuses.count(DELETED), dropped=statuses.count(DROPPED),
                       tokens=sum(lengths[i] for i in kept),
                       trained_tokens=sum(trained[i] for i in kept),
                       longest=max((lengths[i] for i in kept), default=0))


def encode_conversations(template: Template, tokenizer: Any,
                         conversations: Sequence[Sequence[dict[str, str]]], max_length: int,
                         loss_scope: str = "all", truncation_strategy: str = "truncation_right",
                         ) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Examples for the rows that are kept, and what happened to all of them."""
    settings = EncodeSettings(template, tokenizer, max_length, loss_scope, truncation_strategy)
    examples, statuses, lengths, trained = [], [], [], []
    for row, messages in enumerate(conversations, start=1):
        encoded = encode_row(settings, messages,
                             f"Training row {row} (counting through --dataset in order)")
        statuses.append(encoded.status)
        lengths.append(len(encoded.input_ids))
        trained.append(sum(label != IGNORE_INDEX for label in encoded.labels))
        if encoded.input_ids:
            examples.append(example(encoded.input_ids, encoded.labels))
    stats = stats_of(statuses, lengths, trained)
    stats.system_dropped = drops_system_prompt(template, conversations)
    return examples, stats
