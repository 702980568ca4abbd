"""Continuous batching: sequences generated together by one background thread, each joining the
running batch at token granularity and leaving it as soon as it ends, each with its own
sampling, stop ids and strings, token limit, logprobs and cancellation.

transformers' own continuous batching (``generate_batch``, ``ContinuousBatchingManager``,
5.25) does not serve here: it fixes sampling at the manager's creation (no per-request
repetition penalty, seed or top logprobs), has no stop strings, and switches the model to paged
attention, so its greedy replies need not equal ``model.generate``'s.

How a sequence is generated: the prompts that join in the same step are prefilled together in
one forward pass, left-padded to the longest (as ``model.generate`` prefills a batch), then
their key/value cache joins the batch's, left-padded to the batch's width; each decoding step is
one forward pass over the last token of every running sequence, with the per-row attention
mask and positions of its own tokens. The next tokens of all rows are chosen together (one
argmax, repetition penalties and temperatures as tensors over the rows) and read back to the
host once a step. A greedy reply is therefore the one ``model.generate`` gives alone, up to the
order of float additions in padded attention (token-identical on the tests' models). A cache
that is not plain key/value tensors (sliding windows, recurrent layers) cannot be padded, so
such a model generates one sequence at a time.
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
        """The logits processors that run after the repetition penalty and before the
        temperature (the engine applies both to all rows at once), in ``model.generate``'s
        order."""
        chosen = LogitsProcessorList()
        if self.no_repeat_ngram_size:
            chosen.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        return chosen

    def warpers(self) -> LogitsProcessorList:
        """The sampling warpers that follow the temperature, in ``model.generate``'s order."""
        chosen = LogitsProcessorList()
        if self.do_sample:
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
    warpers: LogitsProcessorList
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
        # a cache of plain key/value tensors can be padded to join others; any other (sliding
        # windows, recurrent layers) runs one sequence at a time
        self.paddable = all(type(layer) is DynamicLayer
                            for layer in DynamicCache(config=model.config).layers)
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
            sequences.append(Running(submission, index, sampling.processors(),
                                     sampling.warpers(), generator))
        with self.wake:
            running, waiting = len(self.running), len(self.waiting)
            if (self.max_waiting is not None
                    and running + waiting + n > self.max_running + self.max_waiting):
                raise QueueFull(f"{running} generating, {waiting} waiting")
            self.waiting.extend(sequences)
            self.wake.notify()
        return submission

    def submit_together(self, prompts: Sequence[tuple[Sequence[int], Sampling]]
                        ) -> list[Submission]:
        """Queue one sequence continuing each prompt at once, so that as many as there is
        room for join the batch in the same step (one prefill)."""
        with self.wake:  # the engine takes none of them before all are queued
            return [self.submit(ids, sampling) for ids, sampling in prompts]

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
        joining = self.admitted()
        if joining:
            try:
                self.prefill(joining)
            except Exception as error:  # these prompts' failure is their own
                for sequence in joining:
                    sequence.submission.updates.put(error)
        if self.running:
            self.decode()

    def admitted(self) -> list[Running]:
        """The waiting sequences that join the batch now, as many as there is room for
        (those cancelled while they waited end)."""
        room = (self.max_running if self.paddable else 1) - len(self.running)
        joining: list[Running] = []
        with self.wake:
            while self.waiting and len(joining) < room:
                sequence = self.waiting.popleft()
                if sequence.submission.cancelled.is_set():
                    sequence.end("cancelled")
                else:
                    joining.append(sequence)
        return joining

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """The next token's logits (float32) of each row, ``cache`` updated in place. ``mask``
        covers the cache's positions and then ``input_ids``' (0: left padding, whose
        positions are 0)."""
        positions = (mask.sum(dim=1, keepdim=True) - input_ids.shape[1] + torch.arange(
            input_ids.shape[1], device=mask.device)).clamp(min=0)
        with torch.inference_mode():
            output = self.model(input_ids=input_ids, attention_mask=mask,
                                position_ids=positions, use_cache=True,
                                **{self.cache_name: cache}, **self.last_logits)
        return output.logits[:, -1, :].to(torch.float32)

    def prefill(self, joining: list[Running]) -> None:
        """Prefill the prompts of ``joining`` in one forward pass, left-padded to the longest,
        and add them to the batch."""
        prompts = [sequence.submission.prompt_ids for sequence in joining]
        width = max(map(len, prompts))
        device = self.model.device
        prompt = torch.tensor([[0] * (width - len(ids)) + ids for ids in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts],
                            device=device)
        cache = DynamicCache(config=self.model.config)
        logits = self.forward(prompt, mask, cache)
        self.counters["prompt_tokens"] += sum(map(len, prompts))
        self.join(joining, cache, mask)
        self.advance(joining, logits)

    def decode(self) -> None:
        device = self.model.device
        last = torch.tensor([[s.tokens[-1]] for s in self.running], device=device)
        assert self.mask is not None
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.running), 1))], dim=1)
        logits = self.forward(last, mask, self.cache)
        self.mask = mask
        self.advance(list(self.running), logits)

    def join(self, joining: list[Running], cache: Any, mask: torch.Tensor) -> None:
        """Add prefilled sequences to the batch, padding the shorter side on the left."""
        self.running.extend(joining)
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
        tokens, logprobs = self.choose(sequences, logits)
        for sequence, token, logprob in zip(sequences, tokens, logprobs, strict=True):
            sequence.tokens.append(token)
            sequence.text = self.tokenizer.decode(sequence.tokens, skip_special_tokens=True)
            sampling = sequence.sampling
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

    def choose(self, sequences: list[Running], logits: torch.Tensor
               ) -> tuple[list[int], list[TokenLogprob | None]]:
        """Each row's next token as ``model.generate`` chooses it for that sequence alone (the
        processors in its order), read back to the host at once, and its logprob where the
        sequence asks for them."""
        with torch.inference_mode():  # the logits are inference tensors, changed in place
            chosen, logprobs = self.chosen(sequences, logits)
        tokens = chosen.tolist()
        return tokens, [None if top is None or logprobs is None
                        else token_logprob(logprobs[row], tokens[row], top)
                        for row, top in enumerate(sequence.sampling.logprobs
                                                  for sequence in sequences)]

    def chosen(self, sequences: list[Running], logits: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`choose`'s tokens, on the logits' device, and the log-softmax of the logits
        (None when no sequence asks for logprobs)."""
        asked = [sequence.sampling.logprobs for sequence in sequences]
        logprobs = (torch.log_softmax(logits, dim=-1)
                    if any(top is not None for top in asked) else None)
        scores = logits
        penalties = [sequence.sampling.repetition_penalty for sequence in sequences]
        if any(penalty != 1.0 for penalty in penalties):
            scores = repetition_penalised(
                scores, [s.submission.prompt_ids + s.tokens for s in sequences], penalties)
        for row, sequence in enumerate(sequences):
            if sequence.processors:
                ids = torch.tensor([sequence.submission.prompt_ids + sequence.tokens],
                                   device=logits.device)
                scores[row] = sequence.processors(ids, scores[row:row + 1])[0]
        temperatures = [s.sampling.temperature if s.sampling.do_sample else 1.0
                        for s in sequences]
        if any(temperature != 1.0 for temperature in temperatures):
            scores = scores / torch.tensor(temperatures, device=logits.device)[:, None]
        chosen = scores.argmax(dim=-1)
        for row, sequence in enumerate(sequences):
            if sequence.sampling.do_sample:
                warped = sequence.warpers(None, scores[row:row + 1])[0]
                chosen[row] = torch.multinomial(torch.softmax(warped, dim=-1), 1,
                                                generator=sequence.generator)[0]
        return chosen, logprobs


def repetition_penalised(scores: torch.Tensor, histories: list[list[int]],
                         penalties: list[float]) -> torch.Tensor:
    """``scores`` with the tokens of each row's history (its prompt and generated tokens)
    penalised as transformers' RepetitionPenaltyLogitsProcessor penalises them for that row
    alone: a positive score divided by the row's penalty, a negative one multiplied (a penalty
    of 1 leaves its row as it is); ids past the scores' vocabulary are left out."""
    vocabulary = scores.shape[1]
    width = max(map(len, histories))
    # each history padded with its own first token: scattered twice, the same value
    ids = torch.tensor([history + history[:1] * (width - len(history)) for history in histories],
                       device=scores.device).clamp(max=vocabulary)
    penalty = torch.tensor(penalties, device=scores.device)[:, None]
    padded = torch.nn.functional.pad(scores, (0, 1))  # the column ids past the vocabulary hit
    score = padded.gather(1, ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return padded.scatter(1, ids, score)[:, :vocabulary]


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


def token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s logprob in a row of ``logprobs`` and the ``top`` likeliest tokens'."""
    best = torch.topk(logprobs, top) if top else None
    pairs = () if best is None else tuple(zip(best.indices.tolist(), best.values.tolist(),
                                              strict=True))
    return TokenLogprob(token, float(logprobs[token]), pairs)
