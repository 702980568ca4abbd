"""SDPA for packed rows without the block-diagonal mask: the attention kernel ``sdpa_varlen``.

With a mask, SDPA scores every pair of positions of a packed row and then masks out the pairs
of different samples: a row of eight 190-token samples costs eight times the attention of its
samples, and the mask itself grows with the square of the row. Here each sample of the row goes
through its own causal SDPA call (transformers' ``sdpa_attention_forward``, so GQA and dropout
are handled as in ``sdpa``), found from the ``position_ids`` restarts; the mask function builds
no mask for such rows. Anything else (a padding
mask, a cache, a window shorter than the row, a mask with extra rules) takes transformers' own
SDPA mask and kernel unchanged. It is what flash-attention varlen computes, for machines
without flash-attn (every CPU, and GPUs where it is not installed); the packing probe
(``packing.py``) checks it on each model before training.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch

KERNEL = "sdpa_varlen"


# Every layer of a forward (and its recomputation under gradient checkpointing) gets the same
# position_ids tensor, and reading a row's bounds back to the host waits for the device: keeping
# the last row's bounds makes that one wait per forward instead of one per layer.
_last_row: tuple[weakref.ref, int, list[int]] | None = None


def sample_bounds(length: int, position_ids: torch.Tensor | None) -> list[int] | None:
    """Where the samples of a one-row batch of ``length`` positions start, and its end (the
    positions restart at each sample); None without positions of that row."""
    global _last_row
    if position_ids is None or position_ids.shape[0] != 1 or position_ids.shape[1] != length:
        return None
    if (_last_row is not None and _last_row[0]() is position_ids
            and _last_row[1] == position_ids._version):
        return _last_row[2]
    restarts = (position_ids[0, 1:] - position_ids[0, :-1] != 1).nonzero().flatten() + 1
    bounds = [0, *restarts.tolist(), length]
    _last_row = (weakref.ref(position_ids), position_ids._version, bounds)
    return bounds


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, attention_mask: torch.Tensor | None,
                        **kwargs: Any) -> tuple[torch.Tensor, None]:
    """An attention interface function (``AttentionInterface``): query/key/value are
    ``[batch, heads, positions, head_dim]``; returns ``[batch, positions, heads, head_dim]``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    bounds = None
    if attention_mask is None and query.shape[0] == 1 and key.shape[2] == length:
        bounds = sample_bounds(length, kwargs.get("position_ids"))
    if bounds is None or len(bounds) <= 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                      value[:, :, start:end], None, **kwargs)[0]
               for start, end in zip(bounds, bounds[1:], strict=False)]
    return torch.cat(outputs, dim=1), None


def packed_sdpa_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """A mask interface function (``AttentionMaskInterface``, called as ``sdpa_mask``): no mask
    for a causal row with neither padding nor cache (packed or not: ``packed_sdpa_forward`` finds
    its samples), else transformers' SDPA mask."""
    from transformers.masking_utils import sdpa_mask

    given = inspect.signature(sdpa_mask).bind(*args, **kwargs).arguments
    extra = given.get("kwargs", {})
    config = extra.get("config")
    window = (getattr(config, "sliding_window", None)
              or getattr(config, "attention_chunk_size", None))
    plain = (given.get("attention_mask") is None and not given.get("use_vmap")
             and not given.get("local_size")
             and not given.get("q_offset") and not given.get("kv_offset")
             and given["q_length"] == given["kv_length"]
             and not (window and given["q_length"] > window))
    return None if plain else sdpa_mask(*args, **kwargs)


def register_packed_sdpa() -> None:
    """Make ``sdpa_varlen`` a kernel transformers models can be set to."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(KERNEL, packed_sdpa_forward)
    AttentionMaskInterface.register(KERNEL, packed_sdpa_mask)
