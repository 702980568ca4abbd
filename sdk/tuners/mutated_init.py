"""PiSSA and OLoRA (--init-lora-weights pissa|olora): adapters that start from a part of the
base weights, taken out of the base.

peft sets each targeted weight W to W - B0 A0 and starts the adapter at (A0, B0), so what the
run trains is a residual base and the adapter together. A checkpoint must still work on the
base as published (`sdk infer`, `sdk export`, `sdk push`, `--adapter`): peft converts the
trained (A, B) to a plain LoRA adapter of twice the rank, [A; A0] and [B, -B0], whose product
B A - B0 A0 is the whole change to W. That needs (A0, B0): they are kept in memory when the
callback is made, before any step, and written into the staged checkpoint for peft's
conversion to read (the staging folder goes away with a save cut short). The checkpoint's
adapter_model.safetensors is the converted adapter; ``STATE_FILE`` keeps the trained (A, B) at
the run's rank, which resuming loads onto the residual base that the resumed run's own start
rebuilds (the same decomposition of the same weights).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.tuners.lora import MUTATING_INITS

STATE_FILE = "trained_adapter.safetensors"
INITIAL = "initial_adapter"  # in the staged checkpoint while it is converted


def callbacks(model: Any, args: Any) -> list[Any]:
    if args.init_lora_weights not in MUTATING_INITS or args.adapter:
        return []
    from peft import get_peft_model_state_dict
    from transformers import TrainerCallback

    start = {name: tensor.detach().to("cpu", copy=True)  # (A0, B0), before any step
             for name, tensor in get_peft_model_state_dict(model).items()}

    class ConvertToLora(TrainerCallback):
        """Writes each checkpoint's adapter as plain LoRA, and what resuming needs (SftTrainer
        calls write_checkpoint and read_checkpoint)."""

        def write_checkpoint(self, folder: Path) -> None:
            import torch
            from safetensors.torch import save_file

            if not args.only_save_model:
                save_file({name: tensor.contiguous() for name, tensor
                           in get_peft_model_state_dict(model).items()}, folder / STATE_FILE)
            initial = folder / INITIAL  # peft loads it as an adapter of this name
            model.peft_config[model.active_adapter].save_pretrained(str(initial))
            save_file(start, initial / "adapter_model.safetensors")
            # replaces the adapter files the Trainer wrote there; peft's reload of (A0, B0)
            # first initialises a fresh adapter, which must not draw from the run's random
            # numbers (already saved with the checkpoint for resuming)
            with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda"
                                       else []), warnings.catch_warnings():
                # about loading another adapter onto a changed base: the reload is that
                warnings.filterwarnings("ignore", message=".* changes the base weights")
                model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(
                    initial))
            shutil.rmtree(initial)

        def read_checkpoint(self, folder: Path) -> bool:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            if not (folder / STATE_FILE).is_file():
                raise SdkError(f"--resume-from-checkpoint: {folder} has no {STATE_FILE} (the "
                               f"adapter as trained with --init-lora-weights "
                               f"{args.init_lora_weights}), so the run cannot resume from it. "
                               f"Train on from its adapter instead: --adapter {folder} "
                               "--init-lora-weights default.")
            set_peft_model_state_dict(model, load_file(folder / STATE_FILE,
                                                       device=str(model.device)))
            return True

    return [ConvertToLora()]
