"""`sdk sft` in several processes (torchrun, or ``NPROC_PER_NODE=N sdk sft``): the processes
share one run folder, the main process prepares the data first (the others read its cache), and
only it writes the run's own files. The training itself is the Trainer's (DDP through
accelerate: NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sdk.errors import SdkError

LAUNCHER_ENV_VAR = "NPROC_PER_NODE"


def world_size() -> int:
    """Processes in this run (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_processes_if_asked(argv: list[str]) -> None:
    """With ``NPROC_PER_NODE=N`` (N > 1) outside torchrun, replace this process by torchrun
    running ``sdk ARGV`` in N processes on this machine."""
    wanted = os.environ.get(LAUNCHER_ENV_VAR)
    if not wanted or "LOCAL_RANK" in os.environ:
        return
    if not wanted.isdigit() or int(wanted) < 1:
        raise SdkError(f"{LAUNCHER_ENV_VAR}={wanted}: give the number of processes, e.g. "
                       f"{LAUNCHER_ENV_VAR}=2 (one per GPU).")
    if int(wanted) == 1:
        return
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc-per-node={wanted}", "-m", "sdk", *argv])


def _state() -> Any:
    import torch
    from accelerate import PartialState

    # the CPU flag as the Trainer sets it (TrainingArguments.use_cpu), so they share one state
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return world_size() == 1 or _state().is_main_process


def main_process_first() -> Any:
    """The main process runs the block first, the others after it (then from its caches)."""
    return nullcontext() if world_size() == 1 else _state().main_process_first()


def shared_run_dir(make: Callable[[], Path]) -> Path:
    """The run folder ``make`` creates in the main process, for every process."""
    if world_size() == 1:
        return make()
    import torch.distributed

    state = _state()
    folder = [make() if state.is_main_process else None]
    torch.distributed.broadcast_object_list(folder, src=0)
    return folder[0]

