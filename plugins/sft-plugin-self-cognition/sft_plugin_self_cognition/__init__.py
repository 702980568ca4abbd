"""A self-cognition dataset: 100 questions about the assistant's identity (50 English,
50 Chinese) whose answers hold ``{{NAME}}`` and ``{{AUTHOR}}``, filled from --model-name and
--model-author."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdk import hookimpl
from sdk.errors import SdkError
from sdk.specs import DatasetSpec

DATA_FILE = Path(__file__).parent / "data" / "self_cognition.jsonl"


def pick(values: list[str], tag: str, flag: str) -> str:
    """One value serves both languages; two are Chinese then English (ms-swift's order)."""
    if not values:
        raise SdkError(f"The self-cognition dataset needs {flag}: the name to learn, e.g. "
                       f"{flag} 'Ferret', or a Chinese and an English one: {flag} 雪貂 Ferret.")
    if len(values) > 2:
        raise SdkError(f"{flag} takes one value, or two (Chinese, English); got {len(values)}.")
    return values[0] if tag == "zh" or len(values) == 1 else values[1]


def fill_placeholders(record: dict[str, Any], args: Any) -> dict[str, Any]:
    tag = record.get("tag", "en")
    name = pick(args.model_name, tag, "--model-name")
    author = pick(args.model_author, tag, "--model-author")
    return {key: value.replace("{{NAME}}", name).replace("{{AUTHOR}}", author)
            if isinstance(value, str) else value for key, value in record.items()}


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="self-cognition",
        files=(str(DATA_FILE),),
        format="query-response",
        preprocess=fill_placeholders,
        license="Apache-2.0",
        description="100 identity Q&A (en+zh); needs --model-name and --model-author",
    ))
