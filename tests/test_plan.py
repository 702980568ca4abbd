"""A run is a plan first: `sdk sft --dry-run` prints it with the data report, from the data and
the tokenizer alone; every run refuses data with nothing to train before its model loads."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.config import SftArguments
from sdk.errors import SdkError
from sdk.train.plan import resolve_plan


@pytest.fixture
def weightless_model(tiny_model_dir, tmp_path) -> Path:
    """The tiny model's folder without its weights: loading the model from it fails."""
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("sdk.train.sft.load_model", loaded)


@pytest.fixture
def sft(run_cli, tiny_plugin_file, weightless_model, tmp_path):
    def run(*flags):
        return run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                       "--model-id-or-path", weightless_model, "--output-dir",
                       tmp_path / "out", *flags)

    return run


def test_dry_run_prints_the_plan_and_data_without_weights_or_run_folder(
        sft, identity_data, no_model_load, tmp_path):
    result = sft("--dataset", identity_data, "--sft-type", "qlora", "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"run folder: {tmp_path / 'out' / TINY_MODEL_TYPE / 'v0-<start time>'}" in out
    assert "template: chatml" in out and "tuner: qlora" in out
    assert re.search(r"\n +quantization +4 +\(--sft-type qlora's default \(QLoRA\)\)\n", out)
    assert "lora_dropout" in out and "train: 4 rows, 4 kept" in out
    # 4 rows of batch 1 and 16 accumulation steps
    assert "Steps: 1 optimizer step: 1 per epoch (4 batches of each process)" in out
    assert not (tmp_path / "out" / TINY_MODEL_TYPE).exists()

    result = sft("--dataset", identity_data, "--split-dataset-ratio", "0.5", "--dry-run",
                 "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    plan = printed["plan"]
    assert plan["choices"]["dtype"]["value"] in ("fp32", "bf16", "fp16")
    assert plan["choices"]["quantization"]["value"] is None
    assert plan["arguments"]["template"] == "chatml" and plan["resume_from"] is None
    assert [(split["split"], sum(source["rows"] for source in split["sources"]))
            for split in printed["data"]["splits"]] == [("train", 2), ("held-out", 2)]
    assert printed["steps"]["total"] == 1
    assert not (tmp_path / "out" / TINY_MODEL_TYPE).exists()

    result = sft("--dataset", identity_data, "--json")
    assert result.exit_code == 1 and "--json prints the plan of --dry-run" in result.stderr


def test_the_json_plan_says_how_ligers_function_is_found(sft, identity_data, no_model_load,
                                                         monkeypatch):
    from sdk.train.fast_path import Device

    monkeypatch.setattr("sdk.train.plan.this_device", lambda: Device(gpu=True, memory_gib=80))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: object()
                        if name == "liger_kernel" else find_spec(name, *rest))
    result = sft("--dataset", identity_data, "--use-liger-kernel", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    choice = json.loads(result.stdout)["plan"]["choices"]["liger_kernel"]
    # the tiny model type declares no architecture (config_model_types): its loaded model's
    # is looked up (a family's are named before: tests/test_liger_kernels.py)
    assert choice == {"value": True, "why": "--use-liger-kernel true: liger's function for the "
                      "architecture, found when the model loads "
                      f"({TINY_MODEL_TYPE} declares none)", "off": None}


def test_the_plan_is_json_and_keeps_secrets_out(plugin_set, identity_data, tmp_path):
    plan = resolve_plan(SftArguments(
        model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)],
        output_dir=str(tmp_path / "out"), hub="local", push_to_hub=True,
        hub_model_id=str(tmp_path / "repo"), hub_token="secret-token",
        offload_activations=True), plugin_set.registry)
    assert json.loads(json.dumps(plan.as_dict())) == plan.as_dict()
    assert "secret-token" not in json.dumps(plan.as_dict()) + plan.text()
    assert plan.push_to and str(tmp_path / "repo") in plan.push_to
    assert plan.args.gradient_checkpointing is True
    assert plan.choices["gradient_checkpointing"].why.startswith("--offload-activations")
    assert not (tmp_path / "out").exists()  # resolving creates nothing


@pytest.mark.parametrize("overrides, message", [
    ({"sft_type": "full", "quantization_bit": 4}, "cannot train a 4-bit model"),
    ({"template": "no-such-template"}, "no-such-template"),
    ({"adapter": "missing"}, "--adapter 'missing' is not a folder"),
    ({"optim": "adamw_torhc"}, "Did you mean adamw_torch"),
])
def test_resolving_refuses_bad_input_before_anything_loads(plugin_set, identity_data,
                                                           tmp_path, overrides, message):
    arguments = SftArguments(model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)],
                             output_dir=str(tmp_path / "out"), **overrides)
    with pytest.raises(SdkError, match=message):
        resolve_plan(arguments, plugin_set.registry)
    assert not (tmp_path / "out").exists()


def test_a_run_with_no_trained_token_is_refused_before_the_model_loads(
        sft, identity_data, tmp_path, no_model_load):
    for strategy, why in [("truncation_right", "4 lost every reply token when cut to "
                           "--max-length 8"),
                          ("delete", "4 are longer than --max-length 8 and deleted")]:
        result = sft("--dataset", identity_data, "--max-steps", "1", "--max-length", "8",
                     "--truncation-strategy", strategy)
        assert result.exit_code == 1, result.output
        assert "[sdk] data: 0 training rows" in result.stderr
        assert result.stderr.count("[sdk] fast path: packing on (off: --packing false)") == 1
        assert "No training row has a token to train" in result.stderr
        assert f"of 4 rows, {why}" in result.stderr and "Raise --max-length" in result.stderr

    result = sft("--dataset", identity_data, "--max-length", "8", "--dry-run")
    assert result.exit_code == 1, result.output
    assert "train: 4 rows, 0 kept" in result.stdout  # the report, then the refusal
    assert "of 4 rows, 4 lost every reply token" in result.stderr
    assert not (tmp_path / "out" / TINY_MODEL_TYPE).exists()


def test_a_dry_run_needs_a_tokenizer_it_can_read_without_the_model(
        run_cli, tiny_plugin_file, identity_data, tmp_path, no_model_load):
    # the tiny plugin has its own loader and no tokenizer_loader
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--output-dir", tmp_path / "out", "--dry-run")
    assert result.exit_code == 1
    assert "--dry-run reads the tokenizer without the weights" in result.stderr
    assert "--model-id-or-path DIR" in result.stderr


def test_a_resumed_run_plans_its_own_folder(plugin_set, lora_run_copy, identity_data):
    plan = resolve_plan(SftArguments(
        model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)],
        resume_from_checkpoint=str(lora_run_copy)), plugin_set.registry)
    assert plan.run_dir == str(lora_run_copy)
    assert plan.resume_from == plan.args.resume_from_checkpoint == str(
        lora_run_copy / "checkpoint-2")
    assert plan.choices["resume"].why == f"--resume-from-checkpoint {lora_run_copy}"
    assert f"(resuming {lora_run_copy / 'checkpoint-2'})" in plan.text()


def test_the_readmes_dry_run_prints_what_the_readme_shows(tmp_path):
    """The README's first `sdk sft` command with --dry-run, run as a user runs it (the
    smollm2 default, offline), prints exactly the output the README shows."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("sdk sft --model-type smollm2-135m-instruct --sft-type lora")
    command = readme[start:readme.index("\n\n", start)].replace("\\\n", " ")
    shown = readme.index("```text\n", readme.index("That first command with `--dry-run`")) + 8
    expected = readme[shown:readme.index("```", shown)]
    result = subprocess.run([*shlex.split(command), "--dry-run"], cwd=tmp_path, text=True,
                            capture_output=True, timeout=120,
                            env={**os.environ,
                                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == expected
    assert not (tmp_path / "output" / "smollm2-135m-instruct").exists()


def qwen_lora_plan(registry, data, tmp_path, **flags):
    """The plan of `sdk sft --model-type qwen2.5-7b-instruct --sft-type lora --dataset DATA`."""
    from sdk.testing import AnyTunerArguments

    return resolve_plan(AnyTunerArguments(model_type="qwen2.5-7b-instruct", sft_type="lora",
                                          dataset=[str(data)], output_dir=str(tmp_path / "out"),
                                          **flags), registry)


@pytest.fixture
def faked_gpu(monkeypatch):
    """torch sees an 80 GiB CUDA GPU with bf16 (the plan is plain data: nothing runs on it)."""
    import types

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30))


def test_on_a_gpu_the_default_flags_plan_the_fast_path_and_each_part_turns_off(
        plugin_set, identity_data, tmp_path, faked_gpu, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: object()
                        if name == "liger_kernel" else find_spec(name, *rest))
    plan = qwen_lora_plan(plugin_set.registry, identity_data, tmp_path)
    assert plan.choices["dtype"].value == "bf16"
    assert (plan.args.packing, plan.args.max_tokens_per_batch, plan.args.use_liger_kernel,
            plan.args.lora_dropout) == (True, 4096, True, 0.0)
    assert plan.fast_path() == (
        "[sdk] fast path: batch 4096 tokens (off: --max-tokens-per-batch 0); packing on (off: "
        "--packing false); liger_kernel on (off: --use-liger-kernel false); lora_dropout 0.0 "
        "(off: --lora-dropout 0.05)")
    assert "for 80 GiB of GPU memory" in plan.choices["batch"].why
    assert plan.as_dict()["choices"]["liger_kernel"]["off"] == "--use-liger-kernel false"

    off = qwen_lora_plan(plugin_set.registry, identity_data, tmp_path, packing=False,
                         max_tokens_per_batch=0, use_liger_kernel=False, lora_dropout=0.05)
    assert (off.args.packing, off.args.max_tokens_per_batch, off.args.use_liger_kernel,
            off.args.lora_dropout) == (False, None, False, 0.05)
    assert off.fast_path().startswith("[sdk] fast path: nothing; not here: batch")
    # --batch-size given: its rows, not the budget
    assert qwen_lora_plan(plugin_set.registry, identity_data, tmp_path,
                          batch_size=4).args.max_tokens_per_batch is None


def test_on_a_cpu_the_plan_keeps_batches_of_rows_and_says_why_the_rest_is_off(
        plugin_set, identity_data, tmp_path):
    plan = qwen_lora_plan(plugin_set.registry, identity_data, tmp_path)
    assert (plan.args.max_tokens_per_batch, plan.args.use_liger_kernel) == (None, False)
    assert plan.choices["batch"].value["per device"] == "1 row"
    assert plan.fast_path() == (
        "[sdk] fast path: packing on (off: --packing false); lora_dropout 0.0 (off: "
        "--lora-dropout 0.05); not here: batch (--batch-size (a token budget on a GPU only); "
        "an optimizer step takes 16 batches on each of 1 process: 16 rows); liger_kernel "
        "(liger-kernel needs a CUDA GPU (its kernels are written in Triton))")


@pytest.mark.parametrize("memory, tokens", [(141, 4096), (40, 4096), (24, 2048), (16, 1024)])
def test_the_token_budget_is_sized_to_the_gpu(memory, tokens):
    from sdk.train.fast_path import Device, token_budget

    assert token_budget(Device(gpu=True, memory_gib=memory)) == tokens
    assert token_budget(Device(gpu=False)) is None
