"""Token accuracy of the held-out data, logged as ``eval_token_accuracy`` next to
``eval_loss``: the share of trained tokens (label not -100) that the model's argmax predicts.

Nothing the size of the logits outlives a batch: ``SftTrainer.prediction_step`` turns each
eval batch into two counts per row (``count_correct`` from the logits when the model computes
its own loss, else ``loss.eval_loss_and_counts`` a chunk of logits at a time), and
``TokenAccuracy`` (the Trainer's ``compute_metrics``, with ``batch_eval_metrics``) adds them up.
Position t predicts the label at t + 1, as in the loss. A packed row (several samples
flattened into one, as transformers' ``DataCollatorWithFlattening`` makes them) has label -100
on each sample's first token, so the shift never scores a prediction across two samples.
"""

from __future__ import annotations

from typing import Any

from sdk.templates.engine import IGNORE_INDEX


def count_correct(logits: Any, labels: Any) -> Any:
    """Per row: [trained tokens predicted right, trained tokens] (a ``[rows, 2]`` tensor)."""
    import torch

    if isinstance(logits, tuple):  # the model's other outputs come after the logits
        logits = logits[0]
    predicted = logits[:, :-1].argmax(dim=-1)
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    right = (predicted == targets) & trained
    return torch.stack([right.sum(dim=1), trained.sum(dim=1)], dim=1)


class TokenAccuracy:
    """The Trainer's ``compute_metrics``. With ``batch_eval_metrics`` it is called once per
    eval batch with that batch's counts, and on the last one returns the accuracy and starts
    over; without, once with the counts of every row."""

    def __init__(self) -> None:
        self.right = self.trained = 0

    def __call__(self, prediction: Any, compute_result: bool = True) -> dict[str, float]:
        counts = prediction.predictions.sum(dim=0)
        self.right += int(counts[0])
        self.trained += int(counts[1])
        if not compute_result:
            return {}
        accuracy = self.right / self.trained if self.trained else 0.0
        self.right = self.trained = 0
        return {"token_accuracy": accuracy}
