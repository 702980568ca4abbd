"""Render a conversation with a TemplateSpec and encode it into input ids and loss labels."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sdk.specs import TemplateSpec

Message = Mapping[str, str]
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
LOSS_SCOPES = ("all", "last")


def check_messages(messages: Sequence[Message]) -> None:
    """Raise ValueError naming the first message a template cannot render."""
    if not messages:
        raise ValueError("the conversation has no messages")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {index} is not an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {index} has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"message {index} ({role}) has no text 'content'")
        if role == "system" and index != 0:
            raise ValueError(f"message {index} is a system message; only the first may be")


class Template:
    """A TemplateSpec bound to a tokenizer's special tokens (``{bos_token}``, ``{eos_token}``).

    Without special tokens the placeholders are rendered as they are written.
    """

    def __init__(self, spec: TemplateSpec, special_tokens: Mapping[str, str] | None = None):
        self.spec = spec
        self.special_tokens = dict(special_tokens or {})

    @classmethod
    def for_tokenizer(cls, spec: TemplateSpec, tokenizer: Any) -> Template:
        tokens = {name: getattr(tokenizer, name, None) or "" for name in ("bos_token", "eos_token")}
        return cls(spec, tokens)

    def _fill(self, part: str, content: str = "") -> str:
        for name, value in self.special_tokens.items():
            part = part.replace("{" + name + "}", value)
        return part.replace("{content}", content)

    def pieces(self, messages: Sequence[Message], add_generation_prompt: bool = False,
               loss_scope: str = "all") -> Iterator[tuple[str, bool]]:
        """Yield (text, trained) pieces whose concatenation is the rendered conversation."""
        check_messages(messages)
        spec = self.spec
        system = spec.default_system
        if messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"),
                         default=-1)
        yield self._fill(spec.prefix), False
        if system is not None:
            yield self._fill(spec.system_format, system), False
        for index, message in enumerate(messages):
            if message["role"] == "user":
                yield self._fill(spec.user_format, message["content"]), False
                continue
            trained = loss_scope == "all" or index == last_reply
            yield self._fill(spec.assistant_prefix), False
            yield message["content"], trained
            yield self._fill(spec.assistant_suffix), trained
            yield self._fill(spec.turn_separator), False
        if add_generation_prompt:
            yield self._fill(spec.assistant_prefix), False

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        return "".join(text for text, _ in self.pieces(messages, add_generation_prompt))

    def encode(self, tokenizer: Any, messages: Sequence[Message],
               loss_scope: str = "all") -> tuple[list[int], list[int]]:
        """Token ids of the rendered text (exactly as the tokenizer splits the whole text) and
        labels that keep every token overlapping a trained piece: a BPE token may merge the
        space that ends a prompt part with the first word of the reply."""
        boundaries, trained, text = [], [], ""
        for piece, is_trained in self.pieces(messages, loss_scope=loss_scope):
            if piece:
                boundaries.append(len(text))
                trained.append(is_trained)
                text += piece
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoding["input_ids"])
        labels = []
        for token_id, (start, end) in zip(input_ids, encoding["offset_mapping"], strict=True):
            first = bisect.bisect_right(boundaries, start) - 1
            last = bisect.bisect_right(boundaries, max(start, end - 1)) - 1
            covered = trained[first:last + 1]
            labels.append(token_id if any(covered) else IGNORE_INDEX)
        return input_ids, labels

    def stop_words(self) -> list[str]:
        words = [self._fill(word) for word in self.spec.stop_words]
        suffix = self._fill(self.spec.assistant_suffix)
        return [w for w in dict.fromkeys([suffix, *words]) if w]
