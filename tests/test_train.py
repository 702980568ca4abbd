"""A few real training steps on a tiny random model; checkpoints reload to the same logits."""

import dataclasses
import hashlib
import json
import re
import threading

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.config import InferArguments
from sdk.testing import AnyTunerArguments, train_and_reload
from sdk.train.sft import run_sft


def train(plugin_set, identity_data, tmp_path, **overrides):
    settings = dict(model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)],
                    output_dir=str(tmp_path / "output"), max_steps=3, batch_size=2,
                    gradient_accumulation_steps=1, learning_rate=1e-2, save_steps=2,
                    logging_steps=1, seed=0)
    return run_sft(AnyTunerArguments(**{**settings, **overrides}), plugin_set.registry)


@pytest.mark.parametrize("sft_type, weights_file", [
    ("lora", "adapter_model.safetensors"),
    ("full", "model.safetensors"),
])
def test_train_save_and_reload_gives_the_same_logits(plugin_set, identity_data, tmp_path,
                                                     tiny_model_dir, sft_type, weights_file):
    trained = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                               identity_data, tmp_path / "output", max_steps=3, logging_steps=1,
                               seed=0, sft_type=sft_type)
    result, saved = trained.result, trained.saved

    assert re.fullmatch(r"v0-\d{8}-\d{6}", result.run_dir.name)
    assert result.run_dir.parent.name == TINY_MODEL_TYPE
    assert sorted(p.name for p in result.run_dir.glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-3"]
    assert result.checkpoint.name == "checkpoint-3"
    for name in (weights_file, "sft_args.json", "tokenizer.json", "tokenizer_config.json"):
        assert (result.checkpoint / name).is_file(), name
    assert saved["model_type"] == TINY_MODEL_TYPE and saved["template"] == "chatml"
    assert saved["sft_type"] == sft_type

    log = [json.loads(line) for line in (result.run_dir / "logging.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all({"loss", "learning_rate", "grad_norm"} <= set(r) for r in steps)
    # the probe is the ChatML prompt of "Who are you?"
    assert trained.tokenizer.decode(trained.inputs["input_ids"][0]) == (
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n")


def test_a_second_run_gets_the_next_version_folder(plugin_set, identity_data, tmp_path):
    first = train(plugin_set, identity_data, tmp_path, max_steps=1)
    weights = first.checkpoint / "adapter_model.safetensors"
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    second = train(plugin_set, identity_data, tmp_path, max_steps=1)
    assert first.run_dir.name.startswith("v0-") and second.run_dir.name.startswith("v1-")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before  # earlier run untouched


def test_infer_from_a_checkpoint_needs_no_other_flag(plugin_set, identity_data, tmp_path,
                                                    tiny_plugin_file, run_cli):
    result = train(plugin_set, identity_data, tmp_path)
    answer = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", result.checkpoint,
                     "--query", "Who are you?", "--max-new-tokens", "4")
    assert answer.exit_code == 0, answer.output
    assert answer.stdout.strip()

    # A checkpoint cut short while saving (no arguments file) is skipped for the run folder.
    (result.run_dir / "checkpoint-9").mkdir()
    chat = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", result.run_dir,
                   "--max-new-tokens", "3", input="Hi\nclear\nAnd you?\nexit\n")
    assert chat.exit_code == 0, chat.output
    assert chat.stderr.count(">>> ") == 2
    assert "(history cleared)" in chat.stderr


def test_sft_command_end_to_end_on_the_tiny_model(tiny_plugin_file, identity_data, tmp_path,
                                                  run_cli):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model_type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--max-steps", "2", "--batch-size", "2",
                     "--gradient_accumulation_steps", "1", "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert re.search(r"last checkpoint: .*checkpoint-2", result.stderr)
    assert "4 training rows" in result.stderr


def test_a_damaged_arguments_file_is_named(plugin_set, identity_data, tmp_path, run_cli,
                                           tiny_plugin_file):
    result = train(plugin_set, identity_data, tmp_path, max_steps=1)
    (result.checkpoint / "sft_args.json").write_text('{"model_type": "x"}')
    answer = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", result.checkpoint,
                     "--query", "hi")
    assert answer.exit_code == 1
    assert "sft_args.json lacks sft_type, template" in answer.stderr


def test_a_failed_generation_while_streaming_raises_instead_of_hanging(tiny_model_dir):
    import io

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdk.infer.chat import generate
    from sdk.templates.builtin import CHATML
    from sdk.templates.engine import Template

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # top_k as text passes our checks but makes transformers' generate raise in its thread
    args = dataclasses.replace(InferArguments(), do_sample=True, top_k="not a number")
    outcome = []

    def ask():
        try:
            generate(model, tokenizer, Template(CHATML), [{"role": "user", "content": "hi"}],
                     args, io.StringIO())
        except Exception as error:
            outcome.append(error)

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout=60)
    assert not asker.is_alive(), "generate() hung after the generation thread failed"
    assert outcome


def test_a_model_folder_without_config_is_rejected_for_any_loader(run_cli, tmp_path):
    result = run_cli("infer", "--model-type", "smollm2-135m-instruct", "--model-id-or-path",
                     tmp_path, "--query", "hi")
    assert result.exit_code == 1 and "is not a model folder" in result.stderr


@pytest.mark.parametrize("held_out", ["split", "val-dataset"])
def test_held_out_data_gets_an_eval_loss_in_the_log(plugin_set, identity_data, tmp_path,
                                                   held_out):
    extra = ({"split_dataset_ratio": 0.25} if held_out == "split"
             else {"val_dataset": [str(identity_data)]})
    result = train(plugin_set, identity_data, tmp_path, eval_steps=1, **extra)
    log = [json.loads(line) for line in (result.run_dir / "logging.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1, 2, 3]
    saved = json.loads((result.checkpoint / "sft_args.json").read_text())
    assert saved["eval_steps"] == 1


def test_a_split_that_leaves_no_training_rows_is_an_error(plugin_set, identity_data, tmp_path):
    from sdk.errors import SdkError

    with pytest.raises(SdkError, match="leaves no training rows"):
        train(plugin_set, identity_data, tmp_path, split_dataset_ratio=0.9)


def test_only_save_model_leaves_the_optimizer_state_out(plugin_set, identity_data, tmp_path):
    full = train(plugin_set, identity_data, tmp_path / "full", max_steps=1)
    lean = train(plugin_set, identity_data, tmp_path / "lean", max_steps=1, only_save_model=True)
    assert (full.checkpoint / "optimizer.pt").is_file()
    assert not (lean.checkpoint / "optimizer.pt").exists()
    for name in ("adapter_model.safetensors", "sft_args.json", "tokenizer.json"):
        assert (lean.checkpoint / name).is_file()
    from sdk.infer.load import load_for_inference

    model, _, _ = load_for_inference(InferArguments(ckpt_dir=str(lean.run_dir)),
                                     plugin_set.registry)
    assert model is not None


def test_neftune_adds_noise_to_the_embeddings_while_training(plugin_set, identity_data,
                                                             tmp_path):
    def first_loss(name: str, **overrides) -> float:
        result = train(plugin_set, identity_data, tmp_path / name, max_steps=1,
                       logging_steps=1, **overrides)
        log = (result.run_dir / "logging.jsonl").read_text().splitlines()
        return json.loads(log[0])["loss"]

    plain = first_loss("plain")
    assert first_loss("plain-again") == plain  # a seeded run repeats itself exactly
    assert abs(first_loss("neftune", neftune_noise_alpha=50.0) - plain) > 1e-4


def test_report_to_tensorboard_writes_the_losses_into_the_run(plugin_set, identity_data,
                                                              tmp_path):
    result = train(plugin_set, identity_data, tmp_path, max_steps=2, report_to=["tensorboard"])
    events = list((result.run_dir / "runs").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    assert b"train/loss" in events[0].read_bytes()


def test_a_tracker_that_is_not_installed_is_named_before_loading(run_cli, tiny_plugin_file,
                                                                 identity_data, tmp_path,
                                                                 monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "wandb" else real(name, *rest))
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--report-to", "wandb", "--output-dir", tmp_path)
    assert result.exit_code == 1
    assert "--report-to wandb needs the wandb package: pip install wandb" in result.stderr
    unknown = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                      "--dataset", identity_data, "--report-to", "tensorbored")
    assert ("--report-to must be one of tensorboard, wandb, swanlab, mlflow, none; got "
            "'tensorbored'") in unknown.stderr
