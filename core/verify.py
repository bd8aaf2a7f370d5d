"""Predict, then verify: a scaling law earns trust by predicting a run nobody has trained yet.

Holds the prediction (`predict`: from a sweep's stored L(N, D) fit, a budget `factor` x the largest run's
compute, its compute-optimal N and D, a concrete shape of the sweep's shape family at that N trained
for that budget with the sweep's own recipe and exact FLOPs per token, the loss the law predicts for
that very run and its bootstrap interval), the `Prediction` record (JSON round trip, written once with
exclusive create before the run starts, so a reload or another visitor sees what was predicted and
nobody can edit it after the fact), the job that trains the run (`VerifyJob`: a `core.jobs.Job` whose
child is `python -m core.verify run`, which runs `core.sweep.run_sweep` for the one planned run, so its
`RunRecord` lands with the sweep's others and the sweep's fits are refreshed), and the outcome
(`Outcome`: measured beside predicted, once the record is there) with the history of a sweep's predictions.

Where a verification run goes (one rule): a sweep under runs/sweeps/NAME/ is the user's, so its
verification runs land in it like any other run; a committed sweep (sweeps/NAME.json) is never
modified, so its verification runs land in the user's copy runs/sweeps/NAME-verify/, seeded with the
committed records, recipe and fits (the fits stay current: they are of the same records).

A module of its own rather than part of `core.scaling`: it owns a job and files (a child process, a
sweep copy, a predictions folder), which the fitting module deliberately does not.
Deliberately not here: the fits and the allocation (`core.scaling`), the sweep runner (`core.sweep`, which
the child imports; this module never imports torch, the server runs it), the job lifecycle (`core.jobs`),
the page (`playground.verify_section`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from core import catalog, checks, cli, scaling
from core.catalog import RECORDS_FILE, SWEEP_RECORDS_DIR
from core.checks import PlaygroundError
from core.config import ModelConfig, count_parameters, flops_per_token
from core.jobs import (ACTIVE_STATES, JOB_KINDS, Job, JobBoard, JobError, JobView, TrainingJob, TrainProgress,
                       training_unavailable)
from core.files import write_atomic
from core.limits import Limits

FACTOR_RANGE = (2.0, 4.0)       # the budget as a multiple of the largest run's compute: far enough past the
                                # runs to test the extrapolation, near enough to train in minutes
DEFAULT_FACTOR = 2.0
PREDICTIONS_DIR = "predictions"     # in the sweep (or its copy): one immutable JSON per prediction
PREDICTION_FORMAT = 1
COPY_SUFFIX = "-verify"         # runs/sweeps/NAME-verify/: a committed sweep's verification runs
SWEEP_FILE = "sweep.json"       # core.sweep's: the recipe a sweep was run with (core.sweep imports torch)
MAX_LAYERS = 12                 # the deepest shape considered for the family
MAX_WIDTH = 1024
N_KIND = "total"                # N as Chinchilla counts it (the allocation's FLOPs per token are of total N)


# ---------------------------------------------------------------------------------------------------
# The prediction

@dataclass(frozen=True)
class Prediction:
    """What the law said before the run: stored before it starts, never changed after."""
    name: str                   # the prediction's (and its job's) name
    sweep: str                  # the sweep predicted from (its name as the Scaling page lists it)
    run: str                    # the run's name in the sweep's records, once trained
    created: float              # unix time
    factor: float               # budget / the largest run's compute
    largest: float              # the largest run's compute then (FLOPs)
    compute: float              # the budget asked (FLOPs)
    n_records: int              # the fit's runs
    records_sha256: str         # the fit's records (scaling.records_digest)
    law: dict                   # E, A, B, alpha, beta of the L(N, D) fit
    n_opt: float                # the law's compute-optimal N and D at this budget (exact FLOPs per token)
    d_opt: float
    loss_opt: float
    shape: dict                 # n_layer, n_head, n_embd, block_size, vocab_size: the shape trained
    n_params: int               # N of that shape (all parameters)
    flops_per_token: float      # its exact training FLOPs per token
    steps: int
    tokens: int                 # D it trains on: steps x batch x block
    flops: float                # its compute: flops_per_token x tokens (near `compute`)
    predicted: float            # the law's loss at (n_params, tokens)
    interval: tuple             # (lo, hi): the bootstrap laws' predictions there, at `level`
    level: float
    format: int = PREDICTION_FORMAT

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["interval"] = [float(v) for v in self.interval]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Prediction":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(d) - {"format"}
        if missing:
            raise scaling.ScalingError(f"prediction {d.get('name', '?')!r} lacks {sorted(missing)}")
        return cls(**{**{k: v for k, v in d.items() if k in names}, "interval": tuple(d["interval"])})

    @property
    def shape_label(self) -> str:
        return f"{self.shape['n_layer']}x{self.shape['n_embd']}"


@dataclass(frozen=True)
class Outcome:
    """A prediction beside the run's measured loss (None while it is not trained)."""
    prediction: Prediction
    measured: float | None = None
    record: scaling.RunRecord | None = None

    @property
    def error(self) -> float | None:
        """Predicted minus measured (nats/token): positive when the law was pessimistic."""
        return None if self.measured is None else self.prediction.predicted - self.measured

    @property
    def relative_error(self) -> float | None:
        return None if self.measured is None else self.error / self.measured

    @property
    def inside(self) -> bool | None:
        if self.measured is None:
            return None
        lo, hi = self.prediction.interval
        return lo <= self.measured <= hi


def check_factor(factor) -> float:
    """The budget factor, from a widget or a link: a number in FACTOR_RANGE."""
    return checks.number("budget factor", factor, *FACTOR_RANGE, error=scaling.ScalingError)


def family_shapes(config: dict) -> list[tuple[int, int, int]]:
    """(n_layer, n_embd, n_head) of the sweep's shape family: any depth up to MAX_LAYERS and width (a
    multiple of the head size) whose width per layer lies within the range the sweep's own shapes span."""
    head = int(config.get("head_size", 16))
    swept = [tuple(int(v) for v in str(s).lower().split("x")) for s in config.get("shapes", ())]
    aspects = [w / layer for layer, w in swept] or [32.0]
    lo, hi = min(aspects), max(aspects)
    return [(layer, width, width // head) for layer in range(1, MAX_LAYERS + 1)
            for width in range(head, MAX_WIDTH + 1, head) if lo <= width / layer <= hi]


def choose_shape(n_target: float, config: dict, vocab_size: int) -> ModelConfig:
    """The family's shape whose parameter count is nearest N_opt (in log), the sweep's context and positions."""
    best = None
    for layer, width, heads in family_shapes(config):
        mc = ModelConfig(vocab_size=vocab_size, block_size=int(config["block_size"]), n_layer=layer, n_head=heads,
                         n_embd=width, pos_encoding=config.get("pos_encoding", "rope"))
        gap = abs(math.log(count_parameters(mc)["total"] / n_target))
        if best is None or gap < best[0]:
            best = (gap, mc)
    if best is None:
        raise scaling.ScalingError("the sweep's shapes define no family to choose from (shapes LAYERSxWIDTH)")
    return best[1]


def run_name(tokens: int, shape: str) -> str:
    """The name core.sweep gives a token-count run (its `_fmt`); the child checks the two agree."""
    return f"D{f'{float(tokens):.3g}'.replace('+', '')}-{shape}"


def predict(stored: scaling.StoredFits, factor: float, config: dict, sweep: str, name: str,
            max_tokens: int | None = None) -> Prediction:
    """The prediction for a run at `factor` x the largest run's compute, from a sweep's current fits and
    its recipe (`config`, as core.sweep stored it). `max_tokens`: the most tokens the recipe lets a run
    see (max_epochs x the train split), when known."""
    factor = check_factor(factor)
    if not stored.current:
        raise scaling.ScalingError(f"{stored.explain()} A prediction needs the fits of the runs so far: wait for "
                                   f"them (the Scaling page starts the fit), or run `{stored.command}`.")
    report = stored.report(N_KIND)
    law = report.chinchilla if report else None
    if law is None:
        why = report.problems.get("L(N, D)", "") if report else ""
        raise scaling.ScalingError(f"no L(N, D) fit on these runs to predict from{': ' + why if why else ''}")
    if not law.samples:
        raise scaling.ScalingError("the L(N, D) fit has no bootstrap resamples, so the prediction would have no "
                                   "interval: refit with bootstrap (python -m core.scaling fit)")
    records = stored.records
    largest = max(r.flops for r in records)
    compute = factor * largest
    fpt = report.flops_per_token
    opt = scaling.allocate(law, compute, fpt if fpt.exact else None)
    vocab = records[0].shape.get("vocab_size") if records[0].shape else None
    if not vocab:
        raise scaling.ScalingError("the sweep's records do not say their vocabulary size (shape.vocab_size)")
    mc = choose_shape(opt.n, config, int(vocab))
    per_token = flops_per_token(mc)
    tokens_per_step = int(config["batch_size"]) * mc.block_size
    steps = round(compute / (per_token * tokens_per_step))
    if steps < int(config.get("min_steps", 0)):
        raise scaling.ScalingError(f"this budget gives the chosen shape only {steps} steps (the recipe's minimum "
                                   f"is {config['min_steps']}): choose a larger factor")
    tokens = steps * tokens_per_step
    if max_tokens is not None and tokens > max_tokens:
        then = ("choose a smaller factor" if factor > FACTOR_RANGE[0] else
                "even the smallest factor asks more data than the corpus has, so this sweep cannot be extended "
                "on it: verify on a larger corpus, or raise max_epochs (repeated data is worth less)")
        raise scaling.ScalingError(f"this budget's optimum trains on {tokens:,} tokens, more than the recipe's "
                                   f"max_epochs allows on this corpus ({max_tokens:,}): {then}")
    n = count_parameters(mc)["total"]
    draws = [float(b.predict(n, tokens)) for b in law.bootstrap_laws()]     # each resample's law at this run
    lo, hi = np.percentile(draws, [50 * (1 - law.level), 50 * (1 + law.level)])
    label = f"{mc.n_layer}x{mc.n_embd}"
    return Prediction(
        name=name, sweep=sweep, run=run_name(tokens, label), created=time.time(), factor=factor, largest=largest,
        compute=compute, n_records=len(records), records_sha256=stored.digest,
        law={k: getattr(law, k) for k in ("E", "A", "B", "alpha", "beta")}, n_opt=opt.n, d_opt=opt.d,
        loss_opt=opt.loss, shape={k: mc.to_dict()[k] for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                               "vocab_size")},
        n_params=n, flops_per_token=per_token, steps=steps, tokens=tokens, flops=per_token * tokens,
        predicted=float(law.predict(n, tokens)), interval=(float(lo), float(hi)),
        level=law.level)


# ---------------------------------------------------------------------------------------------------
# Where a sweep's verification runs and predictions live

def target_dir(sweep: str | Path, runs_dir: Path | None = None) -> Path:
    """The sweep directory a verification run is recorded in (the module docstring's rule)."""
    sweep = Path(sweep)
    if sweep.is_dir():
        return sweep
    return Path(runs_dir or catalog.RUNS_DIR) / "sweeps" / (sweep.stem + COPY_SUFFIX)


def recipe_of(sweep: str | Path) -> dict:
    """The sweep's stored config (core.sweep's SweepConfig as JSON): sweep.json of a directory, or the
    committed records file's own."""
    sweep = Path(sweep)
    path = sweep / SWEEP_FILE if sweep.is_dir() else sweep
    try:
        config = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise scaling.ScalingError(f"the sweep {sweep.name} has no readable recipe ({path.name}); it must have "
                                   f"been run by python -m core.sweep to be extended") from None
    if not isinstance(config, dict) or "block_size" not in config or "batch_size" not in config:
        raise scaling.ScalingError(f"the recipe stored in {path.name} is damaged")
    return config


def fits_source(sweep: str | Path, runs_dir: Path | None = None) -> Path:
    """The records a prediction for this sweep is fitted on: the copy's once there is one (it holds the
    verification runs so far), else the sweep's own."""
    target = target_dir(sweep, runs_dir)
    return target if (target / SWEEP_RECORDS_DIR).is_dir() else Path(sweep)


def make_copy(committed: Path, target: Path) -> None:
    """Seed runs/sweeps/NAME-verify/ from a committed sweep: a record per run, its recipe, and its fits
    (still current: the same records). Written beside and renamed, so a half copy never exists."""
    if target.exists():
        return
    data = json.loads(committed.read_text())
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    (tmp / SWEEP_RECORDS_DIR).mkdir(parents=True)
    for r in data["records"]:
        rec = scaling.RunRecord.from_dict(r)
        (tmp / SWEEP_RECORDS_DIR / f"{rec.name}.json").write_text(json.dumps(rec.to_dict(), indent=2))
    meta = {k: data[k] for k in ("config", "recipe", "corpus_sha256", "tokenizer") if k in data}
    (tmp / SWEEP_FILE).write_text(json.dumps(meta, indent=2))
    (tmp / RECORDS_FILE).write_text(json.dumps(data, indent=1))
    fits = catalog.fits_path(committed)
    if fits.is_file():
        shutil.copyfile(fits, catalog.fits_path(tmp))
    try:
        os.rename(tmp, target)
    except OSError:                     # another visitor's copy won the race: theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)


def store_prediction(target: Path, p: Prediction) -> Path:
    """Write a prediction once: exclusive create, so no later write replaces it."""
    folder = target / PREDICTIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{p.name}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(p.to_dict(), indent=1))
        f.flush()
        os.fsync(f.fileno())
    return path


def read_prediction(target: Path, name: str) -> Prediction:
    return Prediction.from_dict(json.loads((target / PREDICTIONS_DIR / f"{name}.json").read_text()))


def history(sweep: str | Path, runs_dir: Path | None = None) -> list[Outcome]:
    """Every prediction made for this sweep, newest first, each with its run's measured loss once recorded.
    Damaged files are skipped."""
    target = target_dir(sweep, runs_dir)
    records = {r.name: r for r in scaling.load_records(target)} if target.is_dir() else {}
    out = []
    for f in sorted((target / PREDICTIONS_DIR).glob("*.json")) if (target / PREDICTIONS_DIR).is_dir() else []:
        try:
            p = Prediction.from_dict(json.loads(f.read_text()))
        except (OSError, ValueError, TypeError, KeyError, scaling.ScalingError):
            continue
        rec = records.get(p.run)
        out.append(Outcome(p, rec.val_loss if rec else None, rec))
    return sorted(out, key=lambda o: -o.prediction.created)


def max_tokens(config: dict) -> int | None:
    """The most tokens a run of this recipe may see (max_epochs x the train split), for a byte-level sweep
    whose corpus is here; None when unknown (the child then refuses a run that would repeat it more)."""
    if config.get("tokenizer") != "byte":
        return None
    from core.config import TrainConfig
    from core.data import CORPORA, data_dir, load_corpus
    name = config.get("corpus")
    if name in CORPORA and not (data_dir(config.get("data_dir")) / CORPORA[name].filename).is_file():
        return None         # a page never starts a download; the child fetches it and checks the epochs
    try:
        corpus = load_corpus(name, config.get("data_dir"))
    except (OSError, ValueError, KeyError, TypeError, PlaygroundError):
        return None
    n_train = int(len(corpus.text.encode()) * (1 - TrainConfig.val_fraction))
    return int(float(config.get("max_epochs", 4.0)) * n_train)


def unavailable(hosted: bool) -> str | None:
    """Why this server does not train verification runs, or None."""
    if hosted:
        return ("This is a shared demo: a verification run trains a model larger than any of the sweep's for "
                "minutes, which this server does not do. Run the playground locally to predict, then verify.")
    return training_unavailable()


# ---------------------------------------------------------------------------------------------------
# The job: the one planned run, trained through core.sweep in a child process

@dataclass(kw_only=True)
class VerifyJob(Job):
    """`python -m core.verify run`: trains a prediction's run into its sweep (or the sweep's copy). Its own
    run directory (runs/NAME) holds job.json, the child's stderr and log.jsonl, the trainer's records as
    the sweep yields them; the checkpoints live in the sweep's work folder until the record is written."""
    target: Path                        # the sweep directory the record lands in
    threads: int = 0
    bootstrap: int = scaling.N_BOOTSTRAP    # resamples of the sweep's refit: those of the fits predicted from

    kind: ClassVar[str] = "verify"
    module: ClassVar[str] = "core.verify"
    what: ClassVar[str] = "the verification run"

    def new_progress(self) -> TrainProgress:
        return TrainProgress()

    fold = TrainingJob.fold

    @property
    def prediction(self) -> Prediction:
        return read_prediction(self.target, self.name)

    @property
    def max_steps(self) -> int:
        try:
            return self.prediction.steps
        except (OSError, ValueError, KeyError, TypeError, scaling.ScalingError):
            return 1

    def argv(self, resume: bool) -> list[str]:
        # a resume is the same command: core.sweep resumes the run from its checkpoint by itself
        return ["run", "--target", str(self.target), "--prediction", self.name, "--out-dir", str(self.run_dir),
                "--threads", str(self.threads), "--bootstrap", str(self.bootstrap)]

    def child_env(self) -> dict[str, str]:
        return {"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}

    def _finished_all_steps(self) -> bool:
        try:        # its prediction may be gone (the copy deleted): the board must still load and reap the job
            return (self.target / SWEEP_RECORDS_DIR / f"{self.prediction.run}.json").is_file()
        except (OSError, ValueError, KeyError, scaling.ScalingError):
            return False

    def resumable(self) -> bool:
        return True

    def check_launch(self, board: JobBoard) -> None:
        _check_alone(board, self.target)

    def not_exportable(self) -> str | None:
        return "a verification run keeps its record in the sweep, not its weights: there is no model to export"

    def config_json(self) -> dict:
        return {"verify": {"target": str(self.target), "threads": self.threads, "bootstrap": self.bootstrap}}

    @classmethod
    def from_json(cls, d: dict, **common) -> "VerifyJob":
        v = d["verify"]
        return cls(**common, target=Path(v["target"]), threads=int(v.get("threads") or 0),
                   bootstrap=int(v.get("bootstrap", scaling.N_BOOTSTRAP)))

    def view(self, token_hash: str | None) -> JobView:
        p = self.progress
        return JobView(**self._view_fields(token_hash), measures=[], threads=p.threads)


JOB_KINDS[VerifyJob.kind] = VerifyJob      # a board adopts verification jobs after a restart like any other


def new_name() -> str:
    return f"verify-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def start(board: JobBoard, token: str, sweep: str | Path, factor: float, hosted: bool = False,
          name: str | None = None) -> tuple[Prediction, JobView]:
    """Predict a run at `factor` x the sweep's largest compute, store the prediction, then start training
    it: every check (capacity, size, steps, one verification per sweep at a time) passes before anything is
    written, and the prediction is on disk before the child starts."""
    why = unavailable(hosted)
    if why:
        raise JobError(why)
    sweep = Path(sweep)
    target = target_dir(sweep, board.runs_dir)
    config = recipe_of(sweep)
    name = name or new_name()
    with board.lock:
        _check_alone(board, target)
        stored = scaling.load_fits(fits_source(sweep, board.runs_dir))
        p = predict(stored, factor, config, sweep.stem if not sweep.is_dir() else sweep.name, name,
                    max_tokens(config))
        _check_limits(p, board.limits)
        if (target / SWEEP_RECORDS_DIR / f"{p.run}.json").is_file():
            raise JobError(f"the run {p.run} is recorded in this sweep already: its prediction is in the history. "
                           f"Choose another factor")
        job = VerifyJob(name=name, owner="", run_dir=board.runs_dir / name, target=target,
                        threads=board.limits.train_threads,
                        bootstrap=stored.n_bootstrap if stored.n_bootstrap is not None else scaling.N_BOOTSTRAP)

        def prepare() -> None:
            if not sweep.is_dir():
                make_copy(sweep, target)
            store_prediction(target, p)

        return p, board.start_job(token, job, prepare)


def _check_limits(p: Prediction, limits: Limits) -> None:
    if p.n_params > limits.max_parameters:
        raise JobError(f"the run would have {p.n_params:,} parameters; this server trains at most "
                       f"{limits.max_parameters:,}: choose a smaller factor")
    if p.steps > limits.max_steps:
        raise JobError(f"the run would take {p.steps:,} steps; this server allows at most {limits.max_steps:,} per "
                       f"run: choose a smaller factor")


def _check_alone(board: JobBoard, target: Path) -> None:
    """One verification per sweep at a time (a start or a resume): two would train into the same work folder."""
    for job in board.jobs.values():
        if isinstance(job, VerifyJob) and job.target == target and job.state in ACTIVE_STATES:
            raise JobError(f"{job.name} is verifying this sweep already; wait for it to finish (or stop it)")


# ---------------------------------------------------------------------------------------------------
# The child: python -m core.verify run --target SWEEP --prediction NAME --out-dir RUN_DIR

def _log(f, kind: str, **fields) -> None:
    f.write(json.dumps({"type": kind, **fields}) + "\n")
    f.flush()


def run(target: Path, name: str, out_dir: Path, threads: int = 0, bootstrap: int | None = None) -> int:
    """Train the prediction's run through core.sweep (the sweep's recipe, one token-count run of the chosen
    shape), mirroring its progress into out_dir/log.jsonl for the job's watchers. 0 when recorded, 130
    when stopped (the run keeps its checkpoint in the sweep's work folder)."""
    from core.sweep import RunRecorded, SweepConfig, SweepFinished, SweepRunStarted, run_sweep
    from core.train import TrainStep

    if bootstrap is not None:
        scaling.N_BOOTSTRAP = bootstrap     # this process's refit (core.sweep's, at the end) uses as many
    p = read_prediction(target, name)
    config = recipe_of(target)
    keep = {f.name for f in dataclasses.fields(SweepConfig)} - {"out_dir", "shapes", "budgets", "tokens",
                                                                 "threads", "keep_runs"}
    cfg = SweepConfig(**{k: v for k, v in config.items() if k in keep}, out_dir=str(target),
                      shapes=(p.shape_label,), budgets=(), tokens=(float(p.tokens),), threads=threads)
    stop = cli.StopFlag()
    recipe = (target / SWEEP_FILE).read_bytes()   # run_sweep stores the config it is given: this one-run config
    gen = run_sweep(cfg)                           # must not replace the sweep's shapes, budgets and tokens
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(out_dir / catalog.LOG_FILE, "a") as log:
            for ev in gen:
                if isinstance(ev, SweepRunStarted):
                    if ev.run.name != p.run or ev.run.tokens != p.tokens:
                        gen.close()
                        raise JobError(f"the sweep planned {ev.run.name} ({ev.run.tokens:,} tokens), not the "
                                       f"predicted {p.run} ({p.tokens:,}): nothing was trained")
                    _log(log, "Phase", name="training", step=ev.resumed_from or 0)
                elif isinstance(ev, TrainStep):
                    _log(log, "TrainStep", **dataclasses.asdict(ev))
                elif isinstance(ev, RunRecorded):
                    r = ev.record
                    _log(log, "EvalResult", step=p.steps, train_loss=r.train_loss, val_loss=r.val_loss,
                         val_perplexity=math.exp(r.val_loss), val_bits_per_byte=r.val_bits_per_byte,
                         elapsed=r.wall_s)
                    _log(log, "Phase", name="fitting the sweep", step=p.steps)
                elif isinstance(ev, SweepFinished):
                    _log(log, "Phase", name="recorded", step=p.steps)
                if stop.asked:
                    gen.close()
                    return 130
    finally:
        gen.close()
        write_atomic(target / SWEEP_FILE, recipe)
    if not (target / SWEEP_RECORDS_DIR / f"{p.run}.json").is_file():
        raise JobError(f"the sweep finished without recording {p.run}: it was left out of the plan "
                       f"(too few steps, or too many epochs of the corpus)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.verify",
                                 description="Train a stored prediction's run into its sweep (the Scaling page "
                                             "starts this as a job).")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--target", required=True, help="the sweep directory the run is recorded in")
    r.add_argument("--prediction", required=True, help="the prediction's name (TARGET/predictions/NAME.json)")
    r.add_argument("--out-dir", required=True, help="the job's folder: log.jsonl is written there")
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--bootstrap", type=int, default=None, help="resamples of the sweep's refit")
    args = ap.parse_args(argv)
    try:
        return run(Path(args.target), args.prediction, Path(args.out_dir), args.threads, args.bootstrap)
    except (PlaygroundError, OSError) as e:
        return cli.report_error(e, "start the verification again: a stopped run resumes from its checkpoint")


if __name__ == "__main__":
    sys.exit(main())
