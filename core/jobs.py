"""Jobs: training runs started from the browser, each owned by its job, not by the tab that started it.

Holds the Train page's recipe (`PRESETS`, `RANGES`, `TrainingRequest` and `plan()`, which turns a
visitor's choices into the `TrainConfig` and `ModelConfig` a run starts from, with its size and an
`Estimate` from training throughput measured on this machine), upload storage (`store_upload`),
`TrainingJob` (one `python -m core.train` child process, launched from those dataclasses: its state,
its progress read incrementally from the run's log, stop, resume, export) and `JobBoard` (a server's
jobs). The board's supervisor thread advances every job whether or not a page is open: it reaps
finished processes, exports finished runs, enforces wall time and heartbeats, and records the
throughput each run measured. Each job belongs to a visitor token (kept by the browser across reloads;
only its hash is stored beside the run, in job.json), so its owner can come back to it after a reload,
or after a server restart, while other visitors can watch it but not touch it.

Training in a child process keeps the server responsive (a training step holds the GIL between
torch calls), keeps torch out of the server process, and lets a stop be a signal the trainer already
handles: it finishes the step, checkpoints and exits.

Deliberately not here: torch (the child trains; this module launches and reads), the training loop
(`core.train`), the export (`core.export`), pages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import catalog, checks, cli
from core.checks import PlaygroundError
from core.config import POS_ENCODINGS, ModelConfig, TrainConfig, count_parameters, flops_per_token
from core.data import Corpus, corpus_from_upload, data_dir
from core.files import write_atomic
from core.limits import Limits
from core.tokenizer import MIN_BPE_VOCAB, byte_tokenizer

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
JOB_FILE = "job.json"               # in the run directory: owner (hashed), request, state
STDERR_FILE = "job.stderr"          # the trainer's stderr, for a failed run's message
EXPORT_STDERR_FILE = "export.stderr"
THROUGHPUT_FILE = ".throughput.json"    # in the runs folder: what recent runs measured on this machine
POLL_SECONDS = 0.5                  # how often the supervisor looks at every job


class JobError(PlaygroundError):
    """A job cannot be started or changed as asked; the message says why and what to do."""


def check_name(name, what: str) -> str:
    """A run's or a model's name: it becomes a folder, so nothing that could leave or hide in one."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise JobError(f"{what} {name!r} is not allowed: use 1-40 letters, digits, '-' or '_', starting with a "
                       f"letter or digit")
    return name


# ---------------------------------------------------------------------------------------------------
# The recipe: a visitor's choices -> the configs a run starts from

# name: (label, n_layer, n_head, n_embd, block_size)
PRESETS = {
    "tiny": ("tiny: 2 layers, 64 wide", 2, 2, 64, 64),
    "small": ("small: 4 layers, 128 wide (nanoGPT's CPU recipe)", 4, 4, 128, 64),
    "medium": ("medium: 6 layers, 192 wide", 6, 6, 192, 128),
    "large": ("large: 6 layers, 384 wide", 6, 6, 384, 256),
}
# every choice's range (the page's widgets read these; `plan` checks them)
RANGES = {
    "steps": (10, None),                # the most: the server's Limits.max_steps
    "eval_every": (5, 1000),
    "sample_every": (0, 5000),
    "learning_rate": (1e-5, 1e-1),
    "batch_size": (1, 64),
    "block_size": (8, 512),
    "dropout": (0.0, 0.5),
    "bpe_vocab_size": (MIN_BPE_VOCAB, 8192),
}
TOKENIZERS = ("byte", "bpe")
POSITIONS = ("rope",) + tuple(p for p in POS_ENCODINGS if p != "rope")    # the recipe's own first
BYTE_VOCAB = byte_tokenizer().n_vocab
EVAL_ITERS = 20                     # batches per evaluation: a few seconds, not minutes, on a small machine
MILESTONES = 4                      # checkpoints kept for the pages' scrubber
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class TrainingRequest:
    """What the Train page asks for. Everything else follows from the recipe in `plan`."""
    name: str                           # the run's name, and the exported model's
    corpus: str                         # "tinyshakespeare", a stored upload or a local file
    tokenizer: str = "byte"             # byte | bpe (trained on this corpus)
    bpe_vocab_size: int = 1024
    preset: str = "small"               # a key of PRESETS
    steps: int = 1000
    eval_every: int = 100               # also the checkpoint interval: a stop loses at most this much
    sample_every: int = 200             # 0: no samples
    learning_rate: float = 2e-3         # the peak; the schedule decays to a tenth (Chinchilla's floor)
    batch_size: int = 12
    block_size: int = 0                 # the context; 0 takes the preset's
    pos_encoding: str = "rope"
    dropout: float = 0.0

    def check(self) -> "TrainingRequest":
        check_name(self.name, "run name")
        checks.text("corpus", self.corpus, JobError)
        if not self.corpus:
            raise JobError("choose a corpus first (tiny shakespeare, an upload or a local file)")
        checks.choice("tokenizer", self.tokenizer, TOKENIZERS, JobError)
        checks.choice("preset", self.preset, list(PRESETS), JobError)
        checks.choice("positions", self.pos_encoding, POSITIONS, JobError)
        for name in ("steps", "eval_every", "sample_every", "batch_size", "bpe_vocab_size"):
            checks.integer(name, getattr(self, name), *RANGES[name], error=JobError)
        if self.block_size:
            checks.integer("block_size", self.block_size, *RANGES["block_size"], error=JobError)
        for name in ("learning_rate", "dropout"):
            checks.number(name, getattr(self, name), *RANGES[name], error=JobError)
        return self


@dataclass(frozen=True)
class Estimate:
    seconds: float                      # training and evaluations together
    train_seconds: float
    eval_seconds: float
    flops_per_s: float                  # the training throughput assumed
    basis: str                          # where that throughput was measured


@dataclass(frozen=True)
class Plan:
    request: TrainingRequest
    train: TrainConfig
    model: ModelConfig
    parameters: int
    tokens: int                         # training tokens
    estimate: Estimate


def plan(request: TrainingRequest, limits: Limits = Limits(), runs_dir: Path | None = None) -> Plan:
    """The configs a browser-started run trains with, checked against this server's limits."""
    request.check()
    runs = Path(runs_dir or catalog.RUNS_DIR)
    _, n_layer, n_head, n_embd, preset_block = PRESETS[request.preset]
    block = request.block_size or preset_block
    vocab = BYTE_VOCAB if request.tokenizer == "byte" else request.bpe_vocab_size + 1   # + <|endoftext|>
    try:
        model = ModelConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                            pos_encoding=request.pos_encoding, dropout=float(request.dropout))
        train = TrainConfig(
            out_dir=str(runs / request.name), corpus=request.corpus, tokenizer=request.tokenizer,
            bpe_vocab_size=request.bpe_vocab_size, max_steps=request.steps,
            learning_rate=float(request.learning_rate), min_lr=float(request.learning_rate) / 10,
            warmup_steps=min(100, request.steps // 10), batch_size=request.batch_size,
            eval_interval=request.eval_every, eval_iters=EVAL_ITERS, sample_interval=request.sample_every,
            checkpoint_interval=request.eval_every, milestones=MILESTONES, keep_checkpoints=KEEP_CHECKPOINTS,
            threads=limits.train_threads)
    except checks.ConfigError as e:
        raise JobError(str(e)) from e
    parameters = _check_size(train, model, limits)
    tokens = request.steps * request.batch_size * block
    return Plan(request, train, model, parameters, tokens, estimate(train, model, runs))


def _check_size(train: TrainConfig, model: ModelConfig, limits: Limits) -> int:
    """A run's parameters, or why this server will not train it."""
    parameters = count_parameters(model)["total"]
    if parameters > limits.max_parameters:
        raise JobError(f"this model has {parameters:,} parameters; this server trains at most "
                       f"{limits.max_parameters:,}: choose a smaller preset")
    if train.max_steps > limits.max_steps:
        raise JobError(f"{train.max_steps:,} steps asked; this server allows at most {limits.max_steps:,} per run")
    return parameters


def estimate(train: TrainConfig, model: ModelConfig, runs_dir: Path | None = None) -> Estimate:
    """How long a run takes here: its training FLOPs and its evaluations' at the throughput measured
    on this machine for the most similar model (by FLOPs per token)."""
    fpt = flops_per_token(model)
    flops_per_s, basis = measured_throughput(fpt, runs_dir)
    tokens = train.max_steps * train.batch_size * train.grad_accum_steps * model.block_size
    train_s = tokens * fpt / flops_per_s
    n_evals = (1 if train.eval_at_start else 0) + (train.max_steps // train.eval_interval if train.eval_interval else 0)
    eval_tokens = n_evals * 2 * train.eval_iters * train.batch_size * model.block_size
    eval_s = eval_tokens * flops_per_token(model, training=False) / flops_per_s
    return Estimate(train_s + eval_s, train_s, eval_s, flops_per_s, basis)


def measured_throughput(flops_per_token_: float, runs_dir: Path | None = None) -> tuple[float, str]:
    """(training FLOP/s, where it was measured): recent runs on this machine first, else the project's
    committed sweep, taking the measurement whose model is nearest in FLOPs per token (small models
    reach a smaller share of the machine's peak)."""
    own = [m for m in _read_throughput(Path(runs_dir or catalog.RUNS_DIR)) if m.get("flops_per_s", 0) > 0]
    if own:
        best = min(own, key=lambda m: abs(math.log(m["flops_per_token"] / flops_per_token_)))
        return best["flops_per_s"], f"measured by {len(own)} earlier run(s) on this machine"
    sweep = []
    for s in catalog.list_sweeps():
        if s.committed:
            try:
                records = json.loads(s.path.read_text())["records"]
                sweep += [(r["flops_per_token"], r["flops"] / r["wall_s"]) for r in records if r.get("wall_s")]
            except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
                continue
    if sweep:
        fpt, rate = min(sweep, key=lambda fr: abs(math.log(fr[0] / flops_per_token_)))
        return rate, "measured by the project's scaling sweep on a 2-core machine"
    return 15e9, "a guess: no run has been measured on this machine yet"


def _read_throughput(runs_dir: Path) -> list[dict]:
    try:
        data = json.loads((runs_dir / THROUGHPUT_FILE).read_text())
        return data if isinstance(data, list) else []
    except (OSError, ValueError):
        return []


def record_throughput(runs_dir: Path, flops_per_token_: float, flops_per_s: float, threads: int | None) -> None:
    """Keep the newest measurements (one per finished or stopped run) for the next estimate."""
    kept = _read_throughput(runs_dir)[-19:]
    kept.append({"flops_per_token": flops_per_token_, "flops_per_s": flops_per_s, "threads": threads,
                 "time": time.time()})
    write_atomic(runs_dir / THROUGHPUT_FILE, json.dumps(kept).encode())


def training_unavailable() -> str | None:
    """Why this installation cannot train (a hosted demo installs no torch), or None. Asked without
    importing torch: the server process never loads it; the job's child process does."""
    import importlib.util
    try:
        found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return ("Training needs torch, which this deployment does not install (it serves exported models only). "
                "Run the playground locally with `requirements.txt` to train.")
    return None


def store_upload(data: bytes, filename: str) -> tuple[Path, Corpus]:
    """An uploaded corpus, checked and kept under the data folder by its sha256 (the same text uploaded
    twice is stored once), so a run (and its resume) can read it again."""
    corpus = corpus_from_upload(data, filename)
    path = data_dir() / "uploads" / f"{corpus.sha256[:16]}.txt"
    if not path.exists():
        write_atomic(path, data)
    return path, corpus


# ---------------------------------------------------------------------------------------------------
# One job

@dataclass
class Progress:
    """What a watcher of a run sees, updated from the run's log by the supervisor."""
    phase: str = "starting"
    step: int = 0
    steps: list[int] = field(default_factory=list)          # every training step's loss, for the curve
    losses: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)        # and its tokens per second
    evals: list[dict] = field(default_factory=list)
    measures: list[dict] = field(default_factory=list)     # the Measures record of every evaluation
    last: dict | None = None            # the newest TrainStep record
    sample: dict | None = None          # the newest Sample record
    threads: dict | None = None         # the ThreadsChosen record, once measured


def _owner_hash(token: str) -> str:
    return hashlib.sha256(("llm-playground-owner:" + token).encode()).hexdigest()


class _Adopted:
    """A trainer started by an earlier server process: not our child, so watched by pid only."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        """None while it runs; once it is gone (or a zombie nobody reaped yet), as if stopped."""
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return -signal.SIGTERM
        return -signal.SIGTERM if state in ("Z", "X") else None

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class TrainingJob:
    name: str
    owner: str                          # the hash of the owner's token
    run_dir: Path
    train: TrainConfig
    model: ModelConfig
    state: str = "new"      # starting | running | stopping | stopped | finished | failed | exporting | exported
    message: str = ""
    started: float = 0.0
    last_seen: float = field(default_factory=time.time)
    export_target: Path | None = None   # where an export in progress writes
    export_dir: Path | None = None      # the exported model, once the export succeeded
    export_tried: bool = False
    throughput_recorded: bool = False
    process: object = None              # subprocess.Popen, or _Adopted
    exporter: subprocess.Popen | None = None
    progress: Progress = field(default_factory=Progress)
    _reader: catalog.LogReader | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def launch(self, resume: bool) -> None:
        cfg = dataclasses.replace(self.train, out_dir=str(self.run_dir), resume=resume)
        args = (["--out-dir", str(self.run_dir), "--resume", "--max-steps", str(cfg.max_steps),
                 "--threads", str(cfg.threads)] if resume
                else cli.to_argv(cfg) + cli.to_argv(self.model))
        env = {**_child_env(self.run_dir.parent, catalog.EXPORTED_DIR), "PYTHONUNBUFFERED": "1"}
        with open(self.run_dir / STDERR_FILE, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "core.train", *args], cwd=catalog.ROOT, env=env,
                                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.state, self.message, self.started = "starting", "", time.time()
        self.throughput_recorded = False
        self.progress.phase = "starting"
        self.save()

    def stop(self, message: str) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)    # the trainer finishes the step and checkpoints
            self.state, self.message = "stopping", message
            self.save()

    def start_export(self, exported_dir: Path) -> None:
        if self.state not in ("finished", "stopped"):
            raise JobError(f"{self.name} is {self.state}; export it once it has finished or stopped")
        target = exported_dir / self.name
        if target.exists():
            raise JobError(f"a model named {self.name} is already exported; remove it or train under another name")
        self.export_tried = True
        with open(self.run_dir / EXPORT_STDERR_FILE, "w") as err:
            self.exporter = subprocess.Popen([sys.executable, "-m", "core.export", str(self.run_dir), str(target),
                                              "--checkpoints"],
                                             cwd=catalog.ROOT, env=_child_env(self.run_dir.parent, exported_dir),
                                             stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.export_target, self.state, self.message = target, "exporting", ""
        self.save()

    def advance(self, limits: Limits, exported_dir: Path, runs_dir: Path) -> None:
        """One look at the job (the supervisor's): progress from the log, the processes' fate, limits,
        and the export that follows a finished run."""
        before = (self.state, self.message)
        self.read_progress()
        if self.state in ("starting", "running", "stopping") and self.process is not None:
            rc = self.process.poll()       # also reaps a finished child: no defunct trainer stays behind
            if rc is None:
                if self.state == "starting" and self.progress.step > 0:
                    self.state = "running"
                self._enforce(limits)
            else:
                self.read_progress()
                self._ended(rc)
                self._record_throughput(runs_dir)
        if self.state == "exporting" and self.exporter is not None:
            rc = self.exporter.poll()
            if rc is not None and (self.export_target / catalog.CARD_FILE).is_file():   # the model is in place
                self.export_dir = self.export_target
                self.state, self.message = "exported", f"exported as {self.name}: it is in every page's model picker"
                if rc != 0:                # the model was renamed into place; an earlier checkpoint was not
                    self.message += f" (its checkpoint scrubber is incomplete: {cli.error_line(self.run_dir / EXPORT_STDERR_FILE)})"
            elif rc is not None:          # nothing was kept (the exporter builds beside and renames): try again
                self.state = "finished" if self._finished_all_steps() else "stopped"
                self.message = "export failed: " + cli.error_line(self.run_dir / EXPORT_STDERR_FILE)
        if self.state == "finished" and not self.export_tried:
            try:
                self.start_export(exported_dir)      # a finished run is exported whether or not a page is open
            except JobError as e:
                self.export_tried, self.message = True, f"finished; not exported: {e}"
        if (self.state, self.message) != before:
            self.save()

    def _enforce(self, limits: Limits) -> None:
        if self.state not in ("starting", "running"):
            return
        now = time.time()
        if limits.max_wall_seconds and now - self.started > limits.max_wall_seconds:
            self.stop(f"stopped after {limits.max_wall_seconds:.0f} s, this server's limit per run; "
                      f"the checkpoint is kept: resume to go on")
        elif limits.heartbeat_seconds and now - self.last_seen > limits.heartbeat_seconds:
            self.stop("stopped because its page was closed; the checkpoint is kept: resume to go on")

    def _ended(self, rc: int) -> None:
        if rc == 0:
            self.state = "finished"
            self.message = ""
        elif rc in (130, -signal.SIGTERM):
            self.state = "finished" if self._finished_all_steps() else "stopped"
            self.message = self.message or "stopped; the checkpoint is kept: resume to go on"
        else:
            self.state = "failed"
            self.message = cli.error_line(self.run_dir / STDERR_FILE) or f"training exited with status {rc}"
        self.progress.phase = self.state

    def _finished_all_steps(self) -> bool:
        steps = catalog.checkpoint_steps(self.run_dir)
        return bool(steps) and steps[-1][0] >= self.train.max_steps

    def read_progress(self) -> None:
        """Fold the log's new records into `progress` (only what was appended since the last look)."""
        if self._reader is None:
            self._reader = catalog.LogReader(self.run_dir)
        records, restarted = self._reader.read()
        p = self.progress
        if restarted:
            self.progress = p = Progress(phase=p.phase)
        for r in records:
            kind = r.get("type")
            if kind == "TrainStep":
                p.steps.append(r["step"])
                p.losses.append(r["loss"])
                p.rates.append(r["tokens_per_s"])
                p.step, p.last = r["step"], r
            elif kind == "EvalResult":
                p.evals.append(r)
            elif kind == "Measures":
                p.measures.append(r)
            elif kind == "Sample":
                p.sample = r
            elif kind == "Phase":
                p.phase = r["name"]
            elif kind == "ThreadsChosen":
                p.threads = r

    def _record_throughput(self, runs_dir: Path) -> None:
        """What this run measured, for the next run's estimate (steps after the thread probe only)."""
        if self.throughput_recorded or not self.progress.steps:
            return
        self.throughput_recorded = True
        after = self.progress.threads["step"] if self.progress.threads else 0
        rates = [r for s, r in zip(self.progress.steps, self.progress.rates) if s > after]
        if len(rates) >= 5:
            fpt = flops_per_token(self.model)
            threads = self.progress.threads["threads"] if self.progress.threads else self.train.threads or None
            record_throughput(runs_dir, fpt, fpt * statistics.median(rates), threads)

    # -- persistence -----------------------------------------------------------------------------------
    def save(self) -> None:
        write_atomic(self.run_dir / JOB_FILE, json.dumps({
            "name": self.name, "owner": self.owner, "state": self.state, "message": self.message,
            "started": self.started, "pid": getattr(self.process, "pid", None),
            "export_pid": getattr(self.exporter, "pid", None),
            "export_target": self.export_target.name if self.export_target else None,
            "export_dir": self.export_dir.name if self.export_dir else None, "export_tried": self.export_tried,
            "train_config": self.train.to_dict(), "model_config": self.model.to_dict()}, indent=1).encode())

    @classmethod
    def load(cls, run_dir: Path, exported_dir: Path) -> "TrainingJob | None":
        """A job an earlier server process started. One still training is asked to stop (it checkpoints):
        nobody would watch it, and its owner can resume it from this server."""
        try:
            d = json.loads((run_dir / JOB_FILE).read_text())
            job = cls(d["name"], d["owner"], run_dir, TrainConfig(**d["train_config"]),
                      ModelConfig.from_dict(d["model_config"]), d["state"], d.get("message", ""), d.get("started", 0.0),
                      export_target=exported_dir / d["export_target"] if d.get("export_target") else None,
                      export_dir=exported_dir / d["export_dir"] if d.get("export_dir") else None,
                      export_tried=bool(d.get("export_tried")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        active = job.state in ("starting", "running", "stopping", "exporting")
        target = job.export_target
        if active and d.get("pid") and _is_child(int(d["pid"]), "core.train", run_dir):
            job.process = _Adopted(int(d["pid"]))
            job.stop("stopped because the server restarted; the checkpoint is kept: resume to go on")
        elif job.state == "exporting" and d.get("export_pid") and target is not None and \
                _is_child(int(d["export_pid"]), "core.export", target):
            job.exporter = _Adopted(int(d["export_pid"]))    # its export goes on; watched by pid, not started twice
        elif active and target is not None and (target / catalog.CARD_FILE).is_file():
            job.state, job.export_dir = "exported", target
        elif active:      # it ended while no server watched (or its export was cut short): look again
            job.state = "finished" if job._finished_all_steps() else "stopped"
            job.export_tried = False
        job.read_progress()
        return job

    # -- what a page sees --------------------------------------------------------------------------------
    def view(self, token_hash: str | None) -> "JobView":
        p = self.progress
        return JobView(self.name, self.state, self.message, p.phase, p.step, self.train.max_steps,
                       list(p.steps), list(p.losses), list(p.evals), list(p.measures), p.last, p.sample, p.threads,
                       self.owner == token_hash, self.started, self.export_dir.name if self.export_dir else None,
                       self.train.task)


def _child_env(runs_dir: Path, exported_dir: Path, **extra: str) -> dict:
    """A child's environment with this board's folders (a card it writes shortens the paths under them)."""
    return cli.child_env(**{catalog.RUNS_ENV: str(runs_dir), catalog.EXPORTED_ENV: str(exported_dir)}, **extra)


def _is_child(pid: int, module: str, path: Path) -> bool:
    """Whether `pid` is still our `python -m module ... path` (not a process that took over its pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return module.encode() in cmdline and str(path).encode() in cmdline


@dataclass(frozen=True)
class JobView:
    """A job as one visitor sees it at one moment (a copy: the supervisor goes on changing the job)."""
    name: str
    state: str
    message: str
    phase: str
    step: int
    max_steps: int
    steps: list[int]
    losses: list[float]
    evals: list[dict]
    measures: list[dict]
    last: dict | None
    sample: dict | None
    threads: dict | None
    mine: bool                          # the visitor asking owns it: may stop, resume, export
    started: float
    exported_as: str | None
    task: str = ""                      # the run's synthetic task spec ("" for a corpus): the Emergence page's runs

    @property
    def can_stop(self) -> bool:
        return self.mine and self.state in ("starting", "running")

    @property
    def can_resume(self) -> bool:
        return self.mine and self.state in ("stopped", "failed")

    @property
    def can_export(self) -> bool:
        """A run that stopped, or finished without its export (it failed, or the name was taken then)."""
        return self.mine and self.state in ("stopped", "finished") and self.exported_as is None

    @property
    def eta_seconds(self) -> float | None:
        if not self.last or self.step <= 0:
            return None
        return (self.max_steps - self.step) * self.last["elapsed"] / self.step


# ---------------------------------------------------------------------------------------------------
# Importing a pretrained checkpoint (`python -m core.pretrained`), from the Models page

IMPORTS_DIR = ".imports"            # in the runs folder: each import's output, for its progress and errors


@dataclass
class ImportJob:
    """One `python -m core.pretrained SOURCE exported/NAME` child: a Hugging Face checkpoint becomes a
    playground model (weights mapped, tokenizer converted, exported to ONNX with its parity check)."""
    name: str
    owner: str
    source: str                         # a local checkpoint folder or a Hugging Face repo id (from the cache)
    target: Path
    log: Path
    int8: bool = False
    state: str = "importing"            # importing | imported | failed
    message: str = ""
    started: float = field(default_factory=time.time)
    process: subprocess.Popen | None = None

    def launch(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # "--" ends the options: whatever the visitor typed is the source, never a flag
        cmd = [sys.executable, "-m", "core.pretrained", *(["--int8"] if self.int8 else []), "--", self.source,
               str(self.target)]
        # from the Hugging Face cache only: a visitor's import never starts a download on this server
        env = _child_env(self.log.parent.parent, self.target.parent, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(cmd, cwd=catalog.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def advance(self) -> None:
        if self.state != "importing" or self.process is None:
            return
        rc = self.process.poll()
        if rc == 0 and (self.target / catalog.CARD_FILE).is_file():
            self.state, self.message = "imported", f"imported as {self.name}: it is in every page's model picker"
        elif rc is not None:
            self.state = "failed"
            self.message = cli.error_line(self.log, 600) or f"the import exited with status {rc} and made no model"

    def _lines(self) -> list[str]:
        try:
            return [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return []

    def view(self, token_hash: str) -> "ImportView":
        lines = self._lines()
        return ImportView(self.name, self.source, self.state, self.message,
                          catalog.scrub_paths(lines[-1])[:300] if lines else "", self.owner == token_hash, self.started)


@dataclass(frozen=True)
class ImportView:
    name: str
    source: str
    state: str
    message: str
    progress: str                       # the importer's latest line (what it is doing)
    mine: bool
    started: float


# ---------------------------------------------------------------------------------------------------
# The board

class JobBoard:
    """The jobs of one server process, shared by every session (thread-safe), with a supervisor thread."""

    def __init__(self, runs_dir: Path | None = None, limits: Limits = Limits(), exported_dir: Path | None = None):
        self._runs_dir, self._exported_dir = runs_dir, exported_dir
        self.limits = limits
        self.lock = threading.RLock()
        self.jobs: dict[str, TrainingJob] = {}
        self.imports: dict[str, ImportJob] = {}
        runs = self.runs_dir
        if runs.is_dir():
            for d in sorted(runs.iterdir()):
                if (d / JOB_FILE).is_file():
                    job = TrainingJob.load(d, self.exported_dir)
                    if job is not None:
                        self.jobs[job.name] = job
        self._closed = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="job-supervisor", daemon=True)
        self._supervisor.start()

    @property
    def runs_dir(self) -> Path:
        return Path(self._runs_dir or catalog.RUNS_DIR)

    @property
    def exported_dir(self) -> Path:
        return Path(self._exported_dir or catalog.EXPORTED_DIR)

    def _supervise(self) -> None:
        while not self._closed.wait(POLL_SECONDS):
            self.advance()

    def advance(self) -> None:
        """Look at every job once (the supervisor does this twice a second)."""
        with self.lock:
            for job in list(self.jobs.values()):
                try:
                    job.advance(self.limits, self.exported_dir, self.runs_dir)
                except Exception as e:        # a full disk, a removed folder...: say so on the job, and the
                    job.message = catalog.scrub_paths(f"{type(e).__name__}: {e}")   # supervisor goes on
            for imp in list(self.imports.values()):
                imp.advance()

    def close(self) -> None:
        """Stop supervising (the jobs' processes go on; tests and shutdown use this)."""
        self._closed.set()
        self._supervisor.join(timeout=5)

    # -- what a visitor may do -------------------------------------------------------------------------
    def plan(self, request: TrainingRequest) -> Plan:
        return plan(request, self.limits, self.runs_dir)

    def start(self, token: str, request: TrainingRequest) -> JobView:
        p = self.plan(request)
        return self.start_runs(token, [(request.name, p.train, p.model)])[0]

    def start_runs(self, token: str, runs: list[tuple[str, TrainConfig, ModelConfig]]) -> list[JobView]:
        """Start runs from their configs (a plan's, or a preset's such as the Emergence page's pair of a run
        and its control), all checked (capacity, size, names) before any of them starts."""
        with self.lock:
            self._check_capacity(len(runs))
            for name, train, model in runs:
                check_name(name, "run name")
                _check_size(train, model, self.limits)
                if (self.runs_dir / name).exists() or name in self.jobs:
                    raise JobError(f"a run named {name!r} exists already; choose another name (nothing was changed)")
                self._check_model_name_free(name)
            return [self._launch(token, name, train, model) for name, train, model in runs]

    def _launch(self, token: str, name: str, train: TrainConfig, model: ModelConfig) -> JobView:
        """Make the run directory and start its trainer (under the lock, every check passed); a launch that
        fails leaves nothing behind, so the name stays free."""
        run_dir = self.runs_dir / name
        train = dataclasses.replace(train, out_dir=str(run_dir))
        run_dir.mkdir(parents=True)
        job = TrainingJob(name, _owner_hash(token), run_dir, train, model)
        try:
            job.launch(resume=False)
        except OSError:
            if job.process is not None:                     # launched, then could not record itself
                job.process.terminate()
                job.process.wait(timeout=60)
            shutil.rmtree(run_dir, ignore_errors=True)     # nothing kept: the name stays free
            raise
        self.jobs[job.name] = job
        return job.view(job.owner)

    def running(self) -> list:
        """Training jobs in progress, and imports (an export at 124M parameters is as heavy as training)."""
        return ([j for j in self.jobs.values() if j.state in ("starting", "running", "stopping")]
                + [i for i in self.imports.values() if i.state == "importing"])

    def _check_capacity(self, wanted: int = 1) -> None:
        busy = self.running()
        if len(busy) + wanted > self.limits.max_running:
            asked = f"; {wanted} runs were asked together, nothing was started" if wanted > 1 else ""
            raise JobError(f"{len(busy)} job(s) already running on this server (training or importing; the limit is "
                           f"{self.limits.max_running}){asked}; wait for one to finish or stop yours")

    def _check_model_name_free(self, name: str) -> None:
        if (self.exported_dir / name).exists() or self.imports.get(name, None) and self.imports[name].state == "importing":
            raise JobError(f"a model named {name!r} exists already; choose another name (nothing was changed)")

    def import_model(self, token: str, source: str, name: str, int8: bool = False) -> ImportView:
        """Start importing a pretrained checkpoint as exported model `name` (local servers only)."""
        if not self.limits.allow_imports:
            raise JobError("this server offers a fixed list of models and imports none: run the playground "
                           "locally to import one")
        check_name(name, "model name")
        source = checks.text("source", source, JobError).strip()
        if not source or len(source) > 500 or source.startswith("-"):
            raise JobError("give a checkpoint folder (with config.json and *.safetensors) or a Hugging Face repo id "
                           "such as gpt2 or HuggingFaceTB/SmolLM2-135M")
        with self.lock:
            self._check_capacity()
            self._check_model_name_free(name)
            job = ImportJob(name, _owner_hash(token), source, self.exported_dir / name,
                            self.runs_dir / IMPORTS_DIR / f"{name}.log", bool(int8))
            job.launch()
            self.imports[name] = job
            return job.view(job.owner)

    def import_views(self, token: str) -> list[ImportView]:
        """The visitor's imports, newest first."""
        owner = _owner_hash(token)
        with self.lock:
            return [i.view(owner) for i in sorted(self.imports.values(), key=lambda i: -i.started) if i.owner == owner]

    def _own(self, token: str, name: str) -> TrainingJob:
        job = self.jobs.get(name)
        if job is None:
            raise JobError(f"no job named {name!r}")
        if job.owner != _owner_hash(token):
            raise JobError(f"{name!r} was started by another visitor; only they can change it")
        return job

    def stop(self, token: str, name: str) -> None:
        with self.lock:
            job = self._own(token, name)
            if job.state not in ("starting", "running"):
                raise JobError(f"{name} is {job.state}; only a running job can be stopped")
            job.stop("stopped; the checkpoint is kept: resume to go on")

    def resume(self, token: str, name: str) -> None:
        with self.lock:
            job = self._own(token, name)
            if job.state not in ("stopped", "failed"):
                raise JobError(f"{name} is {job.state}; only a stopped run can be resumed")
            if not catalog.checkpoint_steps(job.run_dir):
                raise JobError(f"{name} stopped before its first checkpoint; there is nothing to resume: "
                               f"start a new run")
            self._check_capacity()
            job.launch(resume=True)

    def export(self, token: str, name: str) -> None:
        with self.lock:
            self._own(token, name).start_export(self.exported_dir)

    def has_running(self, token: str) -> bool:
        """Whether this visitor has a training job in progress (which their pages keep alive)."""
        owner = _owner_hash(token)
        with self.lock:
            return any(j.owner == owner and j.state in ("starting", "running") for j in self.jobs.values())

    def heartbeat(self, token: str) -> None:
        """The owner's page is open: keep their jobs alive (hosted servers stop unwatched ones)."""
        now, owner = time.time(), _owner_hash(token)
        with self.lock:
            for job in self.jobs.values():
                if job.owner == owner:
                    job.last_seen = now

    # -- what a visitor sees ---------------------------------------------------------------------------
    def view(self, token: str, name: str) -> JobView | None:
        with self.lock:
            job = self.jobs.get(name)
            return job.view(_owner_hash(token)) if job else None

    def views(self, token: str) -> list[JobView]:
        """Every job, the visitor's own first, newest first."""
        owner = _owner_hash(token)
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda j: (j.owner != owner, -j.started))
            return [j.view(owner) for j in jobs]
