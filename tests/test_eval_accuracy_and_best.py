"""Eval during training: token accuracy next to the eval loss, and the best checkpoint, which
is recorded in the run folder and survives --save-total-limit."""

import json
import re

import pytest
import torch

from conftest import TINY_MODEL_TYPE
from sdk.config import InferArguments
from sdk.infer.load import load_for_inference
from sdk.runs.best import BEST_FILE, best_checkpoint, read_best, rotated
from sdk.runs.run_dir import checkpoints, newest_run
from sdk.templates.engine import IGNORE_INDEX
from sdk.train.accuracy import TokenAccuracy, count_correct

X = IGNORE_INDEX


class Prediction:
    """What the Trainer hands compute_metrics (an EvalPrediction), reduced to what it reads."""

    def __init__(self, predictions):
        self.predictions = predictions


def one_hot(token_ids, vocabulary=6):
    """Logits whose argmax at each position is the given token."""
    return torch.nn.functional.one_hot(torch.tensor(token_ids), vocabulary).float()


def test_token_accuracy_counts_trained_next_tokens_only():
    # Row 1: positions predict [1, 2, 5, 0, 4]; the labels ahead are [X, 2, 3, X, 4] (after
    # the shift): 2 right (2, 4) of 3 trained (2, 3, 4). Row 2: no trained token.
    logits = torch.stack([one_hot([1, 2, 5, 0, 4, 3]), one_hot([0, 0, 0, 0, 0, 0])])
    labels = torch.tensor([[X, X, 2, 3, X, 4], [X, X, X, X, X, X]])
    assert count_correct(logits, labels).tolist() == [[2, 3], [0, 0]]
    # the model's other outputs (a cache) may come after the logits
    assert count_correct((logits, object()), labels).tolist() == [[2, 3], [0, 0]]


def test_a_model_that_predicts_every_next_token_scores_one_also_in_a_packed_row():
    # Two samples flattened into one row: [7 1 2] and [9 3 4]; a packing collator gives each
    # sample's first token label -100, so the prediction across the boundary is not scored
    # (the model predicts 0 there, not 9).
    labels = torch.tensor([[X, 1, 2, X, 3, 4]])
    logits = one_hot([1, 2, 0, 3, 4, 0])[None]
    assert count_correct(logits, labels).tolist() == [[4, 4]]

    accuracy = TokenAccuracy()
    batches = [count_correct(logits, labels),
               count_correct(one_hot([0, 0, 0, 0, 0, 0])[None], labels)]
    assert accuracy(Prediction(batches[0]), compute_result=False) == {}
    assert accuracy(Prediction(batches[1]), compute_result=True) == {"token_accuracy": 0.5}
    # it starts over for the next evaluation
    assert accuracy(Prediction(batches[0]), compute_result=True) == {"token_accuracy": 1.0}


@pytest.mark.parametrize("packing, loss_impl", [("true", "chunked"), ("false", "chunked"),
                                               ("true", "standard")])
def test_the_logged_accuracy_is_the_share_of_trained_tokens_predicted_right(
        run_cli, tiny_plugin_file, plugin_set, identity_data, tmp_path, packing, loss_impl):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--sft-type", "full", "--dataset", identity_data, "--val-dataset",
                     identity_data, "--max-steps", "2", "--batch-size", "4",
                     "--gradient-accumulation-steps", "1", "--learning-rate", "5e-2",
                     "--warmup-ratio", "0", "--save-steps", "1", "--eval-steps", "1",
                     "--save-total-limit", "0", "--packing", packing, "--loss-impl",
                     loss_impl, "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "packing off" not in result.stderr  # packed eval batches are scored too
    assert f"[sdk] loss: {loss_impl}" in result.stderr
    run_dir = newest_run(tmp_path / "out", TINY_MODEL_TYPE)
    log = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["eval_token_accuracy"] for r in log if "eval_loss" in r}
    assert sorted(logged) == [1, 2]

    conversations = [json.loads(line)["messages"]
                     for line in identity_data.read_text().splitlines()]
    for checkpoint in checkpoints(run_dir):
        model, tokenizer, template = load_for_inference(
            InferArguments(ckpt_dir=str(checkpoint)), plugin_set.registry)
        right = trained = 0
        for messages in conversations:  # one row at a time, without padding
            ids, labels = template.encode(tokenizer, messages)
            with torch.no_grad():
                predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
            for position in range(len(ids) - 1):
                if labels[position + 1] != IGNORE_INDEX:
                    trained += 1
                    right += predicted[position] == ids[position + 1]
        assert 0 < right < trained  # a real mix of right and wrong
        assert logged[int(checkpoint.name.split("-")[1])] == pytest.approx(right / trained)


def test_the_best_checkpoint_is_recorded_and_outlives_rotation(
        run_cli, tiny_plugin_file, identity_data, tmp_path):
    # full fine-tuning at a learning rate this high makes the eval loss jump about, so the
    # best checkpoint is not the last one
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--sft-type", "full", "--dataset", identity_data, "--val-dataset",
                     identity_data, "--max-steps", "4", "--batch-size", "4",
                     "--gradient-accumulation-steps", "1", "--learning-rate", "1.0",
                     "--warmup-ratio", "0", "--save-steps", "1", "--eval-steps", "1",
                     "--save-total-limit", "1", "--seed", "0", "--output-dir",
                     tmp_path / "out")
    assert result.exit_code == 0, result.output
    run_dir = newest_run(tmp_path / "out", TINY_MODEL_TYPE)
    log = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["eval_loss"] for r in log if "eval_loss" in r}
    best_step = min(losses, key=losses.get)
    assert best_step != 4, losses  # otherwise this run shows nothing

    best = read_best(run_dir)
    assert (best.step, best.eval_loss) == (best_step, losses[best_step])
    assert json.loads((run_dir / BEST_FILE).read_text())["checkpoint"] == f"checkpoint-{best_step}"
    # a limit of 1 keeps the newest checkpoint and the best
    assert [c.name for c in checkpoints(run_dir)] == [f"checkpoint-{best_step}", "checkpoint-4"]
    assert re.search(rf"best checkpoint: .*checkpoint-{best_step} \(eval loss", result.stderr)
    for checkpoint in checkpoints(run_dir):  # no path into the staging folder is kept
        assert ".partial" not in (checkpoint / "trainer_state.json").read_text()


def test_without_held_out_data_there_is_no_best_checkpoint(tmp_path):
    run_dir = make_run(tmp_path, [1, 2])
    assert best_checkpoint(run_dir, [{"step": 1, "loss": 2.0}]) is None
    assert read_best(run_dir) is None


def make_run(tmp_path, steps):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "sft_args.json").write_text("{}")
    for step in steps:
        (run_dir / f"checkpoint-{step}").mkdir()
        (run_dir / f"checkpoint-{step}" / "sft_args.json").write_text("{}")
    return run_dir


def test_the_best_is_judged_by_the_eval_loss_at_a_checkpoints_own_step(tmp_path):
    run_dir = make_run(tmp_path, [2, 4, 6])
    history = [{"step": 1, "eval_loss": 0.1},  # no checkpoint at step 1
               {"step": 2, "eval_loss": 0.9}, {"step": 2, "loss": 0.2},
               {"step": 4, "eval_loss": 0.5}, {"step": 5, "eval_loss": 0.3},
               {"step": 6, "eval_loss": 0.5}, {"step": 8, "eval_loss": float("nan")}]
    best = best_checkpoint(run_dir, history)
    assert (best.checkpoint.name, best.step, best.eval_loss) == ("checkpoint-4", 4, 0.5)


@pytest.mark.parametrize("limit, best, deleted", [
    (2, 5, [1, 2, 3]),  # the best among the newest: plain rotation
    (2, 1, [2, 3, 4]),  # the oldest is the best: it takes the second place
    (1, 2, [1, 3, 4]),  # a limit of 1 keeps the newest and the best
    (3, None, [1, 2]),
    (1, 5, [1, 2, 3, 4]),
])
def test_rotation_never_deletes_the_best(tmp_path, limit, best, deleted):
    found = [tmp_path / f"checkpoint-{step}" for step in range(1, 6)]
    best_path = None if best is None else tmp_path / f"checkpoint-{best}"
    assert rotated(found, limit, best_path) == [tmp_path / f"checkpoint-{s}" for s in deleted]
