"""The transformers Trainer, with checkpoints that appear complete or not at all.

Why a staging folder renamed into place rather than a completion marker: transformers 5.24
writes ``checkpoint-N`` in place over several calls (weights, tokenizer, optimizer, RNG,
trainer state) and rotates old checkpoints (``save_total_limit``) inside that same call,
before any callback could mark the new one complete. A marker would also have to be known to
every reader: resume, `sdk infer`, the Trainer's own ``get_last_checkpoint``, users' scripts.
Here the Trainer writes into ``<run>/.partial/``; ``sft_args.json`` goes in last, the files are
synced, and one rename (atomic within a filesystem) gives the folder its ``checkpoint-N``
name. Only then are old checkpoints rotated, each renamed away before it is deleted, so a
half-deleted folder never carries a checkpoint name either. Callbacks' ``on_save`` (the hub
push) runs after this and sees the finished checkpoint. A callback that adds to checkpoints
(AdaLoRA's state that resuming needs, PiSSA's adapter converted to plain LoRA) defines
``write_checkpoint(folder)``, called while the checkpoint is staged, and
``read_checkpoint(folder)``, which loads the model on resume in place of the Trainer when it
returns True.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import click
import torch
from transformers import Trainer

from sdk.folders import disk_full_said
from sdk.runs.best import record_best, rotated
from sdk.runs.checkpoint_files import save_base_config
from sdk.runs.run_dir import PARTIAL_DIR, checkpoints, kept_of_run, write_args
from sdk.train.accuracy import count_correct
from sdk.train.batching import Batching, TokenBudgetBatches, row_lengths
from sdk.train.loss import (
    choose_loss,
    chunk_tokens_for,
    eval_loss_and_counts,
    logits_from_output_layer,
    token_loss,
)
from sdk.train.nonfinite import nonfinite_parameter, nonfinite_step, training_stopped


class SftTrainer(Trainer):
    def __init__(self, *args: Any, run_arguments: dict[str, Any], loss_impl: str = "auto",
                 offload_activations: bool = False, batching: Batching | None = None,
                 loraplus_lr_ratio: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.run_arguments = run_arguments  # written into each checkpoint as sft_args.json
        self.batching = batching  # its token budget replaces the Trainer's batches of batch_size
        self._saving_into: str | None = None
        self.loss_impl = loss_impl  # --loss-impl
        self.chosen_loss: str | None = None  # liger, chunked or standard: set by the first batch
        self.offload_activations = offload_activations
        self.loraplus_lr_ratio = loraplus_lr_ratio  # --loraplus-lr-ratio

    def train(self, *args: Any, **kwargs: Any) -> Any:
        with uncast_adapter_inputs(self.model, self.args.bf16 or self.args.fp16):
            return super().train(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        # a callback that saved the model's state itself (AdaLoRA's) loads it back instead
        folder = Path(resume_from_checkpoint)
        if not any(callback.read_checkpoint(folder) for callback in self.callback_handler.callbacks
                   if hasattr(callback, "read_checkpoint")):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def create_optimizer(self, model: Any = None) -> Any:
        if self.loraplus_lr_ratio and self.optimizer is None:
            # peft's LoRA+ optimizer: the --optim class and settings, LoRA B matrices at
            # loraplus_lr_ratio times the learning rate
            from peft.optimizers import create_loraplus_optimizer

            optimizer_class, settings = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            settings.pop("lr")
            self.optimizer = create_loraplus_optimizer(
                self.model, optimizer_class, lr=self.args.learning_rate,
                loraplus_lr_ratio=self.loraplus_lr_ratio,
                loraplus_weight_decay=self.args.weight_decay, **settings)
        return super().create_optimizer(model)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        # The activations the backward needs wait in (pinned) CPU memory: with gradient
        # checkpointing, each layer's input, and the hidden states of the loss.
        offloaded = (torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
                     if self.offload_activations else nullcontext())
        with offloaded:
            if "labels" not in inputs or self._loss_for(inputs) == "standard":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with self.accelerator.autocast():
                loss, outputs = token_loss(model, self.model.get_output_embeddings(), inputs,
                                           num_items_in_batch, self.chosen_loss,
                                           chunk_tokens_for(self.model))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as the Trainer scales its own: num_items_in_batch counts every process's tokens
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple:
        """Eval: the loss and, for the token accuracy (``accuracy.py``), each row's counts in
        place of the logits; from chunks of logits at the trained tokens unless the loss is the
        model's own, so no eval batch holds its full logits either."""
        if prediction_loss_only or "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if self._loss_for(inputs) == "standard":
            loss, logits, labels = super().prediction_step(model, inputs, False, ignore_keys)
            return loss, count_correct(logits, labels), labels
        inputs = self._prepare_inputs(inputs)
        with (torch.no_grad(), self.compute_loss_context_manager(),
              self.accelerator.autocast()):
            loss, counts = eval_loss_and_counts(model, self.model.get_output_embeddings(),
                                                inputs, chunk_tokens_for(self.model))
        return loss.detach(), counts, inputs["labels"]

    def _loss_for(self, inputs: dict[str, Any]) -> str:
        if self.chosen_loss is None:
            sharded = self.args.n_gpu > 1 or self.is_fsdp_enabled or self.is_deepspeed_enabled
            impl, why = choose_loss(self.loss_impl, self.model, self.args.device.type == "cuda",
                                    sharded)
            with self.accelerator.autocast():
                if impl != "standard" and not logits_from_output_layer(self.model,
                                                                       inputs["input_ids"]):
                    impl, why = "standard", ("its logits are more than its output layer's "
                                             "(soft-capped or scaled)")
            if self.is_world_process_zero():
                click.echo(f"[sdk] loss: {impl} ({why})", err=True)
            self.chosen_loss = impl
        return self.chosen_loss

    def _get_dataloader(self, dataset: Any, description: str, batch_size: int,
                        sampler_fn: Any = None, is_training: bool = False,
                        dataloader_key: str | None = None) -> Any:
        if self.batching is None or self.batching.max_tokens is None:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn,
                                           is_training, dataloader_key)
        # The Trainer's own loader with a batch sampler in place of batch_size and sampler.
        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        dataset = self._remove_unused_columns(dataset, description=description)
        batches = TokenBudgetBatches(row_lengths(dataset), self.batching.max_tokens,
                                     self.batching.packed, self.args.seed, shuffle=is_training,
                                     group_by_length=self.batching.group_by_length)
        workers = self.args.dataloader_num_workers
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=self.data_collator,
                            num_workers=workers, pin_memory=self.args.dataloader_pin_memory,
                            worker_init_fn=partial(seed_worker, num_workers=workers,
                                                   rank=self.args.process_index))
        return self.accelerator.prepare(loader)

    def _maybe_log_save_evaluate(self, tr_loss: Any, grad_norm: Any, *args: Any,
                                 **kwargs: Any) -> None:
        # Called after every optimizer step, before its log line and its save: a non-finite
        # loss or gradient norm stops the run here, before NaN weights reach a checkpoint.
        self._stop_if(nonfinite_step(tr_loss, grad_norm,
                                     self.accelerator.optimizer_step_was_skipped))
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _stop_if(self, problem: str | None) -> None:
        if self.accelerator.num_processes > 1:
            # The loss is each process's own: all stop together, or the others would wait
            # forever in the next collective.
            count = self.accelerator.reduce(torch.tensor(
                float(problem is not None), device=self.args.device), reduction="sum")
            if count and problem is None:
                problem = ("the loss, gradient norm or weights of another process became NaN "
                           "or infinite")
        if problem is not None:
            raise training_stopped(self.state.global_step, problem, Path(self.args.output_dir),
                                   self.args.learning_rate)

    def _get_output_dir(self, trial: Any) -> str:
        # The Trainer writes checkpoint-N under this folder and rotates there: while it saves,
        # that is the staging folder, which holds nothing else.
        return self._saving_into or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # A finite loss and gradient with a huge learning rate still make the update
        # infinite: the weights themselves are checked before they are saved.
        bad = nonfinite_parameter(self.model)
        self._stop_if(None if bad is None else f"the weights became NaN or infinite ({bad})")
        run_dir = Path(super()._get_output_dir(trial))
        staging = run_dir / PARTIAL_DIR
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a save cut short left behind
        self.accelerator.wait_for_everyone()
        self._saving_into = str(staging)
        name = f"checkpoint-{self.state.global_step}"
        with disk_full_said(staging, kept_of_run(run_dir)):
            try:
                super()._save_checkpoint(model, trial)
                if self.args.should_save:
                    save_base_config(self.model, staging / name)
                    keep_sentencepiece_model(self.processing_class, staging / name)
                    for callback in self.callback_handler.callbacks:
                        if hasattr(callback, "write_checkpoint"):
                            callback.write_checkpoint(staging / name)
            finally:
                self._saving_into = None
            self.accelerator.wait_for_everyone()  # every process has written its part
            if self.args.should_save:
                publish(staging / name, run_dir / name, self.run_arguments)
        if self.args.should_save:
            best = record_best(run_dir, self.state.log_history)  # sdk/runs/best.py
            limit = self.args.save_total_limit or 0
            if limit > 0:
                for old in rotated(checkpoints(run_dir), limit, best):
                    discard(old)
            shutil.rmtree(staging)


@contextmanager
def uncast_adapter_inputs(model: Any, mixed_precision: bool) -> Iterator[None]:
    """Under mixed precision, peft's adapter layers take their inputs as they come. Every
    forward then runs under autocast, which computes the adapters' fp32 weights with bf16/fp16
    inputs anyway: peft's cast of each input to fp32 first only adds copies, one of which each
    adapter keeps for the backward (2.3 MB a token on qwen2.5-7b with LoRA dropout, 0.6
    without). Restored afterwards, for generation outside the Trainer. (peft's own
    ``disable_input_dtype_casting`` fails on layers without the setting, such as IA3's.)"""
    layers = [module for module in model.modules()
              if getattr(module, "cast_input_dtype_enabled", False)] if mixed_precision else []
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.cast_input_dtype_enabled = True


def keep_sentencepiece_model(tokenizer: Any, checkpoint: Path) -> None:
    """The SentencePiece model file a tokenizer was converted from, which transformers 5 no
    longer saves: a GGUF export reads its piece scores, as llama.cpp merges by them."""
    from sdk.models.loader import sentencepiece_file

    model_file = sentencepiece_file(tokenizer)
    if model_file is not None:
        shutil.copyfile(model_file, checkpoint / model_file.name)


def publish(staged: Path, target: Path, arguments: dict[str, Any]) -> None:
    """Complete a staged checkpoint and give it its name in the run folder."""
    write_args(staged, arguments)
    # On disk before the name says complete, so a power cut cannot leave empty files under it.
    for file in staged.rglob("*"):
        if file.is_file():
            _sync(file)
    if target.exists():  # left by a run from before staging (a save cut short)
        discard(target)
    staged.rename(target)
    _sync(target.parent)


def discard(checkpoint: Path) -> None:
    """Delete a checkpoint folder; renamed away first, so no half-deleted folder keeps its
    name."""
    doomed = checkpoint.parent / PARTIAL_DIR / f"deleting-{checkpoint.name}"
    doomed.parent.mkdir(exist_ok=True)
    shutil.rmtree(doomed, ignore_errors=True)
    checkpoint.rename(doomed)
    shutil.rmtree(doomed)


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
