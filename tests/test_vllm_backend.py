"""--infer-backend vllm where vLLM cannot run: refused with what to do, before any model
loads or any file is written (vLLM is not installed here and there is no CUDA device; the
vLLM path itself runs only on a GPU machine). The server's side of it (VllmServed, VllmReply)
is run over a stand-in for vLLM's AsyncLLMEngine that generates with transformers: it checks
sdk's glue (threads, streaming, stop words, usage), not vLLM."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from types import ModuleType, SimpleNamespace

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.config import GenerationArguments
from sdk.errors import SdkError
from sdk.infer.vllm_backend import VllmSource, check_vllm

without_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                                  reason="vLLM is installed: its refusal cannot be seen")


@without_vllm
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


@without_vllm
def test_without_a_cuda_device_vllm_is_refused(monkeypatch):
    pretend_vllm_is_installed(monkeypatch)
    with pytest.raises(SdkError, match="runs on a CUDA GPU and this machine has none"):
        check_vllm(GenerationArguments(model_type=TINY_MODEL_TYPE))


@without_vllm
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


class StandInEngine:
    """What VllmReply reads of vLLM's AsyncLLMEngine: ``generate`` as an async generator of
    RequestOutput-shaped objects (cumulative text and token ids, a finish reason at the end),
    generated greedily by transformers."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.closed = model, tokenizer, []

    async def generate(self, prompt, params, request_id, lora_request=None):
        import torch

        ids = torch.tensor([prompt["prompt_token_ids"]])
        output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=params.max_tokens, do_sample=False,
                                     eos_token_id=params.stop_token_ids)
        new = output[0, ids.shape[1]:].tolist()
        try:
            for count in range(1, len(new) + 1):
                ended = count == len(new)
                finish = ("stop" if new[-1] in params.stop_token_ids else "length") if ended \
                    else None
                yield SimpleNamespace(outputs=[SimpleNamespace(
                    text=self.tokenizer.decode(new[:count], skip_special_tokens=True),
                    token_ids=new[:count], finish_reason=finish)])
        finally:
            self.closed.append(request_id)


def test_the_vllm_server_glue_answers_as_the_transformers_server(tiny_plugin_file, monkeypatch):
    from test_deploy import USER, call, serving, stream, streamed_text

    from sdk.config import DeployArguments
    from sdk.infer.load import load_for_inference
    from sdk.infer.openai_api import Served
    from sdk.infer.vllm_serving import VllmServed
    from sdk.plugins import load_plugins

    vllm = ModuleType("vllm")
    vllm.SamplingParams = lambda **fields: SimpleNamespace(**fields)
    inputs = ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)

    args = DeployArguments(model_type=TINY_MODEL_TYPE, max_new_tokens=6)
    model, tokenizer, template = load_for_inference(args, load_plugins(
        [str(tiny_plugin_file)]).registry)
    engine = StandInEngine(model, tokenizer)
    by_vllm = VllmServed(engine, tokenizer, template, args, "tiny", config=model.config)
    by_transformers = Served(model, tokenizer, template, args, "tiny")
    answers = []
    for served in (by_vllm, by_transformers):
        with serving(served) as (url, _):
            status, whole = call(url, "/v1/chat/completions", {"messages": USER})
            assert status == 200, whole
            events = stream(url, messages=USER, stream_options={"include_usage": True})
            status, completion = call(url, "/v1/completions", {"prompt": "Once", "max_tokens": 4})
            assert status == 200, completion
            status, refused = call(url, "/v1/chat/completions", {"messages": USER, "n": 2})
            assert status == (400 if served is by_vllm else 200), refused
            answers.append((whole["choices"], whole["usage"], streamed_text(events),
                            events[-2]["usage"], completion["choices"]))
    assert answers[0] == answers[1]
    assert len(engine.closed) == 3  # every vLLM stream was closed (an unfinished one: aborted)


def test_the_offline_vllm_glue_replies_as_batch_prediction_does(tiny_plugin_file, monkeypatch):
    from sdk.config import InferArguments
    from sdk.infer.load import load_for_inference
    from sdk.infer.predict import generate_batch
    from sdk.infer.vllm_backend import VllmEngine
    from sdk.plugins import load_plugins

    args = InferArguments(model_type=TINY_MODEL_TYPE, max_new_tokens=5, infer_backend="vllm")
    model, tokenizer, template = load_for_inference(args, load_plugins(
        [str(tiny_plugin_file)]).registry)
    engine = StandInEngine(model, tokenizer)

    def generate(prompts, params, lora_request=None):  # LLM.generate: every output at once
        async def last(prompt):
            return [output async for output in engine.generate(prompt, params, "id")][-1]

        return [asyncio.run(last(prompt)) for prompt in prompts]

    vllm = ModuleType("vllm")
    vllm.SamplingParams = lambda **fields: SimpleNamespace(**fields)
    vllm.LLM = lambda **arguments: SimpleNamespace(generate=generate, arguments=arguments)
    inputs = ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)

    prompts = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Bye now"}]]
    by_vllm = VllmEngine(VllmSource("model", "model"), template, tokenizer, args)
    assert by_vllm.replies(template, prompts, args) == generate_batch(
        model, tokenizer, template, prompts, args)
