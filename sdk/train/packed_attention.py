"""SDPA for packed rows without the block-diagonal mask: the attention kernel ``sdpa_varlen``.

With a mask, SDPA scores every pair of positions of a packed row and then masks out the pairs
of different samples: a row of eight 190-token samples costs eight times the attention of its
samples, and the mask itself grows with the square of the row. Here each sample of the row goes
through its own causal SDPA call (transformers' ``sdpa_attention_forward``, so GQA and dropout
are handled as in ``sdpa``), found from the ``position_ids`` restarts; the mask function builds
no mask for such rows. On a CUDA GPU in bf16/fp16 without attention dropout, torch's own
flash-attention varlen kernel (``torch.nn.attention.varlen``) takes the whole row in one call
instead: one small SDPA call per sample and layer would leave the GPU waiting on launches.
Anything else (a padding mask, a cache, a window shorter than the row, a mask with extra rules)
takes transformers' own SDPA mask and kernel unchanged. It is what flash-attention varlen
computes, for machines without the flash-attn package; the packing probe (``packing.py``)
checks it on each model before training.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from typing import Any

import torch

KERNEL = "sdpa_varlen"


# Every layer of a forward (and its recomputation under gradient checkpointing) gets the same
# position_ids tensor, and reading a row's bounds back to the host waits for the device: keeping
# the last row's bounds (and their copy on the device) makes that one wait per forward instead
# of one per layer.
_last_row: tuple[weakref.ref, int, list[int], dict[torch.device, torch.Tensor]] | None = None


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
    _last_row = (weakref.ref(position_ids), position_ids._version, bounds, {})
    return bounds


def _bounds_on(device: torch.device, bounds: list[int]) -> torch.Tensor:
    """``bounds`` as the int32 tensor the varlen kernel takes, copied to ``device`` once."""
    copies = _last_row[3] if _last_row is not None and _last_row[2] is bounds else {}
    if device not in copies:
        copies[device] = torch.tensor(bounds, dtype=torch.int32, device=device)
    return copies[device]


@functools.cache
def _varlen_kernel() -> tuple[Any, dict[str, Any]] | None:
    """torch's varlen attention and the keywords that make it causal with grouped key/value
    heads (they changed between torch releases); None where torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    if "window_size" in parameters:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in parameters:
        causal = {"is_causal": True}
    else:
        return None
    if "enable_gqa" in parameters:
        causal["enable_gqa"] = True
    return varlen_attn, causal


def varlen_fits(module: torch.nn.Module, query: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    """Whether torch's varlen kernel computes what the per-sample SDPA calls would: causal
    flash attention on CUDA in half precision, without dropout, a window or a softcap."""
    causal = kwargs.get("is_causal")
    return (query.is_cuda and query.dtype in (torch.bfloat16, torch.float16)
            and (getattr(module, "is_causal", True) if causal is None else causal)
            and not kwargs.get("dropout") and not kwargs.get("sliding_window")
            and not kwargs.get("softcap") and _varlen_kernel() is not None)


def varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     bounds: list[int], scaling: float | None) -> torch.Tensor:
    """Causal attention within each sample of a one-row batch in one kernel call: ``[1, heads,
    positions, head_dim]`` in, ``[1, positions, heads, head_dim]`` out."""
    varlen_attn, causal = _varlen_kernel()
    query, key, value = (tensor[0].transpose(0, 1) for tensor in (query, key, value))
    if "enable_gqa" not in causal and key.shape[1] != query.shape[1]:
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    starts = _bounds_on(query.device, bounds)
    longest = max(end - start for start, end in zip(bounds, bounds[1:], strict=False))
    output = varlen_attn(query, key, value, starts, starts, longest, longest, scale=scaling,
                         **causal)
    return output.unsqueeze(0)


def per_sample_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, bounds: list[int], **kwargs: Any) -> torch.Tensor:
    """The same, one SDPA call per sample (any device, dtype and dropout)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                      value[:, :, start:end], None, **kwargs)[0]
               for start, end in zip(bounds, bounds[1:], strict=False)]
    return torch.cat(outputs, dim=1)


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
    if varlen_fits(module, query, kwargs):
        return varlen_attention(query, key, value, bounds, kwargs.get("scaling")), None
    return per_sample_attention(module, query, key, value, bounds, **kwargs), None


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
