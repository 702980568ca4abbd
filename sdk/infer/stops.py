"""Where a reply ends: the template's stop words as token ids and as strings, and a reply cut
at the first stop string; shared by every generation backend (transformers, vLLM, the server)."""

from __future__ import annotations

from typing import Any

from sdk.templates.engine import Template


def stop_tokens(template: Template, tokenizer: Any) -> tuple[list[int], list[str]]:
    """Where a reply ends: the ids of the stop words that are single tokens and the eos id,
    and the stop words that are not single tokens."""
    stop_ids, stop_strings = [], []
    for word in template.stop_words():
        ids = tokenizer.convert_tokens_to_ids([word]) if word in tokenizer.get_vocab() else []
        (stop_ids.extend(ids) if ids else stop_strings.append(word))
    if tokenizer.eos_token_id is not None:
        stop_ids.append(tokenizer.eos_token_id)
    return sorted(set(stop_ids)), stop_strings


def finish_reply(reply: str, stop_strings: list[str]) -> str:
    return cut_at_stop(reply, stop_strings).strip()


def cut_at_stop(text: str, stop_strings: list[str]) -> str:
    """``text`` before its first stop string, as generated (a raw completion keeps its
    whitespace)."""
    for word in stop_strings:
        text = text.split(word)[0]
    # a reply cut at --max-new-tokens inside a character decodes its start as U+FFFD
    return text.rstrip("\ufffd")
