"""Inference: load a checkpoint (or a model type) and answer one query or chat."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any, TextIO

import click

from sdk.config import GenerationArguments, InferArguments, changed_fields
from sdk.errors import SdkError
from sdk.models.loader import load_model, model_types_for_folder, torch_dtype
from sdk.models.rope import context_window, quiet_window_reminder
from sdk.registry import Registry
from sdk.runs.checkpoint_files import check_checkpoint
from sdk.runs.run_dir import ARGS_FILE, find_checkpoint, read_saved_arguments
from sdk.specs import resolve_callable
from sdk.templates.engine import Template
from sdk.tuners import check_requires

Messages = list[dict[str, str]]
# In the sft_args.json of a folder written by `sdk export`: where it came from, and how.
EXPORTED = "exported_from"


def is_export(folder: Path) -> bool:
    try:
        return EXPORTED in json.loads((folder / ARGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def checkpoint_or_export(path: str) -> Path:
    """What --ckpt-dir names: a folder written by `sdk export` (any name), else a complete
    checkpoint, or the newest complete one of a run folder; refused if a file is damaged."""
    folder = Path(path)
    if (folder / "config.json").is_file() and not (folder / ARGS_FILE).is_file():
        raise SdkError(f"--ckpt-dir '{path}' is a plain model folder (no {ARGS_FILE}), not a "
                       f"checkpoint of `sdk sft`; `sdk infer` takes it as --model-id-or-path "
                       f"'{path}' with its --model-type (`sdk models` lists them).")
    if not is_export(folder):
        folder = find_checkpoint(path, "--ckpt-dir")
    check_checkpoint(folder)
    return folder


def whole_model_rope_refusal(checkpoint: Path, model_type: str) -> str:
    """Why --rope-scaling/--rope-factor cannot apply to a checkpoint holding the whole model,
    and what can."""
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    start = (f"--rope-scaling and --rope-factor stretch a base model as it loads; {checkpoint} "
             "holds a whole model, whose config.json keeps its positions")
    if kind != "default":
        return (f"{start}: {kind}, factor {rope.get('factor')}, as it was trained; they cannot "
                "be changed. Leave the flags out.")
    return (f"{start} unstretched. Leave the flags out, or load it as a model folder: "
            f"--model-type {model_type} --model-id-or-path {checkpoint} with them.")


def load_for_inference(args: GenerationArguments, registry: Registry) -> tuple[Any, Any, Template]:
    """The model (on the GPU if there is one, in eval mode), tokenizer and template that
    --ckpt-dir or --model-type name; with --merge-lora the adapter merged into the base."""
    if args.merge_lora:
        from sdk.export import load_merged  # sdk.export imports this module

        model, tokenizer, template = load_merged(args, registry)
        quiet_window_reminder(model.config)
        return model, tokenizer, template
    if args.ckpt_dir:
        checkpoint = checkpoint_or_export(args.ckpt_dir)
        saved = read_saved_arguments(checkpoint / ARGS_FILE)
        if args.model_type and args.model_type != saved["model_type"]:
            raise SdkError(f"--model-type {args.model_type} differs from the model type "
                           f"{saved['model_type']} that {checkpoint} was trained as; leave out "
                           "--model-type (a checkpoint knows its own).")
        spec = registry.get("models", saved["model_type"])
        tuner = registry.get("tuners", saved["sft_type"])
        check_requires(tuner)
        if not tuner.trains_adapters and (args.rope_scaling or args.rope_factor):
            raise SdkError(whole_model_rope_refusal(checkpoint, saved["model_type"]))
        template_spec = registry.get("templates", args.template or saved["template"])
        system = args.system if args.system is not None else saved.get("system")
        trained_from = saved.get("model_id_or_path")
        if (not args.model_id_or_path and isinstance(trained_from, str)
                and not Path(trained_from).is_absolute() and not Path(trained_from).is_dir()):
            # an older sdk saved the path as given, relative to the folder it was trained in
            raise SdkError(f"{checkpoint} was trained from the model folder '{trained_from}', "
                           "saved relative to the folder `sdk sft` ran in: run this from that "
                           "folder, or give --model-id-or-path.")
        base_args = dataclasses.replace(
            args, model_id_or_path=args.model_id_or_path or saved.get("model_id_or_path"),
            trust_remote_code=args.trust_remote_code or saved.get("trust_remote_code", False),
            hub=args.hub or saved.get("hub"),
            rope_scaling=args.rope_scaling or saved.get("rope_scaling"),
            rope_factor=args.rope_factor or saved.get("rope_factor"),
            quantization_bit=(args.quantization_bit if args.quantization_bit is not None
                              else saved.get("quantization_bit")))
        click.echo(f"[sdk] loading {checkpoint}", err=True)
        model = resolve_callable(tuner.load)(
            checkpoint, lambda: load_model(spec, base_args, registry)[0],
            torch_dtype(args.dtype))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            str(checkpoint), trust_remote_code=base_args.trust_remote_code)
    elif args.model_type:
        spec = registry.get("models", args.model_type)
        template_spec = registry.get("templates", args.template or spec.template)
        system = args.system
        model, tokenizer = load_model(spec, args, registry)
    else:
        given = (" (--model-id-or-path gives the weights; --model-type says what they are)."
                 + model_types_for_folder(args.model_id_or_path, registry)
                 if args.model_id_or_path else ".")
        raise SdkError(f"Give --ckpt-dir (a checkpoint from `sdk sft`) or --model-type{given}")
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    quiet_window_reminder(model.config)
    template = Template.for_tokenizer(template_spec, tokenizer)
    return model, tokenizer, template if system is None else with_system(template, system)


def with_system(template: Template, system: str) -> Template:
    """``template`` with ``system`` as its default system prompt."""
    return Template(dataclasses.replace(template.spec, default_system=system),
                    template.special_tokens)


def stop_tokens(template: Template, tokenizer: Any) -> tuple[list[int], list[str]]:
    """Where a reply ends: the ids of the stop words that are single tokens and the eos id,
    and the stop words that are not single tokens."""
    stop_ids, stop_strings = [], []
    for word in template.stop_words():
        ids = tokenizer.convert_tokens_to_ids([word]) if word in tokenizer.get_vocab() else []
        (stop_ids.extend(ids) if ids else stop_strings.append(word))
    if tokenizer.eos_token_id is not None:
        stop_ids.append(tokenizer.eos_token_id)
    return sorted(set(stop_ids)), stop_strings


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


def finish_reply(reply: str, stop_strings: list[str]) -> str:
    for word in stop_strings:
        reply = reply.split(word)[0]
    # a reply cut at --max-new-tokens inside a character decodes its start as U+FFFD
    return reply.rstrip("\ufffd").strip()


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


def generate(model: Any, tokenizer: Any, template: Template, messages: Messages,
             args: GenerationArguments, out: TextIO | None = None) -> str:
    """The assistant's reply to ``messages``; streamed to ``out`` while generated if given."""
    inputs = template.tokenize_prompt(tokenizer, messages).to(model.device)
    options, stop_strings = generation_options(template, tokenizer, args)
    options["max_new_tokens"] = reply_budget(model, inputs["input_ids"].shape[1],
                                             options["max_new_tokens"])
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
    model, tokenizer, template = load_for_inference(args, registry)
    if args.query is not None:
        reply = generate(model, tokenizer, template, [{"role": "user", "content": args.query}],
                         args, sys.stdout if args.stream else None)
        if not args.stream:
            click.echo(reply)
        return
    chat(model, tokenizer, template, args)


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


def chat(model: Any, tokenizer: Any, template: Template, args: InferArguments) -> None:
    """A multi-turn conversation on stdin/stdout; the commands of CHAT_HELP between turns."""
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
                reply = generate(model, tokenizer, template, messages, args,
                                 sys.stdout if args.stream else None)
            except SdkError as error:
                click.echo(f"\n({error} 'clear' forgets the conversation so far.)", err=True)
                continue
            if not args.stream:
                click.echo(reply)
            history = messages + [{"role": "assistant", "content": reply}]
