"""The HTTP API of `sdk deploy`: OpenAI's ``GET /v1/models``, ``POST /v1/chat/completions``
(tool calls included) and ``POST /v1/completions`` (whole, or streamed as server-sent events)
over one loaded model; ``GET /health`` and ``GET /metrics`` (Prometheus) beside them; an API
key and CORS when asked for. Requests are generated together by continuous batching
(sdk/infer/engine.py): up to --max-concurrency at once, up to --max-queue more waiting, and
past that a 429 with Retry-After.

Replies are what `sdk infer` answers (the same prompt encoding, decoding options, stop words
and trimming: sdk/infer/chat.py); a streamed reply holds back text that a stop word may still
cut, so its chunks joined are the whole reply. A completion is the model's own continuation of
the prompt text (no template, whitespace kept). Errors are OpenAI's JSON
``{"error": {"message", "type", "param", "code"}}``.

`Server` stops it as a supervisor expects: the first SIGTERM or Ctrl-C ends every generation
at its next token (a stream gets an error event, then ``[DONE]``; a whole reply a 503), a
second one ends the process at once."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import os
import secrets
import signal
import string
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from types import FrameType
from typing import Any, Literal, TypeVar

import anyio
import click
import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from sdk.config import GenerationArguments
from sdk.infer.chat import generation_options, positions_taken
from sdk.infer.engine import Engine, QueueFull, Sampling, TokenLogprob
from sdk.infer.server_metrics import Measured, ServerMetrics
from sdk.infer.stops import cut_at_stop, finish_reply, stop_tokens
from sdk.models.rope import context_window
from sdk.specs import resolve_callable
from sdk.templates.engine import Template

# Temperatures below this are greedy decoding (as in vLLM): dividing the logits by less
# overflows them, and sampling from the overflow fails (on a GPU, with a device-side assert).
GREEDY_BELOW = 1e-5
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               404: "invalid_request_error", 405: "invalid_request_error",
               415: "invalid_request_error", 429: "requests", 500: "server_error",
               503: "server_error"}
# The most replies (n) and alternatives of a token (top_logprobs) a request may ask for, as
# OpenAI's API limits them
MAX_CHOICES, MAX_TOP_LOGPROBS = 128, 20
# What a 429 asks a client to wait before it retries, in seconds
RETRY_AFTER_SECONDS = 1
# How long a stopping server waits for its connections to close before it cuts them: the
# generations have ended at their next token, so this is only for clients slow to send or read.
GRACE_SECONDS = 3


RequestModel = TypeVar("RequestModel", bound=BaseModel)


class ApiError(Exception):
    """A request the API answers with OpenAI's error JSON and ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def server_stopping() -> ApiError:
    return ApiError(503, "The server is shutting down (SIGTERM or Ctrl-C), so this reply was "
                    "ended; send the request again once it is back.", code="server_shutting_down")


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    # None: an assistant message that only calls tools (checked after the fields above)
    content: str | None = Field(None, validate_default=True)

    @field_validator("content", mode="before")
    @classmethod
    def text_of_parts(cls, content: Any) -> Any:
        """OpenAI's content parts, ``[{"type": "text", "text": ...}]``, as one text."""
        if isinstance(content, list):
            if not all(isinstance(part, dict) and part.get("type") == "text"
                       and isinstance(part.get("text"), str) for part in content):
                raise ValueError('only text is understood: give a string, or parts '
                                 '{"type": "text", "text": "..."}')
            return "".join(part["text"] for part in content)
        return content

    @field_validator("content")
    @classmethod
    def some_content(cls, content: str | None, info: ValidationInfo) -> str | None:
        if content is None and not (info.data.get("role") == "assistant"
                                    and info.data.get("tool_calls")):
            raise ValueError("Field required (only an assistant message that calls tools may "
                             "leave it out)")
        return content


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields that chat completions and completions share; ``top_k`` and
    ``repetition_penalty`` are extensions (as in vLLM). Other fields are ignored."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0, lt=2**32)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)

    @field_validator("stop")
    @classmethod
    def no_empty_stop(cls, stop: str | list[str] | None) -> list[str]:
        words = [stop] if isinstance(stop, str) else stop or []
        if "" in words:
            raise ValueError("a stop string cannot be empty")
        return words

    @property
    def reply_tokens(self) -> int | None:
        """The most tokens the reply may have, if the request says."""
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def token_alternatives(self) -> int | None:
        """How many likeliest alternatives to give with each token's logprob; None: no
        logprobs."""
        return None

    def decoding(self, defaults: GenerationArguments) -> GenerationArguments:
        """The server's decoding flags with this request's settings. A temperature of 0 (below
        GREEDY_BELOW) is greedy decoding, any other samples; without one, the server's
        --do-sample holds."""
        changes: dict[str, Any] = {}
        if self.reply_tokens:
            changes["max_new_tokens"] = self.reply_tokens
        if self.temperature is not None:
            changes["do_sample"] = self.temperature >= GREEDY_BELOW
            if changes["do_sample"]:
                changes["temperature"] = self.temperature
        if self.top_p is not None:
            changes["top_p"] = self.top_p
        if self.top_k is not None:
            changes["top_k"] = max(self.top_k, 0)  # -1 (vLLM's "all") is our 0
        if self.repetition_penalty is not None:
            changes["repetition_penalty"] = self.repetition_penalty
        return dataclasses.replace(defaults, **changes)


class ChatCompletionRequest(SamplingRequest):
    """OpenAI's chat completion request. ``tools`` reach the template (which shows them to
    the model) and the reply's calls are read back as the template writes them;
    ``tool_choice`` "none" leaves the tools out."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def top_logprobs_with_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @field_validator("tool_choice")
    @classmethod
    def no_forced_call(cls, choice: Any) -> Any:
        if isinstance(choice, dict):
            raise ValueError("a named function cannot be forced (the server does not constrain "
                             "what the model writes); give 'auto' or 'none'")
        return choice

    @field_validator("response_format")
    @classmethod
    def text_format(cls, response_format: dict[str, Any] | None) -> dict[str, Any] | None:
        kind = (response_format or {}).get("type", "text")
        if kind != "text":
            raise ValueError(f"type {kind!r} is not supported: the server does not constrain "
                             "what the model writes, so it cannot promise JSON. Leave "
                             "response_format out (or give type 'text') and ask for JSON in "
                             "the messages")
        return response_format

    @property
    def reply_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def token_alternatives(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def calls_tools(self) -> bool:
        """Whether the tools reach the model, and its reply is read for calls."""
        return bool(self.tools) and self.tool_choice != "none"

    def conversation(self) -> list[dict[str, str]]:
        """The messages as sdk's templates take them (tool calls, results and schemas as
        JSON text: sdk/data/formats.py reads OpenAI's shapes)."""
        from sdk.data.formats import messages_to_messages

        try:
            return messages_to_messages({
                "messages": [message.model_dump(exclude_none=True) for message in self.messages],
                "tools": self.tools if self.calls_tools else None})
        except ValueError as error:
            raise ApiError(400, str(error), "messages") from None


class CompletionRequest(SamplingRequest):
    """OpenAI's (legacy) completion request: the model continues each prompt as it is."""

    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("logprobs", "suffix", "best_of")
    @classmethod
    def not_honoured(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not (info.field_name == "best_of" and value == 1):
            raise ValueError("not supported by this server; leave it out")
        return value

    @field_validator("prompt")
    @classmethod
    def some_text(cls, prompt: str | list[str]) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not prompts or "" in prompts:
            raise ValueError("give the text to continue (a string, or a list of strings); an "
                             "empty one has nothing to continue")
        return prompts


def request_error(error: ValidationError) -> ApiError:
    """The first thing wrong with a request, naming its field as OpenAI does
    (``messages[0].role``)."""
    first = error.errors()[0]
    param = ""
    for part in first["loc"]:
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param or None)


def settled_text(raw: str, stop_strings: Sequence[str], trimmed: bool = True) -> str:
    """The start of ``finish_reply(raw + anything)`` that more text cannot change: the text
    before a stop word, less an ending that may begin one, without surrounding whitespace
    (``trimmed``; else as generated, as a completion is)."""
    if any(word in raw for word in stop_strings):
        return ended_text(raw, stop_strings, trimmed)
    hold = max((size for word in stop_strings for size in range(1, len(word))
                if raw.endswith(word[:size])), default=0)
    ready = raw[:len(raw) - hold]
    return ready.strip() if trimmed else ready


def ended_text(raw: str, stop_strings: Sequence[str], trimmed: bool = True) -> str:
    """A whole reply's text: up to its first stop word, ``trimmed`` as `sdk infer` trims it."""
    return (finish_reply if trimmed else cut_at_stop)(raw, list(stop_strings))


@dataclasses.dataclass(frozen=True)
class Delta:
    """What a reply adds to its choice ``index``: text, with the logprobs of its tokens (None:
    not asked for), and on the choice's last delta its finish reason."""

    index: int
    text: str
    logprobs: list[dict[str, Any]] | None
    finish_reason: str | None = None


@dataclasses.dataclass
class Choice:
    """One of a reply's ``n`` texts: what was sent of it so far, its token logprobs (OpenAI's
    entries) not yet sent, and once it ends its text, finish reason and generated token ids
    (the end token too, as vLLM counts them)."""

    sent: str = ""
    text: str = ""
    finish_reason: str = "length"
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unsent: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def advanced(self, index: int, ready: str, with_logprobs: bool,
                 ended: bool) -> Iterator[Delta]:
        """The Delta that ``ready`` (the choice's text that can be sent) adds, if any; an
        ended choice always gives one, with its finish reason."""
        if len(ready) > len(self.sent) or ended:
            sent = self.unsent if with_logprobs else None
            self.logprobs += self.unsent
            yield Delta(index, ready[len(self.sent):], sent,
                        self.finish_reason if ended else None)
            self.sent, self.unsent = ready, []


@dataclasses.dataclass
class Reply:
    """One request's generation of ``n`` choices: ``start()`` queues it with the server's
    engine (a 429 when the queue is full); iterating gives its Deltas as the texts grow (a
    choice's pieces joined: the reply `sdk infer` gives; not ``trimmed``: the text as
    generated, up to a stop string, as a completion is); afterwards ``choices`` hold the
    texts, finish reasons and generated token ids."""

    served: Served
    prompt_ids: list[int]
    sampling: Any  # the engine's Sampling (VllmReply: vLLM's SamplingParams)
    stop_strings: list[str]
    n: int = 1
    with_logprobs: bool = False
    trimmed: bool = True
    choices: list[Choice] = dataclasses.field(default_factory=list)
    # set: end the generation at the next token (its reader has gone, or the server stops)
    gone: threading.Event = dataclasses.field(default_factory=threading.Event)
    submission: Any = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        """Every generated token of every choice, the end tokens too (as vLLM counts)."""
        return sum(len(choice.tokens) for choice in self.choices)

    def start(self) -> None:
        """Queue the generation, once: a 503 when the server stops, a 429 when it is busy."""
        if self.choices:
            return
        if self.served.stopping.is_set():
            raise server_stopping()
        self.submit()
        self.choices = [Choice() for _ in range(self.n)]

    def submit(self) -> None:
        assert self.served.engine is not None
        try:
            self.submission = self.served.engine.submit(self.prompt_ids, self.sampling, self.n,
                                                        self.gone)
        except QueueFull as error:
            raise ApiError(429, f"The server is busy ({error} replies, its --max-concurrency "
                           f"and --max-queue); retry after {RETRY_AFTER_SECONDS} s.",
                           code="rate_limit_exceeded",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None

    def __iter__(self) -> Iterator[Delta]:
        self.start()
        try:
            for step in self.submission.steps():
                if step.finish_reason == "aborted":
                    raise server_stopping()
                choice = self.choices[step.index]
                if step.token_id is not None:
                    choice.tokens.append(step.token_id)
                    if step.logprob is not None:
                        choice.unsent.append(self.served.logprob_entry(step.logprob))
                ended = step.finish_reason is not None
                if ended:
                    choice.text = ready = ended_text(step.text, self.stop_strings, self.trimmed)
                    choice.finish_reason = "stop" if step.finish_reason == "stop" else "length"
                else:
                    ready = settled_text(step.text, self.stop_strings, self.trimmed)
                yield from choice.advanced(step.index, ready, self.with_logprobs, ended)
        finally:  # a reader that left: end the generation now, not at max_tokens
            self.gone.set()

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclasses.dataclass
class Served:
    """The model a server answers with, what every request shares, and the engine that
    generates their replies together (at most ``max_concurrency`` at once, ``max_queue``
    more waiting)."""

    model: Any
    tokenizer: Any
    template: Template
    defaults: GenerationArguments
    name: str
    max_concurrency: int = 16
    max_queue: int = 64
    # set: the server stops; generations end at their next token, and no other one starts
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    engine: Engine | None = dataclasses.field(init=False, default=None)
    metrics: ServerMetrics = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.engine = self.started_engine()
        self.metrics = ServerMetrics(self.queue_stats)

    def started_engine(self) -> Engine | None:
        """The continuous-batching engine that generates the replies."""
        return Engine(self.model, self.tokenizer, self.max_concurrency, self.max_queue,
                      self.stopping)

    @property
    def stop_ids(self) -> list[int]:
        return stop_tokens(self.template, self.tokenizer)[0]

    def check_model(self, asked: str | None) -> None:
        if asked is not None and asked != self.name:
            raise ApiError(404, f"The model '{asked}' does not exist; this server serves "
                           f"'{self.name}' (GET /v1/models).", "model", "model_not_found")

    def reply(self, request: ChatCompletionRequest) -> Reply:
        """The generation ``request`` asks for, its prompt encoded (a conversation the
        template refuses is a 400, and so are tools it has no call format for)."""
        self.check_model(request.model)
        if request.calls_tools and self.template.spec.tool_calls is None:
            raise ApiError(400, f"tools: template '{self.template.spec.name}' of this model "
                           "has no tool-call format the server can read; serve a model whose "
                           "template has one (`sdk templates --json`: \"tool_calls\": true), "
                           "or leave out tools.", "tools")
        try:
            inputs = self.template.tokenize_prompt(self.tokenizer, request.conversation())
        except ValueError as error:
            raise ApiError(400, f"messages: {error}", "messages") from None
        return self.generation(inputs, request, "messages")

    def completion(self, request: CompletionRequest, prompt: str) -> Reply:
        """The generation that continues ``prompt`` as it is (no template; the tokenizer's
        own special tokens, e.g. a BOS, as vLLM encodes it), its text kept as generated."""
        self.check_model(request.model)
        inputs = self.tokenizer(prompt, return_tensors="pt")
        return dataclasses.replace(self.generation(inputs, request, "prompt"), trimmed=False)

    def generation(self, inputs: Any, request: SamplingRequest, param: str) -> Reply:
        """A reply to the encoded prompt ``inputs`` with ``request``'s settings (a prompt and
        reply past the model's window: a 400 naming ``param``)."""
        prompt_ids = inputs["input_ids"][0].tolist()
        options, stop_strings = generation_options(self.template, self.tokenizer,
                                                   request.decoding(self.defaults))
        room = self.room_for_reply(positions_taken(self.model, len(prompt_ids)),
                                   request.reply_tokens, param)
        options["max_new_tokens"] = min(options["max_new_tokens"], room)
        stop_strings = [*stop_strings, *(request.stop or [])]
        alternatives = request.token_alternatives
        sampling = Sampling.of(options, stop_strings=tuple(stop_strings), seed=request.seed,
                               logprobs=alternatives)
        return Reply(self, prompt_ids, sampling, stop_strings, request.n,
                     with_logprobs=alternatives is not None)

    def logprob_entry(self, logprob: TokenLogprob) -> dict[str, Any]:
        """OpenAI's entry for a token of ``logprobs.content``."""
        def token(token_id: int, value: float) -> dict[str, Any]:
            text = self.tokenizer.decode([token_id])
            return {"token": text, "logprob": value, "bytes": list(text.encode())}

        return {**token(logprob.token_id, logprob.logprob),
                "top_logprobs": [token(*pair) for pair in logprob.top]}

    def window(self) -> int | None:
        """The model's window (positions for a prompt and its reply), if known."""
        return context_window(self.model.config)

    def room_for_reply(self, prompt_tokens: int, asked: int | None,
                       param: str = "messages") -> int:
        """How many tokens a reply may have after a prompt of ``prompt_tokens``: at most
        what fits the model's window (past it a model answers garbage). A prompt that
        leaves no room, or ``asked`` tokens that do not fit, is a 400 as in vLLM."""
        window = self.window()
        if window is None:
            return asked or self.defaults.max_new_tokens
        if prompt_tokens >= window or (asked and prompt_tokens + asked > window):
            requested = (f"you requested {prompt_tokens + asked} tokens ({prompt_tokens} in "
                         f"the {param}, {asked} in the completion)" if asked else
                         f"your {param} resulted in {prompt_tokens} tokens")
            raise ApiError(400, f"This model's maximum context length is {window} tokens. "
                           f"However, {requested}. Please reduce the length of the {param}"
                           f"{' or completion' if asked else ''}.", param,
                           "context_length_exceeded")
        return window - prompt_tokens

    def called_tools(self, choice: Choice, stop_strings: Sequence[str]
                     ) -> tuple[str | None, list[dict[str, Any]]]:
        """The content and tool calls of a whole reply's ``choice``, read as the template
        writes a call (its text with special tokens, such as Mistral's [TOOL_CALLS]); a
        reply that calls nothing is its text and no calls."""
        tokens = choice.tokens
        if tokens[-1:] and tokens[-1] in self.stop_ids:
            tokens = tokens[:-1]
        text = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=False),
                           list(stop_strings))
        content, calls = resolve_callable(self.template.spec.tool_calls)(text)
        if not calls:
            return choice.text, []
        return content.strip() or None, [
            {"id": call_id(), "type": "function", "function": call} for call in calls]

    def queue_stats(self) -> dict[str, int]:
        """Generations running and waiting for a place in the engine's batch, for /metrics."""
        assert self.engine is not None
        stats = self.engine.stats()
        return {"running": stats["running"], "waiting": stats["waiting"]}


def call_id() -> str:
    """A tool call's id: 9 letters and digits, the only shape Mistral's templates take back."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))


def create_app(served: Served, api_key: str | None = None,
               cors_origins: Sequence[str] = ()) -> FastAPI:
    """The API over ``served``. With ``api_key`` the /v1 endpoints want it as a bearer
    token (/health and /metrics stay open, as vLLM's); ``cors_origins``: the web origins
    whose pages may call it (none: browsers keep other sites' pages out)."""
    app = FastAPI(title="sft-sdk", description=f"OpenAI-compatible API serving {served.name}")
    if api_key:
        app.add_middleware(ApiKeyRequired, key=api_key)
    if cors_origins:  # added last: outside the key check, so a browser's preflight passes
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail)).response()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # starlette still logs the traceback on the server's console
        return ApiError(500, f"Internal error: {type(error).__name__}: {error}").response()

    @app.get("/health")
    async def health() -> JSONResponse:
        if served.stopping.is_set():
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok", "model": served.name})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(served.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served.name, "object": "model",
                                            "created": served.created, "owned_by": "sft-sdk"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        asked = await read_request(request, ChatCompletionRequest)
        reply = served.reply(asked)
        reply.start()  # a full queue is a 429 before any event is sent
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": served.name}
        if asked.stream:
            return StreamingResponse(closed_when_done(server_sent(chat_chunks(
                served, reply, head, asked.include_usage, asked.calls_tools))),
                media_type="text/event-stream")
        await generated_whole(reply, request)
        choices = []
        for index, choice in enumerate(reply.choices):
            message, finish_reason = answer(served, reply, choice, asked.calls_tools)
            choices.append({"index": index, "message": message, "logprobs": {
                "content": choice.logprobs} if reply.with_logprobs else None,
                "finish_reason": finish_reason})
        return {**head, "choices": choices, "usage": reply.usage()}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        asked = await read_request(request, CompletionRequest)
        prompts = asked.prompt
        replies = [served.completion(asked, prompt) for prompt in prompts]  # all checked first
        try:
            for reply in replies:
                reply.start()
        except ApiError:  # busy: none of them is generated
            for reply in replies:
                reply.gone.set()
            raise
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": served.name}
        echoed = prompts if asked.echo else [""] * len(prompts)
        if asked.stream:
            return StreamingResponse(closed_when_done(server_sent(completion_chunks(
                served, replies, echoed, head, asked.include_usage))),
                media_type="text/event-stream")
        for reply in replies:
            await generated_whole(reply, request)
        return {**head, "choices": [
            {"index": number * asked.n + index, "text": echo + choice.text, "logprobs": None,
             "finish_reason": choice.finish_reason}
            for number, (echo, reply) in enumerate(zip(echoed, replies, strict=True))
            for index, choice in enumerate(reply.choices)],
            "usage": total_usage(replies)}

    return app


async def read_request(request: Request, model: type[RequestModel]) -> RequestModel:
    """The request's JSON body, validated (a 415 if it is not sent as JSON, a 400 naming the
    first field that is wrong)."""
    # Only JSON is read: a body sent as text or a form (curl -d without -H) is a client's
    # mistake to show, not one to parse as JSON all the same.
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        came = f"as {media_type}" if media_type else "without one"
        raise ApiError(415, "Send the request body as JSON with the header Content-Type: "
                       f"application/json (this one came {came}).",
                       code="unsupported_media_type")
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"The request body is not valid JSON: {error}") from None
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise request_error(error) from None


def answer(served: Served, reply: Reply, choice: Choice,
           calls_tools: bool) -> tuple[dict[str, Any], str]:
    """The assistant message of a whole ``reply``'s ``choice`` and its finish reason: with
    tools, the calls it makes (finish reason "tool_calls")."""
    if calls_tools:
        content, calls = served.called_tools(choice, reply.stop_strings)
        if calls:
            return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": choice.text}, choice.finish_reason


def total_usage(replies: Sequence[Reply]) -> dict[str, int]:
    usages = [reply.usage() for reply in replies]
    return {key: sum(usage[key] for usage in usages) for key in usages[0]}


async def generated_whole(reply: Reply, request: Request) -> None:
    """Generate ``reply`` in a worker thread. A client that disconnects meanwhile, or the
    server stopping (Ctrl-C: this task is cancelled), ends the generation at the next token:
    else the thread holds the lock, and keeps the process alive, until max_tokens."""
    work = asyncio.ensure_future(run_in_threadpool(lambda: list(reply)))
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=0.2)
            if not work.done() and await request.is_disconnected():
                reply.gone.set()
    finally:
        reply.gone.set()
    try:
        work.result()
    except ApiError:
        raise
    except Exception as error:
        raise generation_failed(error) from None
    reply.served.metrics.generated(reply.prompt_tokens, reply.completion_tokens)


def generation_failed(error: Exception) -> ApiError:
    click.echo(f"[sdk] generation failed: {type(error).__name__}: {error}", err=True)
    return ApiError(500, f"The generation failed: {type(error).__name__}: {error}")


def server_sent(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    """``chunks`` as server-sent events, then ``[DONE]``; a failure, or the server stopping,
    is an ``error`` event before it."""
    try:
        for chunk in chunks:
            yield event(chunk)
    except ApiError as error:
        yield event(error.body())
    except Exception as error:
        yield event(error_body(500, generation_failed(error).message))
    finally:
        chunks.close()  # a reader that left: its generation ends now
    yield "data: [DONE]\n\n"


def chat_chunks(served: Served, reply: Reply, head: dict[str, Any], include_usage: bool,
                calls_tools: bool) -> Iterator[dict[str, Any]]:
    """A streamed chat reply: OpenAI's chat.completion.chunk objects, each with its choice's
    index (a choice's text, then its finish reason). With tools, the reply is sent once whole
    (a call is known only then): each choice's content, then its calls."""
    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None,
              logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {**head, "object": "chat.completion.chunk", "choices": [{
            "index": index, "delta": delta,
            "logprobs": None if logprobs is None else {"content": logprobs},
            "finish_reason": finish_reason}]}

    for index in range(reply.n):
        yield chunk(index, {"role": "assistant", "content": ""})
    if calls_tools:
        for _ in reply:
            pass
        for index, choice in enumerate(reply.choices):
            message, finish_reason = answer(served, reply, choice, True)
            if message["content"]:
                yield chunk(index, {"content": message["content"]},
                            logprobs=choice.logprobs if reply.with_logprobs else None)
            if "tool_calls" in message:
                yield chunk(index, {"tool_calls": [
                    {"index": number, **call} for number, call in enumerate(
                        message["tool_calls"])]})
            yield chunk(index, {}, finish_reason)
    else:
        try:
            for delta in reply:
                if delta.text or delta.logprobs:
                    yield chunk(delta.index, {"content": delta.text}, logprobs=delta.logprobs)
                if delta.finish_reason is not None:
                    yield chunk(delta.index, {}, delta.finish_reason)
        finally:  # a reader that left: every choice ends now
            reply.gone.set()
    served.metrics.generated(reply.prompt_tokens, reply.completion_tokens)
    if include_usage:
        yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": reply.usage()}


def completion_chunks(served: Served, replies: Sequence[Reply], echoed: Sequence[str],
                      head: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """Streamed completions, one prompt after another (generated together): text_completion
    objects, each with its choice's index (prompt number * n + choice; its prompt first when
    echoed)."""
    def chunk(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "text": text, "logprobs": None,
                                     "finish_reason": finish_reason}]}

    try:
        for number, (echo, reply) in enumerate(zip(echoed, replies, strict=True)):
            first = number * reply.n
            if echo:
                for index in range(first, first + reply.n):
                    yield chunk(index, echo)
            for delta in reply:
                if delta.text:
                    yield chunk(first + delta.index, delta.text)
                if delta.finish_reason is not None:
                    yield chunk(first + delta.index, "", delta.finish_reason)
            served.metrics.generated(reply.prompt_tokens, reply.completion_tokens)
    finally:  # a reader that left: the prompts not yet read end too
        for reply in replies:
            reply.gone.set()
    if include_usage:
        yield {**head, "choices": [], "usage": total_usage(replies)}


def event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def closed_when_done(iterator: Iterator[str]) -> AsyncIterator[str]:
    """``iterator`` read in worker threads, and closed however the response ends: a client
    that disconnects mid-stream ends its generation and frees the lock at once."""
    done = object()
    try:
        while (item := await run_in_threadpool(next, iterator, done)) is not done:
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(iterator.close)


class ApiKeyRequired:
    """ASGI middleware: a request to /v1 without ``Authorization: Bearer KEY`` is OpenAI's
    401 (``invalid_api_key``); other paths (/health, /metrics) are open."""

    def __init__(self, app: Any, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (scope["path"] + "/").startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                said = "a wrong API key" if given else "no API key"
                refusal = ApiError(401, f"This server wants an API key and the request gave "
                                   f"{said}: send the header Authorization: Bearer KEY (the "
                                   "OpenAI client's api_key).", code="invalid_api_key")
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CutOffAnswered:
    """ASGI middleware: a request that uvicorn cuts off once GRACE_SECONDS have passed (a body
    still arriving, a stream its client does not read) is a 503 if nothing was sent yet, else
    its connection is closed; either way with one line on the console, where uvicorn alone
    prints a CancelledError traceback."""

    def __init__(self, app: Any, stopping: threading.Event):
        self.app, self.stopping = app, stopping

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def sending(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
            click.echo(f"[sdk] {scope.get('method')} {scope.get('path')}: still open "
                       f"{GRACE_SECONDS} s after the server began to stop; cut off.", err=True)
            if not started:
                await server_stopping().response()(scope, receive, send)


class Server(uvicorn.Server):
    """uvicorn serving ``served``. The first SIGTERM or Ctrl-C sets ``served.stopping``, so
    generations end at their next token and their requests are answered (an error event, a
    503) before uvicorn closes the connections, within GRACE_SECONDS; a second one ends the
    process at once, as the only way out when something still hangs. ``ready`` is printed
    once it serves: only then do its signal handlers hold, so a Ctrl-C that follows the line
    is one it handles."""

    def __init__(self, served: Served, log_level: str = "info", ready: str = "",
                 api_key: str | None = None, cors_origins: Sequence[str] = ()):
        # lifespan off: the app has no startup or shutdown of its own to run
        app = Measured(CutOffAnswered(create_app(served, api_key, cors_origins),
                                      served.stopping), served.metrics)
        super().__init__(uvicorn.Config(app, log_level=log_level,
                                        lifespan="off", timeout_graceful_shutdown=GRACE_SECONDS))
        self.served, self.ready = served, ready

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.ready and self.started:
            click.echo(self.ready, err=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler re-raises the signal once stopped (a KeyboardInterrupt, a
        # death by SIGTERM); a server stopped as asked exits 0 instead
        name = signal.Signals(sig).name
        # set before printing: a second signal may interrupt this handler
        again, self.should_exit = self.should_exit, True
        self.served.stopping.set()
        if again:
            click.echo(f"[sdk] {name} again: stopped at once.", err=True)
            # die by the signal, as without handlers: threads still generating cannot hold
            # the process, and nothing unwinds into a traceback
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        click.echo(f"[sdk] {name}: stopping; replies in progress end now with an error "
                   "(Ctrl-C again quits at once).", err=True)
