"""Training runs the page started: each an `sdk sft` subprocess, recorded under
``<output-dir>/.webui/jobs/`` (its command, process id, log and end), so a restarted page, or
another browser tab, sees the same runs. At most ``limit`` train at a time."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

from sdk.errors import SdkError
from sdk.webui.command import runnable, shown, without_flag

WEBUI_DIR = ".webui"
# `sdk sft` names its run folder on stderr (sdk/train/sft.py) when it starts or resumes one
_RUN_FOLDER = re.compile(r"^\[sdk\] (?:run folder: (.+)|resuming (.+) from checkpoint-\d+)$",
                         re.MULTILINE)
RESUME_FLAG = "--resume-from-checkpoint"
STOP_GRACE_S = 60  # after SIGINT, how long a run may take to end before it is killed


@dataclasses.dataclass
class Job:
    number: int
    command: list[str]  # as shown: `sdk ...`
    pid: int
    log: str  # its stdout and stderr
    state: str = "running"  # running, finished, stopped, failed
    returncode: int | None = None
    run_dir: str | None = None  # once `sdk sft` names it

    def line(self) -> str:
        return shown(self.command)


class Jobs:
    def __init__(self, output_dir: Path, limit: int = 1):
        self.folder = output_dir / WEBUI_DIR / "jobs"
        self.limit = limit
        self._processes: dict[int, subprocess.Popen] = {}
        self._stopping: set[int] = set()
        self._lock = threading.Lock()

    def _path(self, number: int) -> Path:
        return self.folder / f"{number}.json"

    def _save(self, job: Job) -> None:
        staged = self._path(job.number).with_suffix(".json.partial")
        staged.write_text(json.dumps(dataclasses.asdict(job)), encoding="utf-8")
        staged.replace(self._path(job.number))

    def jobs(self) -> list[Job]:
        """Every recorded job, oldest first, with its state brought up to date."""
        if not self.folder.is_dir():
            return []
        with self._lock:
            found = []
            for path in sorted(self.folder.glob("*.json"), key=lambda p: int(p.stem)):
                try:
                    job = Job(**json.loads(path.read_text(encoding="utf-8")))
                except (ValueError, TypeError):  # not ours, or written by another version
                    continue
                found.append(self._update(job))
            return found

    def _update(self, job: Job) -> Job:
        changed = False
        if job.run_dir is None:
            log = Path(job.log).read_text(encoding="utf-8", errors="replace") if Path(
                job.log).is_file() else ""
            match = _RUN_FOLDER.search(log)
            if match:
                job.run_dir, changed = match.group(1) or match.group(2), True
        process = self._processes.get(job.number)
        if process is not None and process.poll() is not None:
            # ours: its exit code is the truth, whatever another page over the folder wrote
            job.returncode = process.returncode
            job.state = ("stopped" if job.number in self._stopping
                         else "finished" if job.returncode == 0 else "failed")
            del self._processes[job.number]
            changed = True
        elif process is None and job.state == "running" and not _alive(job.pid):
            job.state = "stopped"  # started by an earlier page: how it ended is unknown
            changed = True
        if changed:
            self._save(job)
        return job

    def running(self) -> list[Job]:
        return [job for job in self.jobs() if job.state == "running"]

    def start(self, command: list[str]) -> Job:
        """Run ``command`` (``sdk ... sft ...``) in a subprocess of its own session; refused
        while ``limit`` jobs run."""
        busy = self.running()
        if len(busy) >= self.limit:
            raise SdkError(f"A training run is already going ({busy[0].line()}): wait for it "
                           "to end or stop it first (`sdk web-ui --max-runs N` lets N train "
                           "at once).")
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            number = max((int(p.stem) for p in self.folder.glob("*.json")), default=0) + 1
            log = self.folder / f"{number}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(runnable(command), stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
            job = Job(number, list(command), process.pid, str(log))
            self._processes[number] = process
            self._save(job)
        return job

    def stop(self, number: int | None = None) -> Job | None:
        """End a running job (the newest, unless ``number``) as Ctrl-C does: the checkpoints
        already written stay complete; killed if it has not ended after STOP_GRACE_S."""
        running = [job for job in self.running() if number in (None, job.number)]
        if not running:
            return None
        job = running[-1]
        self._stopping.add(job.number)
        try:
            os.killpg(job.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        process = self._processes.get(job.number)
        if process is not None:
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                process.wait()
        return next(j for j in self.jobs() if j.number == job.number)

    def resume(self, run_dir: Path) -> Job:
        """Run the command that trained ``run_dir`` again with --resume-from-checkpoint RUN:
        `sdk sft` goes on from the run's newest complete checkpoint to the step it planned."""
        job = self.job_of_run(run_dir)
        if job is None:
            raise SdkError(f"{run_dir} was not trained from this page, so the page does not "
                           f"know its command: resume it with its `sdk sft ...` line and "
                           f"{RESUME_FLAG} {run_dir}.")
        return self.start(without_flag(job.command, RESUME_FLAG)
                          + [RESUME_FLAG, str(run_dir)])

    def job_of_run(self, run_dir: Path) -> Job | None:
        """The newest job that trained ``run_dir``."""
        mine = [job for job in self.jobs()
                if job.run_dir and Path(job.run_dir).resolve() == run_dir.resolve()]
        return mine[-1] if mine else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live `sdk sft` process (not a reused id nor a zombie)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return b"sft" in cmdline and "\nState:\tZ" not in status


def log_tail(job: Job, lines: int = 30) -> str:
    path = Path(job.log)
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    # progress bars redraw a line with \r: keep what it shows last
    shown_lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(shown_lines[-lines:])
