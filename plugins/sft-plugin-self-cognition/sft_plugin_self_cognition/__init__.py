"""A self-cognition dataset: 100 questions about the assistant's identity (50 English,
50 Chinese) whose answers hold ``{{NAME}}`` and ``{{AUTHOR}}``, filled from --model-name and
--model-author."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdk import hookimpl
from sdk.data.placeholders import fill_placeholders
from sdk.specs import DatasetSpec

DATA_FILE = Path(__file__).parent / "data" / "self_cognition.jsonl"


def fill_self_cognition(record: dict[str, Any], args: Any) -> dict[str, Any]:
    return fill_placeholders(record, args, "The self-cognition dataset", record.get("tag", "en"))


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="self-cognition",
        files=(str(DATA_FILE),),
        format="query-response",
        preprocess=fill_self_cognition,
        license="Apache-2.0",
        description="100 identity Q&A (en+zh); needs --model-name and --model-author",
    ))
