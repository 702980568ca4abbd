"""Tokenize conversations with a template into training examples, with length statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def encode_conversations(template: Template, tokenizer: Any,
                         conversations: Sequence[Sequence[dict[str, str]]], max_length: int,
                         loss_scope: str = "all", truncation_strategy: str = "truncation_right",
                         ) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    examples, stats = [], EncodeStats()
    stats.system_dropped = drops_system_prompt(template, conversations)
    for row, messages in enumerate(conversations, start=1):
        stats.rows += 1
        try:
            input_ids, labels = template.encode(tokenizer, messages, loss_scope)
        except ValueError as error:
            raise SdkError(f"Training row {row} (counting through --dataset in order) cannot be "
                           f"rendered with template '{template.spec.name}': {error}. Pick "
                           "another --template or fix the data.") from None
        if max_length > 0 and len(input_ids) > max_length:
            if truncation_strategy == "delete":
                stats.deleted += 1
                continue
            stats.truncated += 1
            kept = slice(-max_length, None) if truncation_strategy == "truncation_left" else (
                slice(max_length))
            input_ids, labels = input_ids[kept], labels[kept]
        trained = sum(label != IGNORE_INDEX for label in labels)
        if trained == 0:
            stats.dropped += 1
            continue
        stats.tokens += len(input_ids)
        stats.trained_tokens += trained
        stats.longest = max(stats.longest, len(input_ids))
        examples.append({"input_ids": input_ids, "labels": labels,
                         "attention_mask": [1] * len(input_ids)})
    return examples, stats
