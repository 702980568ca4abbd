"""Batch prediction: a reply for every row of a dataset, or for the rows a run held out, into a
predictions file, and ROUGE/BLEU against the rows' own replies next to it.

A predictions file has one JSON object a line: ``tools`` (the tool schemas), ``system`` and
``history`` (the messages before the query, tool calls and results included) when the row has
them, ``query`` (the last user message), ``response`` (generated) and ``label`` (the row's
reply; null when it has none). Lines are written whole, a batch at a
time, and flushed, so a run that stops leaves complete rows and at most one cut line; run again
with the same file, the cut line is dropped and only the missing rows are generated.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sdk.config import InferArguments, SftArguments
from sdk.errors import SdkError
from sdk.eval.metrics import METRICS
from sdk.eval.predictions import evaluate_file, write_metrics
from sdk.options import arguments_class
from sdk.registry import Registry
from sdk.templates.engine import Template, uses_tools

Messages = list[dict[str, str]]
# What a prompt keeps of a row's messages: tool calls and results, the schemas on the first
# message and earlier replies' reasoning, so that a template renders the prompt as it trained it.
PROMPT_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "tools", "reasoning_content")
Loaded = tuple[Any, Any, Template]  # model, tokenizer, template
PREDICTIONS_DIR = "predictions"


@dataclass(frozen=True)
class PromptRow:
    """What the model is asked (system, history, query) and the reply the data gives."""

    prompt: Messages
    label: str | None

    def fields(self) -> dict[str, Any]:
        """The row as written to a predictions file, without the response."""
        row: dict[str, Any] = {}
        turns = [{key: json.loads(value) if key == "tool_calls" else value
                  for key, value in message.items()} for message in self.prompt]
        tools = turns[0].pop("tools", None)
        if tools:
            row["tools"] = json.loads(tools)
        if turns[0]["role"] == "system":
            row["system"] = turns[0]["content"]
            turns = turns[1:]
        if len(turns) > 1:
            row["history"] = turns[:-1]
        return {**row, "query": turns[-1]["content"], "label": self.label}

    def written(self, response: str) -> dict[str, Any]:
        fields = self.fields()
        label = fields.pop("label")
        return {**fields, "response": response, "label": label}


def prompt_rows(conversations: Sequence[Sequence[dict[str, str]]]) -> list[PromptRow]:
    """Each conversation as a prompt (everything before its last reply) and that reply."""
    rows = []
    for number, conversation in enumerate(conversations, start=1):
        messages = [{key: m[key] for key in PROMPT_FIELDS if m.get(key) is not None}
                    for m in conversation]
        reply = messages.pop() if messages[-1]["role"] == "assistant" else None
        if reply is not None and reply.get("tool_calls"):
            # a reply is scored as text, and a call's text is the template's rendering of it,
            # whose special tokens the decoded reply leaves out
            raise SdkError(f"Row {number} of the data ends with a tool call, which predictions "
                           "cannot score as text yet: predict on rows whose last reply is "
                           "text (tool calls and results before it are kept in the prompt).")
        label = reply["content"] if reply is not None else None
        if not messages or messages[-1]["role"] != "user":
            raise SdkError(f"Row {number} of the data does not end with a user message (then, "
                           "optionally, the reply to compare with): there is nothing to answer.")
        rows.append(PromptRow(messages, label))
    return rows


def completed_rows(path: Path, rows: Sequence[PromptRow]) -> int:
    """How many of ``rows`` the predictions file already holds, in order. A last line cut
    short by a stop is removed; a line that belongs to other data is an error."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    count = 0

    def check(number: int, row: Any) -> None:
        nonlocal count
        ours = (count < len(rows) and isinstance(row, dict) and isinstance(row.get("response"), str)
                and {k: v for k, v in row.items() if k != "response"} == rows[count].fields())
        if not ours:
            raise SdkError(f"{path}:{number} is not the prediction of row {count + 1} of this "
                           f"data: '{path}' holds something else (other predictions, or not "
                           "predictions at all). Give another --predictions-file.")
        count += 1

    for number, line in enumerate(lines, start=1):
        if line.strip():
            check(number, parse(line))
    if tail.strip():
        row = parse(tail)
        if row is None:  # a JSON object cut anywhere is not valid JSON
            with path.open("r+b") as handle:
                handle.truncate(len(data) - len(tail))
            click.echo(f"[sdk] {path}:{len(lines) + 1}: dropped a line cut short "
                       f"({len(tail)} bytes).", err=True)
        else:  # whole but for its newline
            check(len(lines) + 1, row)
            with path.open("ab") as handle:
                handle.write(b"\n")
    return count


def parse(line: bytes) -> Any:
    """A JSON line's value; None if it is not JSON."""
    try:
        return json.loads(line)
    except ValueError:  # bad UTF-8 too
        return None


@contextmanager
def padded_on_left(tokenizer: Any) -> Iterator[None]:
    """Generation continues each row from its last token, so padding goes before the prompt.
    A tokenizer without a pad token pads with its eos token."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


def batch_inputs(tokenizer: Any, template: Template, prompts: Sequence[Messages],
                 room: int | None = None, keep: int = 0, first_row: int = 1) -> Any:
    """Each prompt encoded as for one reply, then padded on the left together (call inside
    :func:`padded_on_left`). Of a prompt of ``room`` tokens or more (it leaves the reply no
    position), only the last ``keep``; rows ``first_row``... so cut are named on stderr."""
    encoded = []
    for row, prompt in enumerate(prompts, first_row):
        tokens = {key: value[0].tolist()
                  for key, value in template.tokenize_prompt(tokenizer, prompt).items()}
        length = len(tokens["input_ids"])
        if room is not None and length >= room:
            tokens = {key: value[-keep:] for key, value in tokens.items()}
            click.echo(f"[sdk] row {row}: the prompt's first {length - keep} of {length} tokens "
                       "cut (--truncate-long-prompts).", err=True)
        encoded.append(tokens)
    return tokenizer.pad(encoded, return_tensors="pt")


def generate_batch(model: Any, tokenizer: Any, template: Template, prompts: Sequence[Messages],
                   args: InferArguments, first_row: int = 1) -> list[str]:
    """The reply to each prompt (rows ``first_row``... in messages), generated together,
    each stopping where the model's window ends after its own prompt: by the
    continuous-batching engine (a row leaves the batch as soon as it ends), or by
    ``model.generate`` for beam search and adapters of virtual tokens, which the engine does
    not take."""
    from transformers import StoppingCriteriaList

    from sdk.infer.chat import generation_options, positions_taken, reply_budget, window_room
    from sdk.infer.stops import finish_reply
    from sdk.models.rope import quiet_window_reminder

    with padded_on_left(tokenizer):
        options, stop_strings = generation_options(template, tokenizer, args)
        room = window_room(model) if args.truncate_long_prompts else None
        # room for the whole reply, or half the window when the reply would take more; at least
        # one token (where virtual tokens fill the window, reply_budget refuses the row)
        keep = max(room - options["max_new_tokens"], room // 2, 1) if room is not None else 0
        inputs = batch_inputs(tokenizer, template, prompts, room, keep,
                              first_row).to(model.device)
        if inputs["attention_mask"].min() == 0:
            quiet_window_reminder(model.config, padded=True)
        budgets = []
        for row, length in enumerate(inputs["attention_mask"].sum(dim=1).tolist(), first_row):
            try:
                budgets.append(reply_budget(model, length, options["max_new_tokens"]))
            except SdkError as error:
                raise SdkError(f"Row {row}: {error}") from None
        if args.num_beams == 1 and not positions_taken(model, 0):
            replies = engine_replies(model, tokenizer, inputs, budgets, options)
        else:
            if min(budgets) < options["max_new_tokens"]:
                options.update(max_new_tokens=max(budgets),
                               stopping_criteria=StoppingCriteriaList(
                                   [RowBudgets(budgets, inputs["input_ids"].shape[1])]))
            output = model.generate(**inputs, **options)
            replies = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:],
                                             skip_special_tokens=True)
    return [finish_reply(reply, stop_strings) for reply in replies]


def engine_replies(model: Any, tokenizer: Any, inputs: Any, budgets: Sequence[int],
                   options: dict[str, Any]) -> list[str]:
    """The decoded reply to each row of the left-padded ``inputs``, generated together by
    the continuous-batching engine, each up to its own budget of tokens."""
    from sdk.infer.engine import Engine, Sampling

    engine = Engine(model, tokenizer, max_running=len(budgets))
    try:
        submissions = engine.submit_together([
            (ids[mask.bool()].tolist(), Sampling.of(options, max_tokens=budget))
            for ids, mask, budget in zip(inputs["input_ids"], inputs["attention_mask"],
                                         budgets, strict=True)])
        return [list(submission.steps())[-1].text for submission in submissions]
    finally:
        engine.close()


class RowBudgets:
    """A stopping criterion (transformers' ``StoppingCriteria`` protocol) that ends each row
    of a batch once it has generated its own number of tokens, so a row's reply does not
    depend on the other prompts of its batch."""

    def __init__(self, budgets: Sequence[int], prompt_width: int):
        self.budgets, self.prompt_width = budgets, prompt_width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        budgets = torch.tensor(self.budgets, device=input_ids.device)
        beams = input_ids.shape[0] // len(self.budgets)  # beam search: each row's beams
        return budgets.repeat_interleave(beams) <= input_ids.shape[1] - self.prompt_width


# How a run stopped at a prompt past the window goes on (sdk sft names its own command)
CUT_LONG_PROMPTS = "rerun with --truncate-long-prompts true to cut such prompts' start"


def append_predictions(loaded: Loaded, rows: Sequence[PromptRow], args: InferArguments,
                       path: Path, first: int = 0, go_on: str = CUT_LONG_PROMPTS) -> None:
    """Generate ``rows[first:]`` ``args.batch_size`` at a time, each batch appended whole
    (``path``'s folder exists: ``check_settings`` made it); ``go_on`` says how to finish the
    file after a row that does not fit."""
    model, tokenizer, template = loaded  # with --infer-backend vllm, model is a VllmEngine
    check_prompts(template, rows[first:], first + 1)
    started = time.monotonic()
    with path.open("a", encoding="utf-8") as out:
        for start in range(first, len(rows), args.batch_size):
            batch = rows[start:start + args.batch_size]
            prompts = [row.prompt for row in batch]
            try:
                replies = (model.replies(template, prompts, args) if args.infer_backend == "vllm"
                           else generate_batch(model, tokenizer, template, prompts, args,
                                               first_row=start + 1))
            except SdkError as error:
                raise SdkError(f"{error} The replies to the rows before its batch are in "
                               f"{path}; remove or shorten the row, or {go_on}.") from None
            out.write("".join(json.dumps(row.written(reply), ensure_ascii=False) + "\n"
                              for row, reply in zip(batch, replies, strict=True)))
            out.flush()
            done = start + len(batch)
            rate = (done - first) / max(time.monotonic() - started, 1e-9)
            click.echo(f"[sdk] predicted {done}/{len(rows)} rows ({rate:.2f} rows/s)", err=True)


def check_prompts(template: Template, rows: Sequence[PromptRow], first_row: int) -> None:
    """Refuse, before any reply is generated, a row the template cannot prompt (tools with a
    template that has no tool format)."""
    for number, row in enumerate(rows, first_row):
        if uses_tools(row.prompt):
            try:
                template.render(row.prompt, add_generation_prompt=True)
            except ValueError as error:
                raise SdkError(f"Row {number} of the data cannot be prompted with template "
                               f"'{template.spec.name}': {error}.") from None


# What decides the replies besides the model and the rows: a file resumed with other values
# would mix them. Sampling adds its own. (--truncate-long-prompts changes only prompts that
# would stop the run, so a file stopped at one may be finished with it.)
GENERATION_FLAGS = ("template", "system", "max_new_tokens", "do_sample", "repetition_penalty",
                    "num_beams", "no_repeat_ngram_size")
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "seed")


def check_settings(path: Path, settings: dict[str, Any], done: int) -> None:
    """Keep the model and generation flags of ``path``'s predictions beside it
    (``OUT.settings.json``); refuse to add replies made with others to the ``done`` rows."""
    recorded = path.with_suffix(".settings.json")
    if done and recorded.is_file():
        before = json.loads(recorded.read_text(encoding="utf-8"))
        changed = [f"{name} ({before.get(name)!r} there, {value!r} now)"
                   for name, value in settings.items() if before.get(name) != value]
        if changed:
            raise SdkError(f"{path} holds replies made with other settings: "
                           f"{'; '.join(changed)}. Give another --predictions-file, or delete "
                           f"{path} and {recorded} to predict again.")
    recorded.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")


def predict(rows: Sequence[PromptRow], path: Path, load: Callable[[], Loaded],
            args: InferArguments, model: str,
            go_on: str = CUT_LONG_PROMPTS) -> dict[str, float | str] | None:
    """Predict the rows ``path`` does not hold yet (``load`` is called only if there are
    any) with ``model`` (what the replies come from: a checkpoint, a model type), then score
    the file when every row has a reply to compare with; the scores are written to
    ``OUT.metrics.json`` and returned."""
    from transformers import set_seed

    if path.is_dir():
        raise SdkError(f"--predictions-file '{path}' is a folder; give a file name in it, "
                       f"e.g. {path / 'predictions.jsonl'}.")
    done = completed_rows(path, rows)
    flags = GENERATION_FLAGS + (SAMPLING_FLAGS if args.do_sample else ())
    check_settings(path, {"model": model, **{name: getattr(args, name) for name in flags}}, done)
    if done == len(rows):
        click.echo(f"[sdk] {path} holds all {done} rows already.", err=True)
    elif done:
        click.echo(f"[sdk] {path} holds {done} of {len(rows)} rows; predicting the rest.",
                   err=True)
    if done < len(rows):
        loaded = load()
        set_seed(args.seed)
        append_predictions(loaded, rows, args, path, done, go_on)
    click.echo(f"[sdk] predictions: {path}", err=True)
    unlabelled = sum(row.label is None for row in rows)
    if unlabelled:
        click.echo(f"[sdk] no metrics: {unlabelled} rows have no reply to compare with.",
                   err=True)
        return None
    scores = evaluate_file(path, "--predictions-file")
    target = write_metrics(path, scores)
    shown = ", ".join(f"{name} {scores[name]:.2f}" for name in METRICS)
    click.echo(f"[sdk] metrics ({scores['method']}): {shown} ({target})", err=True)
    return scores


def default_predictions_file(checkpoint: Path, data_name: str) -> Path:
    """``<run>/predictions/<checkpoint>-<data>.jsonl``: next to the checkpoint, not in it (a
    checkpoint may be rotated away), and one per checkpoint, so resuming never mixes two."""
    return checkpoint.parent / PREDICTIONS_DIR / f"{checkpoint.name}-{data_name}.jsonl"


def data_name(names: Sequence[str]) -> str:
    """A file-name part for ``--dataset`` entries: names, or the stems of files."""
    return "+".join(re.sub(r"[^\w#.-]+", "_", Path(name).stem) for name in names)


def run_arguments(checkpoint: Path, registry: Registry) -> SftArguments:
    """The SftArguments a checkpoint was trained with (the plugins' options it saved too: a
    record format may read its own)."""
    from sdk.runs.run_dir import ARGS_FILE, read_saved_arguments

    saved = read_saved_arguments(checkpoint / ARGS_FILE)
    cls = arguments_class(registry)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in saved.items() if key in known})


def held_out_of_run(checkpoint: Path, registry: Registry) -> list[Messages]:
    """The rows the checkpoint's run held out, chosen by the code that chose them then."""
    from sdk.data.arrow import training_and_held_out

    args = run_arguments(checkpoint, registry)
    if not args.val_dataset and not args.split_dataset_ratio:
        raise SdkError(f"The run of {checkpoint} held out no rows (it had no --val-dataset or "
                       "--split-dataset-ratio); predict with --dataset instead.")
    _, held_out = training_and_held_out(args, registry, [] if args.skip_bad_records else None)
    return held_out["messages"]


def data_arguments(args: InferArguments, registry: Registry) -> SftArguments:
    """``args`` as the dataset readers and preprocessors expect them (SftArguments, the
    plugins' options at their defaults)."""
    cls = arguments_class(registry)
    shared = {f.name for f in dataclasses.fields(cls)}
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)
                  if f.name in shared})


def run_predict(args: InferArguments, registry: Registry) -> dict[str, float | str] | None:
    """``sdk infer --dataset D`` / ``--val-dataset-from-run``."""
    from sdk.data.conversations import load_conversations
    from sdk.infer.load import checkpoint_or_export

    if args.query is not None:
        raise SdkError("--query asks one question; --dataset and --val-dataset-from-run "
                       "predict many. Give one of them.")
    if args.dataset and args.val_dataset_from_run:
        raise SdkError("Give --dataset or --val-dataset-from-run, not both.")
    if args.infer_backend == "vllm":  # before any data is read or file written
        from sdk.infer.vllm_backend import check_vllm

        check_vllm(args)
        if args.truncate_long_prompts:
            raise SdkError("--truncate-long-prompts: not with --infer-backend vllm (vLLM "
                           "refuses a prompt past the window); leave it out, or use "
                           "--infer-backend transformers.")
    checkpoint = checkpoint_or_export(args.ckpt_dir) if args.ckpt_dir else None
    if args.val_dataset_from_run:
        if checkpoint is None:
            raise SdkError("--val-dataset-from-run predicts the rows a run held out; give the "
                           "run's checkpoint with --ckpt-dir.")
        rows, name = prompt_rows(held_out_of_run(checkpoint, registry)), "val"
    else:
        rows = prompt_rows(load_conversations(args.dataset, registry,
                                              data_arguments(args, registry)))
        name = data_name(args.dataset)
    if args.predictions_file:
        path = Path(args.predictions_file)
    elif checkpoint is not None:
        path = default_predictions_file(checkpoint, name)
    else:
        raise SdkError("Give --predictions-file: without --ckpt-dir there is no run folder to "
                       "write predictions to.")
    model = (str(checkpoint.resolve()) if checkpoint is not None
             else f"{args.model_type} {args.model_id_or_path or ''}".strip())
    return predict(rows, path, lambda: loaded_for_prediction(args, registry), args, model)


def loaded_for_prediction(args: InferArguments, registry: Registry) -> Loaded:
    """The model, tokenizer and template that batch prediction generates with: with
    --infer-backend vllm, vLLM's engine in the model's place."""
    from sdk.infer.load import load_for_inference

    if args.infer_backend != "vllm":
        return load_for_inference(args, registry)
    from sdk.infer.vllm_backend import VllmEngine

    engine = VllmEngine.load(args, registry)
    return engine, engine.tokenizer, engine.template


def predict_held_out(model: Any, tokenizer: Any, template: Template, held_out: Any,
                     checkpoint: Path, args: SftArguments) -> dict[str, float] | None:
    """``sdk sft --predict-with-generate``: greedy replies for the held-out rows, into the
    file ``sdk infer --ckpt-dir CHECKPOINT --val-dataset-from-run`` uses."""
    model.eval()
    settings = InferArguments(batch_size=args.batch_size, seed=args.seed,
                              max_new_tokens=args.max_new_tokens)
    finish = (f"finish the file with `sdk infer --ckpt-dir {checkpoint} --val-dataset-from-run "
              f"true --max-new-tokens {args.max_new_tokens} --truncate-long-prompts true`")
    return predict(prompt_rows(held_out["messages"]), default_predictions_file(checkpoint, "val"),
                   lambda: (model, tokenizer, template), settings, str(checkpoint.resolve()),
                   finish)
