"""A run as a plan: every check and argument rewrite of `sdk sft`, and what each automatic
choice picked and why, resolved before anything heavy loads (no weights, no data, no run
folder). The plan is plain data: it prints, and ``as_dict`` is JSON. ``sdk sft --dry-run``
prints it with the data report; a real run executes it (``sdk.train.sft.run_plan``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from sdk.config import TRACKER_PACKAGES, SftArguments, changed_fields, saved_arguments
from sdk.errors import SdkError
from sdk.folders import require_writable
from sdk.hubs import default_hub
from sdk.hubs.push import push_destination
from sdk.models.loader import (
    attention_implementation,
    check_supported,
    model_types_for_folder,
    torch_dtype,
)
from sdk.options import option_names, run_arguments
from sdk.registry import Registry, model_template
from sdk.runs.checkpoint_files import refuse_nonfinite_weights
from sdk.runs.run_dir import next_version, previous_run, refuse_previous_run
from sdk.specs import ModelSpec, TemplateSpec, Tuner, resolve_callable
from sdk.templates.engine import Template, with_thinking
from sdk.train.deepspeed_configs import check_deepspeed, saved_name
from sdk.train.distributed import is_main_process, world_size
from sdk.train.fast_path import Device, liger_unavailable, this_device, token_budget
from sdk.train.fsdp import check_fsdp, fsdp_config
from sdk.train.fsdp import saved_name as saved_fsdp_name
from sdk.train.ignored_flags import ignored_flags, without_ignored_ratio
from sdk.train.liger_kernels import liger_function
from sdk.train.packing import NEFTUNE_UNPACKED
from sdk.train.resume import resume_checkpoint
from sdk.tuners import check_requires
from sdk.tuners.lora import lora_dropout


@dataclass
class Choice:
    """What an automatic setting picked (a JSON value) and why."""

    value: Any
    why: str
    off: str | None = None  # a fast-path choice: the flag that turns it off


@dataclass
class Plan:
    """What `sdk sft` will do. ``args`` are the arguments as the run applies (and saves) them;
    ``run_dir`` is the run folder it writes: the resumed run's, or the next version's (its
    time part is the start time; resolving creates nothing)."""

    args: SftArguments
    run_dir: str
    resume_from: str | None = None
    push_to: str | None = None
    choices: dict[str, Choice] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # flags the run ignores, as announced

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-serialisable data; secrets (hub tokens) left out."""
        return {"run_folder": self.run_dir, "resume_from": self.resume_from,
                "push_to": self.push_to,
                "choices": {name: dataclasses.asdict(choice)
                            for name, choice in self.choices.items()},
                "notes": list(self.notes), "arguments": saved_arguments(self.args)}

    def text(self) -> str:
        """The plan for people: what is trained, where it goes, and each choice."""
        args = self.args
        lines = [f"model type: {args.model_type}"
                 + (f" ({args.model_id_or_path})" if args.model_id_or_path else ""),
                 f"template: {args.template}", f"tuner: {args.sft_type}",
                 f"data: {', '.join(args.dataset)}{held_out_text(args)}",
                 f"run folder: {self.run_dir}" + (
                     f" (resuming {self.resume_from})" if self.resume_from else
                     " (there already)" if os.path.isdir(self.run_dir) else " (not created yet)"),
                 f"push to: {self.push_to or 'nowhere (no --push-to-hub)'}"]
        width = max(len(name) for name in self.choices)
        lines += [f"  {name.ljust(width)}  {format_value(choice.value)}  ({choice.why})"
                  for name, choice in self.choices.items()]
        return "\n".join(lines)


    def fast_path(self) -> str:
        """The fast-path choices (``sdk.train.fast_path``) on one line, each with its off
        flag; what stays off here, and why."""
        parts = [f"{name} {short_value(choice.value)} (off: {choice.off})"
                 for name, choice in self.choices.items() if choice.off]
        missing = [f"{name} ({choice.why})" for name, choice in self.choices.items()
                   if name in FAST_PATH_CHOICES and not choice.off]
        return ("[sdk] fast path: " + ("; ".join(parts) or "nothing")
                + (f"; not here: {'; '.join(missing)}" if missing else ""))


# the choices that are the fast path where they can be (each has an off flag when chosen)
FAST_PATH_CHOICES = ("packing", "batch", "liger_kernel", "lora_dropout")


def short_value(value: Any) -> str:
    """A choice's value in a few words: on/off, a batch's size per device."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value["per device"] if isinstance(value, dict) else format_value(value)


def held_out_text(args: SftArguments) -> str:
    if args.val_dataset:
        return f"; held out: {', '.join(args.val_dataset)}"
    if not args.split_dataset_ratio:
        return ""
    sampled = (f", of which {args.held_out_sample} rows sampled (--held-out-sample)"
               if args.held_out_sample else "")
    return f"; held out: {args.split_dataset_ratio} of it (--split-dataset-ratio){sampled}"


def format_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return "-" if value is None else str(value)


def check_trackers(names: list[str]) -> None:
    """Each --report-to tracker's package is installed (before anything loads)."""
    import importlib.util

    for name in set(names) - {"none"}:
        packages = TRACKER_PACKAGES[name]
        if not any(importlib.util.find_spec(package) for package in packages):
            raise SdkError(f"--report-to {name} needs the {packages[0]} package: "
                           f"pip install {packages[0]}")


def check_optimizer(name: str | None) -> None:
    """--optim names one of transformers' optimizers (before anything loads)."""
    if name is None:
        return
    import difflib

    from transformers.training_args import OptimizerNames

    names = [optimizer.value for optimizer in OptimizerNames]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"Did you mean {' or '.join(close)}? " if close else ""
        raise SdkError(f"--optim {name} is not an optimizer transformers knows. {hint}"
                       f"It knows: {', '.join(names)}.")


def template_of(args: SftArguments, spec: ModelSpec, registry: Registry) -> TemplateSpec:
    """The run's chat template, with --system as its default system prompt and
    --enable-thinking passed to it."""
    template_spec = model_template(registry, spec, args.template)
    if args.system is not None:
        template_spec = dataclasses.replace(template_spec, default_system=args.system)
    return with_thinking(template_spec, args.enable_thinking)


def resolve_plan(args: SftArguments, registry: Registry) -> Plan:
    """Check ``args`` and apply every rewrite a run makes before loading; reads no data, loads
    no model and creates no folder. Raises SdkError for what the run would refuse."""
    if not args.model_type:
        given = (" --model-id-or-path gives the weights; --model-type says what they are "
                 "(template, LoRA targets)."
                 + model_types_for_folder(args.model_id_or_path, registry)
                 if args.model_id_or_path else "")
        raise SdkError(f"--model-type is required (`sdk models` lists them).{given}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise SdkError(f"--output-dir '{args.output_dir}' is a file; give a folder.")
    if not args.dataset:
        raise SdkError("--dataset is required: a name from `sdk datasets` or a .json/.jsonl "
                       "file.")
    spec = registry.get("models", args.model_type)
    check_supported(spec)  # before the data is read: the run could never start
    template_spec = template_of(args, spec, registry)
    Template(template_spec)  # a broken template fails here, before the model loads
    tuner = registry.get("tuners", args.sft_type)
    check_requires(tuner)
    # read before the run's arguments drop other tuners' options (set in a --config file)
    notes = ignored_flags(args, tuner, registry.specs("tuners"))
    args = run_arguments(args, tuner, registry)
    given_bits = args.quantization_bit
    if args.quantization_bit is None and tuner.default_quantization_bit:  # qlora: 4
        args = dataclasses.replace(args, quantization_bit=tuner.default_quantization_bit)
    if tuner.check_arguments:
        resolve_callable(tuner.check_arguments)(args)
    if is_main_process():
        for line in notes:
            click.echo(line, err=True)
    args = without_ignored_ratio(args)
    given_dropout = getattr(args, "lora_dropout", None)
    if "lora_dropout" in option_names(tuner.options):
        # saved with the run as it applies: 0.05, or 0 for adapters that start from the base
        args = dataclasses.replace(args, lora_dropout=lora_dropout(args))
    checkpointing_forced = args.offload_activations and not args.gradient_checkpointing
    if args.offload_activations:  # what is offloaded is what checkpointing keeps
        args = dataclasses.replace(args, gradient_checkpointing=True)
    if args.tokenizer_id_or_path and not (
            Path(args.tokenizer_id_or_path) / "tokenizer_config.json").is_file():
        raise SdkError(f"--tokenizer-id-or-path '{args.tokenizer_id_or_path}' is not a tokenizer "
                       "folder (no tokenizer_config.json in it): give the folder its "
                       "save_pretrained wrote.")
    if args.adapter and not Path(args.adapter).is_dir():
        raise SdkError(f"--adapter '{args.adapter}' is not a folder; give the folder a peft "
                       "adapter was saved to (a checkpoint of `sdk sft`).")
    if args.adapter and not tuner.trains_adapters:
        raise SdkError(f"--adapter continues a peft adapter; --sft-type {tuner.name} does not "
                       "train one. Use --sft-type lora (or the adapter's own kind).")
    if args.adapter:
        refuse_nonfinite_weights(Path(args.adapter))
    if args.quantization_bit and not tuner.trains_quantized_base:
        raise SdkError(f"--sft-type {tuner.name} cannot train a {args.quantization_bit}-bit "
                       "model; use --sft-type lora (QLoRA) or drop --quantization-bit.")
    if spec.quantized and not tuner.trains_quantized_base:
        raise SdkError(f"--sft-type {tuner.name} cannot train {args.model_type}, whose weights "
                       f"are stored quantized ({spec.quantized}); use --sft-type lora on it, or "
                       f"--sft-type {tuner.name} on the unquantized model.")
    check_trackers(args.report_to)
    check_optimizer(args.optim)
    device = this_device()
    liger_why = liger_unavailable(liger_model_types(spec), args.model_type, device)
    if args.use_liger_kernel and liger_why:
        raise SdkError(f"--use-liger-kernel: {liger_why}. Leave the flag out.")
    given_liger, given_budget = args.use_liger_kernel, args.max_tokens_per_batch
    if given_liger is None and not liger_why and not liger_model_types(spec):
        liger_why = (f"--model-type {args.model_type} names no architecture to check "
                     "liger-kernel's kernels against: on only with --use-liger-kernel")
    args = dataclasses.replace(
        args, use_liger_kernel=not liger_why if given_liger is None else given_liger,
        max_tokens_per_batch=automatic_budget(args, device))
    if args.deepspeed:
        check_deepspeed(args)
        args = dataclasses.replace(args, deepspeed=saved_name(args.deepspeed))
    if args.fsdp:
        check_fsdp(args)
        args = dataclasses.replace(args, fsdp=saved_fsdp_name(args.fsdp))
    elif args.fsdp_config:
        raise SdkError("--fsdp-config configures --fsdp, which is not given: add --fsdp "
                       "full_shard (or leave --fsdp-config out).")
    resume_given = args.resume_from_checkpoint
    resumed = resume_checkpoint(args)
    if resumed:  # the run's saved arguments name the checkpoint, not "auto"
        args = dataclasses.replace(args, resume_from_checkpoint=str(resumed))
        require_writable(resumed.parent, "--resume-from-checkpoint's run folder")
        run_dir = str(resumed.parent)
    elif args.output_dir_as_run:
        require_writable(args.output_dir, "--output-dir")
        if not args.overwrite_output_dir:
            refuse_previous_run(Path(args.output_dir))
        run_dir = args.output_dir
    else:  # now, not after the data is read and the model loaded
        require_writable(args.output_dir, "--output-dir")
        parent = Path(args.output_dir) / args.model_type
        require_writable(parent, "--output-dir's model-type folder")
        run_dir = str(parent / f"v{next_version(parent)}-<start time>")
    args = dataclasses.replace(args, template=template_spec.name, hub=args.hub or default_hub())
    registry.get("hubs", args.hub)
    destination = push_destination(args, registry)  # --push-to-hub, checked before loading
    choices = automatic_choices(args, spec, tuner, given_bits, given_dropout,
                                checkpointing_forced,
                                fast_path_choices(args, spec, device, given_budget, given_liger,
                                                  liger_why))
    if args.output_dir_as_run and not resumed:
        choices["run_folder"] = given_folder_choice(args)
    choices["resume"] = Choice(
        str(resumed) if resumed else None,
        "a fresh run" if not resumed else
        "--resume-from-checkpoint auto: the newest run's newest complete checkpoint"
        if resume_given == "auto" else f"--resume-from-checkpoint {resume_given}")
    return Plan(args, run_dir, str(resumed) if resumed else None,
                destination.where() if destination else None, choices, notes)


def given_folder_choice(args: SftArguments) -> Choice:
    """--output-dir-as-run: the folder as given, and with --overwrite-output-dir what of a
    previous run there the run deletes and what it keeps."""
    replaced, kept = previous_run(Path(args.output_dir))
    why = "--output-dir as given (--output-dir-as-run: LLaMA-Factory's output_dir)"
    if replaced:
        why += (f"; --overwrite-output-dir deletes the previous run's "
                f"{', '.join(p.name for p in replaced)}")
        why += f" and keeps {', '.join(p.name for p in kept)}" if kept else ""
    return Choice(args.output_dir, why)


def automatic_choices(args: SftArguments, spec: ModelSpec, tuner: Tuner,
                      given_bits: int | None, given_dropout: float | None,
                      checkpointing_forced: bool, fast: dict[str, Choice]) -> dict[str, Choice]:
    """What each setting that depends on the machine, the model type or the tuner picked
    (``fast``: the batches and liger-kernel, as ``fast_path_choices`` picked them)."""
    import torch

    dtype = torch_dtype(args.dtype)
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    here = "a GPU here" if torch.cuda.is_available() else "no GPU here"
    choices = {"dtype": Choice(dtype_name, f"--dtype {args.dtype}" if args.dtype != "auto" else
                               "--dtype auto: bf16 on a GPU that has it, else fp16; fp32 on the "
                               f"CPU; {here}")}
    kernel = attention_implementation(args.attn_impl, dtype)  # a kernel that cannot run: refused
    choices["attention"] = Choice(
        kernel or "default",
        f"--attn-impl {args.attn_impl}" if kernel else
        "--attn-impl auto: transformers' choice for the model (sdpa where it has it); "
        "flash_attention_2 needs a GPU, flash-attn and bf16/fp16")
    learning_rate = args.learning_rate or tuner.default_learning_rate
    choices["learning_rate"] = Choice(learning_rate, "--learning-rate" if args.learning_rate
                                      else f"--sft-type {tuner.name}'s default")
    choices["batch"] = fast["batch"]
    if not args.packing:
        packing = Choice(False, "--packing false: batches are padded")
    elif args.neftune_noise_alpha:
        packing = Choice(False, NEFTUNE_UNPACKED)
    else:
        packing = Choice(True, "--packing: a batch's rows joined into one, if the model (and "
                         "tuner) passes the packing probe once loaded; else padded, said then",
                         off="--packing false")
    choices["packing"] = packing
    choices["liger_kernel"] = fast["liger_kernel"]
    if given_bits is not None:
        why = "--quantization-bit"
    elif args.quantization_bit:
        why = f"--sft-type {tuner.name}'s default (QLoRA)"
    elif spec.quantized:
        why = f"{args.model_type}'s weights are stored quantized ({spec.quantized})"
    else:
        why = "the base is not quantized"
    choices["quantization"] = Choice(args.quantization_bit or spec.quantized or None, why)
    if "lora_dropout" in option_names(tuner.options):
        choices["lora_dropout"] = (
            Choice(args.lora_dropout, "--lora-dropout") if given_dropout is not None else
            Choice(args.lora_dropout, "the default: a dropout keeps a dropped copy of each "
                   "adapter's input for the backward", off="--lora-dropout 0.05"))
    if checkpointing_forced:
        choices["gradient_checkpointing"] = Choice(
            True, "--offload-activations offloads what checkpointing keeps")
    if args.deepspeed:
        choices["deepspeed"] = Choice(args.deepspeed, "--deepspeed")
    if args.fsdp:
        choices["fsdp"] = Choice(fsdp_config(args), f"--fsdp {args.fsdp}" + (
            f" --fsdp-config {args.fsdp_config}" if args.fsdp_config else ""))
    return choices


def liger_model_types(spec: ModelSpec) -> tuple[str, ...]:
    """The architectures liger-kernel must cover for the model type."""
    return (spec.converted_to,) if spec.converted_to else spec.config_model_types


def automatic_budget(args: SftArguments, device: Device) -> int | None:
    """--max-tokens-per-batch as the run applies it: as given (0: none), else the device's
    budget unless --batch-size is given."""
    if args.max_tokens_per_batch is not None:
        return args.max_tokens_per_batch or None
    return None if changed_fields(args, ["batch_size"]) else token_budget(device)


def fast_path_choices(args: SftArguments, spec: ModelSpec, device: Device,
                      given_budget: int | None,
                      given_liger: bool | None, liger_why: str | None) -> dict[str, Choice]:
    """The batches and liger-kernel: what the fast path picked on ``device`` and why."""
    processes = world_size()
    steps = args.gradient_accumulation_steps
    budget = args.max_tokens_per_batch
    per_device = f"{budget} tokens" if budget else (
        f"{args.batch_size} row{'s' if args.batch_size > 1 else ''}")
    spread = (f"; an optimizer step takes {steps} batches on each of {processes} process"
              + ("es" if processes > 1 else "")
              + ("" if budget else f": {args.batch_size * steps * processes} rows"))
    value = {"per device": per_device, "gradient accumulation": steps, "processes": processes}
    if given_budget:
        batch = Choice(value, "--max-tokens-per-batch: rows grouped by length into batches of "
                       f"up to {budget} tokens" + spread)
    elif budget:
        batch = Choice(value, f"rows grouped into batches of up to {budget} tokens, for "
                       f"{device.memory_gib:.0f} GiB of GPU memory" + spread,
                       off="--max-tokens-per-batch 0")
    else:
        why = ("--max-tokens-per-batch 0" if given_budget == 0 else
               "--batch-size" if device.gpu else "--batch-size (a token budget on a GPU only)")
        batch = Choice(value, why + spread)
    function = liger_function(liger_model_types(spec)) or (
        f"liger's function for the architecture, found when the model loads "
        f"({args.model_type} declares none)")
    if given_liger is not None:
        liger = Choice(given_liger, f"--use-liger-kernel {str(given_liger).lower()}"
                       + (f": {function}" if given_liger else ""))
    elif liger_why:
        liger = Choice(False, liger_why)
    else:
        liger = Choice(True, f"a CUDA GPU, liger-kernel installed and kernels for the model: "
                       f"{function}", off="--use-liger-kernel false")
    return {"batch": batch, "liger_kernel": liger}
