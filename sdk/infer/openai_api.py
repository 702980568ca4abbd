"""The HTTP API of `sdk deploy`: OpenAI's ``GET /v1/models`` and ``POST /v1/chat/completions``
(whole, or streamed as server-sent events) over one loaded model. Requests are generated
together by continuous batching (sdk/infer/engine.py): up to --max-concurrency at once, up to
--max-queue more waiting, and past that a 429 with Retry-After.

Replies are what `sdk infer` answers (the same prompt encoding, decoding options, stop words
and trimming: sdk/infer/chat.py); a streamed reply holds back text that a stop word may still
cut, so its chunks joined are the whole reply. Errors are OpenAI's JSON
``{"error": {"message", "type", "param", "code"}}``.

`Server` stops it as a supervisor expects: the first SIGTERM or Ctrl-C ends every generation
at its next token (a stream gets an error event, then ``[DONE]``; a whole reply a 503), a
second one ends the process at once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any, Literal

import anyio
import click
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from sdk.config import GenerationArguments
from sdk.infer.chat import finish_reply, generation_options, positions_taken
from sdk.infer.engine import Engine, QueueFull, Sampling, TokenLogprob
from sdk.models.rope import context_window
from sdk.templates.engine import Template

# Temperatures below this are greedy decoding (as in vLLM): dividing the logits by less
# overflows them, and sampling from the overflow fails (on a GPU, with a device-side assert).
GREEDY_BELOW = 1e-5
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 415: "invalid_request_error", 429: "requests",
               500: "server_error", 503: "server_error"}
# The most replies (n) and alternatives of a token (top_logprobs) a request may ask for, as
# OpenAI's API limits them
MAX_CHOICES, MAX_TOP_LOGPROBS = 128, 20
# What a 429 asks a client to wait before it retries, in seconds
RETRY_AFTER_SECONDS = 1
# How long a stopping server waits for its connections to close before it cuts them: the
# generations have ended at their next token, so this is only for clients slow to send or read.
GRACE_SECONDS = 3


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
    role: Literal["system", "user", "assistant"]
    content: str

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


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat completion request that apply; ``top_k`` and
    ``repetition_penalty`` are extensions (as in vLLM). Other fields are ignored."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0, lt=2**32)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def top_logprobs_with_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @field_validator("stop")
    @classmethod
    def no_empty_stop(cls, stop: str | list[str] | None) -> list[str]:
        words = [stop] if isinstance(stop, str) else stop or []
        if "" in words:
            raise ValueError("a stop string cannot be empty")
        return words

    def decoding(self, defaults: GenerationArguments) -> GenerationArguments:
        """The server's decoding flags with this request's settings. A temperature of 0 (below
        GREEDY_BELOW) is greedy decoding, any other samples; without one, the server's
        --do-sample holds."""
        changes: dict[str, Any] = {}
        if self.max_completion_tokens or self.max_tokens:
            changes["max_new_tokens"] = self.max_completion_tokens or self.max_tokens
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


def request_error(error: ValidationError) -> ApiError:
    """The first thing wrong with a request, naming its field as OpenAI does
    (``messages[0].role``)."""
    first = error.errors()[0]
    param = ""
    for part in first["loc"]:
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param or None)


def settled_text(raw: str, stop_strings: list[str]) -> str:
    """The start of ``finish_reply(raw + anything)`` that more text cannot change: the text
    before a stop word, less an ending that may begin one, without surrounding whitespace."""
    if any(word in raw for word in stop_strings):
        return finish_reply(raw, stop_strings)
    hold = max((size for word in stop_strings for size in range(1, len(word))
                if raw.endswith(word[:size])), default=0)
    return raw[:len(raw) - hold].strip()


@dataclasses.dataclass
class Choice:
    """One of a reply's ``n`` texts: what was sent of it so far, its token logprobs (OpenAI's
    entries) not yet sent, and once it ends its text, finish reason and token count."""

    sent: str = ""
    text: str = ""
    finish_reason: str = "length"
    completion_tokens: int = 0
    logprobs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unsent: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Delta:
    """What a reply adds to its choice ``index``: text, with the logprobs of its tokens, and
    on the choice's last delta its finish reason."""

    index: int
    text: str
    logprobs: list[dict[str, Any]] | None
    finish_reason: str | None = None


@dataclasses.dataclass
class Reply:
    """One request's generation: ``start()`` queues it with the server's engine (a 429 when
    the queue is full); iterating gives its Deltas as the texts grow (a choice's pieces
    joined: the reply `sdk infer` gives); afterwards ``choices`` hold the texts, finish
    reasons and token counts."""

    served: Served
    prompt_ids: list[int]
    sampling: Sampling
    n: int = 1
    choices: list[Choice] = dataclasses.field(default_factory=list)
    # set: end the generation at the next token (its reader has gone, or the server stops)
    gone: threading.Event = dataclasses.field(default_factory=threading.Event)
    submission: Any = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def start(self) -> None:
        if self.submission is not None:
            return
        if self.served.stopping.is_set():
            raise server_stopping()
        try:
            self.submission = self.served.engine.submit(self.prompt_ids, self.sampling, self.n,
                                                        self.gone)
        except QueueFull as error:
            raise ApiError(429, f"The server is busy ({error} replies, its --max-concurrency "
                           f"and --max-queue); retry after {RETRY_AFTER_SECONDS} s.",
                           code="rate_limit_exceeded",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        self.choices = [Choice() for _ in range(self.n)]

    def __iter__(self) -> Iterator[Delta]:
        self.start()
        stop_strings, logprobs = list(self.sampling.stop_strings), self.sampling.logprobs
        try:
            for step in self.submission.steps():
                if step.finish_reason == "aborted":
                    raise server_stopping()
                choice = self.choices[step.index]
                if step.token_id is not None:
                    choice.completion_tokens += 1
                    if step.logprob is not None:
                        choice.unsent.append(self.served.logprob_entry(step.logprob))
                if step.finish_reason is None:
                    ready = settled_text(step.text, stop_strings)
                else:
                    choice.text = ready = finish_reply(step.text, stop_strings)
                    choice.finish_reason = "stop" if step.finish_reason == "stop" else "length"
                if len(ready) > len(choice.sent) or step.finish_reason is not None:
                    sent = choice.unsent if logprobs is not None else None
                    choice.logprobs += choice.unsent
                    yield Delta(step.index, ready[len(choice.sent):], sent, step.finish_reason)
                    choice.sent, choice.unsent = ready, []
        finally:  # a reader that left: end the generation now, not at max_tokens
            self.gone.set()

    def usage(self) -> dict[str, int]:
        completion = sum(choice.completion_tokens for choice in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


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
    engine: Engine = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.engine = Engine(self.model, self.tokenizer, self.max_concurrency, self.max_queue,
                             self.stopping)

    def reply(self, request: ChatCompletionRequest) -> Reply:
        """The generation ``request`` asks for, its prompt encoded (a conversation the
        template refuses is a 400)."""
        if request.model is not None and request.model != self.name:
            raise ApiError(404, f"The model '{request.model}' does not exist; this server "
                           f"serves '{self.name}' (GET /v1/models).", "model", "model_not_found")
        messages = [message.model_dump() for message in request.messages]
        try:
            inputs = self.template.tokenize_prompt(self.tokenizer, messages)
        except ValueError as error:
            raise ApiError(400, f"messages: {error}", "messages") from None
        prompt_ids = inputs["input_ids"][0].tolist()
        options, stop_strings = generation_options(self.template, self.tokenizer,
                                                   request.decoding(self.defaults))
        room = self.room_for_reply(positions_taken(self.model, len(prompt_ids)),
                                   request.max_completion_tokens or request.max_tokens)
        options["max_new_tokens"] = min(options["max_new_tokens"], room)
        top = request.top_logprobs or 0
        sampling = Sampling.of(options, stop_strings=(*stop_strings, *(request.stop or [])),
                               seed=request.seed, logprobs=top if request.logprobs else None)
        return Reply(self, prompt_ids, sampling, request.n)

    def logprob_entry(self, logprob: TokenLogprob) -> dict[str, Any]:
        """OpenAI's entry for a token of ``logprobs.content``."""
        def token(token_id: int, value: float) -> dict[str, Any]:
            text = self.tokenizer.decode([token_id])
            return {"token": text, "logprob": value, "bytes": list(text.encode())}

        return {**token(logprob.token_id, logprob.logprob),
                "top_logprobs": [token(*pair) for pair in logprob.top]}

    def room_for_reply(self, prompt_tokens: int, asked: int | None) -> int:
        """How many tokens a reply may have after a prompt of ``prompt_tokens``: at most
        what fits the model's window (past it a model answers garbage). A prompt that
        leaves no room, or ``asked`` tokens that do not fit, is a 400 as in vLLM."""
        window = context_window(self.model.config)
        if window is None:
            return asked or self.defaults.max_new_tokens
        if prompt_tokens >= window or (asked and prompt_tokens + asked > window):
            requested = (f"you requested {prompt_tokens + asked} tokens ({prompt_tokens} in "
                         f"the messages, {asked} in the completion)" if asked else
                         f"your messages resulted in {prompt_tokens} tokens")
            raise ApiError(400, f"This model's maximum context length is {window} tokens. "
                           f"However, {requested}. Please reduce the length of the messages"
                           f"{' or completion' if asked else ''}.", "messages",
                           "context_length_exceeded")
        return window - prompt_tokens


def create_app(served: Served) -> FastAPI:
    app = FastAPI(title="sft-sdk", description=f"OpenAI-compatible API serving {served.name}")

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

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served.name, "object": "model",
                                            "created": served.created, "owned_by": "sft-sdk"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
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
            asked = ChatCompletionRequest.model_validate(body)
        except ValidationError as error:
            raise request_error(error) from None
        reply = served.reply(asked)
        reply.start()
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": served.name}
        if asked.stream:
            usage = asked.stream_options is not None and asked.stream_options.include_usage
            return StreamingResponse(closed_when_done(events(reply, head, usage)),
                                     media_type="text/event-stream")
        try:
            await generated_whole(reply, request)
        except ApiError:
            raise
        except Exception as error:
            raise generation_failed(error) from None
        return {**head, "object": "chat.completion", "choices": [{
            "index": index, "message": {"role": "assistant", "content": choice.text},
            "logprobs": {"content": choice.logprobs} if asked.logprobs else None,
            "finish_reason": choice.finish_reason} for index, choice in enumerate(reply.choices)],
            "usage": reply.usage()}

    return app


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
    work.result()


def generation_failed(error: Exception) -> ApiError:
    click.echo(f"[sdk] generation failed: {type(error).__name__}: {error}", err=True)
    return ApiError(500, f"The generation failed: {type(error).__name__}: {error}")


def events(reply: Reply, head: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """The server-sent events of a streamed reply: OpenAI's chat.completion.chunk objects
    (a choice's text, then its finish reason), then ``[DONE]``; a failure, or the server
    stopping, is an ``error`` event."""
    def chunk(index: int, delta: dict[str, str], finish_reason: str | None = None,
              logprobs: list[dict[str, Any]] | None = None) -> str:
        return event({**head, "object": "chat.completion.chunk", "choices": [{
            "index": index, "delta": delta,
            "logprobs": None if logprobs is None else {"content": logprobs},
            "finish_reason": finish_reason}]})

    for index in range(reply.n):
        yield chunk(index, {"role": "assistant", "content": ""})
    try:
        for delta in reply:
            if delta.text or delta.logprobs:
                yield chunk(delta.index, {"content": delta.text}, logprobs=delta.logprobs)
            if delta.finish_reason is not None:
                yield chunk(delta.index, {}, reply.choices[delta.index].finish_reason)
    except ApiError as error:
        yield event(error.body())
    except Exception as error:
        yield event(error_body(500, generation_failed(error).message))
    else:
        if include_usage:
            yield event({**head, "object": "chat.completion.chunk", "choices": [],
                         "usage": reply.usage()})
    yield "data: [DONE]\n\n"


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

    def __init__(self, served: Served, log_level: str = "info", ready: str = ""):
        # lifespan off: the app has no startup or shutdown of its own to run
        app = CutOffAnswered(create_app(served), served.stopping)
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
