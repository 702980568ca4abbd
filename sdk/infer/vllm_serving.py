"""`sdk deploy --infer-backend vllm`: the server's generations made by vLLM's AsyncLLMEngine
(requests join its running batch), read as the transformers ones are (openai_api.Reply)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import anyio.from_thread

from sdk.config import GenerationArguments
from sdk.infer.openai_api import (
    ApiError,
    Delta,
    Reply,
    SamplingRequest,
    Served,
    ended_text,
    server_stopping,
    settled_text,
)
from sdk.infer.stops import stop_tokens
from sdk.infer.vllm_backend import check_vllm, sampling_params, vllm_source
from sdk.models.rope import context_window
from sdk.registry import Registry


class VllmReply(Reply):
    """A generation by vLLM's engine (``served.model``) in a worker thread, as Reply is:
    its Deltas as the text grows (one choice); a reader that leaves, or the server stopping,
    aborts it."""

    served: VllmServed

    def submit(self) -> None:
        """Nothing yet: vLLM's stream starts when the reply is read."""

    def __iter__(self) -> Iterator[Delta]:
        from vllm.inputs import TokensPrompt

        self.start()
        served, choice = self.served, self.choices[0]
        stream = served.model.generate(TokensPrompt(prompt_token_ids=self.prompt_ids),
                                       self.sampling, uuid.uuid4().hex, lora_request=served.lora)

        async def next_output() -> Any:
            return await stream.__anext__()

        raw, output = "", None
        try:
            while not (self.gone.is_set() or served.stopping.is_set()):
                try:
                    output = anyio.from_thread.run(next_output).outputs[0]
                except StopAsyncIteration:
                    break
                raw = output.text  # vLLM's text so far, stop strings left out
                yield from choice.advanced(0, settled_text(raw, self.stop_strings, self.trimmed),
                                           False, False)
        finally:  # closing vLLM's stream aborts a request still generating
            self.gone.set()
            anyio.from_thread.run(stream.aclose)
        if served.stopping.is_set():
            raise server_stopping()
        choice.text = ended_text(raw, self.stop_strings, self.trimmed)
        choice.tokens = list(output.token_ids) if output is not None else []
        if output is not None and output.finish_reason == "stop":
            choice.finish_reason = "stop"
        yield from choice.advanced(0, choice.text, False, True)


@dataclasses.dataclass
class VllmServed(Served):
    """Served by vLLM: ``model`` is its AsyncLLMEngine, ``config`` the model's config (its
    window), ``lora`` the adapter's LoRARequest (None: the model alone)."""

    config: Any = None
    lora: Any = None

    def started_engine(self) -> None:
        return None  # vLLM's AsyncLLMEngine batches the requests itself

    def window(self) -> int | None:
        return context_window(self.config)

    def generation(self, inputs: Any, request: SamplingRequest, param: str) -> Reply:
        if request.n > 1 or request.token_alternatives is not None:
            raise ApiError(400, "n above 1 and logprobs are served by the transformers backend "
                           "only: leave them out, or serve without --infer-backend vllm.",
                           "n" if request.n > 1 else "logprobs")
        decoding = request.decoding(self.defaults)
        room = self.room_for_reply(int(inputs["input_ids"].shape[1]), request.reply_tokens,
                                   param)
        stop_ids, stop_strings = stop_tokens(self.template, self.tokenizer)
        stop_strings = [*stop_strings, *(request.stop or [])]
        params = sampling_params(decoding, stop_ids, stop_strings,
                                 min(decoding.max_new_tokens, room), request.seed)
        return VllmReply(self, inputs["input_ids"][0].tolist(), params, stop_strings)

    def queue_stats(self) -> dict[str, int]:
        return {"running": 0, "waiting": 0}  # vLLM schedules its own; see its own metrics


def served_by_vllm(args: GenerationArguments, registry: Registry, name: str) -> VllmServed:
    """What `sdk deploy --infer-backend vllm` serves: the engine loaded, with sdk's template."""
    from transformers import AutoConfig
    from vllm import AsyncEngineArgs, AsyncLLMEngine

    check_vllm(args)
    source, template, tokenizer = vllm_source(args, registry)
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**source.engine_arguments(args)))
    config = AutoConfig.from_pretrained(source.model, trust_remote_code=args.trust_remote_code)
    return VllmServed(engine, tokenizer, template, args, name, config=config,
                      lora=source.lora_request())
