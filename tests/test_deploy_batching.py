"""`sdk deploy` with several clients at once, through the official ``openai`` client:
concurrent greedy replies equal `sdk infer`'s alone, ``n`` replies, logprobs, and a full queue
answered 429 with Retry-After."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from test_deploy import serving

from conftest import TINY_MODEL_TYPE
from sdk.config import DeployArguments, InferArguments
from sdk.infer.chat import generate
from sdk.infer.openai_api import Served

QUESTIONS = ["Hello", "Tell me about the sea and the ships upon it, in many words please",
             "1 2 3", "Why is the sky blue?", "A", "The quick brown fox " * 5]


@pytest.fixture(scope="module")
def wide(tiny_plugin_file):
    """The tiny model type as `sdk deploy` loads it, its weights larger: at their own scale
    every reply repeats one token whatever the prompt, which would hide a batch that mixes
    up its rows."""
    from sdk.infer.load import load_for_inference
    from sdk.plugins import load_plugins

    args = DeployArguments(model_type=TINY_MODEL_TYPE, max_new_tokens=8)
    model, tokenizer, template = load_for_inference(args, load_plugins(
        [str(tiny_plugin_file)]).registry)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model, tokenizer, template, args


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(url: str, question: str, **options) -> openai.types.chat.ChatCompletion:
    return client(url).chat.completions.create(
        model=TINY_MODEL_TYPE, messages=[{"role": "user", "content": question}], **options)


def test_concurrent_greedy_replies_equal_each_generated_alone(wide):
    model, tokenizer, template, args = wide
    limits = [12, 30, 7, 20, 25, 16]
    with serving(Served(model, tokenizer, template, args, TINY_MODEL_TYPE,
                        max_concurrency=4)) as (url, server):
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            answers = list(pool.map(lambda pair: ask(url, pair[0], max_tokens=pair[1]),
                                    zip(QUESTIONS, limits, strict=True)))
        assert server.served.engine.stats()["finished"] == len(QUESTIONS)
    for question, limit, answer in zip(QUESTIONS, limits, answers, strict=True):
        alone = generate(model, tokenizer, template, [{"role": "user", "content": question}],
                         InferArguments(max_new_tokens=limit))
        assert answer.choices[0].message.content == alone
        assert answer.usage.completion_tokens <= limit


def test_n_replies_and_logprobs_whole_and_streamed(wide):
    model, tokenizer, template, args = wide
    with serving(Served(model, tokenizer, template, args, TINY_MODEL_TYPE)) as (url, _):
        answer = ask(url, QUESTIONS[3], max_tokens=6, n=3, temperature=1.0, seed=3,
                     logprobs=True, top_logprobs=2)
        assert [choice.index for choice in answer.choices] == [0, 1, 2]
        texts = [choice.message.content for choice in answer.choices]
        assert len(set(texts)) > 1  # sampled apart
        assert answer.usage.completion_tokens == sum(
            len(choice.logprobs.content) for choice in answer.choices)
        for choice in answer.choices:
            for entry in choice.logprobs.content:
                assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
                assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
            assert "".join(e.token for e in choice.logprobs.content).strip() == \
                choice.message.content
        greedy = ask(url, QUESTIONS[1], max_tokens=6, n=2, logprobs=True)
        assert greedy.choices[0].message.content == greedy.choices[1].message.content
        assert greedy.choices[0].logprobs.content[0].top_logprobs == []

        pieces: dict[int, str] = {0: "", 1: ""}
        finished, streamed_logprobs = {}, 0
        for chunk in client(url).chat.completions.create(
                model=TINY_MODEL_TYPE, messages=[{"role": "user", "content": QUESTIONS[1]}],
                max_tokens=6, n=2, logprobs=True, stream=True):
            for choice in chunk.choices:
                pieces[choice.index] += choice.delta.content or ""
                streamed_logprobs += len(choice.logprobs.content) if choice.logprobs else 0
                if choice.finish_reason:
                    finished[choice.index] = choice.finish_reason
        assert pieces == {0: greedy.choices[0].message.content,
                          1: greedy.choices[1].message.content}
        assert finished == {0: "length", 1: "length"} and streamed_logprobs == 12


def test_past_the_queue_a_request_is_answered_429_with_retry_after(wide):
    model, tokenizer, template, args = wide
    busy = Served(model, tokenizer, template, args, TINY_MODEL_TYPE, max_concurrency=1,
                  max_queue=0)
    with serving(busy) as (url, _):
        long = client(url).chat.completions.create(
            model=TINY_MODEL_TYPE, messages=[{"role": "user", "content": "Hi"}],
            max_tokens=400, stream=True)
        next(iter(long))
        with pytest.raises(openai.RateLimitError) as refused:
            ask(url, "Hi", max_tokens=2)
        assert refused.value.response.headers["Retry-After"] == "1"
        assert refused.value.code == "rate_limit_exceeded"
        assert "The server is busy" in refused.value.message
        long.close()
        done = threading.Event()
        while not done.wait(0.05) and busy.engine.stats()["running"]:
            pass
        assert ask(url, "Hi", max_tokens=2).usage.completion_tokens == 2
