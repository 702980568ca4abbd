"""Which rows form each token-budget batch (``--max-tokens-per-batch``), without torch at import:
`sdk sft --dry-run` counts the batches the sampler of ``sdk/train/batching.py`` will make.

A batch costs its token count when packed, and its sample count times its longest sample when
padded (what the padding collator makes of it). One longer than the budget gets a batch of its
own.
"""

from __future__ import annotations

from collections.abc import Sequence


def fill_batches(order: Sequence[int], lengths: Sequence[int], max_tokens: int,
                 packed: bool) -> list[list[int]]:
    """Split ``order`` into consecutive batches that each cost at most ``max_tokens``."""
    batches: list[list[int]] = []
    batch: list[int] = []
    total = longest = 0
    for index in order:
        length = lengths[index]
        cost = total + length if packed else (len(batch) + 1) * max(longest, length)
        if batch and cost > max_tokens:
            batches.append(batch)
            batch, total, longest = [], 0, 0
        batch.append(index)
        total += length
        longest = max(longest, length)
    return batches + [batch] if batch else batches


def token_budget_batches(lengths: Sequence[int], max_tokens: int, packed: bool, seed: int,
                         shuffle: bool, group_by_length: bool = False) -> list[list[int]]:
    """The batches of row indices, made once from the rows in an order seeded by ``seed``
    (length-grouped with ``group_by_length``), or in order without ``shuffle``. The number of
    batches depends on that order, so it is drawn with torch's generator, as training draws it
    (imported only here)."""
    order: Sequence[int] = range(len(lengths))
    if shuffle:
        import torch

        generator = torch.Generator().manual_seed(seed)
        if group_by_length:
            from transformers.trainer_pt_utils import get_length_grouped_indices

            # grouped in chunks of about as many samples as a batch holds on average
            typical = max(1, max_tokens * len(lengths) // max(1, sum(lengths)))
            order = get_length_grouped_indices(list(lengths), typical, generator=generator)
        else:
            order = torch.randperm(len(lengths), generator=generator).tolist()
    return fill_batches(order, lengths, max_tokens, packed)
