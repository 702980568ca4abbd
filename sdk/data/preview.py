"""`sdk datasets preview`: samples as the model sees them, with the trained spans marked, and
the distribution of their lengths."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import click

from sdk.config import ModelArguments, PreviewArguments
from sdk.data.conversations import load_conversations
from sdk.data.report import Distribution
from sdk.errors import SdkError
from sdk.registry import Registry, model_template
from sdk.templates.engine import Template, with_thinking

TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"
MEASURED_ROWS = 10_000  # enough for the shape of the distribution, fast on any dataset
TRUNCATED = {"delete": "leaves out", "truncation_left": "cuts at the start",
             "truncation_right": "cuts at the end"}


def marked(template: Template, messages: Sequence[dict[str, str]], loss_scope: str) -> str:
    """The rendered conversation with each trained span between [[ and ]]."""
    text, in_span = "", False
    for piece, trained in template.pieces(messages, loss_scope=loss_scope):
        if piece and trained != in_span:
            text += TRAINED_OPEN if trained else TRAINED_CLOSE
            in_span = trained
        text += piece
    return text + (TRAINED_CLOSE if in_span else "")


def length_summary(lengths: Sequence[int], unit: str, max_length: int,
                   truncation_strategy: str) -> str:
    summary = f"{len(lengths)} rows, {unit}: {Distribution.of(lengths).text()}"
    if unit == "tokens" and max_length > 0:
        summary += (f"; {sum(n > max_length for n in lengths)} longer than --max-length, "
                    f"which training {TRUNCATED[truncation_strategy]} (--truncation-strategy "
                    f"{truncation_strategy})")
    return summary


def run_preview(args: PreviewArguments, registry: Registry, count: int) -> None:
    from sdk.models.loader import load_tokenizer

    if not args.dataset:
        raise SdkError("Name a dataset to preview: sdk datasets preview NAME.")
    if not (args.model_type or args.template):
        raise SdkError("Give --model-type (token lengths, the model's template) or --template.")
    spec = registry.get("models", args.model_type) if args.model_type else None
    template_spec = model_template(registry, spec, args.template)
    if args.system is not None:
        template_spec = dataclasses.replace(template_spec, default_system=args.system)
    template_spec = with_thinking(template_spec, args.enable_thinking)
    skipped: list[str] | None = [] if args.skip_bad_records else None
    conversations = load_conversations(args.dataset, registry, args, args.dataset_format,
                                       skipped)
    # the tokenizer alone: the weights' settings (dtype, quantization...) stay at defaults
    model_args = ModelArguments(model_type=args.model_type,
                                model_id_or_path=args.model_id_or_path,
                                trust_remote_code=args.trust_remote_code, hub=args.hub)
    tokenizer: Any = load_tokenizer(spec, model_args, registry) if spec else None
    template = (Template.for_tokenizer(template_spec, tokenizer) if tokenizer
                else Template(template_spec))
    click.echo(f"{len(conversations)} rows from {', '.join(args.dataset)}; template "
               f"'{template_spec.name}'; trained text is shown between {TRAINED_OPEN} and "
               f"{TRAINED_CLOSE}.")
    if skipped:
        click.echo(f"{len(skipped)} bad records skipped, first at: {'; '.join(skipped[:5])}")
    for number, messages in enumerate(conversations[:count], start=1):
        try:
            text = marked(template, messages, args.loss_scope)
        except ValueError as error:
            raise SdkError(f"Row {number} of {', '.join(args.dataset)} cannot be rendered with "
                           f"template '{template_spec.name}': {error}. Pick another --template "
                           "or fix the data.") from None
        click.echo(f"\n--- row {number} ---\n{text}")
    measured = conversations[:MEASURED_ROWS]
    if tokenizer is not None:
        lengths = [len(template.encode(tokenizer, m)[0]) for m in measured]
        unit = "tokens"
    else:
        lengths = [len(template.render(m)) for m in measured]
        unit = "characters (give --model-type for tokens)"
    scope = "" if len(measured) == len(conversations) else f" (the first {len(measured)})"
    summary = length_summary(lengths, unit, args.max_length, args.truncation_strategy)
    click.echo(f"\nLengths{scope}: {summary}")
