"""Identity placeholders: the assistant's name and author written into data as ``{{name}}`` /
``{{author}}`` (LLaMA-Factory's identity.json) or ``{{NAME}}`` / ``{{AUTHOR}}`` (the
self-cognition dataset), filled from --model-name / --model-author."""

from __future__ import annotations

import re
from typing import Any

from sdk.errors import SdkError

PLACEHOLDER = re.compile(r"\{\{(name|author|NAME|AUTHOR)\}\}")
FLAGS = {"name": ("model_name", "--model-name"), "author": ("model_author", "--model-author")}


def pick(values: list[str], tag: str, flag: str, dataset: str) -> str:
    """One value serves both languages; two are Chinese then English (ms-swift's order)."""
    if not values:
        raise SdkError(f"{dataset} needs {flag}: the {flag.removeprefix('--model-')} to "
                       f"learn, e.g. {flag} 'Ferret', or a Chinese and an English one: "
                       f"{flag} 雪貂 Ferret.")
    if len(values) > 2:
        raise SdkError(f"{flag} takes one value, or two (Chinese, English); got {len(values)}.")
    return values[0] if tag == "zh" or len(values) == 1 else values[1]


def fill_placeholders(value: Any, args: Any, dataset: str, tag: str = "en") -> Any:
    """``value`` (a record, or any text, list or object in it) with its placeholders filled;
    a flag is needed only when a placeholder asks for it. ``dataset`` starts the refusal,
    e.g. "The self-cognition dataset"."""
    if isinstance(value, str):
        def fill(match: re.Match) -> str:
            attribute, flag = FLAGS[match.group(1).lower()]
            return pick(getattr(args, attribute, None) or [], tag, flag, dataset)
        return PLACEHOLDER.sub(fill, value)
    if isinstance(value, list):
        return [fill_placeholders(item, args, dataset, tag) for item in value]
    if isinstance(value, dict):
        return {key: fill_placeholders(item, args, dataset, tag) for key, item in value.items()}
    return value
