"""Catalog: what runs and exported models exist on disk, and the names of every file in them.

Holds the on-disk format, once: where runs, exported models and sweeps live, the files of a run
directory (run.json, log.jsonl, checkpoints/, tokenizer/) and of an exported model (the format id,
model.onnx and its variants, attention.onnx, the inspection graphs inspect.onnx and lens.onnx, card.json);
`read_log` and `LogReader` (a run's log read incrementally, as a watcher needs it); summaries of runs,
exported models and scaling sweeps for pickers and tables; and `shown_path` / `scrub_paths`, which turn
this server's absolute paths into the short names a visitor or a shared card should see. Read without
torch.

Deliberately not here: writing any of these (the trainer, the exporter and the sweep do), loading
weights.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# where training runs and exported models live; a deployment (or a test's server) may point elsewhere
RUNS_ENV, EXPORTED_ENV, SWEEPS_ENV = "LLM_PLAYGROUND_RUNS", "LLM_PLAYGROUND_EXPORTED", "LLM_PLAYGROUND_SWEEPS"
RUNS_DIR = Path(os.environ.get(RUNS_ENV) or ROOT / "runs")
EXPORTED_DIR = Path(os.environ.get(EXPORTED_ENV) or ROOT / "exported")
# the project's own scaling sweeps (committed records); a user's sweeps live under RUNS_DIR/sweeps
SWEEPS_DIR = Path(os.environ.get(SWEEPS_ENV) or ROOT / "sweeps")

# a run directory
RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
REWARD_HEAD_KEY = "reward_head.weight"   # a reward model's scalar head, in its checkpoints (core.posttrain)
VALUE_HEAD_KEY = "value_head.weight"     # PPO's value head on the policy's trunk, in its checkpoints
POSTTRAIN_DATA_FILE = "data.jsonl"       # a post-training run's examples, the held-out ones last
_STEP_FILE = re.compile(r"^step_(\d{8})\.safetensors$")

# a sweep: records/NAME.json per finished run, all of them in records.json, the fits beside them
SWEEP_RECORDS_DIR = "records"
RECORDS_FILE = "records.json"
FITS_FILE = "fits.json"

# an exported model directory
FORMAT = "llm-playground-onnx/1"
MODEL_FILE = "model.onnx"
VARIANT_FILES = {"fp32": MODEL_FILE, "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
ATTENTION_FILE = "attention.onnx"
# the interpretability graphs (`core.interpret`): inspect.onnx runs the explicit path with edits (each head's
# output z and the residual stream entering each block blended with given values) and returns the residual
# stream at 2L + 1 points and every head's z; lens.onnx maps residual rows through the final norm and the
# unembedding to the top tokens and the logits of chosen ones, never a whole (rows, vocab) matrix
INSPECT_FILE = "inspect.onnx"
INSPECT_INPUTS = ("input_ids", "head_mix", "head_value", "resid_mix", "resid_value")
INSPECT_OUTPUTS = ("resid", "head_z")
LENS_FILE = "lens.onnx"
LENS_INPUTS = ("resid", "targets")
LENS_OUTPUTS = ("top_ids", "top_logprobs", "target_logits", "target_logprobs", "entropy")
INSPECTION_CARD_KEY = "inspection"      # the card's entry: its presence says the two graphs were exported
EXTERNAL_DATA_SUFFIX = ".data"    # a large graph keeps its weights in FILE + ".data" beside it
CARD_FILE = "card.json"
MODEL_CHECKPOINT_DIR = "checkpoints"      # earlier checkpoints exported beside a model, step_NNNNNNNN/
_MODEL_STEP_DIR = re.compile(r"^step_(\d{8})$")


# model.onnx's KV-cache layouts: "shared" takes one preallocated buffer per layer's keys and values and
# writes each call's positions into it in place (the `past_length` input says where; onnxruntime's
# GroupQueryAttention), "concat" is plain ONNX that returns past and new positions concatenated (a copy
# of the whole cache every step, but any runtime runs it). Old exports are all "concat".
KV_LAYOUTS = ("shared", "concat")
PAST_LENGTH = "past_length"


def cache_names(n_layer: int, prefix: str = "past_key_values") -> list[str]:
    """model.onnx's KV-cache inputs (`past_key_values`) or outputs (`present`): {prefix}.{i}.key|value."""
    return [f"{prefix}.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]


def graph_bytes(path: str | os.PathLike) -> int:
    """A graph's size on disk: the file and its external data, if any."""
    path = Path(path)
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


@dataclass(frozen=True)
class RunSummary:
    name: str
    path: Path
    step: int                       # the newest training step in the log (0 before the first)
    checkpoint_step: int            # newest checkpoint's step (0 if none)
    val_loss: float | None          # last eval in the log
    val_bits_per_byte: float | None


@dataclass(frozen=True)
class ModelSummary:
    name: str
    path: Path
    parameters: int | None
    tokenizer: str | None
    val_loss: float | None
    objective: str = "next-token"   # "mlm": a masked LM (fills blanks, writes nothing left to right)


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


def checkpoint_file(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a run keeps the checkpoint of `step` (what `checkpoint_steps` finds again)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.safetensors"


def checkpoint_steps(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file of a run, oldest first; temp files are ignored."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_FILE.match(p.name)))


def model_checkpoint_dir(model_dir: str | os.PathLike, step: int) -> Path:
    return Path(model_dir) / MODEL_CHECKPOINT_DIR / f"step_{step:08d}"


def model_checkpoints(model_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, directory) of the earlier checkpoints exported beside a model, oldest first."""
    d = Path(model_dir) / MODEL_CHECKPOINT_DIR
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _MODEL_STEP_DIR.match(p.name)
        if m and (p / CARD_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


class LogReader:
    """A run's log.jsonl read incrementally: each `read()` parses only the lines appended since the last
    one (a watcher polls a long run's log every second), and starts over when the file was rewritten
    (a resume truncates it) or replaced. A line still being written is left for the next read."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOG_FILE
        self._offset, self._ino, self._partial = 0, None, b""
        self.last: dict[str, dict] = {}     # the newest record of each type seen so far

    def read(self) -> tuple[list[dict], bool]:
        """(new records, restarted): restarted means the log was rewritten and the records are all of it."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return [], False
        restarted = self._ino is not None and (st.st_ino != self._ino or st.st_size < self._offset)
        if restarted:
            self._offset, self._partial, self.last = 0, b"", {}
        self._ino = st.st_ino
        if st.st_size == self._offset:
            return [], restarted
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(st.st_size - self._offset)
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue   # a line cut by a kill
            if isinstance(rec, dict):
                out.append(rec)
                self.last[rec.get("type", "")] = rec
        return out, restarted


_readers: dict[str, LogReader] = {}
_readers_lock = threading.Lock()        # one Home render at a time moves the shared readers' offsets


def list_runs(runs_dir: str | os.PathLike | None = None) -> list[RunSummary]:
    """Every run with its progress, from its log (read incrementally: the Home page lists runs on every
    visit, and a long run's log has thousands of lines)."""
    d = Path(runs_dir or RUNS_DIR)
    if not d.is_dir():
        return []
    out = []
    runs = sorted(p for p in d.iterdir() if (p / RUN_FILE).is_file())
    with _readers_lock:
        for run in runs:
            reader = _readers.setdefault(str(run), LogReader(run))
            reader.read()
            last_step = reader.last.get("TrainStep", {}).get("step", 0)
            last_eval = dict(reader.last.get("EvalResult", {}))
            steps = checkpoint_steps(run)
            out.append(RunSummary(run.name, run, last_step, steps[-1][0] if steps else 0,
                                  last_eval.get("val_loss"), last_eval.get("val_bits_per_byte")))
        for gone in [k for k in _readers if Path(k).parent == d and not Path(k).is_dir()]:
            del _readers[gone]              # a removed run: its reader goes too
    return out


def list_exported_models(exported_dir: str | os.PathLike | None = None) -> list[ModelSummary]:
    d = Path(exported_dir or EXPORTED_DIR)
    if not d.is_dir():
        return []
    out = []
    # dot-names are an export being built (renamed into place once complete): never offered
    for model in sorted(p for p in d.iterdir() if not p.name.startswith(".") and (p / CARD_FILE).is_file()):
        try:
            card = json.loads((model / CARD_FILE).read_text(encoding="utf-8"))
        except ValueError:
            continue   # a damaged card: the model is not offered rather than crashing a picker
        out.append(ModelSummary(model.name, model, card.get("parameters", {}).get("total"),
                                card.get("tokenizer", {}).get("name"), card.get("val_loss"),
                                (card.get("model_config") or {}).get("objective", "next-token")))
    return out


def _known_folders() -> list[tuple[str, str]]:
    """This machine's folders and the short names shown for them, most specific first."""
    from core.data import data_dir
    folders = [(RUNS_DIR, "runs"), (EXPORTED_DIR, "exported"), (SWEEPS_DIR, "sweeps"), (data_dir(), "<data>"),
               (ROOT, "."), (Path.home(), "~")]
    out = []
    for folder, short in folders:
        for variant in {str(Path(folder)), str(Path(folder).resolve())}:
            out.append((variant.rstrip(os.sep), short))
    return sorted(out, key=lambda fs: -len(fs[0]))


def shown_path(path: str | os.PathLike) -> str:
    """A path as a visitor or a shared card should see it: under the runs, exported, data or project
    folder it lies in (`runs/NAME`, `<data>/uploads/...`), else its file name alone: never this server's
    absolute layout."""
    shown = scrub_paths(str(path))
    return Path(shown).name if os.path.isabs(shown) else shown


def scrub_paths(text: str) -> str:
    """`text` with this machine's absolute folders replaced by their short names (messages, cards)."""
    for folder, short in _known_folders():
        if folder and folder != os.sep:
            text = re.sub(re.escape(folder) + r"(?=[/\\\s'\":,;)]|$)", lambda m: short, text)
    return text


def fits_path(sweep: str | os.PathLike) -> Path:
    """Where a sweep's scaling fits are stored beside its records: sweeps/NAME.json -> sweeps/NAME.fits.json;
    a sweep directory (or its records.json) -> fits.json in that directory."""
    sweep = Path(sweep)
    if sweep.is_dir():
        return sweep / FITS_FILE
    if sweep.name == RECORDS_FILE:
        return sweep.parent / FITS_FILE
    return sweep.with_name(sweep.name.removesuffix(".json") + ".fits.json")


def is_fits_file(path: str | os.PathLike) -> bool:
    """A stored fits file (what `fits_path` names), not a sweep's records."""
    name = Path(path).name
    return name == FITS_FILE or name.endswith(".fits.json")


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
        out += [SweepSummary(p.stem, p, True) for p in sorted(committed.glob("*.json")) if not is_fits_file(p)]
    mine = Path(runs_dir or RUNS_DIR) / "sweeps"
    if mine.is_dir():
        out += [SweepSummary(p.name, p, False) for p in sorted(mine.iterdir())
                if (p / SWEEP_RECORDS_DIR).is_dir() and any((p / SWEEP_RECORDS_DIR).glob("*.json"))]
    return out
