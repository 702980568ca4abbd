"""Issue 19, item 5: `sdk deploy` stops as a process supervisor expects. SIGTERM or Ctrl-C end
every generation at its next token (a stream gets an error event, then [DONE]; a whole reply,
and a request waiting for its turn, a 503), the process exits within seconds without a
traceback, and a second signal ends it at once. A body not sent as JSON is a 415."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import textwrap
import threading
import time
from typing import Any

import pytest
import test_deploy
from test_deploy import ERROR_KEYS, USER, call, sdk_deploy, serving, stream

from sdk.infer import openai_api
from sdk.infer.openai_api import ApiError, ChatCompletionRequest, Served

# test_deploy.py's fixtures, here too: the tiny model as `sdk deploy` loads it, and its server
loaded, served = test_deploy.loaded, test_deploy.served

LONG = 480  # tokens: a reply still generating when the test stops the server


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """(status, JSON answer) of a POST to /v1/chat/completions with exactly ``headers``."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/chat/completions", body, headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def assert_shutting_down(error: dict[str, Any]) -> None:
    assert set(error) == ERROR_KEYS and error["code"] == "server_shutting_down"
    assert error["type"] == "server_error"
    assert "shutting down" in error["message"] and "send the request again" in error["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          None], ids=["text", "form (curl -d)", "none"])
def test_a_body_not_sent_as_json_is_a_415(served, content_type):
    url, _ = served
    body = json.dumps({"messages": USER, "max_tokens": 1}).encode()
    status, answer = post(url, body, {"Content-Type": content_type} if content_type else {})
    assert status == 415 and set(answer["error"]) == ERROR_KEYS
    assert answer["error"]["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in answer["error"]["message"]
    came = f"as {content_type}" if content_type else "without one"
    assert f"(this one came {came})" in answer["error"]["message"]
    status, answer = post(url, body, {"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200 and answer["usage"]["completion_tokens"] == 1


@pytest.fixture
def slowed(loaded) -> list[float]:
    """``loaded``'s model at 20 ms a token, so a long reply is still generating when a test
    stops it; gives the start time of each forward pass."""
    forwards: list[float] = []

    def slow(*_: Any) -> None:
        forwards.append(time.monotonic())
        time.sleep(0.02)

    hook = loaded.model.register_forward_pre_hook(slow)
    yield forwards
    hook.remove()


def own(loaded: Served) -> Served:
    """``loaded``'s model with an engine and stop flag of its own (a server to stop), one
    reply at a time: a second request waits for its turn."""
    return Served(loaded.model, loaded.tokenizer, loaded.template, loaded.defaults, loaded.name,
                  max_concurrency=1)


def test_the_stop_flag_ends_a_generation_at_the_next_token(loaded, slowed):
    server = own(loaded)
    pieces = iter(server.reply(ChatCompletionRequest(messages=USER, max_tokens=LONG)))
    assert next(pieces)
    server.stopping.set()
    at_stop = len(slowed)
    with pytest.raises(ApiError) as stopped:
        list(pieces)
    assert len(slowed) <= at_stop + 1
    assert stopped.value.status == 503
    assert_shutting_down(stopped.value.body()["error"])
    with pytest.raises(ApiError, match="shutting down"):  # and no other one starts
        list(server.reply(ChatCompletionRequest(messages=USER, max_tokens=LONG)))
    assert len(slowed) <= at_stop + 1


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_replies_in_progress_at_shutdown_end_with_an_error(capsys, loaded, slowed, streamed):
    answers: dict[str, Any] = {}

    def ask(key: str) -> None:
        answers[key] = (stream(url, max_tokens=LONG) if streamed else
                        call(url, "/v1/chat/completions", {"messages": USER, "max_tokens": LONG}))

    with serving(own(loaded)) as (url, server):
        asking = [threading.Thread(target=ask, args=(key,)) for key in ("running", "waiting")]
        asking[0].start()
        while len(slowed) < 3:
            time.sleep(0.01)
        asking[1].start()  # waits for its turn
        while not server.served.engine.stats()["waiting"]:
            time.sleep(0.01)
        at_stop, stopped = len(slowed), time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        for thread in asking:
            thread.join(10)
        assert time.monotonic() - stopped < 5
        assert len(slowed) <= at_stop + 1
    if streamed:
        running, waiting = answers["running"], answers["waiting"]
        assert running[-1] == waiting[-1] == "[DONE]"
        assert any(event["choices"][0]["delta"].get("content") for event in running[1:-2])
        assert_shutting_down(running[-2]["error"])
        assert waiting[0]["choices"][0]["delta"]["role"] == "assistant"
        assert len(waiting) == 3
        assert_shutting_down(waiting[1]["error"])
    else:
        for status, answer in answers.values():
            assert status == 503
            assert_shutting_down(answer["error"])
    stderr = capsys.readouterr().err
    assert "[sdk] SIGTERM: stopping; replies in progress end now with an error" in stderr
    assert "Traceback" not in stderr


def test_a_request_still_open_after_the_grace_time_is_cut_off_with_a_503(capsys, loaded,
                                                                         monkeypatch):
    monkeypatch.setattr(openai_api, "GRACE_SECONDS", 0.5)
    with serving(own(loaded)) as (url, server):
        host, port = url.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)), timeout=10)
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: "
                       b"application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\": ")
        time.sleep(0.3)  # the rest of the body never comes
        server.handle_exit(signal.SIGTERM, None)
        response = http.client.HTTPResponse(client)
        response.begin()
        assert response.status == 503
        assert_shutting_down(json.loads(response.read())["error"])
    stderr = capsys.readouterr().err
    assert ("[sdk] POST /v1/chat/completions: still open 0.5 s after the server began to "
            "stop; cut off.") in stderr
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def slow_plugin(tiny_model_dir, tmp_path_factory):
    """A plugin registering `tiny-slow`: the tiny model at 50 ms a token, so that `sdk deploy`
    in a subprocess is still generating a long reply when the test signals it."""
    path = tmp_path_factory.mktemp("slow-plugin") / "slow_plugin.py"
    path.write_text(textwrap.dedent(f"""
        import time

        from sdk import hookimpl
        from sdk.specs import ModelSpec

        def load(spec, options):
            from sdk.models.loader import load_pretrained
            model, tokenizer = load_pretrained({str(tiny_model_dir)!r}, options)
            model.register_forward_pre_hook(lambda *_: time.sleep(0.05))
            return model, tokenizer

        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="tiny-slow", family="tiny", template="chatml",
                               loader=load))
    """))
    return path


def streaming(url: str) -> http.client.HTTPResponse:
    """A long streamed reply, read up to its first text: the generation is under way."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(
        {"messages": USER, "max_tokens": LONG, "stream": True}),
        {"Content-Type": "application/json"})
    response = connection.getresponse()
    while b'"content": " ' not in response.readline():
        pass
    return response


@pytest.mark.slow
def test_sigterm_during_a_long_stream_ends_it_and_the_server_in_seconds(slow_plugin):
    with sdk_deploy("--plugin", slow_plugin, "deploy", "--model-type", "tiny-slow") as server:
        response = streaming(server.url)
        waiting: list[Any] = []
        asking = threading.Thread(target=lambda: waiting.append(call(
            server.url, "/v1/chat/completions", {"messages": USER, "max_tokens": LONG})))
        asking.start()
        time.sleep(0.3)
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        rest = [block.removeprefix("data: ") for block in
                response.read().decode().split("\n\n") if block]
        asking.join(10)
        assert time.monotonic() - stopped < 5  # at 50 ms a token, not the 24 s of the reply
        assert rest[-1] == "[DONE]"
        assert_shutting_down(json.loads(rest[-2])["error"])
        assert waiting[0][0] == 503
        assert_shutting_down(waiting[0][1]["error"])
        status, stderr = server.ended(timeout=20)
    assert status == 0, stderr
    assert "[sdk] SIGTERM: stopping; replies in progress end now with an error" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_a_second_ctrl_c_ends_sdk_deploy_at_once(slow_plugin):
    with sdk_deploy("--plugin", slow_plugin, "deploy", "--model-type", "tiny-slow") as server:
        response = streaming(server.url)
        host, port = server.url.removeprefix("http://").split(":")
        body_never_ends = socket.create_connection((host, int(port)), timeout=10)
        body_never_ends.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
                                b"Content-Type: application/json\r\nContent-Length: 99\r\n\r\n")
        time.sleep(0.3)
        server.process.send_signal(signal.SIGINT)
        server.line_with("[sdk] SIGINT: stopping")  # the stop waits for that body
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        status, stderr = server.ended(timeout=10)
        assert time.monotonic() - stopped < 3
        response.close()
        body_never_ends.close()
    assert status == -signal.SIGINT, stderr
    assert "[sdk] SIGINT again: stopped at once." in stderr
    assert "Traceback" not in stderr and "already executing" not in stderr
