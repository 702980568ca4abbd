"""`sdk datasets preview`: samples as the model sees them, with the trained spans marked, and
the distribution of their lengths."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
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


def marked(pieces: Iterable[tuple[str, bool]]) -> str:
    """A rendered conversation's (text, trained) pieces with each trained span between [[
    and ]]."""
    text, in_span = "", False
    for piece, trained in pieces:
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


@dataclasses.dataclass
class Preview:
    """What `sdk datasets preview` shows: the rows as the model sees them and their lengths."""

    datasets: list[str]  # the --dataset entries, as given
    conversations: list[Any]
    template: Template
    skipped: list[str]
    lengths: list[int]  # of the first MEASURED_ROWS rows
    unit: str
    summary: str  # length_summary of ``lengths``

    def pieces(self, number: int, loss_scope: str) -> list[tuple[str, bool]]:
        """Row ``number`` (from 1) rendered, as (text, trained) pieces."""
        with unrenderable_row(number, self.datasets, self.template):
            return list(self.template.pieces(self.conversations[number - 1],
                                             loss_scope=loss_scope))


@contextlib.contextmanager
def unrenderable_row(number: int, datasets: Sequence[str], template: Template) -> Iterator[None]:
    """The template's refusal of row ``number`` (from 1) as an error naming the row."""
    try:
        yield
    except ValueError as error:
        raise SdkError(f"Row {number} of {', '.join(datasets)} cannot be rendered with "
                       f"template '{template.spec.name}': {error}. Pick another "
                       "--template or fix the data.") from None


def row_lengths(conversations: Sequence[Any], datasets: Sequence[str], template: Template,
                tokenizer: Any) -> list[int]:
    """Tokens (characters without a tokenizer) of each conversation as the template renders it."""
    lengths = []
    for number, conversation in enumerate(conversations, 1):
        with unrenderable_row(number, datasets, template):
            lengths.append(len(template.encode(tokenizer, conversation)[0]) if tokenizer
                           else len(template.render(conversation)))
    return lengths


def load_preview(args: PreviewArguments, registry: Registry) -> Preview:
    """The rows of ``args.dataset`` rendered with the model type's (or --template's) template,
    and their token lengths (characters without a model type)."""
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
    measured = conversations[:MEASURED_ROWS]
    lengths = row_lengths(measured, args.dataset, template, tokenizer)
    unit = "tokens" if tokenizer is not None else "characters (give --model-type for tokens)"
    summary = length_summary(lengths, unit, args.max_length, args.truncation_strategy)
    return Preview(list(args.dataset), conversations, template, skipped or [], lengths, unit,
                   summary)


def run_preview(args: PreviewArguments, registry: Registry, count: int) -> None:
    preview = load_preview(args, registry)
    click.echo(f"{len(preview.conversations)} rows from {', '.join(args.dataset)}; template "
               f"'{preview.template.spec.name}'; trained text is shown between {TRAINED_OPEN} "
               f"and {TRAINED_CLOSE}.")
    if preview.skipped:
        click.echo(f"{len(preview.skipped)} bad records skipped, first at: "
                   f"{'; '.join(preview.skipped[:5])}")
    for number in range(1, min(count, len(preview.conversations)) + 1):
        click.echo(f"\n--- row {number} ---\n{marked(preview.pieces(number, args.loss_scope))}")
    scope = ("" if len(preview.lengths) == len(preview.conversations)
             else f" (the first {len(preview.lengths)})")
    click.echo(f"\nLengths{scope}: {preview.summary}")
