"""Padding-free batches (``--packing``): the samples of a batch joined into one row.

transformers' ``DataCollatorWithFlattening`` builds the row: ``position_ids`` restart at 0 for
each sample, and each sample's first label is -100, so the last token of a sample is never
trained to predict the first token of the next. The restarts are what keep the samples apart:
flash-attention varlen takes the sample boundaries (``cu_seq_lens``, given by the collator),
and SDPA, eager and flex attention get a block-diagonal causal mask that
``masking_utils.find_packed_sequence_indices`` derives from ``position_ids``. That mask is
built only when the model gets no 2-D attention mask and no cache, which holds in training:
the Trainer sets ``config.use_cache`` to ``TrainingArguments.use_cache`` (False). Such a mask
makes SDPA score every pair of positions in the row, so a model that ``--attn-impl auto`` left
on SDPA trains packed rows with ``sdpa_varlen`` instead (``packed_attention.py``: SDPA a
sample at a time), once the probe below passes with it.

Some models cannot train on such rows, and the run pads instead, with a notice: peft's
virtual-token tuners (prefix, ptuning, prompt) put their tokens before the row, not before each
sample; NEFTune scales its noise by the row length; and a model whose attention ignores the
restarts (remote code that builds its own causal mask, such as ChatGLM or Baichuan, or an
attention kernel that takes no mask) would let each sample see the ones before it. The last
case is found by a probe: two samples packed must get the logits each gets alone.
"""

from __future__ import annotations

from typing import Any

# A packed sample whose logits are off by more than this fraction of their largest magnitude
# saw its neighbour: seeing it moved them by 0.7 to 1.7 of that on random tiny Llamas, while
# the other row shape moves them by rounding only (under 1e-6 in fp32, 0 in bf16 there).
PROBE_TOLERANCE = 0.05


def padding_collator(tokenizer: Any) -> Any:
    """Each batch padded to its longest sample (``--packing false``)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True)


def packing_collator(model: Any) -> Any:
    """Each batch as one row, samples kept apart by restarting positions."""
    from transformers import DataCollatorWithFlattening

    implementation = getattr(model.config, "_attn_implementation", None) or ""
    # flash-attention takes the boundaries directly instead of finding them in position_ids
    return DataCollatorWithFlattening(return_flash_attn_kwargs="flash" in implementation)


NEFTUNE_UNPACKED = "NEFTune scales its noise by the row length, which packing would change"


def why_not_packed(model: Any, args: Any) -> str | None:
    """Why this model and these arguments cannot train on packed rows; None when they can."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return (f"--sft-type {args.sft_type} puts its virtual tokens before each row, not before "
                "each sample")
    if args.neftune_noise_alpha:
        return NEFTUNE_UNPACKED
    return _leaks_between_samples(model)


def _leaks_between_samples(model: Any) -> str | None:
    import torch
    from transformers.trainer_utils import unwrap_peft_model

    from sdk.train.probe import probing

    name = type(unwrap_peft_model(model)).__name__
    # a long first sample: a second sample that sees it is far from its logits alone
    samples = [{"input_ids": list(range(100, 124))}, {"input_ids": list(range(300, 308))}]
    collator = packing_collator(model)

    def logits(features: list[dict]) -> Any:
        batch = collator(features)
        batch.pop("labels")
        batch = {key: value.to(model.device) if torch.is_tensor(value) else value
                 for key, value in batch.items()}
        return model(**batch, use_cache=False).logits[0].float()

    try:
        with probing(model):
            packed = logits(samples)
            alone = torch.cat([logits([sample]) for sample in samples])
    except Exception as error:  # e.g. a remote-code forward that takes no position_ids
        return f"{name} cannot run a packed row ({type(error).__name__}: {error})"
    if packed.shape != alone.shape:
        return f"{name} does not give one logit row per token of a packed row"
    if not (packed - alone).abs().max() <= PROBE_TOLERANCE * alone.abs().max():  # or NaN
        return f"{name}'s attention does not keep packed samples apart"
    return None


def batch_collator(model: Any, tokenizer: Any, args: Any) -> tuple[Any, str | None]:
    """The collator for ``--packing``, and why padding replaced packing (None if it did not).
    Packed, a model on SDPA by ``--attn-impl auto`` moves to ``sdpa_varlen`` (SDPA a sample at
    a time, without the block-diagonal mask) if it passes the probe with it."""
    if not args.packing:
        return padding_collator(tokenizer), None
    reason = why_not_packed(model, args)
    if reason:
        return padding_collator(tokenizer), reason
    from transformers.trainer_utils import unwrap_peft_model

    base = unwrap_peft_model(model)
    if args.attn_impl == "auto" and base.config._attn_implementation == "sdpa":
        from sdk.train.packed_attention import KERNEL, register_packed_sdpa

        register_packed_sdpa()
        base.set_attn_implementation(KERNEL)
        if _leaks_between_samples(model):
            base.set_attn_implementation("sdpa")
    return packing_collator(model), None
