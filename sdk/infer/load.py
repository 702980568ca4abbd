"""What `sdk infer`, `deploy`, `export` and batch prediction load: the folder --ckpt-dir names
(a checkpoint, a run's newest one, or an export), and the model, tokenizer and template from
it or from --model-type; with --merge-lora the adapter merged into its base (`sdk export
--merge-lora` saves that model)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from sdk.config import GenerationArguments
from sdk.errors import SdkError
from sdk.models.loader import load_model, model_types_for_folder, torch_dtype
from sdk.models.native import DEQUANTIZED_BASE
from sdk.models.rope import quiet_window_reminder
from sdk.registry import Registry, model_template
from sdk.runs.checkpoint_files import ADAPTER_CONFIG, check_checkpoint
from sdk.runs.run_dir import ARGS_FILE, find_checkpoint, read_saved_arguments
from sdk.specs import TemplateSpec, resolve_callable
from sdk.templates.engine import Template, with_thinking
from sdk.tuners import check_requires

DTYPES = ("bf16", "fp16", "fp32")

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
    elif json.loads((folder / ARGS_FILE).read_text(encoding="utf-8"))[EXPORTED].get(
            "format") == "gguf":
        raise SdkError(f"--ckpt-dir '{path}' holds a GGUF export, which llama.cpp and Ollama "
                       "run (its Modelfile: `ollama create NAME -f Modelfile`); give the "
                       "checkpoint it was exported from instead.")
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
        choice = template_choice(args, registry, saved)
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
        choice = template_choice(args, registry)
        model, tokenizer = load_model(spec, args, registry)
    else:
        raise nothing_to_load(args, registry)
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    quiet_window_reminder(model.config)
    return model, tokenizer, bound_template(choice, tokenizer)


def nothing_to_load(args: GenerationArguments, registry: Registry) -> SdkError:
    given = (" (--model-id-or-path gives the weights; --model-type says what they are)."
             + model_types_for_folder(args.model_id_or_path, registry)
             if args.model_id_or_path else ".")
    return SdkError(f"Give --ckpt-dir (a checkpoint from `sdk sft`) or --model-type{given}")


# The template spec, system prompt and enable_thinking that a model is prompted with
TemplateChoice = tuple[TemplateSpec, str | None, bool | None]


def template_choice(args: GenerationArguments, registry: Registry,
                    saved: dict[str, Any] | None = None) -> TemplateChoice:
    """--template, --system and --enable-thinking, else what the checkpoint was trained
    with (``saved``: its run arguments), else the --model-type's template."""
    saved = saved or {}
    spec = (registry.get("templates", args.template or saved["template"]) if saved
            else model_template(registry, registry.get("models", args.model_type), args.template))
    system = args.system if args.system is not None else saved.get("system")
    thinking = (args.enable_thinking if args.enable_thinking is not None
                else saved.get("enable_thinking"))
    return spec, system, thinking


def bound_template(choice: TemplateChoice, tokenizer: Any) -> Template:
    spec, system, thinking = choice
    template = Template.for_tokenizer(with_thinking(spec, thinking), tokenizer)
    return template if system is None else with_system(template, system)


def with_system(template: Template, system: str) -> Template:
    """``template`` with ``system`` as its default system prompt."""
    return Template(dataclasses.replace(template.spec, default_system=system),
                    template.special_tokens)


def load_merged(args: GenerationArguments, registry: Registry) -> tuple[Any, Any, Template]:
    """The --ckpt-dir checkpoint with its adapter merged into the base model (peft's
    ``merge_and_unload``), its tokenizer and template: what `sdk export --merge-lora` saves and
    `sdk infer --merge-lora` generates with. The base is loaded unquantized, in the dtype
    :func:`merge_dtype` picks when --dtype is auto."""
    if not args.ckpt_dir:
        raise SdkError("--merge-lora merges the adapter of a checkpoint: give --ckpt-dir.")
    checkpoint = checkpoint_or_export(args.ckpt_dir)
    saved = read_saved_arguments(checkpoint / ARGS_FILE)
    check_merge(True, saved["sft_type"], checkpoint)
    dtype = merge_dtype(args.dtype, saved)
    bits = saved.get("quantization_bit") or 0
    if bits:
        click.echo(f"[sdk] the adapter was trained on a {bits}-bit base: merging it into the "
                   f"base loaded unquantized in {dtype_name(torch_dtype(dtype))} (outputs "
                   f"differ slightly from the {bits}-bit model's, whose base weights were "
                   "rounded)", err=True)
    dequantized = DEQUANTIZED_BASE.set(True)  # e.g. a GPTQ base, which peft cannot merge into
    try:
        model, tokenizer, template = load_for_inference(dataclasses.replace(
            args, ckpt_dir=str(checkpoint), dtype=dtype, quantization_bit=0, merge_lora=False),
            registry)
    finally:
        DEQUANTIZED_BASE.reset(dequantized)
    return model.merge_and_unload(), tokenizer, template


def check_merge(merge: bool, sft_type: str, checkpoint: Path) -> None:
    """--merge-lora for a peft adapter whose weights merge, and only then. What the
    checkpoint holds decides, not the tuner's flags: virtual-token tuners save peft adapters
    too, and those cannot merge."""
    if not (checkpoint / ADAPTER_CONFIG).is_file():
        if merge:
            raise SdkError(f"--merge-lora: {checkpoint} holds a whole model (--sft-type "
                           f"{sft_type}), not an adapter; leave out --merge-lora.")
        return
    from peft import PeftConfig

    if PeftConfig.from_pretrained(str(checkpoint)).is_prompt_learning:
        raise SdkError(f"{checkpoint} holds the virtual tokens of the {sft_type} tuner, which "
                       "cannot be merged into the model's weights, so it has no standalone "
                       f"export. Use the checkpoint itself: sdk infer --ckpt-dir {checkpoint}")
    if not merge:
        raise SdkError(f"{checkpoint} holds a {sft_type} adapter, not a whole model: pass "
                       "--merge-lora to merge it into its base model.")


def merge_dtype(requested: str, saved: dict[str, Any]) -> str:
    """``--dtype``, else the compute dtype of a 4-bit base, else the dtype trained in."""
    if requested != "auto":
        return requested
    compute = saved.get("bnb_4bit_comp_dtype")
    if saved.get("quantization_bit") == 4 and compute in DTYPES:
        return compute
    return saved["dtype"] if saved.get("dtype") in DTYPES else "auto"


def dtype_name(dtype: Any) -> str:
    return next((name for name in DTYPES if torch_dtype(name) == dtype), str(dtype))
