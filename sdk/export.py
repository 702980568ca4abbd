"""`sdk export`: a checkpoint as a standalone model folder, which transformers loads alone and
`sdk infer --ckpt-dir` reloads as a full model.

An adapter checkpoint needs ``--merge-lora``: the adapter is merged into its base model. A
base trained in 4/8 bits (QLoRA) is loaded unquantized in the compute dtype for this, as is
usual: adding the adapter to quantized weights would need a second rounding, and the merged
model is meant to run without bitsandbytes. A full or freeze checkpoint is saved again
without its optimizer state.

The folder holds the weights (safetensors), config.json, generation_config.json whose
eos ids end a reply where the template does, the tokenizer with a chat template that renders
exactly what the sdk template renders (``sdk.templates.to_jinja``; in tokenizer_config.json,
where older tools look too) and sft_args.json (sft_type full, the model type and template
kept, ``exported_from`` saying how it was made). It is written into a hidden folder beside
the target and renamed into place when complete, so a failure leaves no half export.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import click

from sdk import __version__
from sdk.config import ExportArguments, InferArguments
from sdk.errors import SdkError
from sdk.export_gguf import check_spec
from sdk.folders import disk_full_said, require_writable
from sdk.infer.load import (
    EXPORTED,
    check_merge,
    checkpoint_or_export,
    dtype_name,
    is_export,
    load_for_inference,
    merge_dtype,
)
from sdk.infer.stops import stop_tokens
from sdk.registry import Registry
from sdk.runs.checkpoint_files import ADAPTER_CONFIG
from sdk.runs.run_dir import ARGS_FILE, read_saved_arguments, write_args
from sdk.templates.engine import Template
from sdk.templates.to_jinja import to_jinja

# The files that exports from before sft_args.json listed them may hold: the model's and the
# tokenizer's files as transformers saves them.
EXPORT_FILES = (ARGS_FILE, "config.json", "generation_config.json", "*.safetensors",
                "*.safetensors.index.json", "tokenizer*", "special_tokens_map.json",
                "added_tokens.json", "vocab.*", "merges.txt", "chat_template.*")
# Conversations the exported chat template is checked on: without and with a system prompt,
# one turn and several.
PROBES = (
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Who are you?"}],
)


def run_export(args: ExportArguments, registry: Registry) -> Path:
    if not args.ckpt_dir:
        raise SdkError("Give --ckpt-dir: a checkpoint (or run) folder written by `sdk sft`.")
    to_gguf = args.to == "gguf"
    if args.ollama and not to_gguf:
        raise SdkError("--ollama writes a Modelfile for a GGUF file: add --to gguf.")
    checkpoint = checkpoint_or_export(args.ckpt_dir)
    saved = read_saved_arguments(checkpoint / ARGS_FILE)
    # GGUF holds whole models only: an adapter is merged whether or not --merge-lora is given.
    merge = args.merge_lora or (to_gguf and (checkpoint / ADAPTER_CONFIG).is_file())
    check_merge(merge, saved["sft_type"], checkpoint)
    if to_gguf:
        check_spec(registry.get("models", saved["model_type"]))
    suffix = "-gguf" if to_gguf else "-merged" if merge else "-export"
    output = Path(args.output_dir) if args.output_dir else checkpoint.with_name(
        checkpoint.name + suffix)
    require_writable(output, "--output-dir")
    check_output(output, checkpoint, args.overwrite)
    with staged(output, checkpoint, args.overwrite) as folder:
        model, tokenizer, template = load_for_inference(InferArguments(
            ckpt_dir=str(checkpoint), dtype=merge_dtype(args.dtype, saved), quantization_bit=0,
            model_id_or_path=args.model_id_or_path, merge_lora=merge), registry)
        if to_gguf:
            save_gguf(folder, model, tokenizer, template, args, saved["model_type"])
        else:
            save_model(folder, model, tokenizer, template)
        written = sorted([ARGS_FILE, *(path.relative_to(folder).as_posix()
                                       for path in folder.rglob("*") if path.is_file())])
        write_args(folder, {**saved, "sft_type": "full", "quantization_bit": 0,
                            "dtype": dtype_name(model.dtype),
                            EXPORTED: {"checkpoint": str(checkpoint.resolve()),
                                       "sft_type": saved["sft_type"],
                                       "merged": merge,
                                       "format": args.to,
                                       **({"gguf_type": args.gguf_type} if to_gguf else {}),
                                       "sdk_version": __version__,
                                       "files": written}})
    what = f"GGUF ({args.gguf_type})" if to_gguf else "merged model" if merge else "model"
    click.echo(f"[sdk] exported {what}: {output}", err=True)
    return output


def check_output(output: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse a target that is or holds the checkpoint, a file, or a non-empty folder other
    than an earlier export (and that one without --overwrite)."""
    target, source = output.resolve(), checkpoint.resolve()
    if target == source or target in source.parents:
        raise SdkError(f"--output-dir '{output}' is the checkpoint or a folder holding it; "
                       "give a folder of its own.")
    if output.exists() and not output.is_dir():
        raise SdkError(f"--output-dir '{output}' is a file; give a folder.")
    if output.is_dir() and any(output.iterdir()):
        if not is_export(output):
            raise SdkError(f"--output-dir '{output}' is not empty and holds no earlier export "
                           "(--overwrite replaces only those); give another folder.")
        foreign = foreign_files(output)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                              if len(foreign) > 5 else "")
            raise SdkError(f"--output-dir '{output}' holds an earlier export and files that no "
                           f"export wrote: {shown}. --overwrite replaces only an export's own "
                           "files: move those away, or give another folder. Nothing was "
                           "deleted.")
        if not overwrite:
            raise SdkError(f"--output-dir '{output}' holds an earlier export; pass --overwrite "
                           "to replace it, or give another folder.")


def foreign_files(export: Path) -> list[str]:
    """What an earlier export folder holds besides the files that export wrote (listed in
    its sft_args.json; for an export from before that list, besides the files an export
    writes): what --overwrite must not delete."""
    try:
        written = json.loads((export / ARGS_FILE).read_text(encoding="utf-8"))[EXPORTED].get(
            "files")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        written = None
    names = [path.relative_to(export).as_posix() for path in export.rglob("*")]
    if isinstance(written, list):
        ours = set(map(str, written))
        ours |= {parent.as_posix() for name in ours for parent in PurePosixPath(name).parents}
        return sorted(name for name in names if name not in ours)
    return sorted(name for name in names
                  if not any(fnmatch.fnmatch(name, pattern) for pattern in EXPORT_FILES))


@contextmanager
def staged(output: Path, checkpoint: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden folder beside ``output`` to write into, renamed to ``output`` when the block
    succeeds and removed when it fails."""
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)  # not mkdtemp: the export gets the umask's permissions
    except OSError as error:
        raise SdkError(f"--output-dir '{output}' cannot be written: {error}") from None
    kept = f"'{output}' as it was" if output.exists() else f"nothing, '{output}' was not made"
    try:
        with disk_full_said(staging, kept):
            yield staging
            check_output(output, checkpoint, overwrite)  # again: the load took a while
            put_in_place(staging, output)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise SdkError(f"Writing the export to '{output}' failed: {error}. Nothing was left "
                       "there.") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def put_in_place(staging: Path, output: Path) -> None:
    """Rename ``staging`` to ``output``; an empty folder or an earlier export there is moved
    aside first and deleted only once the new one is in place."""
    if not output.exists():
        staging.rename(output)
        return
    aside = output.parent / f".{output.name}.replaced-{uuid.uuid4().hex[:8]}"
    output.rename(aside)
    try:
        staging.rename(output)
    except OSError:
        aside.rename(output)
        raise
    shutil.rmtree(aside)


def save_model(folder: Path, model: Any, tokenizer: Any, template: Template) -> None:
    # The model's own eos ids and the template's (stop strings need a tokenizer: left out).
    config = model.generation_config
    known = config.eos_token_id if isinstance(config.eos_token_id, list) else [
        config.eos_token_id]
    stop_ids = sorted({*stop_tokens(template, tokenizer)[0], *known} - {None})
    if stop_ids:
        config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    save_tokenizer(folder, tokenizer, template)


def save_tokenizer(folder: Path, tokenizer: Any, template: Template) -> None:
    """The tokenizer with the chat template that renders what ``template`` renders."""
    tokenizer.chat_template = to_jinja(template)
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    difference = template_difference(template, tokenizer)
    if difference:
        click.echo(f"warning: {difference}; tools other than `sdk infer` may prompt the "
                   "exported model differently.", err=True)


def save_gguf(folder: Path, model: Any, tokenizer: Any, template: Template,
              args: ExportArguments, model_type: str) -> Path:
    """``<model type>-<gguf type>.gguf`` in ``folder`` (with --ollama its Modelfile); the
    tokenizer files it is made from are written to a folder removed afterwards."""
    from sdk.export_gguf import write_gguf

    stop_ids = stop_tokens(template, tokenizer)[0]
    eot = next((index for index in stop_ids if index != tokenizer.eos_token_id), None)
    path = folder / f"{model_type}-{args.gguf_type}.gguf"
    tokenizer_folder = folder / ".tokenizer"
    save_tokenizer(tokenizer_folder, tokenizer, template)
    try:
        write_gguf(path, model, tokenizer, tokenizer_folder, args.gguf_type, eot, model_type)
    finally:
        shutil.rmtree(tokenizer_folder, ignore_errors=True)
    if args.ollama:
        from sdk.ollama import write_modelfile

        write_modelfile(folder, path.name, template, tokenizer)
    return path


def template_difference(template: Template, tokenizer: Any) -> str | None:
    """How transformers' rendering with the exported chat template differs from the
    template's own, on the probe conversations; None when it does not."""
    from jinja2.exceptions import TemplateError

    for messages in PROBES:
        for prompt in (False, True):
            try:
                expected = template.render(messages, prompt)
            except ValueError:  # a conversation this template does not take
                continue
            try:
                actual = tokenizer.apply_chat_template(messages, tokenize=False,
                                                       add_generation_prompt=prompt)
            except TemplateError as error:
                actual = f"an error ({error})"
            if actual != expected:
                return (f"the exported chat template renders {actual!r} where template "
                        f"'{template.spec.name}' renders {expected!r}")
    return None
