"""An example third-party plugin: a chat template built from parts (the format of a
hypothetical model whose official chat template is ChatML) and a small dataset shipped with
the plugin. Its tests (tests/) check both with sdk.testing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sdk import hookimpl
from sdk.specs import DatasetSpec
from sdk.templates.builtin import CHATML

GREETINGS = Path(__file__).parent / "data" / "greetings.jsonl"

EXAMPLE_TEMPLATE = dataclasses.replace(
    CHATML, name="example-chatml",
    description="ChatML, as the example model's official chat template renders it")


@hookimpl
def register_templates(register):
    register(EXAMPLE_TEMPLATE)


@hookimpl
def register_datasets(register):
    register(DatasetSpec(name="example-greetings", files=(str(GREETINGS),), format="messages",
                         license="Apache-2.0", description="Three greetings and their replies"))
