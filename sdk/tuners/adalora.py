"""AdaLoRA through peft: LoRA adapters that start at --adalora-init-rank and are pruned during
training to an average of --adalora-target-rank, keeping rank where it matters most.

peft needs the number of training steps up front and a call to ``update_and_allocate`` after
each optimizer step; the Trainer knows the first only when training starts, so the callback
below sets the schedule then and makes the calls. peft saves an adapter cut to the ranks kept so
far, and keeps the ranks' importance scores only in memory: neither resumes a run. The callback
writes what does into each checkpoint (``STATE_FILE``: the adapter at its full ranks, the scores
and the rank pattern) and reads it back when the run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.specs import ModelSpec
from sdk.tuners.lora import (
    continue_adapter,
    lora_dropout,
    modules_to_save,
    ready_for_adapters,
    target_modules,
    with_adapters,
)

STATE_FILE = "adalora_state.pt"
SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # peft's RankAllocator: the ranks' importance


def schedule(total_steps: int, args: Any) -> dict[str, int]:
    """AdaLoRA's phases: ranks fixed for ``tinit`` steps, pruned, then fixed for ``tfinal``."""
    tinit = total_steps // 10 if args.adalora_tinit is None else args.adalora_tinit
    tfinal = total_steps // 5 if args.adalora_tfinal is None else args.adalora_tfinal
    # peft scores the ranks on the steps between tinit and the final phase: it needs one
    # before the step that prunes
    if tinit >= total_steps - tfinal - 1:
        raise SdkError(f"--adalora-tinit {tinit} and --adalora-tfinal {tfinal} leave fewer "
                       f"than 2 of the {total_steps} training steps to score and prune ranks "
                       "in; lower them or train longer.")
    return {"total_step": total_steps, "tinit": tinit, "tfinal": tfinal}


def prepare(model: Any, args: Any, spec: ModelSpec) -> Any:
    from peft import AdaLoraConfig

    model = ready_for_adapters(model, args)
    if args.adapter:  # trains on at the ranks it was saved with
        return continue_adapter(model, args.adapter)
    if args.adalora_target_rank > args.adalora_init_rank:
        raise SdkError(f"--adalora-target-rank {args.adalora_target_rank} is above "
                       f"--adalora-init-rank {args.adalora_init_rank}: pruning only lowers ranks.")
    if args.max_steps > 0:
        steps = schedule(args.max_steps, args)
    else:  # passes peft's check; AllocateRanks sets the real schedule when training starts
        tinit, tfinal = args.adalora_tinit or 0, args.adalora_tfinal or 0
        steps = {"total_step": tinit + tfinal + 1, "tinit": tinit, "tfinal": tfinal}
    config = AdaLoraConfig(
        task_type="CAUSAL_LM",
        init_r=args.adalora_init_rank,
        target_r=args.adalora_target_rank,
        deltaT=args.adalora_delta_t,
        lora_alpha=args.lora_alpha,
        lora_dropout=lora_dropout(args),
        target_modules=target_modules(args.lora_target_modules, spec),
        **modules_to_save(model, args),
        **steps,
    )
    return with_adapters(model, config)


def callbacks(model: Any, args: Any) -> list[Any]:
    if args.adapter:  # a continued adapter keeps its ranks
        return []
    from transformers import TrainerCallback

    class AllocateRanks(TrainerCallback):
        """Sets AdaLoRA's schedule from the Trainer's step count, then after each optimizer
        step (before the gradients are zeroed: peft scores ranks by weight x gradient)
        updates the scores and prunes ranks to the step's budget."""

        def on_train_begin(self, training_args, state, control, **kwargs):
            config = model.peft_config[model.active_adapter]
            for name, value in schedule(state.max_steps, args).items():
                setattr(config, name, value)

        def on_optimizer_step(self, training_args, state, control, **kwargs):
            # global_step counts the steps finished before this one; peft counts from 1
            model.base_model.update_and_allocate(state.global_step + 1)

        def write_checkpoint(self, folder: Path) -> None:
            """What resuming needs and peft does not save (SftTrainer calls it)."""
            import torch

            if args.only_save_model:  # no optimizer state either: not for resuming
                return

            allocator = model.base_model.rankallocator
            torch.save({"adapter": {name: parameter.detach() for name, parameter
                                    in model.named_parameters() if parameter.requires_grad},
                        "scores": {name: getattr(allocator, name) for name in SCORES},
                        "rank_pattern": model.peft_config[model.active_adapter].rank_pattern},
                       folder / STATE_FILE)

        def read_checkpoint(self, folder: Path) -> bool:
            """Load the adapter and scores ``write_checkpoint`` saved (in place of the
            Trainer's load of the cut adapter); False for a checkpoint without them."""
            import torch

            if not (folder / STATE_FILE).is_file():
                adapter = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
                if adapter.get("rank_pattern"):  # cut to its kept ranks: the Trainer cannot load it
                    raise SdkError(f"--resume-from-checkpoint: {folder} was saved, without "
                                   f"{STATE_FILE}, after AdaLoRA began pruning ranks, so the "
                                   f"run cannot resume from it. Train on from its adapter "
                                   f"instead: --adapter {folder} (its ranks stay as they are).")
                return False
            saved = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
            parameters = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in saved["adapter"].items():
                    parameters[name].copy_(value)
            allocator = model.base_model.rankallocator
            for name in SCORES:
                setattr(allocator, name, {key: value.to(model.device)
                                          for key, value in saved["scores"][name].items()})
            model.peft_config[model.active_adapter].rank_pattern = saved["rank_pattern"]
            return True

    return [AllocateRanks()]
