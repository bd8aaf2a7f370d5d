"""Emergence presets: one click trains a model in which a capability appears abruptly, beside a control in
which it does not, and says where the jump happened.

Holds `PRESETS` (each a task, the run that shows the phenomenon and its control, the signal that marks
the jump, the explanation with its papers), `preset_runs` (the configs a preset starts, named after the
visitor's run name) and `find_emergence` (where, in a run's logged `Measures`, the jump happened: the
marker the Emergence page draws and `bench/emergence.py` prints). The recipes were measured on a 2-core
CPU (../shared/NOTES.md): each jump comes within minutes.

Deliberately not here: the tasks (`core.tasks`), the measures' formulas (`core.measures`), launching and
watching runs (`core.jobs`, the page), torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from core import measures
from core.config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class Signal:
    """What marks the jump in a run's Measures: `measure` falling by `change` within a few evaluations
    (ICL), or reaching `level` (held-out accuracy)."""
    measure: str                         # a Measures field: icl_score | val_accuracy
    label: str                           # how the page names it
    change: float = 0.0                  # a fall of at least this much (nats) within WINDOW evaluations
    level: float = 0.0                   # or the first evaluation at or above this


WINDOW = 5                               # evaluations a jump may take: slower is a drift, not a jump


@dataclass(frozen=True)
class PresetRun:
    role: str                            # "run" | "control"
    label: str                           # e.g. "2 layers" / "1 layer (control)"
    train: TrainConfig
    model: ModelConfig


@dataclass(frozen=True)
class Preset:
    key: str
    title: str
    what: str                            # one paragraph: what the learner is about to watch
    papers: tuple[str, ...]
    runs: tuple[PresetRun, ...]          # the run, then its control
    signal: Signal
    caveat: str = ""                     # e.g. a positional shortcut this task leaves open
    marks: tuple[float, ...] = ()        # further levels of `signal.measure` worth a marker (0.99)


def _induction(offset: str, steps: int, every: int) -> tuple[PresetRun, ...]:
    # Olsson et al.'s smallest setting: attention-only, 2 layers (a previous-token head in layer 0 feeds an
    # induction head in layer 1: K-composition), against 1 layer, which cannot compose
    model = ModelConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_embd=64, mlp="none", tie_embeddings=False)
    train = TrainConfig(task=f"induction:offset={offset}", batch_size=32, max_steps=steps, learning_rate=1e-3,
                        min_lr=1e-3, warmup_steps=0, weight_decay=0.0, eval_interval=every, eval_iters=4,
                        eval_batch_size=64, checkpoint_interval=every, keep_checkpoints=2, milestones=6,
                        threads=1)
    return (PresetRun("run", "2 layers, attention only", train, model),
            PresetRun("control", "1 layer (control: cannot compose heads)", train,
                      dataclasses.replace(model, n_layer=1)))


def _grokking(steps: int, every: int) -> tuple[PresetRun, ...]:
    # Nanda et al. (2023)'s model: 1 layer, no norms, ReLU MLP of 512, initialised at 1/sqrt(n_embd) (at
    # GPT-2's 0.02 it never memorised: train accuracy 0.39 after 6,000 steps); AdamW with strong weight decay
    # (betas 0.9, 0.98). Measured here: train accuracy 0.99 by step ~1,250, held-out 0.95 by ~2,900. No
    # Grokfast: with it (alpha 0.98, lambda 2, init 0.02) even the weight-decay-0 control generalised
    # (held-out 0.91 at step 3,800), and a control that generalises controls nothing
    model = ModelConfig(vocab_size=99, block_size=4, n_layer=1, n_head=4, n_embd=128, mlp="relu", mlp_hidden=512,
                        norm="none", init_std=128 ** -0.5, tie_embeddings=False)
    train = TrainConfig(task="modular-addition:p=97,train_fraction=0.4", batch_size=512, max_steps=steps,
                        learning_rate=1e-3, min_lr=1e-3, warmup_steps=10, weight_decay=1.0, beta1=0.9, beta2=0.98,
                        grad_clip=0.0, eval_interval=every,
                        eval_iters=1, eval_batch_size=4096, checkpoint_interval=every, keep_checkpoints=2,
                        milestones=6, threads=1)
    return (PresetRun("run", "weight decay 1.0", train, model),
            PresetRun("control", "weight decay 0 (control)", dataclasses.replace(train, weight_decay=0.0), model))


PRESETS: dict[str, Preset] = {p.key: p for p in (
    Preset("induction", "Induction heads",
           "Sequences of random tokens that end by repeating an earlier segment (of random length, from a "
           "random place): the first copy cannot be predicted, the repeat can, but only by matching content: a previous-token head in layer 0 writes 'which "
           "token came before me' into each position, and an induction head in layer 1 finds the position "
           "whose predecessor is the current token and copies it. The loss sits at ln(vocabulary), then the "
           "in-context-learning score (loss late in the sequence minus early) drops by nats at once, and both "
           "heads appear together. The 1-layer control cannot compose two heads and never does.",
           ("Olsson et al. 2022, In-context Learning and Induction Heads",
            "Elhage et al. 2021, A Mathematical Framework for Transformer Circuits"),
           _induction("random", 2000, 50), Signal("icl_score", "ICL score", change=2.0)),
    Preset("induction-fixed", "Induction heads, fixed offset (has a shortcut)",
           "Sequences of random tokens that repeat: the first copy cannot be predicted, the second can, by "
           "looking back to where the current token appeared before and copying what came next. The loss "
           "sits at ln(vocabulary) for a while, then the second copy's loss collapses: the in-context-learning "
           "score (loss late in the sequence minus early) drops by several nats at once, within a minute.",
           ("Olsson et al. 2022, In-context Learning and Induction Heads",
            "Elhage et al. 2021, A Mathematical Framework for Transformer Circuits"),
           _induction("fixed", 600, 20), Signal("icl_score", "ICL score", change=2.0),
           caveat="Positional shortcut: the copy is always exactly half a sequence back, so one head that "
                  "always looks that far back solves it without an induction circuit (its 'induction' score "
                  "is high, its previous-token score is not), and the 1-layer control learns it too. The "
                  "other induction preset closes the shortcut."),
    Preset("grokking", "Grokking (modular addition)",
           "a + b mod 97, trained on 40 % of the pairs. The model first memorises them (train accuracy 1, "
           "held-out at chance), then, long after, generalises: held-out accuracy jumps to 1 as weight decay "
           "shrinks the memorising weights and a circuit of a few Fourier frequencies takes over. The "
           "embedding's spectrum shows those frequencies appear. Without weight decay the model stays a "
           "memoriser. (Grokfast, `--grokfast-alpha 0.98` of `python -m core.train`, amplifies the slow "
           "gradients and makes the jump come sooner, but here it made even the weight-decay-0 control "
           "generalise, so the preset trains without it.)",
           ("Power et al. 2022, Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets",
            "Nanda et al. 2023, Progress Measures for Grokking via Mechanistic Interpretability",
            "Lee et al. 2024, Grokfast: Accelerated Grokking by Amplifying Slow Gradients"),
           _grokking(4000, 100), Signal("val_accuracy", "held-out accuracy", level=0.95), marks=(0.99,)),
)}


def preset_runs(key: str, name: str, with_control: bool = True) -> list[tuple[str, TrainConfig, ModelConfig]]:
    """The (run name, TrainConfig, ModelConfig) a preset starts: `name`, and `name`-control beside it."""
    preset = PRESETS[key]
    chosen = [r for r in preset.runs if with_control or r.role == "run"]
    return [(name if r.role == "run" else f"{name}-control", r.train, r.model) for r in chosen]


@dataclass(frozen=True)
class Emergence:
    """Where a run's signal jumped (None: not, or not yet), and the levels of `Preset.marks` it reached."""
    step: int | None
    start_step: int | None
    before: float | None
    after: float | None
    marks: dict[float, int | None]


def find_emergence(preset: Preset, records: list[dict]) -> Emergence:
    """The jump in a run's Measures records (dicts, as logged), by the preset's signal."""
    rows = [r for r in records if r.get("type", "Measures") == "Measures"]
    steps = [r["step"] for r in rows]
    values = [r.get(preset.signal.measure) for r in rows]
    values = [v if v is not None and math.isfinite(v) else math.nan for v in values]
    sig = preset.signal
    marks = {level: measures.first_reaching(steps, values, level) for level in preset.marks}
    if sig.change:
        j = measures.jump(steps, values, sig.change, WINDOW, direction=-1)
        return Emergence(j and j.step, j and j.start_step, j and j.before, j and j.after, marks)
    step = measures.first_reaching(steps, values, sig.level)
    at = values[steps.index(step)] if step is not None else None
    return Emergence(step, step, None, at, marks)
