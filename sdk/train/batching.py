"""Token-budget batches (``--max-tokens-per-batch``): each batch holds as many samples as fit in
N tokens, so memory stays flat whatever the lengths.

Samples are cut to ``--max-length`` before they get here; which of them form each batch is
``sdk/train/budget.py``'s (torch-free, so `sdk sft --dry-run` counts the same batches).

The batches are made once, from the samples in an order seeded by ``--seed`` (length-grouped
with ``--group-by-length``), and every epoch shuffles their order, seeded by ``--seed`` and the
epoch. So an epoch always has the same number of batches (the Trainer plans its steps from
that), and a resumed run, which skips the batches already trained, sees the batches the
interrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Sampler

from sdk.train.budget import token_budget_batches


@dataclass(frozen=True)
class Batching:
    """How SftTrainer batches: packed rows or padding, and the token budget, if any."""

    packed: bool
    max_tokens: int | None = None
    group_by_length: bool = False


def row_lengths(dataset: Any) -> list[int]:
    """Token count of each row, read from the Arrow column without decoding the rows."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        import pyarrow.compute

        column = dataset.with_format("arrow")["input_ids"]
        return pyarrow.compute.list_value_length(column).to_pylist()
    return [len(row["input_ids"]) for row in dataset]


class TokenBudgetBatches(Sampler[list[int]]):
    """Batches of row indices for a DataLoader's ``batch_sampler``."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, packed: bool, seed: int,
                 shuffle: bool, group_by_length: bool = False):
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.batches = token_budget_batches(lengths, max_tokens, packed, seed, shuffle,
                                            group_by_length)

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (and accelerate) before each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            return iter(self.batches)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter([self.batches[i] for i in torch.randperm(len(self.batches),
                                                              generator=generator).tolist()])
