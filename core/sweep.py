"""Scaling sweeps: train a family of models through the trainer and keep one record per finished run.

Holds `SweepConfig`, the plan (`plan_sweep`: a grid of shapes x token counts, and IsoFLOP budgets
where every shape gets the tokens a budget buys it at its exact FLOPs per token), `run_sweep()` (a
generator the CLI, the Train page and the tests consume) and `python -m core.sweep`.

Durability: a run's record (`records/NAME.json`) is written atomically once the run has finished, and
only then is its working directory removed. A restarted sweep skips every recorded run and resumes
the run that was in progress from its last checkpoint, so a kill loses at most `checkpoint_interval`
steps of one run. The recipe is stored in `sweep.json`; a restart with a different recipe is refused
(its records would not be comparable), while shapes, budgets and token counts may be added.

Fits: when the sweep finishes, or is stopped with records, the records are fitted once and the fits
stored beside them (`core.scaling.ensure_fits`, the same as `python -m core.scaling fit OUT_DIR`), so
the Scaling page only reads them. A kill leaves them stale or absent; the page (or that command) refits.

Deliberately not here: the fits (`core.scaling`, numpy/scipy, no torch), the trainer (`core.train`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from core import checkpoint as ckpt_io
from core import checks, cli, scaling
from core.catalog import RECORDS_FILE, RUNS_DIR, SWEEP_RECORDS_DIR
from core.checks import ConfigError, PlaygroundError
from core.config import ModelConfig, TrainConfig, count_parameters, flops_per_token
from core.data import load_corpus, prepare_dataset
from core.files import write_atomic
from core.tokenizer import META_FILE, byte_tokenizer, load_tokenizer
from core.train import RunFinished, RunStarted, TrainStep, build_tokenizer, train

SWEEP_FILE = "sweep.json"
WORK_DIR = "work"


@dataclass
class SweepConfig:
    out_dir: str = str(RUNS_DIR / "sweeps" / "tinyshakespeare-byte")
    corpus: str = "tinyshakespeare"         # a named corpus or a local text file
    data_dir: str | None = None
    tokenizer: str = "byte"                 # byte | bpe (trained once, shared by all runs) | a tokenizer dir
    bpe_vocab_size: int = 1024
    shapes: tuple[str, ...] = ("1x16", "2x16", "1x32", "2x32", "2x48", "3x64", "4x96", "4x128")  # n_layer x n_embd
    head_size: int = 16                     # heads = n_embd / head_size: the same head width at every size
    budgets: tuple[float, ...] = (1e10, 3e10, 1e11, 3e11, 1e12)   # IsoFLOP budgets (training FLOPs); empty for none
    tokens: tuple[float, ...] = ()          # a grid: every shape trained on each of these token counts
    block_size: int = 64
    batch_size: int = 4                     # small batches: more steps per token, which short runs of the
                                            # larger shapes need (batch 12 left them step-starved)
    learning_rate: float = 3e-3             # one recipe for every size; 3e-3 beat 2e-3 on short runs
    min_lr: float = 3e-4
    warmup_fraction: float = 0.05           # warmup as a share of each run (capped at 100 steps)
    pos_encoding: str = "rope"
    dtype: str = "float32"                  # fp32: the same losses on every CPU (bf16 support varies)
    max_epochs: float = 4.0                 # skip runs that would see the train split more often than this:
                                            # up to ~4 epochs repeated data is worth almost as much as new
                                            # (Muennighoff et al. 2023, arXiv:2305.16264)
    min_steps: int = 40                     # skip runs shorter than this: mostly warmup, not a measurement
    eval_iters: int = 200                   # batches in the final loss estimate (51,200 tokens at 4 x 64)
    checkpoint_interval: int = 200          # a kill loses at most this many steps of the run in progress
    seed: int = 1337
    threads: int = 0                        # torch threads; 0 measures them on each run's first steps
    keep_runs: bool = False                 # keep each run's directory (weights) after its record is written

    def __post_init__(self):
        self.shapes = tuple(self.shapes)
        self.budgets = tuple(float(b) for b in self.budgets)
        self.tokens = tuple(float(t) for t in self.tokens)
        if not self.shapes:
            raise ConfigError("a sweep needs at least one shape (--shapes 2x32 4x64 ...)")
        for s in self.shapes:
            parse_shape(s, self.head_size)
        if not self.budgets and not self.tokens:
            raise ConfigError("a sweep needs IsoFLOP budgets (--budgets 1e11 3e11) or token counts "
                              "(--tokens 1e5 3e5), or both")
        for name, values in (("budgets", self.budgets), ("tokens", self.tokens)):
            for v in values:
                checks.number(name, v, 0.0, low_open=True)
        checks.number("warmup_fraction", self.warmup_fraction, 0.0, 1.0, high_open=True)
        checks.number("max_epochs", self.max_epochs, 0.0, low_open=True)
        for name in ("head_size", "block_size", "batch_size", "bpe_vocab_size", "eval_iters"):
            checks.integer(name, getattr(self, name), 1)
        for name in ("min_steps", "checkpoint_interval", "threads"):
            checks.integer(name, getattr(self, name), 0)

    def recipe(self) -> dict:
        """The settings every record depends on; a restart must keep them."""
        free = {"out_dir", "data_dir", "shapes", "budgets", "tokens", "threads", "keep_runs"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in free}


def parse_shape(text: str, head_size: int = 16) -> tuple[int, int, int]:
    """'4x128' -> (n_layer 4, n_embd 128, n_head 8 at head size 16)."""
    try:
        layers, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"a shape is LAYERSxWIDTH, like 4x128; got {text!r}") from None
    if layers < 1 or width < 1 or width % head_size:
        raise ConfigError(f"shape {text!r}: layers >= 1 and a width that is a multiple of the head size "
                         f"({head_size})")
    return layers, width, width // head_size


@dataclass(frozen=True)
class PlannedRun:
    name: str
    shape: str
    model_config: ModelConfig
    max_steps: int
    tokens: int
    flops_per_token: float
    flops: float
    budget: float | None

    @property
    def parameters(self) -> dict:
        return count_parameters(self.model_config)


def _fmt(x: float) -> str:
    return f"{x:.3g}".replace("+", "")


def plan_sweep(cfg: SweepConfig, vocab_size: int, train_tokens: int) -> tuple[list[PlannedRun], list[tuple[str, str]]]:
    """Every run of the sweep, cheapest first, and the runs left out with the reason."""
    tokens_per_step = cfg.batch_size * cfg.block_size
    runs, skipped = [], []

    def add(name, shape, mc, steps, budget):
        fpt = flops_per_token(mc)
        tokens = steps * tokens_per_step
        if steps < cfg.min_steps:
            skipped.append((name, f"{steps} steps < min_steps {cfg.min_steps}"))
        elif tokens > cfg.max_epochs * train_tokens:
            skipped.append((name, f"{tokens:,} tokens would repeat the {train_tokens:,}-token train split "
                                  f"{tokens / train_tokens:.1f} times (max_epochs {cfg.max_epochs})"))
        else:
            runs.append(PlannedRun(name, shape, mc, steps, tokens, fpt, fpt * tokens, budget))

    for shape in cfg.shapes:
        n_layer, n_embd, n_head = parse_shape(shape, cfg.head_size)
        mc = ModelConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, pos_encoding=cfg.pos_encoding)
        fpt = flops_per_token(mc)
        for budget in cfg.budgets:
            add(f"C{_fmt(budget)}-{shape}", shape, mc, round(budget / (fpt * tokens_per_step)), budget)
        for d in cfg.tokens:
            add(f"D{_fmt(d)}-{shape}", shape, mc, round(d / tokens_per_step), None)
    runs.sort(key=lambda r: (r.flops, r.name))
    return runs, skipped


# ---------------------------------------------------------------------------------------------------
# Records yielded by run_sweep()

@dataclass
class SweepStarted:
    out_dir: str
    planned: list               # PlannedRun, in the order they run
    skipped: list               # (name, reason)
    done: list                  # names already recorded (skipped now)
    total_flops: float          # of the runs still to do


@dataclass
class SweepRunStarted:
    index: int                  # 1-based among the runs still to do
    total: int
    run: PlannedRun
    resumed_from: int | None


@dataclass
class RunRecorded:
    index: int
    total: int
    record: scaling.RunRecord


@dataclass
class SweepFinished:
    records: list               # every record of the sweep, earlier ones included
    elapsed: float
    fits: str = ""              # where the fits were stored, or why none were


SweepEvent = Union[SweepStarted, SweepRunStarted, TrainStep, RunRecorded, SweepFinished]


def run_sweep(cfg: SweepConfig) -> Iterator[SweepEvent]:
    """Run every planned run not yet recorded; yield progress, and a record per finished run."""
    out = Path(cfg.out_dir)
    _check_recipe(out, cfg)
    corpus = load_corpus(cfg.corpus, cfg.data_dir)
    tokenizer_arg, tokenizer = _sweep_tokenizer(cfg, out, corpus)
    dataset = prepare_dataset(corpus, tokenizer, cfg.data_dir)
    planned, skipped = plan_sweep(cfg, tokenizer.n_vocab, len(dataset.train))
    if not planned:
        raise ConfigError("every run of this sweep was left out: " +
                         "; ".join(f"{n}: {why}" for n, why in skipped[:4]) +
                         ". Raise the budgets or token counts, or max_epochs.")
    done = {r.name for r in scaling.load_records(out)} if out.is_dir() else set()
    if not cfg.keep_runs:
        for name in done:    # a kill between writing a record and removing the run's directory
            shutil.rmtree(out / WORK_DIR / name, ignore_errors=True)
    todo = [p for p in planned if p.name not in done]
    yield SweepStarted(str(out), planned, skipped, sorted(done), sum(p.flops for p in todo))
    # written only once the consumer goes on past the plan (the CLI's --plan stops before)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SWEEP_FILE, json.dumps({"config": _jsonable(dataclasses.asdict(cfg)),
                                               "recipe": _jsonable(cfg.recipe()),
                                               "corpus_sha256": corpus.sha256,
                                               "tokenizer": tokenizer.name}, indent=2).encode())
    _write_collected(out)       # also refreshes a file a kill left one record behind
    t0 = time.perf_counter()
    try:
        for i, run in enumerate(todo, 1):
            work = out / WORK_DIR / run.name
            resume = ckpt_io.latest_checkpoint(work) is not None
            if work.exists() and not resume:
                shutil.rmtree(work)     # started but killed before its first checkpoint: nothing to keep
            tc = TrainConfig(out_dir=str(work), corpus=cfg.corpus, data_dir=cfg.data_dir, tokenizer=tokenizer_arg,
                             batch_size=cfg.batch_size, max_steps=run.max_steps, learning_rate=cfg.learning_rate,
                             min_lr=cfg.min_lr, warmup_steps=min(100, int(run.max_steps * cfg.warmup_fraction)),
                             dtype=cfg.dtype, seed=cfg.seed, threads=cfg.threads,
                             eval_interval=run.max_steps, eval_at_start=False, eval_iters=cfg.eval_iters,
                             checkpoint_interval=cfg.checkpoint_interval, keep_checkpoints=1, resume=resume)
            started = finished = None
            # closing(): a consumer that stops the sweep stops the run too, which then saves its checkpoint
            command = f"python -m core.sweep (run {run.name})"
            with contextlib.closing(train(tc, run.model_config, command=command)) as events:
                for ev in events:
                    if isinstance(ev, RunStarted):
                        started = ev
                        yield SweepRunStarted(i, len(todo), run, ev.resumed_from)
                    elif isinstance(ev, TrainStep):
                        yield ev
                    elif isinstance(ev, RunFinished):
                        finished = ev
            if finished is None or finished.final is None:
                raise RuntimeError(f"run {run.name} ended without a final evaluation")
            params = started.parameters
            record = scaling.RunRecord(
                name=run.name, n_params=params["total"], n_non_embedding=params["non_embedding"],
                tokens=finished.tokens_seen, flops=run.flops_per_token * finished.tokens_seen,
                flops_per_token=run.flops_per_token, train_loss=finished.final.train_loss,
                val_loss=finished.final.val_loss, val_bits_per_byte=finished.final.val_bits_per_byte,
                wall_s=finished.elapsed,
                shape={k: run.model_config.to_dict()[k] for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                   "vocab_size")},
                budget=run.budget, sweep=out.name)
            (out / SWEEP_RECORDS_DIR).mkdir(exist_ok=True)
            write_atomic(out / SWEEP_RECORDS_DIR / f"{run.name}.json", json.dumps(record.to_dict(), indent=2).encode())
            _write_collected(out)
            if not cfg.keep_runs:
                shutil.rmtree(work, ignore_errors=True)
            yield RunRecorded(i, len(todo), record)
    except GeneratorExit:
        _store_fits(out)    # stopped by its consumer: the runs recorded so far get their fits too
        raise
    fits = _store_fits(out)
    yield SweepFinished(scaling.load_records(out), time.perf_counter() - t0, fits)


def _store_fits(out: Path) -> str:
    """Fit the recorded runs and store the fits beside them, unless the stored ones are current (a
    restart that recorded nothing new). A line saying what was done."""
    if not any((out / SWEEP_RECORDS_DIR).glob("*.json")):
        return "no run recorded yet: nothing to fit"
    try:
        stored = scaling.ensure_fits(out)
    except scaling.ScalingError as e:
        return f"no fits stored: {e}"
    return f"fits of {len(stored.records)} runs stored in {stored.path}"


def _check_recipe(out: Path, cfg: SweepConfig) -> None:
    path = out / SWEEP_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())["recipe"]
    except (ValueError, KeyError, OSError):
        return      # a damaged sweep.json is rewritten; the records carry their own shapes
    now = _jsonable(cfg.recipe())
    changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if changed:
        raise ConfigError(f"{out} holds a sweep with another recipe ({', '.join(changed)}); its records "
                         f"would not be comparable. Use the same settings to continue it (shapes, budgets "
                         f"and token counts may change), or another --out-dir. Nothing was changed.")


def _sweep_tokenizer(cfg: SweepConfig, out: Path, corpus):
    if cfg.tokenizer == "byte":
        return "byte", byte_tokenizer()
    if cfg.tokenizer == "bpe":
        tok_dir = out / "tokenizer"
        if not (tok_dir / META_FILE).is_file():
            tc = TrainConfig(tokenizer="bpe", bpe_vocab_size=cfg.bpe_vocab_size)    # the runs' own split
            n_train = int(len(corpus.text) * (1 - tc.val_fraction))
            build_tokenizer(tc, corpus.text[:n_train], corpus.sha256).save(tok_dir)
        return str(tok_dir), load_tokenizer(tok_dir)
    return cfg.tokenizer, load_tokenizer(cfg.tokenizer)


def _write_collected(out: Path) -> None:
    """records.json: the sweep's recipe and every record, in one file (what gets committed or shared)."""
    try:
        meta = json.loads((out / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    if isinstance(meta.get("config"), dict):
        meta["config"]["out_dir"] = out.name       # a shared file carries no path of this machine
    records = sorted(scaling.load_records(out), key=lambda r: (r.flops, r.name))
    write_atomic(out / RECORDS_FILE, json.dumps({**meta, "records": [r.to_dict() for r in records]},
                                                indent=1).encode())


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=list))


# ---------------------------------------------------------------------------------------------------
# CLI

def parse_args(argv: list[str] | None = None) -> tuple[SweepConfig, bool]:
    p = argparse.ArgumentParser(
        prog="python -m core.sweep",
        description="Train a family of models for the scaling lab. Finished runs are recorded in "
                    "OUT_DIR/records and skipped when the sweep is run again; Ctrl-C stops after a "
                    "checkpoint and the same command continues.")
    cli.add_dataclass_args(p, SweepConfig)
    p.add_argument("--plan", action="store_true", help="print the plan and its compute, train nothing")
    ns = p.parse_args(argv)
    return SweepConfig(**cli.dataclass_kwargs(ns, SweepConfig)), ns.plan


def _print_fits(records, write) -> None:
    try:
        law = scaling.fit_chinchilla(records, n_bootstrap=0)
        write(f"  fit so far ({len(records)} runs): {law.describe()}  (a = {law.a:.2f}, b = {law.b:.2f})")
    except scaling.ScalingError as e:
        write(f"  no L(N, D) fit yet: {e}")
    try:
        iso = scaling.fit_isoflop(records, flops_per_token=scaling.FlopsPerToken(records), n_bootstrap=0)
        write(f"  IsoFLOP so far: N_opt ~ C^{iso.a:.2f}, D_opt ~ C^{iso.b:.2f}")
    except scaling.ScalingError:
        pass


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    try:
        cfg, plan_only = parse_args(argv)
    except PlaygroundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = cli.StopFlag()

    gen = run_sweep(cfg)
    bar = None
    try:
        for ev in gen:
            if isinstance(ev, SweepStarted):
                print(f"sweep {ev.out_dir}: {len(ev.planned)} runs planned, {len(ev.done)} already recorded, "
                      f"{len(ev.skipped)} left out; {ev.total_flops:.3g} training FLOPs to go")
                for name, why in ev.skipped:
                    print(f"  left out {name}: {why}")
                if plan_only:
                    for r in ev.planned:
                        mark = "done" if r.name in ev.done else "todo"
                        print(f"  {mark} {r.name}: N {r.parameters['total']:,}, D {r.tokens:,}, "
                              f"{r.max_steps} steps, C {r.flops:.3g}")
                    gen.close()
                    return 0
            elif isinstance(ev, SweepRunStarted):
                if bar:
                    bar.close()
                n = ev.run.parameters
                resumed = f", resumed at step {ev.resumed_from}" if ev.resumed_from else ""
                bar = tqdm(total=ev.run.max_steps, initial=ev.resumed_from or 0, unit="step", dynamic_ncols=True,
                           desc=f"[{ev.index}/{ev.total}] {ev.run.name} (N {n['total']:,}, D {ev.run.tokens:,}"
                                f"{resumed})", disable=None)
            elif isinstance(ev, TrainStep):
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{ev.loss:.3f}")
            elif isinstance(ev, RunRecorded):
                if bar:
                    bar.close()
                    bar = None
                r = ev.record
                print(f"recorded {r.name}: val {r.val_loss:.4f} ({r.val_bits_per_byte:.3f} bits/byte), "
                      f"{r.wall_s:.1f} s")
                _print_fits(scaling.load_records(cfg.out_dir), print)
            elif isinstance(ev, SweepFinished):
                print(f"sweep done: {len(ev.records)} records, {ev.elapsed:.0f} s this time; "
                      f"{Path(cfg.out_dir) / RECORDS_FILE}; {ev.fits}")
            if stop.asked:
                print("\nstopping: the run in progress saves its checkpoint, then the recorded runs are fitted "
                      "for the Scaling page", file=sys.stderr)
                gen.close()
                if bar:
                    bar.close()
                print("\nstopped: the run in progress kept its checkpoint; run the same command to continue",
                      file=sys.stderr)
                return 130
    except (PlaygroundError, OSError) as e:
        if bar:
            bar.close()
        return cli.report_error(e, "run the same command: finished runs are kept and the run in progress "
                                   "resumes from its checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
