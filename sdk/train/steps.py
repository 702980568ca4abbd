"""How many optimizer steps a run takes, from its rows' lengths and arguments, before any model
loads: the number the Trainer plans (``trainer.state.max_steps``), for `sdk sft --dry-run`.

The Trainer counts batches per process (accelerate deals the batches out in turn; a process
short of one at the end repeats an early batch, so each gets as many as the first), then steps
of ``--gradient-accumulation-steps`` batches, the last one possibly shorter; ``--max-steps``
above 0 replaces epochs times steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sdk.train.budget import token_budget_batches


@dataclass(frozen=True)
class StepCount:
    rows: int  # training rows kept
    batches_per_epoch: int  # of each process
    steps_per_epoch: int
    epochs: float  # as trained: --max-steps makes whole epochs, the last one cut short
    total: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        epochs = f"{self.epochs:g} epoch{'' if self.epochs == 1 else 's'}"
        return (f"{self.total} optimizer step{'' if self.total == 1 else 's'}: "
                f"{self.steps_per_epoch} per epoch "
                f"({self.batches_per_epoch} batches of each process), {epochs}")


def training_steps(lengths: Sequence[int], args: Any, world_size: int = 1,
                   packed: bool | None = None) -> StepCount:
    """The steps of training on rows of these token ``lengths`` (the kept rows, after
    --max-length) with ``args``' --batch-size or --max-tokens-per-batch, --seed,
    --group-by-length, --gradient-accumulation-steps, --num-train-epochs and --max-steps, in
    ``world_size`` processes. ``packed``: whether batches are packed (token budgets count
    padding otherwise); left out, ``args.packing``: pass False where the model or tuner
    cannot be packed."""
    if args.max_tokens_per_batch:
        batches = len(token_budget_batches(
            lengths, args.max_tokens_per_batch, args.packing if packed is None else packed,
            args.seed, shuffle=True, group_by_length=args.group_by_length))
    else:
        batches = math.ceil(len(lengths) / args.batch_size)
    per_process = math.ceil(batches / world_size)
    per_epoch = max(math.ceil(per_process / args.gradient_accumulation_steps), 1)
    if args.max_steps > 0:
        total = args.max_steps
        epochs: float = math.ceil(total / per_epoch)
    else:
        total = math.ceil(args.num_train_epochs * per_epoch)
        epochs = args.num_train_epochs
    return StepCount(len(lengths), per_process, per_epoch, epochs, total)
