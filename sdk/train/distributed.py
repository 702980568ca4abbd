"""`sdk sft` in several processes (torchrun, or ``NPROC_PER_NODE=N sdk sft``; with ``NNODES``
and the rest, on several machines): the processes share one run folder, the main process
prepares the data first (the others read its cache), and only it writes the run's own files.
The training itself is the Trainer's (DDP through accelerate: NCCL on GPUs, gloo on CPUs)."""

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


def torchrun_command(argv: list[str], environ: dict[str, str]) -> list[str] | None:
    """The torchrun command that runs ``sdk ARGV`` as ``NPROC_PER_NODE`` processes (ms-swift's
    variables: ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for several
    machines); None when it asks for one process or this already is one of torchrun's."""
    wanted = environ.get(LAUNCHER_ENV_VAR)
    if not wanted or "LOCAL_RANK" in environ:
        return None
    if not wanted.isdigit() or int(wanted) < 1:
        raise SdkError(f"{LAUNCHER_ENV_VAR}={wanted}: give the number of processes, e.g. "
                       f"{LAUNCHER_ENV_VAR}=2 (one per GPU).")
    nodes = environ.get("NNODES", "1")
    if not nodes.isdigit() or int(nodes) < 1:
        raise SdkError(f"NNODES={nodes}: give the number of machines.")
    if int(nodes) == 1:
        if int(wanted) == 1:
            return None
        placement = ["--standalone"]
    else:
        missing = [name for name in ("NODE_RANK", "MASTER_ADDR") if not environ.get(name)]
        if missing:
            raise SdkError(f"NNODES={nodes} needs {' and '.join(missing)} too: this machine's "
                           "rank (0 on the first) and the first machine's address.")
        placement = [f"--nnodes={nodes}", f"--node-rank={environ['NODE_RANK']}",
                     f"--master-addr={environ['MASTER_ADDR']}",
                     f"--master-port={environ.get('MASTER_PORT', '29500')}"]
    return [sys.executable, "-m", "torch.distributed.run", *placement,
            f"--nproc-per-node={wanted}", "-m", "sdk", *argv]


def launch_processes_if_asked(argv: list[str]) -> None:
    """With ``NPROC_PER_NODE`` set outside torchrun, replace this process by torchrun running
    ``sdk ARGV`` in that many processes."""
    command = torchrun_command(argv, dict(os.environ))
    if command:
        os.execv(command[0], command)


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

