"""Jobs: training runs started from the browser, each in a child process of the server.

Holds `TrainingJob` (one `python -m core.train` process: start, stop with a checkpoint, resume, export
when done, progress read back from the run's log) and `JobBoard` (a server's jobs: who owns each, how
many may run at once, bounded steps, parameters and wall time, and a heartbeat: a job whose page
nobody has looked at for a while is stopped, so a closed tab leaves no unbounded work).

Training in a child process keeps the server responsive (a training step holds the GIL between
torch calls), keeps torch out of the server process, and lets a stop be a signal the trainer already
handles: it finishes the step, checkpoints and exits.

Deliberately not here: torch (the child trains; this module launches and reads), the training loop
(`core.train`), the export (`core.export`), pages.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import catalog
from core.catalog import read_log

ROOT = Path(__file__).resolve().parent.parent
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


class JobError(ValueError):
    """A job cannot be started or changed as asked; the message says why and what to do."""


@dataclass(frozen=True)
class JobLimits:
    max_running: int = 2                # jobs training at once on this server
    max_parameters: int = 20_000_000
    max_steps: int = 20_000
    max_wall_seconds: float = 0.0       # 0: no limit
    heartbeat_seconds: float = 0.0      # stop a job nobody watched for this long; 0: never

    @classmethod
    def hosted(cls) -> "JobLimits":
        """A shared demo on 2 cores: one job at a time, small and short, stopped when its tab closes."""
        return cls(max_running=1, max_parameters=2_000_000, max_steps=2_000, max_wall_seconds=600.0,
                   heartbeat_seconds=60.0)


@dataclass
class TrainingJob:
    name: str
    owner: str                          # the session that started it; only it may stop or resume it
    run_dir: Path
    args: list[str]                     # core.train flags (without --out-dir / --resume)
    max_steps: int
    state: str = "new"                  # running | stopping | stopped | finished | failed | exporting | exported
    message: str = ""
    started: float = 0.0
    last_seen: float = field(default_factory=time.time)
    process: subprocess.Popen | None = None
    export_dir: Path | None = None
    _exporter: subprocess.Popen | None = None

    def _launch(self, resume: bool) -> None:
        cmd = [sys.executable, "-m", "core.train", "--out-dir", str(self.run_dir), *self.args]
        if resume:
            cmd = [sys.executable, "-m", "core.train", "--out-dir", str(self.run_dir), "--resume",
                   "--max-steps", str(self.max_steps)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        log = open(self.run_dir.parent / f".{self.name}.stderr", "w")
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                        start_new_session=True)
        log.close()
        self.state, self.message, self.started = "running", "", time.time()

    def poll(self, limits: JobLimits) -> str:
        """Advance the state from the process's fate, and enforce wall time and heartbeat."""
        if self.state in ("running", "stopping") and self.process is not None:
            rc = self.process.poll()
            if rc is None:
                now = time.time()
                if limits.max_wall_seconds and now - self.started > limits.max_wall_seconds and self.state == "running":
                    self.stop(f"stopped after {limits.max_wall_seconds:.0f} s, this server's limit per run; "
                              f"the checkpoint is kept: resume to go on")
                elif limits.heartbeat_seconds and now - self.last_seen > limits.heartbeat_seconds and self.state == "running":
                    self.stop("stopped because its page was closed; the checkpoint is kept: resume to go on")
            elif rc == 0:
                self.state = "finished"
            elif rc in (130, -signal.SIGTERM):
                self.state = "stopped"
                self.message = self.message or "stopped; the checkpoint is kept: resume to go on"
            else:
                self.state = "failed"
                self.message = self._error_tail() or f"training exited with status {rc}"
        if self.state == "exporting" and self._exporter is not None:
            rc = self._exporter.poll()
            if rc == 0:
                self.state, self.message = "exported", f"exported to {self.export_dir}"
            elif rc is not None:
                self.state, self.message = "finished", f"export failed: {self._error_tail('export')}"
        return self.state

    def _error_tail(self, what: str = "") -> str:
        path = self.run_dir.parent / f".{self.name}{'.' + what if what else ''}.stderr"
        try:
            lines = [line for line in path.read_text().splitlines() if line.strip()]
        except OSError:
            return ""
        errors = [line for line in lines if line.startswith("error:")]
        return (errors[-1][len("error: "):] if errors else (lines[-1] if lines else ""))[:500]

    def stop(self, message: str = "") -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)    # the trainer finishes the step and checkpoints
            self.state, self.message = "stopping", message
        else:
            self.message = message or self.message

    def export(self, exported_dir: Path) -> None:
        if self.state not in ("finished", "stopped"):
            raise JobError(f"{self.name} is {self.state}; export it once it has finished or stopped")
        target = exported_dir / self.name
        if target.exists():
            raise JobError(f"a model named {self.name} is already exported; remove it or train under another name")
        err = open(self.run_dir.parent / f".{self.name}.export.stderr", "w")
        self._exporter = subprocess.Popen([sys.executable, "-m", "core.export", str(self.run_dir), str(target),
                                           "--checkpoints"],
                                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                          stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        err.close()
        self.export_dir, self.state, self.message = target, "exporting", ""

    def records(self) -> list[dict]:
        return read_log(self.run_dir)


class JobBoard:
    """The jobs of one server process (shared by every session; thread-safe)."""

    def __init__(self, runs_dir: Path | None = None, limits: JobLimits = JobLimits()):
        self.runs_dir = Path(runs_dir) if runs_dir else None
        self.limits = limits
        self.jobs: dict[str, TrainingJob] = {}
        self.lock = threading.Lock()

    def _runs(self) -> Path:
        return self.runs_dir or catalog.RUNS_DIR

    def running(self) -> list[TrainingJob]:
        return [j for j in self.jobs.values() if j.poll(self.limits) in ("running", "stopping")]

    def start(self, owner: str, name: str, args: list[str], parameters: int, max_steps: int) -> TrainingJob:
        if not NAME_RE.match(name or ""):
            raise JobError(f"run name {name!r} is not allowed: use 1-40 letters, digits, '-' or '_', "
                           f"starting with a letter or digit")
        if parameters > self.limits.max_parameters:
            raise JobError(f"this model has {parameters:,} parameters; this server trains at most "
                           f"{self.limits.max_parameters:,}: choose a smaller preset")
        if max_steps > self.limits.max_steps:
            raise JobError(f"{max_steps:,} steps asked; this server allows at most {self.limits.max_steps:,} per run")
        with self.lock:
            busy = self.running()
            if len(busy) >= self.limits.max_running:
                raise JobError(f"{len(busy)} training job(s) already running on this server (the limit is "
                               f"{self.limits.max_running}); wait for it to finish or stop yours")
            run_dir = self._runs() / name
            if run_dir.exists() or name in self.jobs:
                raise JobError(f"a run named {name!r} exists already; choose another name (nothing was changed)")
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            job = TrainingJob(name, owner, run_dir, list(args), max_steps)
            job._launch(resume=False)
            self.jobs[name] = job
            return job

    def get(self, name: str) -> TrainingJob | None:
        return self.jobs.get(name)

    def owned(self, owner: str) -> list[TrainingJob]:
        return [j for j in self.jobs.values() if j.owner == owner]

    def _own(self, owner: str, name: str) -> TrainingJob:
        job = self.jobs.get(name)
        if job is None:
            raise JobError(f"no job named {name!r}")
        if job.owner != owner:
            raise JobError(f"{name!r} was started by another visitor; only they can change it")
        return job

    def stop(self, owner: str, name: str) -> None:
        self._own(owner, name).stop("stopped; the checkpoint is kept: resume to go on")

    def resume(self, owner: str, name: str) -> TrainingJob:
        with self.lock:
            job = self._own(owner, name)
            if job.poll(self.limits) not in ("stopped", "failed"):
                raise JobError(f"{name} is {job.state}; only a stopped run can be resumed")
            if len(self.running()) >= self.limits.max_running:
                raise JobError("another training job is running on this server; wait for it to finish")
            job._launch(resume=True)
            return job

    def export(self, owner: str, name: str, exported_dir: Path | None = None) -> None:
        self._own(owner, name).export(Path(exported_dir or catalog.EXPORTED_DIR))

    def heartbeat(self, owner: str) -> None:
        now = time.time()
        for job in self.owned(owner):
            job.last_seen = now
