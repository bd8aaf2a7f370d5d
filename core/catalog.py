"""Catalog: what runs and exported models exist on disk, read without torch.

Holds the layout of a run directory (run.json, log.jsonl, checkpoints/, tokenizer/), `read_log`, and
summaries of runs, exported models and scaling sweeps for pickers and tables.

Deliberately not here: writing any of these (the trainer and the exporter do), loading weights.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# where training runs and exported models live; a deployment (or a test's server) may point elsewhere
RUNS_DIR = Path(os.environ.get("LLM_PLAYGROUND_RUNS") or ROOT / "runs")
EXPORTED_DIR = Path(os.environ.get("LLM_PLAYGROUND_EXPORTED") or ROOT / "exported")
# the project's own scaling sweeps (committed records); a user's sweeps live under RUNS_DIR/sweeps
SWEEPS_DIR = Path(os.environ.get("LLM_PLAYGROUND_SWEEPS") or ROOT / "sweeps")

RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
CARD_FILE = "card.json"
_STEP_FILE = re.compile(r"^step_(\d{8})\.safetensors$")


@dataclass(frozen=True)
class RunSummary:
    name: str
    path: Path
    step: int                       # newest checkpoint's step (0 if none)
    val_loss: float | None          # last eval in the log
    val_bits_per_byte: float | None


@dataclass(frozen=True)
class ModelSummary:
    name: str
    path: Path
    parameters: int | None
    tokenizer: str | None
    val_loss: float | None


def read_log(run_dir: str | os.PathLike) -> list[dict]:
    """Every record a run logged (lines cut short by a kill are skipped)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def checkpoint_steps(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file of a run, oldest first; temp files are ignored."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_FILE.match(p.name)))


def model_checkpoints(model_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, directory) of the earlier checkpoints exported beside a model, oldest first."""
    d = Path(model_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = re.match(r"^step_(\d{8})$", p.name)
        if m and (p / CARD_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


@functools.lru_cache(maxsize=256)
def _last_eval(run_dir: str, mtime_ns: int, size: int) -> dict:
    """The last eval a run logged, read again only when its log changes (the Home page lists runs on
    every visit; a long run's log has thousands of lines)."""
    evals = [r for r in read_log(run_dir) if r.get("type") == "EvalResult"]
    return evals[-1] if evals else {}


def list_runs(runs_dir: str | os.PathLike | None = None) -> list[RunSummary]:
    d = Path(runs_dir or RUNS_DIR)
    if not d.is_dir():
        return []
    out = []
    for run in sorted(p for p in d.iterdir() if (p / RUN_FILE).is_file()):
        log = run / LOG_FILE
        stat = log.stat() if log.is_file() else None
        last = _last_eval(str(run), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        steps = checkpoint_steps(run)
        out.append(RunSummary(run.name, run, steps[-1][0] if steps else 0, last.get("val_loss"),
                              last.get("val_bits_per_byte")))
    return out


def list_exported_models(exported_dir: str | os.PathLike | None = None) -> list[ModelSummary]:
    d = Path(exported_dir or EXPORTED_DIR)
    if not d.is_dir():
        return []
    out = []
    for model in sorted(p for p in d.iterdir() if (p / CARD_FILE).is_file()):
        try:
            card = json.loads((model / CARD_FILE).read_text(encoding="utf-8"))
        except ValueError:
            continue   # a damaged card: the model is not offered rather than crashing a picker
        out.append(ModelSummary(model.name, model, card.get("parameters", {}).get("total"),
                                card.get("tokenizer", {}).get("name"), card.get("val_loss")))
    return out


@dataclass(frozen=True)
class SweepSummary:
    name: str
    path: Path                      # a records file (committed) or a sweep directory (the user's)
    committed: bool


def list_sweeps(sweeps_dir: str | os.PathLike | None = None,
                runs_dir: str | os.PathLike | None = None) -> list[SweepSummary]:
    """Committed sweeps (sweeps/*.json) first, then the user's (runs/sweeps/NAME/ with records)."""
    out = []
    committed = Path(sweeps_dir or SWEEPS_DIR)
    if committed.is_dir():
        out += [SweepSummary(p.stem, p, True) for p in sorted(committed.glob("*.json"))]
    mine = Path(runs_dir or RUNS_DIR) / "sweeps"
    if mine.is_dir():
        out += [SweepSummary(p.name, p, False) for p in sorted(mine.iterdir())
                if (p / "records").is_dir() and any((p / "records").glob("*.json"))]
    return out
