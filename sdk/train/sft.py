"""The SFT recipe: plan -> data -> tokenizer -> model -> tuner -> transformers Trainer ->
checkpoints.

Everything that can be wrong with the input (names, files, records, rows with nothing to
train) is checked before the model is loaded (``sdk.train.plan`` resolves the arguments; the
data is tokenized with the tokenizer alone), so a typo costs seconds, not a model load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sdk import __version__
from sdk.config import SftArguments, absolute_paths, saved_arguments
from sdk.data.arrow import tokenized_dataset, training_and_held_out
from sdk.data.encode import EncodeSettings, EncodeStats
from sdk.data.report import data_report
from sdk.data.sources import is_dataset_name
from sdk.errors import SdkError
from sdk.folders import disk_full_said
from sdk.hubs.push import push_destination
from sdk.models.loader import (
    check_tokenizer_fits,
    load_model,
    load_tokenizer,
    tokenizer_alone,
    torch_dtype,
    unquantized_experts_notice,
)
from sdk.models.rope import applied_factor
from sdk.registry import Registry
from sdk.runs.best import best_checkpoint
from sdk.runs.checkpoint_files import check_adapter_fits
from sdk.runs.run_dir import (
    ARGS_FILE,
    PARTIAL_DIR,
    checkpoint_step,
    checkpoints,
    claim_run_dir,
    new_run_dir,
    write_args,
)
from sdk.specs import resolve_callable
from sdk.templates.engine import Template
from sdk.train.deepspeed_configs import (
    deepspeed_config,
    quiet_deepspeed_collectives,
    single_process_rendezvous,
)
from sdk.train.distributed import (
    is_main_process,
    main_process_first,
    shared_run_dir,
    world_size,
)
from sdk.train.fsdp import fsdp_config
from sdk.train.liger_kernels import apply_liger_kernels
from sdk.train.plan import Plan, resolve_plan, template_of
from sdk.train.plot import plot_after_training
from sdk.train.resume import discard_unfinished_save, keep_log_until
from sdk.train.steps import training_steps
from sdk.tuners import loraplus_refusal


@dataclass
class SftResult:
    run_dir: Path
    checkpoint: Path  # the last one
    model: Any


@dataclass
class TrainingData:
    """The run's rows, read and tokenized before the model loads."""

    held_out: Any  # the held-out conversations (None: none), for --predict-with-generate
    settings: EncodeSettings
    examples: Any
    stats: EncodeStats
    eval_examples: Any = None
    eval_stats: EncodeStats | None = None


def run_sft(args: SftArguments, registry: Registry) -> SftResult:
    """Train; the result names the run folder and last checkpoint and holds the model."""
    return run_plan(resolve_plan(args, registry), registry)


def read_conversations(args: SftArguments, registry: Registry) -> tuple[Any, Any]:
    """The training and held-out conversations (None: none held out), as a run reads them."""
    skipped: list[str] | None = [] if args.skip_bad_records else None
    with main_process_first():  # one process reads and converts; the others use its cache
        conversations, held_out = training_and_held_out(args, registry, skipped)
    if args.predict_with_generate and held_out is None:
        raise SdkError("--predict-with-generate predicts the held-out rows; give "
                       "--val-dataset or --split-dataset-ratio.")
    if skipped:
        click.echo(f"[sdk] skipped {len(skipped)} bad records (--skip-bad-records), first at: "
                   f"{'; '.join(skipped[:5])}", err=True)
    return conversations, held_out


def tokenize(conversations: Any, held_out: Any, template: Template, tokenizer: Any,
             args: SftArguments) -> TrainingData:
    """The rows as the model trains on them, and what encoding did to them."""
    settings = EncodeSettings(template, tokenizer, args.max_length, args.loss_scope,
                              args.truncation_strategy)
    with main_process_first():
        examples, stats = tokenized_dataset(conversations, settings, args.dataset_num_proc)
        data = TrainingData(held_out, settings, examples, stats)
        if held_out is not None:
            data.eval_examples, data.eval_stats = tokenized_dataset(held_out, settings,
                                                                    args.dataset_num_proc)
    return data


def gate(data: TrainingData, args: SftArguments, announce: bool = True) -> None:
    """The data summary (``announce``), and no run whose rows have no token to train: said
    before the model loads."""
    if announce and is_main_process():
        click.echo(f"[sdk] data: {data.stats.summary()}", err=True)
        if data.eval_stats is not None:
            click.echo(f"[sdk] held-out data: {data.eval_stats.summary()}", err=True)
    if len(data.examples):
        return
    stats = data.stats
    if args.max_length > 0 and (stats.deleted or stats.truncated or stats.dropped):
        kept = "end" if args.truncation_strategy == "truncation_left" else "start"
        causes = [f"{stats.deleted} are longer than --max-length {args.max_length} and "
                  "deleted (--truncation-strategy delete)"] if stats.deleted else []
        if stats.dropped:
            causes.append(f"{stats.dropped} lost every reply token when cut to --max-length "
                          f"{args.max_length} (--truncation-strategy "
                          f"{args.truncation_strategy} keeps their {kept})")
        why = (f"{', '.join(causes)}. Raise --max-length, or shorten the prompts (system "
               "prompt, earlier turns)")
    else:
        why = (f"template '{data.settings.template.spec.name}' marks none of their reply "
               "tokens to train. Check how it renders them (`sdk datasets preview`)")
    raise SdkError(f"No training row has a token to train, so the run would learn nothing: "
                   f"of {stats.rows} rows, {why}.")


def prepared_data(plan: Plan, registry: Registry, rows: tuple[Any, Any],
                  tokenizer: Any) -> TrainingData:
    """The plan's conversations (training, held out) tokenized with ``tokenizer``."""
    args = plan.args
    template = Template.for_tokenizer(
        template_of(args, registry.get("models", args.model_type), registry), tokenizer)
    return tokenize(*rows, template, tokenizer, args)


def dry_run(args: SftArguments, registry: Registry, as_json: bool = False) -> None:
    """`sdk sft --dry-run`: the plan and the data report, from the data and the tokenizer
    alone; no weight is read or downloaded and no run folder is made."""
    from sdk.train.batching import row_lengths

    plan = resolve_plan(args, registry)
    spec = registry.get("models", plan.args.model_type)
    if not tokenizer_alone(spec, plan.args):
        raise SdkError(f"--dry-run reads the tokenizer without the weights, and model type "
                       f"'{spec.model_type}' finds its tokenizer only as its plugin loads the "
                       "model (a loader and no tokenizer_loader). Give --model-id-or-path DIR "
                       "(a folder with its tokenizer_config.json), or add a tokenizer_loader to "
                       "the plugin.")
    rows = read_conversations(plan.args, registry)
    data = prepared_data(plan, registry, rows, load_tokenizer(spec, plan.args, registry))
    report = data_report(*rows, data.settings, plan.args.dataset_num_proc)
    steps = training_steps(row_lengths(data.examples), plan.args, world_size(),
                           plan.choices["packing"].value)
    if as_json:
        click.echo(json.dumps({"plan": plan.as_dict(), "data": report.as_dict(),
                               "steps": steps.as_dict()}, indent=2))
    else:
        click.echo(f"{plan.text()}\n\n{report.text()}\nSteps: {steps.text()}")
    gate(data, plan.args, announce=False)  # the run it plans would stop here


def run_plan(plan: Plan, registry: Registry) -> SftResult:
    """Execute ``plan``: data and tokenizer first (bad data fails before any weight loads),
    then the model, the tuner and the Trainer."""
    args = plan.args
    if is_main_process():
        click.echo(plan.fast_path(), err=True)
    spec = registry.get("models", args.model_type)
    tuner = registry.get("tuners", args.sft_type)
    resumed = Path(plan.resume_from) if plan.resume_from else None
    destination = push_destination(args, registry)
    rows = read_conversations(args, registry)
    data = tokenizer = None
    if tokenizer_alone(spec, args):
        tokenizer = load_tokenizer(spec, args, registry)
        data = prepared_data(plan, registry, rows, tokenizer)
        gate(data, args)
    model, model_tokenizer = load_model(spec, args, registry)
    quantization_notice = args.quantization_bit and unquantized_experts_notice(
        model, args.quantization_bit)
    if quantization_notice and is_main_process():
        click.echo(f"[sdk] {quantization_notice}", err=True)
    if args.tokenizer_id_or_path:  # trained with, and saved into every checkpoint
        check_tokenizer_fits(tokenizer, model.get_input_embeddings().num_embeddings,
                             args.tokenizer_id_or_path)
    else:
        tokenizer = model_tokenizer
    if args.rope_scaling:  # saved with the run: its checkpoints reload with the same positions
        args = dataclasses.replace(args, rope_factor=applied_factor(
            model.config, args.rope_scaling, args.model_type))
    if data is None:  # the plugin's loader is the only way to its tokenizer
        data = prepared_data(plan, registry, rows, tokenizer)
        gate(data, args)
    examples = data.examples
    eval_examples = data.eval_examples if data.eval_examples is not None and len(
        data.eval_examples) else None
    from transformers import set_seed

    set_seed(args.seed)  # the tuner's random init (lora_A) is part of what --seed repeats
    model = resolve_callable(tuner.prepare)(model, args, spec)
    tuner_callbacks = resolve_callable(tuner.callbacks)(model, args) if tuner.callbacks else []
    # before the log is cut back to its step; a callback that reads the checkpoint itself
    # (AdaLoRA, PiSSA) does not load its adapter_model.safetensors
    if (resumed and hasattr(model, "peft_config")
            and not any(hasattr(c, "read_checkpoint") for c in tuner_callbacks)):
        check_adapter_fits(model, resumed)
    main = is_main_process()

    # A resumed run continues in its own folder: later checkpoints and log lines go there.
    run_dir = resumed.parent if resumed else shared_run_dir(lambda: make_run_dir(args))
    # absolute: `sdk infer --ckpt-dir` and --val-dataset-from-run work from any folder
    portable = absolute_paths(args, lambda name: is_dataset_name(name, registry, args))
    saved = {**saved_arguments(portable), "sdk_version": __version__}
    try:
        trainer = build_trainer(model, tokenizer, examples, eval_examples, args,
                                tuner.default_learning_rate, run_dir, saved)
        for callback in tuner_callbacks:
            trainer.add_callback(callback)
    except BaseException:
        if main and not resumed:
            # nothing was written yet; do not leave a run with no model (a folder given as
            # the run's may hold other files: only if empty)
            if not args.output_dir_as_run:
                shutil.rmtree(run_dir, ignore_errors=True)
            elif not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise
    if resumed and main:
        keep_log_until(run_dir, checkpoint_step(resumed))
        if discard_unfinished_save(run_dir):
            click.echo(f"[sdk] deleted {run_dir / PARTIAL_DIR}: an unfinished save of the "
                       "interrupted run", err=True)
        click.echo(f"[sdk] resuming {run_dir} from {resumed.name}", err=True)
    elif main:
        staging, kept = ((run_dir / ARGS_FILE, f"{run_dir}'s other files")
                         if args.output_dir_as_run else
                         (run_dir, "nothing, the new run folder was removed"))
        with disk_full_said(staging, kept):
            write_args(run_dir, saved)
        click.echo(f"[sdk] run folder: {run_dir}", err=True)
    if destination is not None:  # after the Trainer's own callbacks: sees finished checkpoints
        from sdk.hubs.push_callback import PushToHub

        trainer.add_callback(PushToHub(destination, args.push_hub_strategy, registry))
    trainer.train(resume_from_checkpoint=str(resumed) if resumed else None)
    last = checkpoints(run_dir)[-1]
    if not main:  # the main process reports and predicts
        return SftResult(run_dir, last, trainer.model)
    click.echo(f"[sdk] last checkpoint: {last}", err=True)
    best = best_checkpoint(run_dir, trainer.state.log_history)
    if best is not None:
        click.echo(f"[sdk] best checkpoint: {best.checkpoint} (eval loss {best.eval_loss:.4f} "
                   f"at step {best.step})", err=True)
    plot_after_training(run_dir)
    if args.predict_with_generate:
        from transformers.integrations.deepspeed import (
            is_deepspeed_zero3_enabled,
            unset_hf_deepspeed_config,
        )

        from sdk.config import InferArguments
        from sdk.infer.load import load_for_inference
        from sdk.infer.predict import predict_held_out

        model = trainer.model
        if is_deepspeed_zero3_enabled():
            # ZeRO-3 gathers each layer's shards from every process at every token: the
            # checkpoint, whole, generates on its own (the other processes are done)
            unset_hf_deepspeed_config()  # else the model would load sharded over processes
            model = load_for_inference(InferArguments(ckpt_dir=str(last), dtype=args.dtype),
                                       registry)[0]
        predict_held_out(model, tokenizer, data.settings.template, data.held_out, last,
                         args)
    return SftResult(run_dir, last, trainer.model)


def make_run_dir(args: SftArguments) -> Path:
    """The run folder, created (by the main process alone): a new version under
    --output-dir, or with --output-dir-as-run --output-dir itself, a previous run's files in
    it deleted with --overwrite-output-dir (said)."""
    if not args.output_dir_as_run:
        return new_run_dir(args.output_dir, args.model_type)
    run_dir = Path(args.output_dir)
    replaced = claim_run_dir(run_dir, args.overwrite_output_dir)
    if replaced:
        click.echo(f"[sdk] --overwrite-output-dir: deleted the previous run's "
                   f"{', '.join(replaced)} in {run_dir}", err=True)
    return run_dir


def build_trainer(model, tokenizer, examples, eval_examples, args: SftArguments,
                  default_learning_rate: float, run_dir: Path, saved: dict):
    import torch
    from transformers import Trainer, TrainingArguments

    from sdk.train.accuracy import TokenAccuracy
    from sdk.train.batching import Batching, row_lengths
    from sdk.train.callbacks import JsonlLogger
    from sdk.train.packing import batch_collator
    from sdk.train.trainer import SftTrainer

    dtype = torch_dtype(args.dtype)
    on_gpu = torch.cuda.is_available()
    if on_gpu and model.device.type == "cpu":
        # Where the Trainer (or DeepSpeed) would move it: the probes then run the kernels that
        # training runs (liger's Triton kernels and torch's varlen attention exist only there).
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    if args.use_liger_kernel:  # before the packing probe, which checks the model as it trains
        done = apply_liger_kernels(model)
        if is_main_process():
            click.echo(f"[sdk] {done}", err=True)
    optional = {}
    if args.fsdp:  # FSDP's own activation checkpointing replaces the Trainer's
        optional.update(fsdp=True, fsdp_config=fsdp_config(args))
        if world_size() == 1:
            single_process_rendezvous()
    elif args.gradient_checkpointing:
        # transformers 5.24 renamed the flag; 5.17 (still in use on GPU machines) has only the
        # old name.
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        optional["activation_checkpointing" if "activation_checkpointing" in names
                 else "gradient_checkpointing"] = True
    if args.optim:
        optional["optim"] = args.optim
    if args.loraplus_lr_ratio and not any("lora_B" in name for name, parameter
                                          in model.named_parameters()
                                          if parameter.requires_grad):  # a third party's tuner
        raise loraplus_refusal(args.sft_type)
    if args.deepspeed:
        optional["deepspeed"] = deepspeed_config(args.deepspeed)
        quiet_deepspeed_collectives()
        if world_size() == 1:
            single_process_rendezvous()
    if (world_size() > 1 or args.deepspeed) and not on_gpu:
        optional["use_cpu"] = True  # gloo; else the Trainer skips DDP on CPUs
    if eval_examples is not None:
        optional.update(eval_strategy="steps", eval_steps=args.eval_steps or args.save_steps,
                        per_device_eval_batch_size=args.batch_size)
    if args.group_by_length and not args.max_tokens_per_batch:  # else TokenBudgetBatches groups
        # transformers 5.24 made group_by_length one of its train_sampling_strategy values
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        optional.update({"train_sampling_strategy": "group_by_length"}
                        if "train_sampling_strategy" in names else {"group_by_length": True})
    collator, not_packed = batch_collator(model, tokenizer, args)
    if not_packed:
        click.echo(f"[sdk] packing off, batches are padded: {not_packed}.", err=True)
    batching = Batching(packed=args.packing and not_packed is None,
                        max_tokens=args.max_tokens_per_batch,
                        group_by_length=args.group_by_length)
    if batching.max_tokens:
        longer = sum(length > batching.max_tokens for length in row_lengths(examples))
        if longer:
            click.echo(f"[sdk] {longer} rows are longer than --max-tokens-per-batch "
                       f"{batching.max_tokens}; each gets a batch of its own.", err=True)
    training_args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate or default_learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_ratio,  # a float below 1 is a ratio of all steps
        max_grad_norm=args.max_grad_norm,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        # else the Trainer hides a NaN loss behind the average of the earlier ones; a
        # non-finite loss stops the run instead (sdk/train/nonfinite.py)
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit if args.save_total_limit > 0 else None,
        save_only_model=args.only_save_model,
        seed=args.seed,
        neftune_noise_alpha=args.neftune_noise_alpha,
        dataloader_num_workers=args.dataloader_num_workers,
        dataloader_pin_memory=on_gpu,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        report_to=[name for name in args.report_to if name != "none"] or "none",
        # Eval predictions are only the token-accuracy counts, added up a batch at a time
        # (accuracy.py).
        prediction_loss_only=eval_examples is None,
        batch_eval_metrics=eval_examples is not None,
        **optional,
    )
    try:  # a package the optimizer needs, or settings it lacks, named before training
        Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    except (ImportError, ValueError) as error:
        raise SdkError(f"--optim {training_args.optim.value}: {error}") from None
    return SftTrainer(
        model=model,
        args=training_args,
        train_dataset=examples,
        eval_dataset=eval_examples,
        data_collator=collator,
        batching=batching,
        processing_class=tokenizer,
        callbacks=[JsonlLogger(run_dir)],
        run_arguments=saved,
        loss_impl=args.loss_impl,
        offload_activations=args.offload_activations,
        loraplus_lr_ratio=args.loraplus_lr_ratio,
        compute_metrics=TokenAccuracy() if eval_examples is not None else None,
    )
