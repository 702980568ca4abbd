"""sdk/infer/engine.py: continuous batching on the tiny model, against ``model.generate``
generating each prompt alone."""

from __future__ import annotations

import threading

import pytest
import torch

from sdk.infer.engine import Engine, QueueFull, Sampling

PROMPTS = ["Hello", "Tell me about the sea and the ships upon it, in many words please",
           "1 2 3", "Why is the sky blue?", "A", "The quick brown fox jumps over the lazy dog " * 3]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    # the tiny model's weights, larger: at its own scale every reply repeats one token whatever
    # came before it, so a broken cache or mask would go unseen
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def alone(model, prompt_ids: list[int], max_new_tokens: int, **options) -> list[int]:
    """``model.generate``'s new tokens for one prompt."""
    output = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(
        1, len(prompt_ids), dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=[], pad_token_id=0, **options)
    return output[0, len(prompt_ids):].tolist()


def tokens(steps) -> list[int]:
    return [step.token_id for step in steps if step.token_id is not None]


def test_greedy_sequences_joining_a_running_batch_equal_generate_alone(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, max_running=4)
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]
    limits = [30, 12, 25, 5, 40, 18]
    # four start together, the other two join as the shortest end
    submissions = [engine.submit(ids, Sampling(max_tokens=limit))
                   for ids, limit in zip(prompts, limits, strict=True)]
    generated = [tokens(s.steps()) for s in submissions]
    for ids, limit, got in zip(prompts, limits, generated, strict=True):
        assert got == alone(model, ids, limit)
    stats = engine.stats()
    assert stats["generated_tokens"] == sum(limits) and stats["finished"] == len(prompts)
    assert stats["prompt_tokens"] == sum(map(len, prompts))
    assert stats["running"] == stats["waiting"] == 0


def test_prompts_joining_in_one_step_are_prefilled_together_and_equal_generate_alone(
        model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, max_running=8)
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]
    assert len(set(map(len, prompts))) > 3  # padded by different amounts
    # each row its own repetition penalty, chosen for all rows at once (1.0: none)
    penalties = [1.0, 1.3, 0.7, 1.0, 2.0, 1.1]
    forwards = []
    working = model.forward
    monkeypatch.setattr(model, "forward", lambda *args, **kwargs: (
        forwards.append(kwargs["input_ids"].shape), working(*args, **kwargs))[1])
    with engine.wake:  # the engine waits for this lock: every prompt joins in its next step
        submissions = [engine.submit(ids, Sampling(max_tokens=8, repetition_penalty=penalty))
                       for ids, penalty in zip(prompts, penalties, strict=True)]
    generated = [tokens(s.steps()) for s in submissions]
    monkeypatch.undo()
    width = max(map(len, prompts))
    assert forwards == [(len(prompts), width)] + [(len(prompts), 1)] * 7
    for ids, penalty, got in zip(prompts, penalties, generated, strict=True):
        assert got == alone(model, ids, 8, repetition_penalty=penalty)


def test_each_sequence_keeps_its_own_settings(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, max_running=8)
    ids = tokenizer(PROMPTS[1])["input_ids"]
    greedy = alone(model, ids, 20)
    penalised = alone(model, ids, 20, repetition_penalty=0.3, no_repeat_ngram_size=2)
    stop_text = tokenizer.decode(greedy[:6])
    stop = stop_text[-3:]
    sampled = Sampling(max_tokens=20, do_sample=True, temperature=1.3, top_k=0, seed=5)
    runs = {
        "greedy": engine.submit(ids, Sampling(max_tokens=20)),
        "penalised": engine.submit(ids, Sampling(max_tokens=20, repetition_penalty=0.3,
                                                 no_repeat_ngram_size=2)),
        "stop id": engine.submit(ids, Sampling(max_tokens=20, stop_ids=(greedy[3],))),
        "stop string": engine.submit(ids, Sampling(max_tokens=20, stop_strings=(stop,))),
        "seed 5": engine.submit(ids, sampled, n=2),
        "seed 5 again": engine.submit(ids, sampled),
    }
    steps = {name: list(s.steps()) for name, s in runs.items()}
    assert tokens(steps["greedy"]) == greedy and steps["greedy"][-1].finish_reason == "length"
    assert tokens(steps["penalised"]) == penalised != greedy
    cut = greedy.index(greedy[3]) + 1
    assert tokens(steps["stop id"]) == greedy[:cut]
    assert steps["stop id"][-1].finish_reason == "stop"
    # ends at the token that completes the stop string
    assert stop in steps["stop string"][-1].text and len(steps["stop string"]) <= 6
    assert steps["stop string"][-1].finish_reason == "stop"
    first, second = ([s.token_id for s in steps["seed 5"] if s.index == i] for i in (0, 1))
    assert first == tokens(steps["seed 5 again"]) and first != second


def test_logprobs_are_the_models_and_the_top_ones_are_sorted(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer)
    ids = tokenizer(PROMPTS[3])["input_ids"]
    steps = list(engine.submit(ids, Sampling(max_tokens=4, logprobs=3)).steps())
    output = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False,
                            eos_token_id=[], pad_token_id=0, output_logits=True,
                            return_dict_in_generate=True)
    for step, logits in zip(steps, output.logits, strict=True):
        expected = torch.log_softmax(logits[0].float(), dim=-1)
        assert step.logprob.token_id == step.token_id
        assert step.logprob.logprob == pytest.approx(float(expected[step.token_id]), abs=1e-4)
        top_ids = [token for token, _ in step.logprob.top]
        assert top_ids == expected.topk(3).indices.tolist() and top_ids[0] == step.token_id


def test_a_cancelled_sequence_frees_its_place_and_the_queue_is_bounded(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, max_running=1, max_waiting=1)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    long = engine.submit(ids, Sampling(max_tokens=100_000))
    steps = long.steps()
    next(steps)
    waiting = engine.submit(ids, Sampling(max_tokens=3))
    with pytest.raises(QueueFull):
        engine.submit(ids, Sampling(max_tokens=3))
    assert engine.stats()["running"] == 1 and engine.stats()["waiting"] == 1
    long.cancel()
    assert [s for s in steps if s.finish_reason][0].finish_reason == "cancelled"
    assert tokens(waiting.steps()) == alone(model, ids, 3)


def test_a_failed_forward_fails_its_sequences_and_the_engine_goes_on(model_and_tokenizer,
                                                                   monkeypatch):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    working, calls = model.forward, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return working(*args, **kwargs)

    monkeypatch.setattr(model, "forward", fails_once)
    with pytest.raises(RuntimeError, match="simulated"):
        list(engine.submit(ids, Sampling(max_tokens=3)).steps())
    assert tokens(engine.submit(ids, Sampling(max_tokens=3)).steps()) == alone(model, ids, 3)


def test_stopping_aborts_running_and_waiting_sequences(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    stopping = threading.Event()
    engine = Engine(model, tokenizer, max_running=1, stopping=stopping)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    running = engine.submit(ids, Sampling(max_tokens=100_000))
    waiting = engine.submit(ids, Sampling(max_tokens=3))
    next(running.steps())
    stopping.set()
    assert list(running.steps())[-1].finish_reason == "aborted"
    assert [s.finish_reason for s in waiting.steps()] == ["aborted"]
