"""`sdk sft` in two processes (NPROC_PER_NODE=2: torchrun, DDP over gloo on this CPU) trains,
and resumes, what one process trains with the two processes' rows in each batch, into one run
folder."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL_TYPE, only_run
from sdk.errors import SdkError
from sdk.testing import AnyTunerArguments
from sdk.train.distributed import torchrun_command
from sdk.train.sft import run_sft


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for number in range(16):
            handle.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question {number}?"},
                {"role": "assistant", "content": f"Answer number {number} from Tiny."},
            ]}) + "\n")
    return path


# a constant learning rate: the first two-process run stops at step 2 and a resumed one
# goes on to step 4
SETTINGS = dict(gradient_accumulation_steps=1, save_steps=2, logging_steps=1, seed=0,
                lr_scheduler_type="constant", warmup_ratio=0.0)
LORA = dict(lora_dropout=0.0)  # the LoRA runs' (another tuner refuses the flag)


def logged_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def sdk_sft(plugin_file, rows, output, *flags, processes=2, batch_size=1, tuner_settings=LORA):
    """`sdk sft` in a process of its own (DeepSpeed's process group and rendezvous settings
    stay there), in ``processes`` processes; its stderr."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes > 1:
        environment["NPROC_PER_NODE"] = str(processes)
    finished = subprocess.run(
        [sys.executable, "-m", "sdk", "--plugin", str(plugin_file), "sft", "--model-type",
         TINY_MODEL_TYPE, "--dataset", str(rows), "--batch-size", str(batch_size),
         *[str(part) for name, value in {**SETTINGS, **tuner_settings}.items()
           for part in (f"--{name}", value)],
         "--output-dir", str(output), *flags],
        env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stderr


def assert_same_weights(file, expected_file):
    trained, expected = load_file(file), load_file(expected_file)
    assert trained.keys() == expected.keys()
    for name, weight in trained.items():
        torch.testing.assert_close(weight, expected[name], rtol=1e-5, atol=1e-6, msg=name)


# 4 of the 16 rows are held out; the resumed ZeRO-3 run also predicts them
HELD_OUT = ("--split-dataset-ratio", "0.25")
PREDICT = ("--predict-with-generate", "true", "--max-new-tokens", "4")


@pytest.mark.slow
@pytest.mark.parametrize("engine, engine_resumed", [
    ([], []), (["--deepspeed", "zero2"], ["--deepspeed", "default-zero2"]),  # ms-swift's name
    (["--deepspeed", "zero3"], ["--deepspeed", "zero3", *PREDICT])], ids=["ddp", "zero2", "zero3"])
def test_two_processes_train_and_resume_like_one_process_with_both_their_rows(
        tiny_plugin_file, plugin_set, rows, tmp_path, engine, engine_resumed):
    first = sdk_sft(tiny_plugin_file, rows, tmp_path / "two", "--max-steps", "2", *HELD_OUT,
                    *engine)
    assert first.count("[sdk] run folder:") == 1  # the main process reports
    resumed = sdk_sft(tiny_plugin_file, rows, tmp_path / "two", "--max-steps", "4", *HELD_OUT,
                      "--resume-from-checkpoint", "auto", *engine_resumed)
    assert "resuming" in resumed
    assert "` is deprecated" not in first + resumed  # torch's warnings about DeepSpeed's calls
    two = only_run(tmp_path / "two")  # one run folder for both processes and both runs

    one = run_sft(AnyTunerArguments(model_type=TINY_MODEL_TYPE, dataset=[str(rows)],
                                    batch_size=2, max_steps=4, output_dir=str(tmp_path / "one"),
                                    split_dataset_ratio=0.25, **SETTINGS, **LORA),
                  plugin_set.registry).run_dir

    assert sorted(p.name for p in two.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # DeepSpeed's sharded state, which the resumed run loaded
    assert (two / "checkpoint-4" / "global_step4").is_dir() == bool(engine)
    assert logged_losses(two) == pytest.approx(logged_losses(one), rel=1e-5)
    assert_same_weights(two / "checkpoint-4" / "adapter_model.safetensors",
                        one / "checkpoint-4" / "adapter_model.safetensors")
    predictions = list((two / "predictions").glob("*.jsonl"))
    if PREDICT[0] in engine_resumed:  # generated under ZeRO-3, whose weights are sharded
        assert len(predictions) == 1 and len(predictions[0].read_text().splitlines()) == 4
    else:
        assert not predictions


def test_a_bad_process_count_is_named(run_cli, tiny_plugin_file, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("NPROC_PER_NODE", "two")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", rows, "--output-dir", tmp_path)
    assert result.exit_code != 0
    assert "NPROC_PER_NODE=two: give the number of processes" in result.output


def test_the_launcher_builds_torchrun_commands_for_one_or_several_machines():
    argv = ["sft", "--model-type", "m"]
    assert torchrun_command(argv, {}) is None
    assert torchrun_command(argv, {"NPROC_PER_NODE": "1"}) is None
    assert torchrun_command(argv, {"NPROC_PER_NODE": "4", "LOCAL_RANK": "0"}) is None  # inside
    assert torchrun_command(argv, {"NPROC_PER_NODE": "4"})[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "sdk", *argv]
    several = {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}
    assert torchrun_command(argv, several)[3:8] == [
        "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29500",
        "--nproc-per-node=8"]
    with pytest.raises(SdkError, match="NNODES=2 needs MASTER_ADDR too"):
        torchrun_command(argv, {**several, "MASTER_ADDR": ""})



@pytest.mark.slow
def test_one_process_zero3_with_offload_saves_the_whole_model_it_trained(tiny_plugin_file, rows,
                                                                         tmp_path):
    for name, engine in (("plain", []), ("zero", ["--deepspeed", "zero3_offload"])):
        sdk_sft(tiny_plugin_file, rows, tmp_path / name, "--sft-type", "full", "--max-steps",
                "2", *engine, processes=1, batch_size=2, tuner_settings={})
    plain, zero = only_run(tmp_path / "plain"), only_run(tmp_path / "zero")
    assert (zero / "checkpoint-2" / "global_step2").is_dir()
    assert logged_losses(zero) == pytest.approx(logged_losses(plain), rel=1e-5)
    # gathered from the shards into the checkpoint's model file, as `sdk infer` reads it
    assert_same_weights(zero / "checkpoint-2" / "model.safetensors",
                        plain / "checkpoint-2" / "model.safetensors")


@pytest.mark.parametrize("flags, message", [
    (["--deepspeed", "zero4"], "--deepspeed zero4: neither a built-in configuration (zero2, "
                               "zero3, zero2_offload, zero3_offload) nor a DeepSpeed JSON file"),
    (["--deepspeed", "zero3", "--sft-type", "adalora"], "AdaLoRA scores its ranks"),
    (["--deepspeed", "zero2", "--init-lora-weights", "olora"], "which ZeRO shards"),
    (["--deepspeed", "default-zero3", "--quantization-bit", "4"],
     "ZeRO-3 cannot shard a 4-bit base model. Use zero2 for QLoRA."),
])
def test_deepspeed_settings_it_cannot_run_are_refused_before_loading(
        run_cli, tiny_plugin_file, rows, tmp_path, flags, message):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--model-id-or-path", tmp_path / "nonexistent", "--dataset", rows,
                     "--output-dir", tmp_path / "out", *flags)
    assert result.exit_code == 1 and message in result.stderr, result.output


def test_a_deepspeed_file_is_read_and_its_mistakes_named(tmp_path, monkeypatch):
    from sdk.train.deepspeed_configs import deepspeed_config, saved_name

    config = tmp_path / "ds_z3.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3},
                                  "train_micro_batch_size_per_gpu": "auto"}))
    # ZeRO-3 checkpoints gather the whole weights, so that they load like any other
    assert deepspeed_config(str(config))["zero_optimization"] == {
        "stage": 3, "stage3_gather_16bit_weights_on_model_save": True}
    config.write_text('{\n  "zero_optimization": {"stage": 2},\n}\n')
    with pytest.raises(SdkError, match=f"--deepspeed {config}, line 3: not valid JSON"):
        deepspeed_config(str(config))
    monkeypatch.chdir(tmp_path)  # a file is saved with the run by its absolute path
    assert saved_name("ds_z3.json") == str(config) and saved_name("default-zero3") == "zero3"
    config.write_text("[2]")
    with pytest.raises(SdkError, match="a JSON object; this file holds a list"):
        deepspeed_config(str(config))


def test_deepspeed_not_installed_says_what_to_install(run_cli, tiny_plugin_file, rows, tmp_path,
                                                     monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "deepspeed" else find_spec(name, *rest))
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--model-id-or-path", tmp_path / "nonexistent", "--dataset", rows,
                     "--deepspeed", "zero2")
    assert result.exit_code == 1
    assert "--deepspeed needs deepspeed: pip install deepspeed" in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--fsdp", "full_shard"], "--fsdp needs GPUs: accelerate runs FSDP on accelerators only"),
    (["--fsdp", "hybrid_shard"], "--fsdp 'hybrid_shard': give FSDP options among full_shard"),
    (["--fsdp", "full_shard", "--deepspeed", "zero2"], "both shard the training state"),
    (["--fsdp", "full_shard", "--quantization-bit", "4"], "cannot shard a 4-bit"),
    (["--fsdp", "full_shard", "--fsdp-config", '{"fsdp_version": 1}'], "version 1: --fsdp runs"),
    (["--fsdp", "full_shard", "--fsdp-config", '{"state_dict_type": "SHARDED_STATE_DICT"}'],
     "checkpoints hold the whole weights"),
    (["--fsdp-config", "{}"], "--fsdp-config configures --fsdp, which is not given"),
])
def test_fsdp_settings_it_cannot_run_are_refused_before_loading(
        run_cli, tiny_plugin_file, rows, tmp_path, flags, message):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--model-id-or-path", tmp_path / "nonexistent", "--dataset", rows,
                     "--output-dir", tmp_path / "out", *flags)
    assert result.exit_code == 1 and message in result.stderr, result.output


def test_fsdp_flags_of_other_tools_become_transformers_fsdp2_config(tmp_path):
    from sdk.train.fsdp import fsdp_config, saved_name

    # ms-swift's and LLaMA-Factory's spelling (transformers' option words)
    assert saved_name("full_shard auto_wrap") == "full_shard"
    assert saved_name("offload,shard_grad_op") == "shard_grad_op offload"
    file = tmp_path / "fsdp.json"
    file.write_text(json.dumps({"fsdp_min_num_params": 0, "fsdp_cpu_ram_efficient_loading": True}))
    args = AnyTunerArguments(model_type=TINY_MODEL_TYPE, dataset=["x"], fsdp="full_shard offload",
                             fsdp_config=str(file), gradient_checkpointing=True)
    assert fsdp_config(args) == {
        "min_num_params": 0, "cpu_ram_efficient_loading": True, "version": 2,
        "state_dict_type": "FULL_STATE_DICT", "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True, "cpu_offload": True, "activation_checkpointing": True}
    from transformers import TrainingArguments

    # what transformers makes of it: the FSDP2 plugin's settings
    plugin = TrainingArguments(str(tmp_path), fsdp=True, fsdp_config=fsdp_config(args),
                               use_cpu=True).fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["cpu_offload"] is True
    assert plugin["activation_checkpointing"] is True and plugin["reshard_after_forward"] is True


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP runs on GPUs (accelerate)")
def test_cuda_fsdp_trains_resumes_and_saves_the_whole_adapter_like_a_run_without_it(
        tiny_plugin_file, rows, tmp_path):
    fp32 = ("--dtype", "fp32")
    sdk_sft(tiny_plugin_file, rows, tmp_path / "fsdp", "--max-steps", "2", "--fsdp",
            "full_shard auto_wrap", *fp32, processes=1, batch_size=2)
    sdk_sft(tiny_plugin_file, rows, tmp_path / "fsdp", "--max-steps", "4", "--fsdp",
            "full_shard", "--resume-from-checkpoint", "auto", *fp32, processes=1, batch_size=2)
    sdk_sft(tiny_plugin_file, rows, tmp_path / "plain", "--max-steps", "4", *fp32,
            processes=1, batch_size=2)
    fsdp, plain = only_run(tmp_path / "fsdp"), only_run(tmp_path / "plain")
    assert list((fsdp / "checkpoint-4").glob("pytorch_model_fsdp*"))  # FSDP's, for resuming
    assert logged_losses(fsdp) == pytest.approx(logged_losses(plain), rel=1e-4)
    assert_same_weights(fsdp / "checkpoint-4" / "adapter_model.safetensors",
                        plain / "checkpoint-4" / "adapter_model.safetensors")
