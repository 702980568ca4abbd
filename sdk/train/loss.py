"""The training loss without the full logits (`--loss-impl`).

transformers computes the causal-LM loss from the logits of every position, upcast to fp32: for
one 32k-token row of a 152k-word vocabulary that is 20 GB before the backward even starts. Here
the model's own forward runs as usual (peft, NEFTune, autocast, DDP hooks all included), but a
pre-hook on its output layer keeps the final hidden states and hands the layer an empty slice.
The output layer and the cross-entropy then run only at positions whose next token is trained
(the prompt never reaches them), a chunk of tokens at a time, each chunk's gradients computed in
the same pass, so at most one chunk of logits exists and none is computed twice. On CUDA,
liger-kernel's fused linear cross-entropy does the same in Triton when it is installed.

The value is transformers' `ForCausalLMLoss`: labels shifted by one (or a collator's
`shift_labels`), cross-entropy summed over trained tokens and divided by `num_items_in_batch`
(the trained tokens of the whole accumulated batch) when the Trainer gives it, else by this
batch's count.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn import functional

from sdk.templates.engine import IGNORE_INDEX
from sdk.train.probe import probing

CHUNK_LOGITS = 2**26  # logits per chunk: 256 MiB in fp32, whatever the vocabulary
PROBE_TOKENS = 16


def shifted_targets(inputs: dict[str, Any]) -> torch.Tensor:
    """What each position predicts (IGNORE_INDEX: nothing trained); removes the labels from
    ``inputs``, so the model computes no loss of its own."""
    labels = inputs.pop("labels")
    shift_labels = inputs.pop("shift_labels", None)
    if shift_labels is not None:  # a padding-free collator's, as transformers takes them
        return shift_labels
    return functional.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


@contextmanager
def hidden_states_of(head: torch.nn.Module, starve: bool) -> Iterator[list[torch.Tensor]]:
    """Collect the hidden states the output layer is called with; ``starve`` gives the layer
    none of the positions, so the forward computes no logits."""
    captured: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: tuple) -> tuple | None:
        if not args:  # called with keywords only: nothing here to intercept
            return None
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:]) if starve else None

    handle = head.register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def _as_is(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``head(hidden)`` against ``targets``, ``chunk_tokens`` rows at a
    time. Each chunk's gradients (for ``hidden`` and the trainable ``params`` of ``head``) are
    computed right after its logits, which are then freed; the backward only scales them. No
    chunk is computed twice, and at most one chunk of logits exists."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module,
                chunk_tokens: int, *params: torch.Tensor) -> torch.Tensor:
        grad_hidden = torch.zeros_like(hidden)
        # fp32 sums over the chunks, as one matmul over all rows would sum
        grad_params = [torch.zeros_like(param, dtype=torch.float32) for param in params]
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, len(hidden), chunk_tokens):
            rows = hidden[start:start + chunk_tokens].detach().requires_grad_()
            # the chunk's graph lives only until its gradients: kept where it is, also under
            # --offload-activations (save_on_cpu would copy its logits out and back)
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_as_is, _as_is):
                loss = functional.cross_entropy(head(rows).float(),
                                                targets[start:start + chunk_tokens],
                                                reduction="sum")
            grads = torch.autograd.grad(loss, [rows, *params], allow_unused=True)
            grad_hidden[start:start + chunk_tokens] = grads[0]
            for summed, grad in zip(grad_params, grads[1:], strict=True):
                if grad is not None:
                    summed += grad
            total += loss.detach()
        ctx.save_for_backward(grad_hidden, *grad_params)
        ctx.param_dtypes = [param.dtype for param in params]
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple:
        grad_hidden, *grad_params = ctx.saved_tensors
        return (grad_hidden * grad_total.to(grad_hidden.dtype), None, None, None,
                *((grad * grad_total).to(dtype)
                  for grad, dtype in zip(grad_params, ctx.param_dtypes, strict=True)))


def chunked_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                     chunk_tokens: int) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` against ``targets``, ``chunk_tokens`` rows of
    logits at a time."""
    params = [param for param in head.parameters() if param.requires_grad]
    if torch.is_grad_enabled() and (hidden.requires_grad or params):
        return _ChunkedCrossEntropy.apply(hidden, targets, head, chunk_tokens, *params)
    return sum((functional.cross_entropy(head(rows).float(), wanted, reduction="sum")
                for rows, wanted in zip(hidden.split(chunk_tokens),
                                        targets.split(chunk_tokens), strict=True)),
               hidden.new_zeros((), dtype=torch.float32))


def liger_loss_sum(head: torch.nn.Linear, hidden: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.fused_linear_cross_entropy import (
        LigerFusedLinearCrossEntropyLoss,
    )

    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(head.weight, hidden, targets,
                                                             head.bias)


def chunk_tokens_for(model: Any) -> int:
    vocab_size = model.config.get_text_config().vocab_size
    return max(1, CHUNK_LOGITS // vocab_size)


def trained_hidden_states(model: Any, head: torch.nn.Module, inputs: dict[str, Any]
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Run ``model`` on ``inputs`` (with ``labels``) without its output layer: the final hidden
    states at positions whose next token is trained, those tokens, the ``[rows, positions]``
    mask of those positions, and the model's outputs (their logits cover no position)."""
    inputs = dict(inputs)
    targets = shifted_targets(inputs)
    with hidden_states_of(head, starve=True) as captured:
        outputs = model(**inputs)
    trained = targets != IGNORE_INDEX
    return captured[0][trained], targets[trained], trained, outputs


def token_loss(model: Any, head: torch.nn.Module, inputs: dict[str, Any],
               num_items_in_batch: Any, impl: str, chunk_tokens: int) -> tuple[torch.Tensor, Any]:
    """The loss of ``model`` (as wrapped for training) on ``inputs`` (with ``labels``) by
    ``impl`` ("chunked" or "liger"), ``head`` being its output layer; and the model's outputs
    (their logits cover no position)."""
    hidden, targets, _, outputs = trained_hidden_states(model, head, inputs)
    if impl == "liger" and len(targets):  # the kernel has nothing to launch for no tokens
        total = liger_loss_sum(head, hidden, targets)
    else:
        total = chunked_loss_sum(head, hidden, targets, chunk_tokens)
    if num_items_in_batch is None:  # a token mean over this batch; nan for no token, as theirs
        return total / len(targets), outputs
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch, outputs


def eval_loss_and_counts(model: Any, head: torch.nn.Module, inputs: dict[str, Any],
                         chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Without gradients: the mean loss over the trained tokens of ``inputs``, and per row
    [tokens the argmax predicts right, trained tokens] (as ``accuracy.count_correct`` counts
    from full logits), with at most one chunk of logits at a time."""
    hidden, targets, trained, _ = trained_hidden_states(model, head, inputs)
    total = hidden.new_zeros((), dtype=torch.float32)
    right = torch.zeros_like(targets, dtype=torch.long)
    for start in range(0, len(targets), chunk_tokens):
        logits = head(hidden[start:start + chunk_tokens]).float()
        wanted = targets[start:start + chunk_tokens]
        total += functional.cross_entropy(logits, wanted, reduction="sum")
        right[start:start + chunk_tokens] = logits.argmax(dim=-1) == wanted
    row_of_token = trained.nonzero()[:, 0]
    per_row = torch.zeros(len(trained), dtype=torch.long, device=right.device)
    counts = torch.stack([per_row.index_add(0, row_of_token, right), trained.sum(dim=1)], dim=1)
    return total / len(targets), counts  # nan for no trained token, as the standard loss


def standard_reason(model: Any, sharded: bool) -> str | None:
    """Why the model's own loss must be used (None: the output layer can be split off)."""
    from transformers.trainer_utils import unwrap_peft_model

    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return (f"{peft_config.peft_type.value} puts virtual tokens in front of the input, so "
                "the hidden states do not line up with the labels")
    if sharded:
        return ("FSDP, DeepSpeed and DataParallel gather the output layer only inside the "
                "model's forward")
    network = unwrap_peft_model(model)
    if not type(network).__module__.startswith("transformers."):
        return f"{type(network).__name__} is remote code, its forward is not known"
    if getattr(network.config.get_text_config(), "output_router_logits", False):
        return "the model adds its router's auxiliary loss to the language-model loss"
    if network.get_output_embeddings() is None:
        return f"{type(network).__name__} has no output layer to split off"
    return None


def choose_loss(requested: str, model: Any, on_cuda: bool, sharded: bool,
                liger_installed: bool | None = None) -> tuple[str, str]:
    """The loss implementation to use ("liger", "chunked" or "standard") and why, before the
    first batch confirms it (`logits_from_output_layer`)."""
    if requested == "standard":
        return "standard", "--loss-impl standard"
    reason = standard_reason(model, sharded)
    if reason:
        return "standard", reason
    if requested == "auto" and on_cuda:
        if liger_installed is None:
            liger_installed = importlib.util.find_spec("liger_kernel") is not None
        if not liger_installed:
            return "chunked", "pip install liger-kernel for its fused kernel on CUDA"
        if type(model.get_output_embeddings()) is torch.nn.Linear:
            return "liger", "liger-kernel's fused linear cross-entropy"
        return "chunked", ("liger-kernel needs a plain output layer; this one is wrapped "
                           "(LoRA or --lora-modules-to-save)")
    return "chunked", "the output layer and cross-entropy only at trained tokens, in chunks"


def logits_from_output_layer(model: Any, input_ids: torch.Tensor) -> bool:
    """Whether ``model``'s logits are its output layer applied to the hidden states it is
    called with, and nothing more (no soft-capping or scaling after it): checked on the first
    tokens of ``input_ids``, in eval mode so that dropout is the same in both."""
    head = model.get_output_embeddings()
    with probing(model), hidden_states_of(head, starve=False) as captured:
        logits = model(input_ids=input_ids[:1, :PROBE_TOKENS]).logits
        if len(captured) != 1:
            return False
        expected = head(captured[0])
    return torch.allclose(logits.float(), expected.float(), rtol=1e-3, atol=1e-4)
