"""The OpenAI surface of `sdk deploy` beyond chat, through the official `openai` client (raw
HTTP only where the client cannot go: a missing key, a browser's CORS preflight): completions,
tools, response_format, the API key, /health and /metrics (read by prometheus_client's own
parser). One server, the tiny model with the qwen2.5 template (it has a tool format)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from test_deploy import serving

from conftest import TINY_MODEL_TYPE
from sdk.config import DeployArguments
from sdk.infer.deploy import api_key, open_to_others, served_model_name
from sdk.infer.load import load_for_inference
from sdk.infer.openai_api import ApiError, ChatCompletionRequest, Served

openai = pytest.importorskip("openai")

KEY = "sk-test-3f9c"
ORIGIN = "https://app.example"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture(scope="module")
def loaded(tiny_plugin_file) -> Served:
    from sdk.plugins import load_plugins

    args = DeployArguments(model_type=TINY_MODEL_TYPE, template="qwen2.5", max_new_tokens=8)
    model, tokenizer, template = load_for_inference(args, load_plugins(
        [str(tiny_plugin_file)]).registry)
    return Served(model, tokenizer, template, args, served_model_name(args))


@pytest.fixture(scope="module")
def server(loaded):
    """The server (API key KEY, CORS for ORIGIN), its URL and an openai client with the key."""
    with serving(loaded, api_key=KEY, cors_origins=[ORIGIN]) as (url, _):
        yield url, loaded, openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET",
        body: Any = None) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def greedy_continuation(loaded: Served, prompt: str, tokens: int) -> str:
    """transformers' own greedy continuation of ``prompt`` (no template), decoded."""
    inputs = loaded.tokenizer(prompt, return_tensors="pt")
    output = loaded.model.generate(**inputs, max_new_tokens=tokens, do_sample=False,
                                   eos_token_id=loaded.stop_ids)
    return loaded.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                   skip_special_tokens=True)


def test_completions_continue_the_prompt_as_transformers_does(server):
    _, loaded, client = server
    prompts = ["The capital of France is", "Once upon a time"]
    one = client.completions.create(model=TINY_MODEL_TYPE, prompt=prompts[0], max_tokens=5,
                                    temperature=0)
    assert one.object == "text_completion" and one.id.startswith("cmpl-")
    assert one.choices[0].text == greedy_continuation(loaded, prompts[0], 5)
    assert one.choices[0].finish_reason == "length"
    prompt_tokens = len(loaded.tokenizer(prompts[0])["input_ids"])
    assert (one.usage.prompt_tokens, one.usage.completion_tokens) == (prompt_tokens, 5)

    both = client.completions.create(model=TINY_MODEL_TYPE, prompt=prompts, max_tokens=5,
                                     temperature=0, echo=True)
    assert [choice.index for choice in both.choices] == [0, 1]
    assert [choice.text for choice in both.choices] == [
        prompt + greedy_continuation(loaded, prompt, 5) for prompt in prompts]
    assert both.usage.completion_tokens == 10

    chunks = list(client.completions.create(
        model=TINY_MODEL_TYPE, prompt=prompts[0], max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == one.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == one.usage

    two_each = client.completions.create(model=TINY_MODEL_TYPE, prompt=prompts, max_tokens=5,
                                         temperature=0, n=2)  # choice i * n + j: prompt i
    assert [choice.index for choice in two_each.choices] == [0, 1, 2, 3]
    assert [choice.text for choice in two_each.choices] == [
        one.choices[0].text] * 2 + [both.choices[1].text.removeprefix(prompts[1])] * 2
    assert two_each.usage.completion_tokens == 20

    with pytest.raises(openai.BadRequestError, match="suffix: not supported"):
        client.completions.create(model=TINY_MODEL_TYPE, prompt="a", suffix="b")
    with pytest.raises(openai.BadRequestError, match="maximum context length") as refused:
        client.completions.create(model=TINY_MODEL_TYPE, prompt="a", max_tokens=10**6)
    assert refused.value.body["param"] == "prompt"


def scripted_reply(loaded: Served, text: str, monkeypatch) -> list[Any]:
    """Make the engine answer ``text`` (then <|im_end|>) whatever it is asked, a token a
    step; gives the prompts it was asked, as token ids."""
    reply = loaded.tokenizer(text + "<|im_end|>")["input_ids"]
    monkeypatch.setattr(loaded.defaults, "max_new_tokens", len(reply))  # room for all of it
    asked = []

    def choose(sequences, logits):
        for sequence in sequences:
            if not sequence.tokens:
                asked.append(sequence.submission.prompt_ids)
        return [reply[len(sequence.tokens)] for sequence in sequences], [None] * len(sequences)

    monkeypatch.setattr(loaded.engine, "choose", choose)
    return asked


def test_a_tool_call_in_the_templates_format_is_tool_calls(server, monkeypatch):
    _, loaded, client = server
    asked = scripted_reply(loaded, 'Let me look.\n<tool_call>\n{"name": "get_weather", '
                           '"arguments": {"city": "Paris"}}\n</tool_call>', monkeypatch)
    answer = client.chat.completions.create(model=TINY_MODEL_TYPE, messages=USER,
                                            tools=[TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # the prompt is what transformers' apply_chat_template writes with these tools
    template = loaded.template.spec.jinja
    assert asked[0] == loaded.tokenizer.apply_chat_template(
        USER, tools=[TOOL], chat_template=template, add_generation_prompt=True, tokenize=True,
        return_dict=False)

    # the call and its result sent back, as a client does
    follow_up = [*USER, choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]
    client.chat.completions.create(model=TINY_MODEL_TYPE, messages=follow_up, tools=[TOOL])
    openai_shaped = [*USER, {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather",
                                                          "arguments": {"city": "Paris"}}}]},
        follow_up[-1]]
    assert asked[1] == loaded.tokenizer.apply_chat_template(
        openai_shaped, tools=[TOOL], chat_template=template, add_generation_prompt=True,
        tokenize=True, return_dict=False)

    chunks = list(client.chat.completions.create(model=TINY_MODEL_TYPE, messages=USER,
                                                 tools=[TOOL], stream=True))
    calls = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name, d.function.arguments) for d in calls] == [
        (0, "get_weather", call.function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # n choices: each read for calls
    two = client.chat.completions.create(model=TINY_MODEL_TYPE, messages=USER, tools=[TOOL],
                                         n=2)
    assert [(c.index, c.finish_reason) for c in two.choices] == [(0, "tool_calls"),
                                                                 (1, "tool_calls")]

    # tool_choice none: no tools in the prompt, the reply is text
    text = client.chat.completions.create(model=TINY_MODEL_TYPE, messages=USER, tools=[TOOL],
                                          tool_choice="none").choices[0]
    assert text.finish_reason == "stop" and text.message.tool_calls is None
    assert "<tool_call>" in text.message.content and len(asked[-1]) < len(asked[0])


def test_requests_the_server_cannot_honour_are_refused(server, loaded):
    _, _, client = server
    for response_format in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object"}}}):
        with pytest.raises(openai.BadRequestError, match="cannot promise JSON") as refused:
            client.chat.completions.create(model=TINY_MODEL_TYPE, messages=USER,
                                           response_format=response_format)
        assert refused.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError, match="cannot be forced"):
        client.chat.completions.create(model=TINY_MODEL_TYPE, messages=USER, tools=[TOOL],
                                       tool_choice={"type": "function",
                                                    "function": {"name": "get_weather"}})
    # a template without a tool format: tools are a 400
    from sdk.plugins import load_plugins
    from sdk.templates.engine import Template

    plain = Served(loaded.model, loaded.tokenizer, Template.for_tokenizer(
        load_plugins().registry.get("templates", "chatml"), loaded.tokenizer),
        loaded.defaults, loaded.name)
    with pytest.raises(ApiError, match="no tool-call format") as refused:
        plain.reply(ChatCompletionRequest(messages=USER, tools=[TOOL]))
    assert refused.value.status == 400 and refused.value.param == "tools"


def test_the_api_key_guards_v1_and_health_stays_open(server):
    url, _, _ = server
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    status, _, body = get(url + "/v1/chat/completions", {"Content-Type": "application/json"},
                          "POST", {"messages": USER})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, _, body = get(url + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_cors_lets_only_the_given_origins_in(server):
    url, _, _ = server
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    status, headers, _ = get(url + "/v1/chat/completions", {"Origin": ORIGIN, **preflight},
                             "OPTIONS")
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    status, headers, _ = get(url + "/v1/models", {"Origin": "https://elsewhere.example",
                                                  **preflight}, "OPTIONS")
    assert status == 400 and "access-control-allow-origin" not in headers


def test_metrics_count_requests_tokens_and_latency(server):
    from prometheus_client.parser import text_string_to_metric_families

    url, _, client = server

    def samples() -> dict[tuple[str, tuple], float]:
        status, headers, body = get(url + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body.decode())
                for s in family.samples}

    before = samples()
    answer = client.chat.completions.create(model=TINY_MODEL_TYPE, messages=USER, max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    after = samples()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    chat = "/v1/chat/completions"
    assert grew("sft_sdk_requests_total", endpoint=chat, status="200") == 1
    assert grew("sft_sdk_requests_total", endpoint=chat, status="404") == 1
    assert grew("sft_sdk_prompt_tokens_total") == answer.usage.prompt_tokens
    assert grew("sft_sdk_completion_tokens_total") == answer.usage.completion_tokens == 3
    assert grew("sft_sdk_request_duration_seconds_count", endpoint=chat) == 2
    assert after[("sft_sdk_requests_in_flight", ())] == 1  # the /metrics request itself
    assert after[("sft_sdk_generations", (("state", "waiting"),))] == 0


def test_the_key_comes_from_the_flag_else_the_environment(monkeypatch):
    monkeypatch.setenv("SFT_SDK_API_KEY", "from-env")
    assert api_key(DeployArguments()) == "from-env"
    assert api_key(DeployArguments(api_key="from-flag")) == "from-flag"
    monkeypatch.delenv("SFT_SDK_API_KEY")
    assert api_key(DeployArguments()) is None
    # the warning without a key is for addresses other machines reach
    assert [open_to_others(host) for host in ("0.0.0.0", "192.168.1.5", "127.0.0.1", "::1",
                                              "localhost")] == [True, True, False, False, False]
