"""Jobs: training and post-training runs started from the browser, each owned by its job, not by the tab
that started it.

Holds the Train page's recipe (`PRESETS`, `RANGES`, `TrainingRequest` and `plan()`, which turns a
visitor's choices into the `TrainConfig` and `ModelConfig` a run starts from, with its size and an
`Estimate` from training throughput measured on this machine), the Post-train page's (`POST_KNOBS`,
`PostTrainRequest`, resolved by the board into the `PostTrainConfig` a run starts from), upload storage
(`store_upload` for corpora, `store_post_data` for post-training JSONL and A/B picks), `Job` (one child
process: its state, its progress read incrementally from the run's log, stop, resume, export, adoption
after a server restart) with its two kinds, `TrainingJob` (`python -m core.train`) and `PostTrainingJob`
(`python -m core.posttrain STAGE`), which say only what differs (the module and argv they launch, the
records that count as progress, what they export), and `JobBoard` (a server's jobs). The board's
supervisor thread advances every job whether or not a page is open: it reaps finished processes,
exports finished training runs, enforces wall time and heartbeats, and records the throughput each
training run measured. Each job belongs to a visitor token (kept by the browser across reloads; only
its hash is stored beside the run, in job.json), so its owner can come back to it after a reload, or
after a server restart, while other visitors can watch it but not touch it.

Training in a child process keeps the server responsive (a training step holds the GIL between
torch calls), keeps torch out of the server process, and lets a stop be a signal the trainer already
handles: it finishes the step, checkpoints and exits.

Deliberately not here: torch (the child trains; this module launches and reads, and plans post-training
from `core.config.PostTrainConfig`, which is torch-free), the training loops (`core.train`, `core.posttrain`),
the export (`core.export`), pages.
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
from typing import ClassVar

from core import catalog, checks, cli
from core.checks import PlaygroundError
from core.config import (POS_ENCODINGS, POST_PRESETS, POST_STAGES, RL_STAGES, ModelConfig, PostTrainConfig, TrainConfig,
                         MLM_NOT_A_BASE, count_parameters, flops_per_token, post_data_kind)
from core.data import Corpus, corpus_from_upload, data_dir
from core.files import write_atomic
from core.limits import Limits, allowed_models
from core.preferences import DataError, fields_of, make_judge, read_jsonl
from core.tokenizer import MIN_BPE_VOCAB, byte_tokenizer

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
JOB_FILE = "job.json"               # in the run directory: owner (hashed), request, state
STDERR_FILE = "job.stderr"          # the trainer's stderr, for a failed run's message
EXPORT_STDERR_FILE = "export.stderr"
THROUGHPUT_FILE = ".throughput.json"    # in the runs folder: what recent runs measured on this machine
POLL_SECONDS = 0.5                  # how often the supervisor looks at every job


ACTIVE_STATES = ("starting", "running", "stopping", "exporting")     # a job whose process is alive


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
# name: (label, the ModelConfig fields it sets). One trainer makes all three, so their losses on one corpus compare
# (with the masked LM's caveat: it scores blanks read from both sides, not the next token).
ARCHITECTURES = {
    "gpt": ("decoder (GPT): causal attention, predicts the next token, writes text", {}),
    "mlm": ("encoder (BERT): bidirectional attention, fills masked tokens, cannot write left to right",
            {"attention": "bidirectional", "objective": "mlm"}),
    "moe": ("decoder with a mixture of experts: 8 expert MLPs per block, each token uses 2",
            {"n_experts": 8, "moe_top_k": 2}),
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
    architecture: str = "gpt"           # a key of ARCHITECTURES

    def check(self) -> "TrainingRequest":
        check_name(self.name, "run name")
        checks.text("corpus", self.corpus, JobError)
        if not self.corpus:
            raise JobError("choose a corpus first (tiny shakespeare, an upload or a local file)")
        checks.choice("tokenizer", self.tokenizer, TOKENIZERS, JobError)
        checks.choice("preset", self.preset, list(PRESETS), JobError)
        checks.choice("architecture", self.architecture, list(ARCHITECTURES), JobError)
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
                            pos_encoding=request.pos_encoding, dropout=float(request.dropout),
                            **ARCHITECTURES[request.architecture][1])
        writes = model.objective != "mlm"       # a masked LM has no left-to-right samples to print
        train = TrainConfig(
            out_dir=str(runs / request.name), corpus=request.corpus, tokenizer=request.tokenizer,
            bpe_vocab_size=request.bpe_vocab_size, max_steps=request.steps,
            learning_rate=float(request.learning_rate), min_lr=float(request.learning_rate) / 10,
            warmup_steps=min(100, request.steps // 10), batch_size=request.batch_size,
            eval_interval=request.eval_every, eval_iters=EVAL_ITERS,
            sample_interval=request.sample_every if writes else 0,
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
# The post-training recipe: a visitor's choices -> the PostTrainConfig a `python -m core.posttrain` child runs

@dataclass(frozen=True)
class PostKnob:
    """A PostTrainConfig field the Post-train page offers, with its range here (the default and the
    one-line why come from PostTrainConfig itself, see `post_knobs`)."""
    name: str
    label: str
    low: float
    high: float | None                  # None: this server's limit (Limits.max_steps, Limits.max_post_examples)
    integer: bool
    stages: tuple[str, ...] = ()        # the stages it matters to; () all


POST_KNOBS = (
    PostKnob("learning_rate", "Learning rate", 1e-6, 1e-2, False),
    PostKnob("steps", "Steps", 1, None, True),
    PostKnob("batch_size", "Batch size", 1, 64, True),
    PostKnob("beta", "Beta", 0.0, 2.0, False, ("dpo", "ppo", "grpo")),
    PostKnob("group_size", "Group size", 2, 16, True, ("grpo",)),
    PostKnob("lora_rank", "LoRA rank", 0, 64, True),
    PostKnob("lora_alpha", "LoRA alpha", 1.0, 256.0, False),
    PostKnob("examples", "Examples the judge labels", 4, None, True),
    PostKnob("response_tokens", "Response tokens", 1, 256, True),
    PostKnob("eval_interval", "Evaluate every", 1, 1000, True),
)
POST_KNOB = {k.name: k for k in POST_KNOBS}
POST_DATA_DIR = "posttrain"         # under the data folder: uploaded post-training data and A/B picks, by sha256
_STORED_ID = re.compile(r"^(sft|pairs|prompts)-[0-9a-f]{16}$")
BASE_KINDS = ("model", "run")       # a request's base: "model:NAME" (exported) or "run:NAME" (the visitor's)


def post_stages() -> tuple[str, ...]:
    return POST_STAGES


def rl_stages() -> tuple[str, ...]:
    """The stages that sample rollouts and score them with a reward model (they need one)."""
    return RL_STAGES


def post_knob_high(knob: PostKnob, limits: Limits) -> float:
    if knob.high is not None:
        return knob.high
    return {"steps": limits.max_steps, "examples": limits.max_post_examples}[knob.name]


def post_knobs(stage: str, limits: Limits = Limits()) -> list[tuple[PostKnob, float, float, str]]:
    """(knob, its default, its ceiling on this server, its one-line why) of the knobs that matter to `stage`,
    for the page's inputs: the defaults are the stage's preset (core.config.POST_PRESETS) over PostTrainConfig's,
    the help texts PostTrainConfig's own comments (`cli.field_help`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(PostTrainConfig)}
    defaults.update(POST_PRESETS.get(stage, {}))
    helps = cli.field_help(PostTrainConfig)
    return [(k, defaults[k.name], post_knob_high(k, limits), helps.get(k.name, "")) for k in POST_KNOBS
            if not k.stages or stage in k.stages]


@dataclass(frozen=True)
class PostTrainRequest:
    """What the Post-train page asks for, in names the page offers (never paths): the board resolves them."""
    name: str                           # the run's name, and the exported model's
    stage: str                          # sft | reward | dpo | ppo
    base: str                           # "model:NAME" (an exported model this server offers) or "run:NAME" (one
                                        # of the visitor's own runs, trained or post-trained)
    data: str = "judge:short-lines"     # "judge:SPEC" (core.preferences.JUDGES) or "stored:ID" (store_post_data)
    reward_model: str = ""              # ppo, grpo (rl_stages): "run:NAME", one of the visitor's reward runs
    knobs: tuple[tuple[str, float], ...] = ()   # (name, value) of POST_KNOBS; absent: PostTrainConfig's default

    def check(self, limits: Limits = Limits()) -> "PostTrainRequest":
        check_name(self.name, "run name")
        checks.choice("stage", self.stage, post_stages(), JobError)
        _ref(self.base, "base model")
        data = checks.text("data", self.data, JobError)
        if data.startswith("judge:"):
            try:
                make_judge(data[len("judge:"):])
            except DataError as e:
                raise JobError(str(e)) from e
        elif not (data.startswith("stored:") and _STORED_ID.match(data[len("stored:"):])):
            raise JobError("choose the data: a judge, an uploaded JSONL file or your A/B picks")
        if self.stage in rl_stages():
            if not self.reward_model:
                raise JobError(f"{self.stage} needs a reward model: train one first (stage reward), then choose it "
                               f"here")
            _ref(self.reward_model, "reward model", ("run",))
        seen = set()
        for name, value in self.knobs:
            knob = POST_KNOB.get(name)
            if knob is None or name in seen:
                raise JobError(f"{name!r} is not a knob offered here (or is given twice); the knobs are "
                               f"{', '.join(POST_KNOB)}")
            seen.add(name)
            high = post_knob_high(knob, limits)
            if knob.integer:
                checks.integer(name, value, int(knob.low), int(high), JobError)
            else:
                checks.number(name, value, knob.low, high, error=JobError)
        return self


def _ref(ref, what: str, kinds: tuple[str, ...] = BASE_KINDS) -> tuple[str, str]:
    """("model" | "run", NAME) from a request's reference, checked (a name is a folder: nothing that could
    leave or hide in one)."""
    kind, _, name = checks.text(what, ref, JobError).partition(":")
    if kind not in kinds:
        raise JobError(f"choose a {what} from the list (got {ref[:60]!r})")
    return kind, check_name(name, what)


@dataclass(frozen=True)
class StoredData:
    id: str                             # what a request names it by: "stored:" + id
    kind: str                           # sft | pairs | prompts
    examples: int


def post_data_dir() -> Path:
    return data_dir() / POST_DATA_DIR


def store_post_data(data: bytes, stage: str, source: str) -> StoredData:
    """Post-training data (an upload, or the A/B picks written as JSONL), checked for the stage's kind (a bad
    line is refused with its number) and kept under the data folder by its sha256 (the same file stored
    twice is one file), so a run can read it; a run keeps its own copy (data.jsonl) for its resume."""
    kind = post_data_kind(stage)
    examples = read_jsonl(data, kind, source)
    sid = f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}"
    path = post_data_dir() / f"{sid}.jsonl"
    if not path.exists():
        write_atomic(path, data)
    return StoredData(sid, kind, len(examples))


def _stored_path(sid: str) -> Path:
    return post_data_dir() / f"{sid}.jsonl"


def _run_parameters(run_dir: Path) -> int | None:
    """A run's parameters, from its run.json (a count, or core.model's {total, ...})."""
    try:
        n = json.loads((run_dir / catalog.RUN_FILE).read_text()).get("parameters")
        return int(n["total"] if isinstance(n, dict) else n)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------------
# One job

@dataclass
class Progress:
    """What a watcher of any run sees, updated from the run's log by the supervisor."""
    phase: str = "starting"
    step: int = 0
    steps: list[int] = field(default_factory=list)          # every training step's loss, for the curve
    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    last: dict | None = None            # the newest step record
    sample: dict | None = None          # the newest sample record


@dataclass
class TrainProgress(Progress):
    rates: list[float] = field(default_factory=list)        # each step's tokens per second
    measures: list[dict] = field(default_factory=list)     # the Measures record of every evaluation
    threads: dict | None = None         # the ThreadsChosen record, once measured


@dataclass
class PostProgress(Progress):
    metrics: list[dict] = field(default_factory=list)      # each PostStep's {step, loss, lr, **metrics}
    chosen_rewards: list[float] = field(default_factory=list)     # the newest PostEval's, for the histogram
    rejected_rewards: list[float] = field(default_factory=list)
    started_record: dict | None = None  # PostStarted: parameters, trainable, examples, held out
    elapsed: float = 0.0                # the steps' own seconds, summed


def _owner_hash(token: str) -> str:
    return hashlib.sha256(("llm-playground-owner:" + token).encode()).hexdigest()


class _Adopted:
    """A child started by an earlier server process: not our child, so watched by pid only."""

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
class Job:
    """One run in a child process (`python -m MODULE ... --out-dir RUN_DIR`), whatever it trains: the
    lifecycle every kind shares. A kind (a subclass) says what differs: `module`, `argv`, `max_steps`,
    `fold` (which log records are progress), its config in job.json, and what it exports."""
    name: str
    owner: str                          # the hash of the owner's token
    run_dir: Path
    state: str = "new"      # starting | running | stopping | stopped | finished | failed | exporting | exported
    message: str = ""
    started: float = 0.0
    last_seen: float = field(default_factory=time.time)
    export_target: Path | None = None   # where an export in progress writes
    export_dir: Path | None = None      # the exported model, once the export succeeded
    export_tried: bool = False
    process: object = None              # subprocess.Popen, or _Adopted
    exporter: object = None             # subprocess.Popen, or _Adopted
    progress: Progress | None = None
    _reader: catalog.LogReader | None = None

    kind: ClassVar[str] = ""            # job.json's "kind"
    module: ClassVar[str] = ""          # the child: python -m MODULE
    what: ClassVar[str] = "training"    # what its messages call it
    auto_export: ClassVar[bool] = False     # export when it finishes, whether or not a page is open
    export_checkpoints: ClassVar[bool] = False  # export its earlier checkpoints too (the pages' scrubber)

    def __post_init__(self):
        if self.progress is None:
            self.progress = self.new_progress()

    # -- what a kind says ------------------------------------------------------------------------------
    def new_progress(self) -> Progress:
        return Progress()

    def argv(self, resume: bool) -> list[str]:
        raise NotImplementedError

    def check_launch(self, board: "JobBoard") -> None:
        """Raise JobError if this job may not run beside the board's others now (a resume passes here too)."""

    def child_env(self) -> dict[str, str]:
        return {}

    @property
    def max_steps(self) -> int:
        raise NotImplementedError

    def fold(self, p: Progress, r: dict) -> None:
        """One log record into the progress."""
        raise NotImplementedError

    def config_json(self) -> dict:
        """What job.json keeps to rebuild this job (`from_json`)."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, d: dict, **common) -> "Job":
        raise NotImplementedError

    def not_exportable(self) -> str | None:
        """Why this run cannot be exported at all, or None."""
        return None

    def resumable(self) -> bool:
        """Whether a stopped run has a checkpoint to go on from (a kind that keeps them elsewhere says so)."""
        return bool(catalog.checkpoint_steps(self.run_dir))

    def on_ended(self, runs_dir: Path) -> None:
        """After the child ended (reaped): a kind's bookkeeping."""

    def view(self, token_hash: str | None) -> "JobView":
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------------------------
    def launch(self, resume: bool) -> None:
        env = {**_child_env(self.run_dir.parent, catalog.EXPORTED_DIR), "PYTHONUNBUFFERED": "1", **self.child_env()}
        with open(self.run_dir / STDERR_FILE, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.argv(resume)], cwd=catalog.ROOT,
                                            env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.state, self.message, self.started = "starting", "", time.time()
        self.progress.phase = "starting"
        self.save()

    def stop(self, message: str) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)    # the child finishes the step and checkpoints
            self.state, self.message = "stopping", message
            self.save()

    def start_export(self, exported_dir: Path) -> None:
        why = self.not_exportable()
        if why:
            raise JobError(why)
        if self.state not in ("finished", "stopped"):
            raise JobError(f"{self.name} is {self.state}; export it once it has finished or stopped")
        target = exported_dir / self.name
        if target.exists():
            raise JobError(f"a model named {self.name} is already exported; remove it or train under another name")
        self.export_tried = True
        with open(self.run_dir / EXPORT_STDERR_FILE, "w") as err:
            self.exporter = subprocess.Popen([sys.executable, "-m", "core.export", str(self.run_dir), str(target),
                                              *(["--checkpoints"] if self.export_checkpoints else [])],
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
                self.on_ended(runs_dir)
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
        if self.state == "finished" and self.auto_export and not self.export_tried:
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
            self.message = cli.error_line(self.run_dir / STDERR_FILE) or f"{self.what} exited with status {rc}"
        self.progress.phase = self.state

    def _finished_all_steps(self) -> bool:
        steps = catalog.checkpoint_steps(self.run_dir)
        return bool(steps) and steps[-1][0] >= self.max_steps

    def read_progress(self) -> None:
        """Fold the log's new records into `progress` (only what was appended since the last look)."""
        if self._reader is None:
            self._reader = catalog.LogReader(self.run_dir)
        records, restarted = self._reader.read()
        if restarted:
            self.progress = self.new_progress()
            self.progress.phase = "starting"
        for r in records:
            self.fold(self.progress, r)

    # -- persistence -----------------------------------------------------------------------------------
    def save(self) -> None:
        write_atomic(self.run_dir / JOB_FILE, json.dumps({
            "kind": self.kind, "name": self.name, "owner": self.owner, "state": self.state, "message": self.message,
            "started": self.started, "pid": getattr(self.process, "pid", None),
            "export_pid": getattr(self.exporter, "pid", None),
            "export_target": self.export_target.name if self.export_target else None,
            "export_dir": self.export_dir.name if self.export_dir else None, "export_tried": self.export_tried,
            **self.config_json()}, indent=1).encode())

    @staticmethod
    def load(run_dir: Path, exported_dir: Path) -> "Job | None":
        """A job an earlier server process started. One still running is asked to stop (it checkpoints):
        nobody would watch it, and its owner can resume it from this server."""
        try:
            d = json.loads((run_dir / JOB_FILE).read_text())
            cls = JOB_KINDS[d.get("kind") or TrainingJob.kind]     # job.json from before kinds: a training run
            job = cls.from_json(d, name=d["name"], owner=d["owner"], run_dir=run_dir, state=d["state"],
                                message=d.get("message", ""), started=d.get("started", 0.0),
                                export_target=exported_dir / d["export_target"] if d.get("export_target") else None,
                                export_dir=exported_dir / d["export_dir"] if d.get("export_dir") else None,
                                export_tried=bool(d.get("export_tried")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        active = job.state in ACTIVE_STATES
        target = job.export_target
        if active and d.get("pid") and _is_child(int(d["pid"]), job.module, run_dir):
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

    def _view_fields(self, token_hash: str | None) -> dict:
        """The fields of a view every kind fills the same way."""
        p = self.progress
        return dict(name=self.name, state=self.state, message=self.message, phase=p.phase, step=p.step,
                    max_steps=self.max_steps, steps=list(p.steps), losses=list(p.losses), evals=list(p.evals),
                    last=p.last, sample=p.sample, mine=self.owner == token_hash, started=self.started,
                    exported_as=self.export_dir.name if self.export_dir else None, kind=self.kind,
                    exportable=self.not_exportable() is None)


@dataclass(kw_only=True)
class TrainingJob(Job):
    """`python -m core.train`, launched from its TrainConfig and ModelConfig."""
    train: TrainConfig
    model: ModelConfig
    throughput_recorded: bool = False

    kind: ClassVar[str] = "train"
    module: ClassVar[str] = "core.train"
    auto_export: ClassVar[bool] = True
    export_checkpoints: ClassVar[bool] = True

    def new_progress(self) -> TrainProgress:
        return TrainProgress()

    def argv(self, resume: bool) -> list[str]:
        cfg = dataclasses.replace(self.train, out_dir=str(self.run_dir), resume=resume)
        return (["--out-dir", str(self.run_dir), "--resume", "--max-steps", str(cfg.max_steps),
                 "--threads", str(cfg.threads)] if resume
                else cli.to_argv(cfg) + cli.to_argv(self.model))

    def launch(self, resume: bool) -> None:
        self.throughput_recorded = False
        super().launch(resume)

    @property
    def max_steps(self) -> int:
        return self.train.max_steps

    def fold(self, p: TrainProgress, r: dict) -> None:
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

    def on_ended(self, runs_dir: Path) -> None:
        """What this run measured, for the next run's estimate (steps after the thread probe only)."""
        p = self.progress
        if self.throughput_recorded or not p.steps:
            return
        self.throughput_recorded = True
        after = p.threads["step"] if p.threads else 0
        rates = [r for s, r in zip(p.steps, p.rates) if s > after]
        if len(rates) >= 5:
            fpt = flops_per_token(self.model)
            threads = p.threads["threads"] if p.threads else self.train.threads or None
            record_throughput(runs_dir, fpt, fpt * statistics.median(rates), threads)

    def config_json(self) -> dict:
        return {"train_config": self.train.to_dict(), "model_config": self.model.to_dict()}

    @classmethod
    def from_json(cls, d: dict, **common) -> "TrainingJob":
        return cls(**common, train=TrainConfig(**d["train_config"]), model=ModelConfig.from_dict(d["model_config"]))

    def view(self, token_hash: str | None) -> "JobView":
        p = self.progress
        return JobView(**self._view_fields(token_hash), measures=list(p.measures), threads=p.threads,
                       task=self.train.task)


@dataclass(kw_only=True)
class PostTrainingJob(Job):
    """`python -m core.posttrain STAGE`, launched from the flags of its PostTrainConfig (kept as argv, so
    this server rebuilds, resumes and adopts the job without importing core.posttrain)."""
    stage: str
    flags: list[str]                    # cli.to_argv(PostTrainConfig, skip=("stage",)), out_dir included
    config: dict                        # PostTrainConfig.to_dict(): what the run was asked, shown on its page
    labels: dict                        # how the page names its base, data and reward model
    threads: int = 0                    # OMP threads for the child; 0 leaves its default

    kind: ClassVar[str] = "posttrain"
    module: ClassVar[str] = "core.posttrain"
    what: ClassVar[str] = "post-training"

    def new_progress(self) -> PostProgress:
        return PostProgress()

    def argv(self, resume: bool) -> list[str]:
        return [self.stage, *self.flags, *(["--resume"] if resume else [])]

    def child_env(self) -> dict[str, str]:
        return {"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}

    @property
    def max_steps(self) -> int:
        return int(self.config["steps"])

    def fold(self, p: PostProgress, r: dict) -> None:
        kind = r.get("type")
        if kind == "PostStep":
            p.steps.append(r["step"])
            p.losses.append(r["loss"])
            p.metrics.append({"step": r["step"], "loss": r["loss"], "lr": r.get("lr"), **(r.get("metrics") or {})})
            p.elapsed += r.get("seconds") or 0.0
            p.step, p.last = r["step"], {**r, "elapsed": p.elapsed}
            p.phase = "training"
        elif kind == "PostEval":
            p.evals.append({"step": r["step"], **(r.get("metrics") or {})})
            p.chosen_rewards, p.rejected_rewards = list(r.get("chosen_rewards") or []), list(r.get("rejected_rewards") or [])
        elif kind == "PostSamples":
            if r.get("texts"):                   # a reward model writes none
                p.sample = r
        elif kind == "PostStarted":
            p.started_record, p.phase = r, "evaluating" if not r.get("resumed_from") else "training"
        elif kind == "Phase":
            p.phase = r["name"]

    def not_exportable(self) -> str | None:
        if self.stage == "reward":
            return (f"{self.name} is a reward model: it scores texts and writes none, so there is nothing to export; "
                    f"choose it as the reward model of a PPO run")
        return None

    def config_json(self) -> dict:
        return {"posttrain": {"stage": self.stage, "flags": self.flags, "config": self.config, "labels": self.labels,
                              "threads": self.threads}}

    @classmethod
    def from_json(cls, d: dict, **common) -> "PostTrainingJob":
        post = d["posttrain"]
        return cls(**common, stage=post["stage"], flags=list(post["flags"]), config=dict(post["config"]),
                   labels=dict(post["labels"]), threads=int(post.get("threads") or 0))

    def view(self, token_hash: str | None) -> "PostJobView":
        p = self.progress
        return PostJobView(**self._view_fields(token_hash), measures=[], threads=None, stage=self.stage,
                           config=dict(self.config), labels=dict(self.labels), metrics=list(p.metrics),
                           chosen_rewards=list(p.chosen_rewards), rejected_rewards=list(p.rejected_rewards),
                           started_record=p.started_record)


JOB_KINDS: dict[str, type[Job]] = {k.kind: k for k in (TrainingJob, PostTrainingJob)}


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
    kind: str = "train"                 # train | posttrain
    exportable: bool = True             # False: a run that makes no model (a reward model)

    @property
    def active(self) -> bool:
        """Its process is alive (training, stopping or exporting): its view changes by itself."""
        return self.state in ACTIVE_STATES

    @property
    def can_stop(self) -> bool:
        return self.mine and self.state in ("starting", "running")

    @property
    def can_resume(self) -> bool:
        return self.mine and self.state in ("stopped", "failed")

    @property
    def can_export(self) -> bool:
        """A run that stopped, or finished without its export (it failed, or the name was taken then)."""
        return self.mine and self.exportable and self.state in ("stopped", "finished") and self.exported_as is None

    @property
    def eta_seconds(self) -> float | None:
        if not self.last or self.step <= 0:
            return None
        return (self.max_steps - self.step) * self.last["elapsed"] / self.step


@dataclass(frozen=True)
class PostJobView(JobView):
    """A post-training job: its stage, config and every record the Post-train page draws."""
    stage: str = ""
    config: dict = field(default_factory=dict)      # PostTrainConfig.to_dict()
    labels: dict = field(default_factory=dict)      # base, base_model (exported name or None), data, reward_model
    metrics: list[dict] = field(default_factory=list)           # each step's {step, loss, lr, **metrics}
    chosen_rewards: list[float] = field(default_factory=list)   # the newest evaluation's, per held-out pair
    rejected_rewards: list[float] = field(default_factory=list)
    started_record: dict | None = None


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

@dataclass(frozen=True)
class PostPlan:
    request: PostTrainRequest
    config: object                      # core.posttrain.PostTrainConfig, checked
    labels: dict
    parameters: int | None              # the base model's


class JobBoard:
    """The jobs of one server process, shared by every session (thread-safe), with a supervisor thread."""

    def __init__(self, runs_dir: Path | None = None, limits: Limits = Limits(), exported_dir: Path | None = None):
        self._runs_dir, self._exported_dir = runs_dir, exported_dir
        self.limits = limits
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.imports: dict[str, ImportJob] = {}
        runs = self.runs_dir
        if runs.is_dir():
            for d in sorted(runs.iterdir()):
                if (d / JOB_FILE).is_file():
                    job = Job.load(d, self.exported_dir)
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
                self._check_names_free(name)
            return [self._launch(TrainingJob(name=name, owner=_owner_hash(token), run_dir=self.runs_dir / name,
                                             train=dataclasses.replace(train, out_dir=str(self.runs_dir / name)),
                                             model=model))
                    for name, train, model in runs]

    def start_job(self, token: str, job: Job, prepare=None) -> JobView:
        """Start a job of a kind defined elsewhere (core.verify's), owned by `token`, checked like every other
        (capacity, name free); `prepare()` runs under the lock once every check passed, before the launch."""
        with self.lock:
            self._check_capacity()
            check_name(job.name, "run name")
            self._check_names_free(job.name)
            if prepare is not None:
                prepare()
            job.owner = _owner_hash(token)
            return self._launch(job)

    def plan_posttrain(self, token: str, request: PostTrainRequest) -> PostPlan:
        """The PostTrainConfig a post-training run starts from: the request's names resolved (its base: an
        exported model this server offers or one of the visitor's own runs; a PPO run's reward model: one of
        the visitor's reward runs; stored data: this server's copy), checked against this server's limits."""
        request.check(self.limits)
        with self.lock:
            base, labels, parameters = self._resolve_base(token, request.base)
            reward = self._resolve_reward(token, request.reward_model) if request.stage in rl_stages() else ""
        if parameters is not None and parameters > self.limits.max_parameters:
            raise JobError(f"this base model has {parameters:,} parameters; this server post-trains at most "
                           f"{self.limits.max_parameters:,}: choose a smaller one")
        data = request.data
        if data.startswith("stored:"):
            sid = data[len("stored:"):]
            want = post_data_kind(request.stage)
            if not sid.startswith(want + "-"):
                got = sid.split("-")[0]
                raise JobError(f"this data holds {got} but a {request.stage} run learns from {want}: upload a file "
                               f"with {', '.join(fields_of(want))} on each line")
            if not _stored_path(sid).is_file():
                raise JobError("this data is no longer on the server: upload it again")
            data = str(_stored_path(sid))
            labels["data"] = "your data"
        else:
            labels["data"] = data
        labels["reward_model"] = request.reward_model.partition(":")[2] if reward else None
        knobs = {**POST_PRESETS.get(request.stage, {}), **dict(request.knobs)}     # what the page showed
        eval_interval = knobs.get("eval_interval", PostTrainConfig.eval_interval)
        try:
            cfg = PostTrainConfig(stage=request.stage, base=base, out_dir=str(self.runs_dir / request.name),
                                       data=data, reward_model=reward, checkpoint_interval=int(eval_interval),
                                       **knobs)
        except PlaygroundError as e:
            raise JobError(str(e)) from e
        return PostPlan(request, cfg, labels, parameters)

    def start_posttrain(self, token: str, request: PostTrainRequest) -> JobView:
        """Start a post-training run (`python -m core.posttrain STAGE ...`), owned by `token`."""
        p = self.plan_posttrain(token, request)
        cfg = p.config
        with self.lock:
            self._check_capacity()
            self._check_names_free(request.name)
            return self._launch(PostTrainingJob(
                name=request.name, owner=_owner_hash(token), run_dir=self.runs_dir / request.name, stage=cfg.stage,
                flags=cli.to_argv(cfg, skip=("stage",)), config=cfg.to_dict(), labels=p.labels,
                threads=self.limits.train_threads))

    def _resolve_base(self, token: str, ref: str) -> tuple[str, dict, int | None]:
        """(what --base gets, the labels the page shows, its parameters) of "model:NAME" or "run:NAME"."""
        kind, name = _ref(ref, "base model")
        if kind == "model":
            path = self.exported_dir / name
            allowed = allowed_models()
            if (allowed is not None and name not in allowed) or not (path / catalog.CARD_FILE).is_file():
                raise JobError(f"no exported model named {name!r} on this server; choose one from the list")
            try:
                card = json.loads((path / catalog.CARD_FILE).read_text())
                total, objective = card["parameters"]["total"], card["model_config"].get("objective")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise JobError(f"the model {name!r} has a damaged card; choose another") from None
            if objective == "mlm":
                raise JobError(MLM_NOT_A_BASE.format(source=name))
            return str(path), {"base": name, "base_model": name}, int(total)
        job = self._own(token, name)
        if isinstance(job, PostTrainingJob) and job.stage == "reward":
            raise JobError(f"{name} is a reward model: it scores texts and writes none. Start from a model that "
                           f"writes, and choose {name} as a PPO run's reward model")
        ckpt = self._settled_checkpoint(job)
        return str(ckpt[1]), {"base": f"{name} (step {ckpt[0]:,})", "base_model": job.export_dir.name
                              if job.export_dir and job.state == "exported" else None}, _run_parameters(job.run_dir)

    def _resolve_reward(self, token: str, ref: str) -> str:
        _, name = _ref(ref, "reward model", ("run",))
        job = self._own(token, name)
        if not (isinstance(job, PostTrainingJob) and job.stage == "reward"):
            raise JobError(f"{name} is not a reward model: train one with the stage 'reward', then choose it here")
        return str(self._settled_checkpoint(job)[1])

    def _settled_checkpoint(self, job: Job) -> tuple[int, Path]:
        """The newest checkpoint of a run that no longer trains (its weights stay what this run starts from)."""
        if job.state in ("starting", "running", "stopping"):
            raise JobError(f"{job.name} is still {job.state}; wait for it to finish, or stop it, then choose it")
        steps = catalog.checkpoint_steps(job.run_dir)
        if not steps:
            raise JobError(f"{job.name} has no checkpoint to start from: resume it, or choose another run")
        return steps[-1]

    def base_runs(self, token: str) -> list[str]:
        """The visitor's runs a post-training run can start from (newest first): settled, with a checkpoint,
        and writing text (not a reward model, not a masked LM)."""
        return [j.name for j in self._settled(token) if not (isinstance(j, PostTrainingJob) and j.stage == "reward")
                and not (isinstance(j, TrainingJob) and j.model.objective == "mlm")]

    def reward_runs(self, token: str) -> list[str]:
        """The visitor's reward models (newest first) a PPO run can be scored by."""
        return [j.name for j in self._settled(token) if isinstance(j, PostTrainingJob) and j.stage == "reward"]

    def _settled(self, token: str) -> list[Job]:
        owner = _owner_hash(token)
        with self.lock:
            jobs = sorted((j for j in self.jobs.values() if j.owner == owner), key=lambda j: -j.started)
            return [j for j in jobs if j.state in ("stopped", "finished", "failed", "exporting", "exported")
                    and catalog.checkpoint_steps(j.run_dir)]

    def _check_names_free(self, name: str) -> None:
        if (self.runs_dir / name).exists() or name in self.jobs:
            raise JobError(f"a run named {name!r} exists already; choose another name (nothing was changed)")
        self._check_model_name_free(name)

    def _launch(self, job: Job) -> JobView:
        """Make the run directory and start its child (under the lock, every check passed); a launch that
        fails leaves nothing behind, so the name stays free."""
        job.run_dir.mkdir(parents=True)
        try:
            job.launch(resume=False)
        except OSError:
            if job.process is not None:                     # launched, then could not record itself
                job.process.terminate()
                job.process.wait(timeout=60)
            shutil.rmtree(job.run_dir, ignore_errors=True)     # nothing kept: the name stays free
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
            if not job.resumable():
                raise JobError(f"{name} stopped before its first checkpoint; there is nothing to resume: "
                               f"start a new run")
            self._check_capacity()
            job.check_launch(self)
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

    def views(self, token: str, kind: str | None = None) -> list[JobView]:
        """Every job (of one kind: "train", "posttrain"), the visitor's own first, newest first."""
        owner = _owner_hash(token)
        with self.lock:
            jobs = sorted((j for j in self.jobs.values() if kind is None or j.kind == kind),
                          key=lambda j: (j.owner != owner, -j.started))
            return [j.view(owner) for j in jobs]
