"""Tokenize conversations with a template into training examples, with length statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdk.templates.engine import IGNORE_INDEX, Template


@dataclass
class EncodeStats:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0  # no trained token left after truncation
    tokens: int = 0
    trained_tokens: int = 0
    longest: int = 0

    def summary(self) -> str:
        kept = self.rows - self.dropped
        return (f"{kept} training rows, {self.tokens} tokens ({self.trained_tokens} trained), "
                f"longest {self.longest}; {self.truncated} cut to --max-length, "
                f"{self.dropped} dropped with no trained token left")


def encode_conversations(template: Template, tokenizer: Any,
                         conversations: Sequence[Sequence[dict[str, str]]], max_length: int,
                         loss_scope: str = "all") -> tuple[list[dict[str, list[int]]],
                                                            EncodeStats]:
    examples, stats = [], EncodeStats()
    for messages in conversations:
        stats.rows += 1
        input_ids, labels = template.encode(tokenizer, messages, loss_scope)
        if max_length > 0 and len(input_ids) > max_length:
            stats.truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
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
