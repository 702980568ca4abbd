"""`sdk deploy`: the OpenAI-compatible API over the tiny model, through real HTTP on 127.0.0.1
(uvicorn in a background thread, or `sdk deploy` itself in a subprocess)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import CONVERSATIONS, TINY_MODEL_TYPE
from sdk.config import DeployArguments, InferArguments
from sdk.infer.chat import generate
from sdk.infer.deploy import listening_socket, served_model_name
from sdk.infer.load import load_for_inference
from sdk.infer.openai_api import Served, Server
from sdk.testing import train_and_reload

USER = CONVERSATIONS["single turn"]
ERROR_KEYS = {"message", "type", "param", "code"}


@contextmanager
def serving(loaded: Served, **options: Any):
    """``loaded`` served as `sdk deploy` serves it (``options``: Server's), from a background
    thread; gives its base URL and the server."""
    sock = listening_socket("127.0.0.1", 0)
    server = Server(loaded, log_level="warning", **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def loaded(tiny_plugin_file) -> Served:
    """The tiny model type, loaded as `sdk deploy --model-type` loads it."""
    from sdk.plugins import load_plugins

    args = DeployArguments(model_type=TINY_MODEL_TYPE, max_new_tokens=8)
    model, tokenizer, template = load_for_inference(args, load_plugins(
        [str(tiny_plugin_file)]).registry)
    return Served(model, tokenizer, template, args, served_model_name(args))


@pytest.fixture(scope="module")
def served(loaded):
    """``loaded`` and its server."""
    with serving(loaded) as (url, _):
        yield url, loaded


def call(url: str, path: str, body: Any = None, method: str | None = None):
    """(status, JSON answer) of a request; ``body`` as JSON, or raw bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def complete(url: str, **body: Any) -> dict:
    status, answer = call(url, "/v1/chat/completions", {"messages": USER, **body})
    assert status == 200, answer
    return answer


def stream(url: str, **body: Any) -> list[Any]:
    """The data of each server-sent event of a streamed completion (``[DONE]`` as text)."""
    request = urllib.request.Request(
        url + "/v1/chat/completions", headers={"Content-Type": "application/json"},
        data=json.dumps({"messages": USER, **body, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [block.removeprefix("data: ") for block in text.split("\n\n") if block]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


def streamed_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]
                   if e["choices"])


def test_models_lists_the_served_name(served):
    url, loaded = served
    status, answer = call(url, "/v1/models")
    assert status == 200 and loaded.name == TINY_MODEL_TYPE
    assert answer["object"] == "list"
    assert [(m["id"], m["object"]) for m in answer["data"]] == [(TINY_MODEL_TYPE, "model")]


def test_a_greedy_reply_is_what_sdk_infer_answers(served, run_cli, tiny_plugin_file):
    url, loaded = served
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--query", USER[0]["content"], "--max-new-tokens", "6", "--stream", "false")
    assert result.exit_code == 0, result.output
    answer = complete(url, model=TINY_MODEL_TYPE, max_tokens=6)
    assert answer["object"] == "chat.completion" and answer["model"] == TINY_MODEL_TYPE
    assert answer["id"].startswith("chatcmpl-")
    message = answer["choices"][0]["message"]
    assert message == {"role": "assistant", "content": result.stdout.strip()}
    assert message["content"]

    conversation = CONVERSATIONS["multi turn with system"]
    status, answer = call(url, "/v1/chat/completions",
                          {"messages": conversation, "max_completion_tokens": 5})
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"] == generate(
        loaded.model, loaded.tokenizer, loaded.template, conversation,
        InferArguments(max_new_tokens=5))


def test_streamed_chunks_join_to_the_reply(served):
    url, _ = served
    whole = complete(url, max_tokens=7)
    events = stream(url, max_tokens=7, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    first, *middle, last, usage = events[:-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == first["id"]
               for e in events[:-1])
    assert len(middle) > 1  # in pieces, as generated
    assert streamed_text(events) == whole["choices"][0]["message"]["content"]
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": "length"}
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_max_tokens_cuts_with_length_and_usage_counts_the_tokens(served):
    url, loaded = served
    answer = complete(url, max_tokens=3)
    prompt = loaded.template.tokenize_prompt(loaded.tokenizer, USER)["input_ids"]
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": prompt.shape[1], "completion_tokens": 3,
                               "total_tokens": prompt.shape[1] + 3}
    reply = answer["choices"][0]["message"]["content"]
    output = loaded.model.generate(**prompt_inputs(loaded), max_new_tokens=3, do_sample=False)
    assert reply == loaded.tokenizer.decode(output[0, prompt.shape[1]:],
                                            skip_special_tokens=True).strip()


def prompt_inputs(loaded: Served) -> Any:
    return loaded.template.tokenize_prompt(loaded.tokenizer, USER)


def test_stop_strings_cut_the_reply_whole_and_streamed(served):
    url, _ = served
    full = complete(url, max_tokens=8)["choices"][0]["message"]["content"]
    first_word = full.split()[0]
    assert len(first_word) > 2 and len(full) > len(first_word) + 2
    # across two tokens, from the end of the first word: "ed p" in "placed placed"
    stop = full[len(first_word) - 2:len(first_word) + 2]
    expected = full.split(stop)[0].strip()
    assert expected and stop not in expected
    for body in ({"stop": stop}, {"stop": ["never said", stop]}):
        answer = complete(url, max_tokens=8, **body)
        assert answer["choices"][0]["message"]["content"] == expected
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert answer["usage"]["completion_tokens"] < 8  # generation ended at the stop string
        events = stream(url, max_tokens=8, **body)
        assert streamed_text(events) == expected
        assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_a_seed_repeats_a_sampled_reply(served):
    url, _ = served

    def sampled(seed: int) -> str:
        answer = complete(url, max_tokens=8, temperature=1.0, top_k=0, seed=seed)
        return answer["choices"][0]["message"]["content"]

    assert sampled(7) == sampled(7) != sampled(8)


@pytest.mark.parametrize("body, status, param, words", [
    (b'{"messages": [', 400, None, "not valid JSON"),
    ({}, 400, "messages", "Field required"),
    ({"messages": []}, 400, "messages", "at least 1 item"),
    ({"messages": [{"role": "bot", "content": "Hi"}]}, 400, "messages[0].role", "'user'"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content", "Field required"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content", "only text"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be"}]},
     400, "messages", "only the first may be"),
    ({"messages": USER, "n": 0}, 400, "n", "greater than or equal to 1"),
    ({"messages": USER, "top_logprobs": 2}, 400, None, "top_logprobs needs logprobs"),
    ({"messages": USER, "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
    ({"messages": USER, "stop": ""}, 400, "stop", "cannot be empty"),
    ({"messages": USER, "temperature": 3}, 400, "temperature", "less than or equal to 2"),
    ({"messages": USER, "model": "gpt-4o"}, 404, "model", "serves 'tiny-qwen2-chat'"),
], ids=["bad JSON", "no messages", "empty messages", "bad role", "no content",
        "image content", "late system", "n=0", "top_logprobs alone", "max_tokens 0",
        "empty stop", "temperature 3", "unknown model"])
def test_bad_requests_get_openai_errors(served, body, status, param, words):
    url, _ = served
    got, answer = call(url, "/v1/chat/completions", body)
    assert got == status, answer
    assert set(answer["error"]) == ERROR_KEYS
    assert answer["error"]["param"] == param and words in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"
    if status == 404:
        assert answer["error"]["code"] == "model_not_found"


def test_unknown_paths_and_methods_get_openai_errors(served):
    url, _ = served
    for path, method, status in [("/v1/embeddings", "POST", 404),
                                 ("/v1/chat/completions", "GET", 405)]:
        got, answer = call(url, path, {"messages": USER}, method)
        assert got == status and set(answer["error"]) == ERROR_KEYS


def test_a_failed_generation_is_a_500_and_the_server_goes_on(served, monkeypatch):
    url, loaded = served
    working = loaded.model.forward
    calls = []

    def fails_once(*args, **options):
        calls.append(options)
        if len(calls) in (1, 2):
            raise RuntimeError("CUDA out of memory (simulated)")
        return working(*args, **options)

    monkeypatch.setattr(loaded.model, "forward", fails_once)
    status, answer = call(url, "/v1/chat/completions", {"messages": USER, "max_tokens": 4})
    assert status == 500 and set(answer["error"]) == ERROR_KEYS
    assert answer["error"]["type"] == "server_error"
    assert "CUDA out of memory (simulated)" in answer["error"]["message"]
    events = stream(url, max_tokens=4)  # headers already sent: an error event, then [DONE]
    assert "simulated" in events[1]["error"]["message"] and events[2:] == ["[DONE]"]
    assert complete(url, max_tokens=4)["usage"]["completion_tokens"] == 4


def test_an_unexpected_error_is_a_500_in_openai_shape(served, monkeypatch):
    url, loaded = served

    def broken(tokenizer, messages):
        raise KeyError("eos_token")

    monkeypatch.setattr(loaded.template, "tokenize_prompt", broken)
    status, answer = call(url, "/v1/chat/completions", {"messages": USER})
    assert status == 500 and answer["error"]["type"] == "server_error"
    assert answer["error"]["message"] == "Internal error: KeyError: 'eos_token'"
    monkeypatch.undo()
    assert complete(url, max_tokens=2)["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_ends_its_generation_and_frees_the_server(served, stream):
    url, loaded = served
    before = loaded.engine.stats()["generated_tokens"]
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(
        {"messages": USER, "stream": stream, "max_tokens": 400}),
        {"Content-Type": "application/json"})
    if stream:  # gone after the first event
        assert connection.getresponse().readline().startswith(b"data: ")
    else:  # a client timing out before the reply is whole
        time.sleep(0.5)
    connection.close()
    deadline = time.monotonic() + 10
    while loaded.engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loaded.engine.stats()["running"] == 0  # the abandoned generation was ended early
    assert loaded.engine.stats()["generated_tokens"] - before < 400
    assert complete(url, max_tokens=4)["usage"]["completion_tokens"] == 4


def test_prompt_and_reply_must_fit_the_models_window(served):
    url, loaded = served
    window = loaded.model.config.max_position_embeddings

    def prompt_tokens(messages: list[dict]) -> int:
        return loaded.template.tokenize_prompt(loaded.tokenizer, messages)["input_ids"].shape[1]

    def words(count: int) -> list[dict]:
        return [{"role": "user", "content": " word" * count}]

    status, answer = call(url, "/v1/chat/completions", {"messages": words(window)})
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
    assert answer["error"]["message"] == (
        f"This model's maximum context length is {window} tokens. However, your messages "
        f"resulted in {prompt_tokens(words(window))} tokens. Please reduce the length of the "
        "messages.")
    status, answer = call(url, "/v1/chat/completions", {"messages": USER, "max_tokens": window})
    assert status == 400 and answer["error"]["param"] == "messages"
    assert (f"you requested {prompt_tokens(USER) + window} tokens ({prompt_tokens(USER)} in "
            f"the messages, {window} in the completion)") in answer["error"]["message"]
    # without max_tokens, a reply stops where the window ends (the server's default: 8)
    count = next(n for n in range(window - 20, window) if prompt_tokens(words(n)) == window - 3)
    answer = complete(url, messages=words(count))
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["usage"]["total_tokens"] == window


def test_deploy_checks_before_loading_the_model(run_cli, tiny_plugin_file, monkeypatch):
    import importlib.util

    deploy = ("--plugin", tiny_plugin_file, "deploy", "--model-type", TINY_MODEL_TYPE)
    taken = listening_socket("127.0.0.1", 0)
    result = run_cli(*deploy, "--port", taken.getsockname()[1])
    taken.close()
    assert result.exit_code == 1 and "Cannot listen on 127.0.0.1:" in result.stderr
    assert "give another --port" in result.stderr

    result = run_cli(*deploy, "--num-beams", "2")
    assert result.exit_code == 1 and "leave out --num-beams" in result.stderr
    result = run_cli(*deploy, "--query", "Hi")
    assert result.exit_code == 2 and "No such option '--query'" in result.stderr

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else find_spec(name, *a))
    result = run_cli(*deploy)
    assert result.exit_code == 1
    assert "sdk deploy needs uvicorn: pip install 'sft-sdk[deploy]'" in result.stderr
    assert "loading" not in result.stderr


def test_deploy_help_imports_neither_torch_nor_transformers():
    code = ("import sys; from sdk.cli import main; sys.argv = ['sdk', 'deploy', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'uvicorn') "
            "if m in sys.modules]\nassert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--served-model-name" in result.stdout and "--query" not in result.stdout


@dataclasses.dataclass
class Deployed:
    """`sdk deploy` running in a subprocess: its base URL, the name it serves, and its stderr
    (``lines`` not yet read, ``log`` all so far)."""

    process: subprocess.Popen
    url: str
    name: str
    lines: queue.Queue[str]
    log: list[str]
    reader: threading.Thread

    def line_with(self, words: str) -> str:
        """The next stderr line with ``words`` in it (waiting for it)."""
        while words not in (line := self.lines.get(timeout=60)):
            pass
        return line

    def ended(self, timeout: float) -> tuple[int, str]:
        """The exit status and the whole stderr, once the process ends (in ``timeout`` s)."""
        status = self.process.wait(timeout)
        self.reader.join(timeout)
        return status, "".join(self.log)


@contextmanager
def sdk_deploy(*args: Any, env: dict[str, str] | None = None, prefix: Sequence[str] = (),
               cwd: Path | None = None):
    """`sdk ARGS --port 0` (ARGS: global options, `deploy`, its flags) in a subprocess (run
    under the command ``prefix``, with ``env`` and ``cwd``), given once it serves; SIGTERM ends
    it afterwards if it still runs."""
    process = subprocess.Popen([*prefix, sys.executable, "-m", "sdk", *map(str, args),
                                "--port", "0"], env=env, cwd=cwd,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    reader = threading.Thread(target=lambda: [(log.append(line), lines.put(line))
                                              for line in process.stderr], daemon=True)
    reader.start()
    try:
        while not (found := re.search(r"serving '(.+)' at (http://\S+)/v1",
                                      lines.get(timeout=120))):
            assert process.poll() is None, "sdk deploy ended"
        yield Deployed(process, found.group(2), found.group(1), lines, log, reader)
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.slow
def test_sdk_deploy_serves_a_trained_checkpoint(plugin_set, tiny_model_dir, identity_data,
                                                tmp_path, tiny_plugin_file, run_cli):
    trained = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                               identity_data, tmp_path / "output")
    run_dir = trained.result.run_dir
    asked = ["--ckpt-dir", str(run_dir), "--max-new-tokens", "8"]
    with sdk_deploy("--plugin", tiny_plugin_file, "deploy", *asked) as server:
        assert server.name == run_dir.name
        answer = complete(server.url, model=server.name)
    result = run_cli("--plugin", tiny_plugin_file, "infer", *asked, "--query",
                     USER[0]["content"], "--stream", "false")
    assert result.exit_code == 0, result.output
    assert answer["choices"][0]["message"]["content"] == result.stdout.strip() != ""


def test_a_prompt_adapters_virtual_tokens_count_in_the_window(served):
    from peft import PromptTuningConfig, get_peft_model

    from sdk.infer.openai_api import ApiError, ChatCompletionRequest

    _, loaded = served
    model = get_peft_model(loaded.model, PromptTuningConfig(task_type="CAUSAL_LM",
                                                            num_virtual_tokens=30))
    prompted = Served(model, loaded.tokenizer, loaded.template, loaded.defaults, loaded.name)
    window = model.config.max_position_embeddings

    def request(words: int) -> ChatCompletionRequest:
        return ChatCompletionRequest(messages=[{"role": "user", "content": " word" * words}])

    length = loaded.template.tokenize_prompt(
        loaded.tokenizer, request(window - 25).model_dump()["messages"])["input_ids"].shape[1]
    assert length < window <= length + 30  # fits alone, not with the virtual tokens
    with pytest.raises(ApiError, match=f"maximum context length is {window} tokens"):
        prompted.reply(request(window - 25))
