"""The `sdk sft` command line of the Train form: what the page shows and what Start runs."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from sdk.config import SftArguments

# The form's fields, in its order; each is an `sdk sft` flag of the same name (a tuner's own
# options only when the chosen tuner declares them).
FORM_FIELDS = ("model_type", "dataset", "dataset_info", "sft_type", "lora_rank", "lora_alpha",
               "learning_rate", "num_train_epochs", "max_steps", "batch_size",
               "gradient_accumulation_steps", "max_length", "save_steps", "logging_steps",
               "split_dataset_ratio", "model_name", "model_author", "output_dir")
ALWAYS_GIVEN = ("model_type", "dataset", "output_dir")


def defaults(tuner_options: type | None) -> dict[str, Any]:
    """The default of every form field that `sdk sft` (with this tuner's options) has."""
    fields = {f.name: f for f in dataclasses.fields(SftArguments)}
    if tuner_options is not None:
        fields.update({f.name: f for f in dataclasses.fields(tuner_options)})
    found = {}
    for name in FORM_FIELDS:
        if name in fields:
            field = fields[name]
            found[name] = (field.default_factory() if field.default_factory
                           is not dataclasses.MISSING else field.default)
    return found


def flag_value(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return [str(int(value))]
    return [str(value)]


def sft_arguments(values: dict[str, Any], tuner_options: type | None) -> list[str]:
    """The `sdk sft` flags of the form's ``values``: those set to other than their defaults,
    and always the model type, datasets and output folder. A field the chosen tuner does not
    have is left out; an empty text or list means the default."""
    known = defaults(tuner_options)
    words: list[str] = []
    for name in FORM_FIELDS:
        if name not in known or name not in values:
            continue
        value = values[name]
        if name == "learning_rate" and value == 0:
            value = None  # 0 in the form: the tuner's default learning rate
        if isinstance(known[name], int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value in (None, "", [], ()) or (value == known[name] and name not in ALWAYS_GIVEN):
            continue
        words += [f"--{name.replace('_', '-')}", *flag_value(value)]
    return words


def sdk_command(group_flags: Sequence[str], command: str, arguments: Sequence[str]) -> list[str]:
    """``sdk GROUP_FLAGS COMMAND ARGUMENTS`` as words (``sdk`` first); the group flags (such
    as ``--plugin FILE``) are the page's own."""
    return ["sdk", *group_flags, command, *arguments]


def without_flag(words: Sequence[str], flag: str) -> list[str]:
    """``words`` without ``flag`` and the value after it, wherever given."""
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        else:
            kept.append(word)
    return kept


def shown(words: Sequence[str]) -> str:
    """The command as a shell line to copy."""
    return shlex.join(words)


def runnable(words: Sequence[str]) -> list[str]:
    """``words`` (``sdk ...``) run by this Python, whatever PATH holds."""
    return [sys.executable, "-m", "sdk", *words[1:]]
