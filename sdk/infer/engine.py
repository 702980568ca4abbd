"""Continuous batching: sequences generated together by one background thread, each joining the
running batch at token granularity and leaving it as soon as it ends, each with its own
sampling, stop ids and strings, token limit, logprobs and cancellation.

transformers' own continuous batching (``generate_batch``, ``ContinuousBatchingManager``,
5.25) does not serve here: it fixes sampling at the manager's creation (no per-request
repetition penalty, seed or top logprobs), has no stop strings, and switches the model to paged
attention, so its greedy replies need not equal ``model.generate``'s.

How a sequence is generated: its prompt is prefilled alone (batch of one, as ``model.generate``
prefills it), then its key/value cache joins the batch's, left-padded to the batch's width; each
decoding step is one forward pass over the last token of every running sequence, with the
per-row attention mask and positions of its own tokens. A greedy reply is therefore the one
``model.generate`` gives alone, up to the order of float additions in padded attention
(token-identical on the tests' models). A cache that is not plain key/value tensors (sliding
windows, recurrent layers) cannot be padded, so such a model generates one sequence at a time.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer


class QueueFull(Exception):
    """No room for more sequences: ``max_running`` run and ``max_waiting`` wait."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one sequence is generated."""

    max_tokens: int
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    # the most likely alternatives to give with each token's logprob; None: no logprobs
    logprobs: int | None = None

    @classmethod
    def of(cls, options: dict[str, Any], **changes: Any) -> Sampling:
        """From ``model.generate``'s options as ``sdk.infer.chat.generation_options`` gives
        them."""
        sampled = options["do_sample"]
        fields = dict(max_tokens=options["max_new_tokens"],
                      stop_ids=tuple(options["eos_token_id"]),
                      stop_strings=tuple(options.get("stop_strings", ())), do_sample=sampled,
                      temperature=options["temperature"] if sampled else 1.0,
                      top_k=options["top_k"] if sampled else 0,
                      top_p=options["top_p"] if sampled else 1.0,
                      repetition_penalty=options["repetition_penalty"],
                      no_repeat_ngram_size=options["no_repeat_ngram_size"])
        return cls(**{**fields, **changes})

    def processors(self) -> LogitsProcessorList:
        """The logits processors, in ``model.generate``'s order."""
        chosen = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            chosen.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram_size:
            chosen.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        if self.do_sample:
            if self.temperature != 1.0:
                chosen.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                chosen.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                chosen.append(TopPLogitsWarper(self.top_p))
        return chosen


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (before sampling's processors)
    and the ``top`` likeliest tokens' (id, logprob), likeliest first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclasses.dataclass(frozen=True)
class Step:
    """A sequence's new token (None when it ended without one) and its text so far; a last
    step has ``finish_reason``: "stop" (a stop id or string), "length", "cancelled" or
    "aborted" (the engine stopped)."""

    index: int
    token_id: int | None
    text: str
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None


class Submission:
    """What ``Engine.submit`` gives: ``n`` sequences of one prompt. ``steps()`` yields their
    steps as they are generated; ``cancel()`` (or setting ``cancelled``) ends them at the next
    token and frees their places in the batch."""

    def __init__(self, prompt_ids: Sequence[int], sampling: Sampling, n: int,
                 cancelled: threading.Event):
        self.prompt_ids, self.sampling, self.n = list(prompt_ids), sampling, n
        self.cancelled = cancelled
        self.updates: queue.Queue[Step | BaseException] = queue.Queue()

    def cancel(self) -> None:
        self.cancelled.set()

    def steps(self) -> Iterator[Step]:
        """Every step of the ``n`` sequences until all have ended; a failed forward pass is
        raised here."""
        running = self.n
        while running:
            update = self.updates.get()
            if isinstance(update, BaseException):
                self.cancel()
                raise update
            running -= update.finish_reason is not None
            yield update


@dataclasses.dataclass(eq=False)
class Running:
    """One sequence in the engine."""

    submission: Submission
    index: int
    processors: LogitsProcessorList
    generator: torch.Generator | None
    tokens: list[int] = dataclasses.field(default_factory=list)
    text: str = ""

    @property
    def sampling(self) -> Sampling:
        return self.submission.sampling

    def end(self, reason: str) -> None:
        self.submission.updates.put(Step(self.index, None, self.text, finish_reason=reason))


class Engine:
    """Generates the sequences submitted to it in a background thread, up to ``max_running``
    together; others wait in order, at most ``max_waiting`` (None: no limit). ``stopping``
    set ends every sequence ("aborted") and lets no other start."""

    def __init__(self, model: Any, tokenizer: Any, max_running: int = 16,
                 max_waiting: int | None = None, stopping: threading.Event | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_running, self.max_waiting = max_running, max_waiting
        self.stopping = stopping or threading.Event()
        self.waiting: collections.deque[Running] = collections.deque()
        self.running: list[Running] = []
        self.wake = threading.Condition()
        self.cache: Any = None  # the running sequences' keys and values, left-padded
        self.mask: torch.Tensor | None = None  # which of the cache's positions are tokens
        self.counters = {"prompt_tokens": 0, "generated_tokens": 0, "finished": 0}
        self.closed = False
        forward = inspect.signature(model.get_base_model().forward if hasattr(
            model, "get_base_model") else model.forward).parameters
        self.cache_name = "cache" if "cache" in forward else "past_key_values"
        self.last_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        threading.Thread(target=self.loop, name="sdk-engine", daemon=True).start()

    def submit(self, prompt_ids: Sequence[int], sampling: Sampling, n: int = 1,
               cancelled: threading.Event | None = None) -> Submission:
        """Queue ``n`` sequences continuing ``prompt_ids``; QueueFull past ``max_waiting``."""
        submission = Submission(prompt_ids, sampling, n, cancelled or threading.Event())
        seed = sampling.seed
        if sampling.do_sample and seed is None:  # repeatable under set_seed, as generate is
            seed = int(torch.randint(0, 2**62, ()).item())
        sequences = []
        for index in range(n):
            generator = None
            if sampling.do_sample:
                generator = torch.Generator(self.model.device).manual_seed(seed + index)
            sequences.append(Running(submission, index, sampling.processors(), generator))
        with self.wake:
            running, waiting = len(self.running), len(self.waiting)
            if (self.max_waiting is not None
                    and running + waiting + n > self.max_running + self.max_waiting):
                raise QueueFull(f"{running} generating, {waiting} waiting")
            self.waiting.extend(sequences)
            self.wake.notify()
        return submission

    def stats(self) -> dict[str, int]:
        """Sequences running and waiting, and the tokens prefilled and generated so far."""
        return {"running": len(self.running), "waiting": len(self.waiting),
                "max_running": self.max_running, **self.counters}

    def close(self) -> None:
        """End the background thread once every submitted sequence has ended."""
        with self.wake:
            self.closed = True
            self.wake.notify()

    def loop(self) -> None:
        while True:
            with self.wake:
                while not self.running and not self.waiting and not self.closed:
                    self.wake.wait()
                if self.closed and not self.running and not self.waiting:
                    return
            try:
                self.step()
            except Exception as error:  # every running sequence fails; the engine goes on
                for sequence in self.running:
                    sequence.submission.updates.put(error)
                self.running, self.cache, self.mask = [], None, None

    def step(self) -> None:
        """Drop what ended, admit waiting sequences while there is room, decode one token."""
        if self.stopping.is_set():
            with self.wake:
                ended, self.waiting = [*self.running, *self.waiting], collections.deque()
            self.keep([])
            for sequence in ended:
                sequence.end("aborted")
            return
        self.keep([s for s in self.running if not s.submission.cancelled.is_set()],
                  "cancelled")
        while len(self.running) < self.room():
            with self.wake:
                if not self.waiting:
                    break
                sequence = self.waiting.popleft()
            if sequence.submission.cancelled.is_set():
                sequence.end("cancelled")
                continue
            try:
                self.prefill(sequence)
            except Exception as error:  # this prompt's failure is its own
                sequence.submission.updates.put(error)
        if self.running:
            self.decode()

    def room(self) -> int:
        """How many sequences may run: one where the cache cannot be padded."""
        plain = self.cache is None or all(type(layer) is DynamicLayer
                                          for layer in self.cache.layers)
        return self.max_running if plain else 1

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """The next token's logits (float32) of each row, ``cache`` updated in place."""
        positions = mask.sum(dim=1, keepdim=True) - input_ids.shape[1] + torch.arange(
            input_ids.shape[1], device=mask.device)
        with torch.inference_mode():
            output = self.model(input_ids=input_ids, attention_mask=mask,
                                position_ids=positions, use_cache=True,
                                **{self.cache_name: cache}, **self.last_logits)
        return output.logits[:, -1, :].to(torch.float32)

    def prefill(self, sequence: Running) -> None:
        device = self.model.device
        prompt = torch.tensor([sequence.submission.prompt_ids], device=device)
        mask = torch.ones_like(prompt)
        cache = DynamicCache(config=self.model.config)
        logits = self.forward(prompt, mask, cache)
        self.counters["prompt_tokens"] += prompt.shape[1]
        self.join(sequence, cache, mask)
        self.advance([sequence], logits)

    def decode(self) -> None:
        device = self.model.device
        last = torch.tensor([[s.tokens[-1]] for s in self.running], device=device)
        assert self.mask is not None
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.running), 1))], dim=1)
        logits = self.forward(last, mask, self.cache)
        self.mask = mask
        self.advance(list(self.running), logits)

    def join(self, sequence: Running, cache: Any, mask: torch.Tensor) -> None:
        """Add a prefilled sequence to the batch, padding the shorter side on the left."""
        self.running.append(sequence)
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        assert self.mask is not None
        width = max(self.mask.shape[1], mask.shape[1])
        for joined, layer in zip(self.cache.layers, cache.layers, strict=True):
            joined.keys = torch.cat([left_padded(joined.keys, width),
                                     left_padded(layer.keys, width)])
            joined.values = torch.cat([left_padded(joined.values, width),
                                       left_padded(layer.values, width)])
        self.mask = torch.cat([left_padded(self.mask, width), left_padded(mask, width)])

    def keep(self, kept: list[Running], reason: str = "") -> None:
        """Keep only ``kept`` of the running sequences (the others end with ``reason``),
        and drop the cache positions that are padding in every row left."""
        if len(kept) == len(self.running):
            return
        for sequence in self.running:
            if sequence not in kept and reason:
                sequence.end(reason)
        rows = [self.running.index(s) for s in kept]
        self.running = kept
        if not kept:
            self.cache = self.mask = None
            return
        assert self.mask is not None
        mask = self.mask[rows]
        start = int((mask.sum(dim=0) > 0).nonzero()[0])
        for layer in self.cache.layers:
            layer.keys = layer.keys[rows, :, start:]
            layer.values = layer.values[rows, :, start:]
        self.mask = mask[:, start:]

    def advance(self, sequences: list[Running], logits: torch.Tensor) -> None:
        """Choose each sequence's next token from its row of ``logits``; tell its
        submission; remove the sequences that ended."""
        ended = []
        for sequence, row in zip(sequences, logits, strict=True):
            token = self.choose(sequence, row)
            sequence.tokens.append(token)
            sequence.text = self.tokenizer.decode(sequence.tokens, skip_special_tokens=True)
            sampling = sequence.sampling
            logprob = None
            if sampling.logprobs is not None:
                logprob = token_logprob(row, token, sampling.logprobs)
            reason = None
            if token in sampling.stop_ids or any(word in sequence.text
                                                 for word in sampling.stop_strings):
                reason = "stop"
            elif len(sequence.tokens) >= sampling.max_tokens:
                reason = "length"
            sequence.submission.updates.put(Step(sequence.index, token, sequence.text,
                                                 logprob, reason))
            if reason is not None:
                ended.append(sequence)
        self.counters["generated_tokens"] += len(sequences)
        if ended:
            self.counters["finished"] += len(ended)
            self.keep([s for s in self.running if s not in ended])

    def choose(self, sequence: Running, logits: torch.Tensor) -> int:
        if not sequence.processors:
            return int(logits.argmax())
        ids = torch.tensor([sequence.submission.prompt_ids + sequence.tokens],
                           device=logits.device)
        scores = sequence.processors(ids, logits[None])[0]
        if not sequence.sampling.do_sample:
            return int(scores.argmax())
        probabilities = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=sequence.generator))


def left_padded(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` (batch first; its positions on dim 2 for keys and values [batch, heads,
    positions, dim], or dim 1 for a mask [batch, positions]) with zeros before its positions
    up to ``width``."""
    dim = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    logprobs = torch.log_softmax(logits, dim=-1)
    best = torch.topk(logprobs, top) if top else None
    pairs = () if best is None else tuple(zip(best.indices.tolist(), best.values.tolist(),
                                              strict=True))
    return TokenLogprob(token, float(logprobs[token]), pairs)
