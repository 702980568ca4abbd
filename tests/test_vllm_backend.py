"""--infer-backend vllm where vLLM cannot run: refused with what to do, before any model
loads or any file is written (vLLM is not installed here and there is no CUDA device; the
vLLM path itself runs only on a GPU machine)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.config import GenerationArguments
from sdk.errors import SdkError
from sdk.infer.vllm_backend import VllmSource, check_vllm

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                                reason="vLLM is installed: its refusal cannot be seen")


@pytest.mark.parametrize("command", [
    ("infer", "--query", "Hi"),
    ("infer", "--dataset", "tang-poems-test#2"),
    ("deploy", "--port", "0"),
])
def test_without_vllm_each_command_says_how_to_get_it(run_cli, tiny_plugin_file, tmp_path,
                                                       command):
    predictions = tmp_path / "predictions.jsonl"
    extra = ("--predictions-file", predictions) if "--dataset" in command else ()
    result = run_cli("--plugin", tiny_plugin_file, command[0], "--model-type", TINY_MODEL_TYPE,
                     "--infer-backend", "vllm", *command[1:], *extra)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "needs vLLM, which is not installed: pip install vllm" in result.output
    assert "--infer-backend" in result.output and not list(tmp_path.iterdir())


def pretend_vllm_is_installed(monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: object() if name == "vllm" else find_spec(name, *rest))


def test_without_a_cuda_device_vllm_is_refused(monkeypatch):
    pretend_vllm_is_installed(monkeypatch)
    with pytest.raises(SdkError, match="runs on a CUDA GPU and this machine has none"):
        check_vllm(GenerationArguments(model_type=TINY_MODEL_TYPE))


def test_flags_vllm_cannot_honour_are_named(monkeypatch):
    import torch

    pretend_vllm_is_installed(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SdkError, match="--num-beams, --merge-lora: not with --infer-backend vllm"):
        check_vllm(GenerationArguments(model_type=TINY_MODEL_TYPE, num_beams=2, merge_lora=True))


def test_an_adapter_gets_a_lora_slot_of_a_rank_vllm_has():
    args = GenerationArguments(dtype="bf16", seed=7)
    assert VllmSource("base", "ckpt").engine_arguments(args) == {
        "model": "base", "tokenizer": "ckpt", "dtype": "bfloat16", "seed": 7,
        "trust_remote_code": False}
    arguments = VllmSource("base", "ckpt", "ckpt", lora_rank=4).engine_arguments(args)
    assert (arguments["enable_lora"], arguments["max_loras"], arguments["max_lora_rank"]) == (
        True, 1, 8)
    assert VllmSource("b", "c", "c", 64).engine_arguments(args)["max_lora_rank"] == 64
