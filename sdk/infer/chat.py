"""`sdk infer`: generate replies (decoding options, stop words, the model's window) to one
query or in a chat; what it loads is sdk/infer/load.py's."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from threading import Thread
from typing import Any, TextIO

import click

from sdk.config import GenerationArguments, InferArguments, changed_fields
from sdk.errors import SdkError
from sdk.infer.load import load_for_inference, with_system
from sdk.infer.stops import finish_reply, stop_tokens
from sdk.models.rope import context_window
from sdk.registry import Registry
from sdk.templates.engine import Template

Messages = list[dict[str, str]]


def generation_options(template: Template, tokenizer: Any,
                       args: GenerationArguments) -> tuple[dict[str, Any], list[str]]:
    """``model.generate``'s options from the decoding flags, and the stop words that
    :func:`finish_reply` cuts the reply at."""
    stop_ids, stop_strings = stop_tokens(template, tokenizer)
    options: dict[str, Any] = dict(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        repetition_penalty=args.repetition_penalty, eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id)
    if args.do_sample:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if stop_strings:
        options.update(stop_strings=stop_strings, tokenizer=tokenizer)
    return options, stop_strings


def positions_taken(model: Any, prompt_tokens: int) -> int:
    """The positions a prompt of ``prompt_tokens`` takes: with a prompt-learning adapter's
    virtual tokens."""
    peft_config = getattr(model, "active_peft_config", None)
    virtual = (peft_config.num_virtual_tokens
               if peft_config is not None and peft_config.is_prompt_learning else 0)
    return prompt_tokens + virtual


def window_room(model: Any) -> int | None:
    """The positions of the model's window left for a prompt and its reply (less a
    prompt-learning adapter's virtual tokens); None without a known window."""
    window = context_window(model.config)
    return None if window is None else window - positions_taken(model, 0)


def reply_budget(model: Any, prompt_tokens: int, max_new_tokens: int) -> int:
    """``max_new_tokens``, or fewer where the model's window ends first (past it a model
    answers garbage); a prompt that fills the window is an error."""
    window = context_window(model.config)
    if window is None:
        return max_new_tokens
    taken = positions_taken(model, prompt_tokens)
    if taken >= window:
        virtual = taken - prompt_tokens
        counted = f" (and the adapter's {virtual} virtual tokens)" if virtual else ""
        raise SdkError(f"The prompt is {prompt_tokens} tokens{counted}, and the model answers "
                       f"within {window} (its window, rope scaling included): shorten it.")
    return min(max_new_tokens, window - taken)


def prompt_and_options(model: Any, tokenizer: Any, template: Template, messages: Messages,
                       args: GenerationArguments) -> tuple[Any, dict[str, Any], list[str]]:
    """The prompt of ``messages`` on the model's device, ``model.generate``'s options (the
    reply's budget within the model's window) and the stop words to cut the reply at."""
    inputs = template.tokenize_prompt(tokenizer, messages).to(model.device)
    options, stop_strings = generation_options(template, tokenizer, args)
    options["max_new_tokens"] = reply_budget(model, inputs["input_ids"].shape[1],
                                             options["max_new_tokens"])
    return inputs, options, stop_strings


def generate(model: Any, tokenizer: Any, template: Template, messages: Messages,
             args: GenerationArguments, out: TextIO | None = None) -> str:
    """The assistant's reply to ``messages``; streamed to ``out`` while generated if given."""
    inputs, options, stop_strings = prompt_and_options(model, tokenizer, template, messages,
                                                       args)
    if out is None:
        output = model.generate(**inputs, **options)
        reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                 skip_special_tokens=True)
    else:
        pieces = []
        for piece in StreamedReply(model, tokenizer, inputs, options):
            pieces.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        reply = "".join(pieces)
    return finish_reply(reply, stop_strings)


class StreamedReply:
    """``model.generate`` in a thread of its own, read while it generates: iterating gives
    the reply's text in pieces (transformers' ``TextIteratorStreamer``); afterwards
    ``output`` holds what ``model.generate`` returned. A failure in ``model.generate`` is
    raised to the reader; a reader that stops early waits for the generation to end."""

    def __init__(self, model: Any, tokenizer: Any, inputs: Any, options: dict[str, Any]):
        self.model, self.tokenizer, self.inputs, self.options = model, tokenizer, inputs, options
        self.output: Any = None

    def __iter__(self) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True)
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                self.output = self.model.generate(**self.inputs, **self.options,
                                                  streamer=streamer)
            except BaseException as error:  # handed to the reading thread below
                failure.append(error)
                streamer.end()  # without this the reader waits forever

        worker = Thread(target=produce)
        worker.start()
        try:
            yield from streamer
        finally:  # one generation at a time, even when the reader leaves early
            worker.join()
        if failure:
            raise failure[0]


# Flags of batch prediction (--dataset, --val-dataset-from-run) that a chat or --query ignores
PREDICTION_FLAGS = ("predictions_file", "batch_size", "truncate_long_prompts")


def run_infer(args: InferArguments, registry: Registry) -> None:
    from transformers import set_seed

    stray = [f"--{name.replace('_', '-')}" for name in changed_fields(args, PREDICTION_FLAGS)]
    if stray:
        verb = "applies" if len(stray) == 1 else "apply"
        raise SdkError(f"{', '.join(stray)} {verb} to batch prediction; add --dataset (or "
                       "--val-dataset-from-run), or leave them out to chat or ask --query.")
    if args.num_beams > 1 and args.stream:
        click.echo(f"[sdk] --num-beams {args.num_beams}: replies are printed when complete "
                   "(beam search picks the reply at the end, so it cannot stream).", err=True)
        args = dataclasses.replace(args, stream=False)
    set_seed(args.seed)
    if args.infer_backend == "vllm":
        from sdk.infer.vllm_backend import VllmEngine

        if args.stream:
            click.echo("[sdk] --infer-backend vllm: replies are printed when complete.",
                       err=True)
            args = dataclasses.replace(args, stream=False)
        engine = VllmEngine.load(args, registry)
        template = engine.template

        def answer(template: Template, messages: Messages) -> str:
            return engine.replies(template, [messages], args)[0]
    else:
        model, tokenizer, template = load_for_inference(args, registry)

        def answer(template: Template, messages: Messages) -> str:
            return generate(model, tokenizer, template, messages, args,
                            sys.stdout if args.stream else None)
    if args.query is not None:
        reply = answer(template, [{"role": "user", "content": args.query}])
        if not args.stream:
            click.echo(reply)
        return
    chat(template, args, answer)


CHAT_HELP = """\
Commands (anything else is a message to the model):
  clear         forget the conversation so far
  system TEXT   use TEXT as the system prompt, and start a new conversation
  system        show the system prompt
  help          show this list
  exit, quit    leave (Ctrl-D too)"""


def terminal_prompt(text: str) -> str:
    """``text`` to show before a line on stdout, when that is a terminal; otherwise it goes
    to stderr and "" is shown, so that piped stdout holds only the replies."""
    if sys.stdout.isatty():
        return text
    click.echo(text, nl=False, err=True)
    return ""


def chat(template: Template, args: InferArguments,
         answer: Callable[[Template, Messages], str]) -> None:
    """A multi-turn conversation on stdin/stdout, each reply ``answer``'s (streamed to stdout
    by it with --stream); the commands of CHAT_HELP between turns."""
    click.echo("Chat: type a message; 'help' lists the commands, 'exit' quits.", err=True)
    history: Messages = []
    while True:
        try:
            line = input(terminal_prompt("<<< "))
        except (EOFError, KeyboardInterrupt):
            break
        word, _, rest = line.strip().partition(" ")
        command, rest = word.lower(), rest.strip()
        if command in ("exit", "quit") and not rest:
            break
        if command == "help" and not rest:
            click.echo(CHAT_HELP, err=True)
        elif command == "clear" and not rest:
            history = []
            click.echo("(history cleared)", err=True)
        elif command == "system" and not rest:
            shown = template.spec.default_system
            click.echo("(no system prompt)" if shown is None else f"system: {shown}", err=True)
        elif command == "system":
            changed = with_system(template, rest)
            try:
                changed.render([{"role": "user", "content": "Hi"}], True)
            except ValueError as error:
                click.echo(f"(template '{template.spec.name}' does not take this system "
                           f"prompt: {error})", err=True)
                continue
            template, history = changed, []
            click.echo("(system prompt set, history cleared)", err=True)
        elif line.strip():
            messages = history + [{"role": "user", "content": line}]
            sys.stdout.write(terminal_prompt(">>> "))
            try:
                reply = answer(template, messages)
            except SdkError as error:
                click.echo(f"\n({error} 'clear' forgets the conversation so far.)", err=True)
                continue
            if not args.stream:
                click.echo(reply)
            history = messages + [{"role": "assistant", "content": reply}]
