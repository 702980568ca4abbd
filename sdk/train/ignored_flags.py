"""`sdk sft` flags that the run's other flags leave without effect, announced on one line each
before anything loads, and the run goes on as their help says. A flag of a shared config file
(a batch size, a LoRA rank) is often set for other runs, so it is announced, not refused
(another tuner's option given on the command line is refused, ``sdk.options``); as
ms-swift does, a --split-dataset-ratio next to --val-dataset is set to 0, also in the saved
arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from sdk.config import SftArguments, changed_fields, flag_with_value
from sdk.options import option_names
from sdk.specs import Tuner


@dataclasses.dataclass(frozen=True)
class Overruled:
    """``names`` do nothing when ``when(args)``; ``why`` (formatted with the arguments)
    says which flag decides instead."""

    names: tuple[str, ...]
    when: Callable[[SftArguments], bool]
    why: str


OVERRULED = (
    Overruled(("split_dataset_ratio",), lambda args: bool(args.val_dataset),
              "--val-dataset gives the held-out rows, and every --dataset row trains"),
    Overruled(("batch_size",), lambda args: bool(args.max_tokens_per_batch),  # 0: none
              "--max-tokens-per-batch {max_tokens_per_batch} makes the batches"),
    Overruled(("hub_model_id", "hub_private_repo", "push_hub_strategy", "push_training_state"),
              lambda args: not args.push_to_hub,
              "they say what --push-to-hub uploads where, and it is not given"),
    Overruled(("max_new_tokens",), lambda args: not args.predict_with_generate,
              "it limits the replies of --predict-with-generate, which is not given"),
    Overruled(("eval_steps",),
              lambda args: not args.val_dataset and not args.split_dataset_ratio,
              "there is no held-out data to evaluate (--val-dataset, --split-dataset-ratio)"),
    Overruled(("held_out_sample",),
              lambda args: bool(args.val_dataset) or not args.split_dataset_ratio,
              "it samples the rows --split-dataset-ratio holds out of --dataset, and it holds "
              "none out (with --val-dataset, NAME#N samples an entry)"),
    Overruled(("overwrite_output_dir",), lambda args: not args.output_dir_as_run,
              "each run writes a new folder under --output-dir (without "
              "--output-dir-as-run)"),
)


def ignored_flags(args: SftArguments, tuner: Tuner, tuners: Sequence[Tuner]) -> list[str]:
    """One line for each group of set flags this run does not use."""
    lines = []
    for rule in OVERRULED:
        unused = changed_fields(args, rule.names) if rule.when(args) else []
        if unused:
            lines.append(ignored(args, unused, rule.why.format(**vars(args))))
    own = option_names(tuner.options)
    present = {f.name for f in dataclasses.fields(args)}  # a config file's, or none
    others = [name for other in tuners for name in option_names(other.options)
              if name not in own and name in present]
    unused = changed_fields(args, list(dict.fromkeys(others)))
    if unused:
        users = [other.name for other in tuners
                 if set(unused) & set(option_names(other.options))]
        lines.append(ignored(args, unused, f"--sft-type {tuner.name} does not use "
                                           f"{'it' if len(unused) == 1 else 'them'} "
                                           f"({', '.join(sorted(users))} do)"))
    return lines


def ignored(args: Any, names: list[str], why: str) -> str:
    flags = ", ".join(flag_with_value(args, name) for name in names)
    return f"[sdk] {flags} ignored: {why}."


def without_ignored_ratio(args: SftArguments) -> SftArguments:
    """The run's arguments as they apply: no held-out ratio next to --val-dataset."""
    if args.val_dataset and args.split_dataset_ratio:
        return dataclasses.replace(args, split_dataset_ratio=0.0)
    return args
