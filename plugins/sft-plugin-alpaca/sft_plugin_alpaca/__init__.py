"""Alpaca-GPT4 instruction data (52k GPT-4 answers to the Stanford Alpaca instructions, in
English and in Chinese translation; CC BY-NC 4.0), downloaded from the hub on first use.

The repository ids are those ms-swift and the common recipes use; ``--dataset-path
alpaca-zh=FILE`` reads a local copy instead.
"""

from __future__ import annotations

from typing import Any

from sdk import hookimpl
from sdk.specs import DatasetSpec

# The Chinese translation marks the input field "输入：" inside the text; the marker is
# not part of the instruction's input.
INPUT_MARKER = "输入："


def strip_input_marker(record: dict[str, Any], args: Any = None) -> dict[str, Any]:
    value = record.get("input")
    if isinstance(value, str) and value.startswith(INPUT_MARKER):
        return {**record, "input": value[len(INPUT_MARKER):]}
    return record


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="alpaca-zh",
        hub_ids={"huggingface": "llm-wizard/alpaca-gpt4-data-zh",
                 "modelscope": "AI-ModelScope/alpaca-gpt4-data-zh"},
        format="alpaca",
        preprocess=strip_input_marker,
        license="CC BY-NC 4.0",
        description="Alpaca-GPT4 in Chinese: 48.8k instructions with GPT-4 answers",
    ))
    register(DatasetSpec(
        name="alpaca-en",
        hub_ids={"huggingface": "llm-wizard/alpaca-gpt4-data",
                 "modelscope": "AI-ModelScope/alpaca-gpt4-data-en"},
        format="alpaca",
        license="CC BY-NC 4.0",
        description="Alpaca-GPT4 in English: 52k instructions with GPT-4 answers",
    ))
