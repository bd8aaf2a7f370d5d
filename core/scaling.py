"""Scaling laws: fit how loss falls with parameters N, data D and compute C, on the user's own runs.

Holds the record of one finished sweep run (`RunRecord`), the fits and what they predict:

- Kaplan-style single-variable laws L(x) = E + A / x^alpha for x = N, D or C (`fit_power_law`;
  E = 0 gives Kaplan's pure form (x_c / x)^alpha), fitted on the envelope of the runs (the best loss
  at each N, each D, and the compute frontier), as Kaplan et al. 2020 do.
- Chinchilla's parametric law L(N, D) = E + A / N^alpha + B / D^beta (`fit_chinchilla`), fitted as
  Hoffmann et al. 2022 (appendix D.2) do: Huber loss (delta = 1e-3) on log loss, the law written as a
  log-sum-exp, L-BFGS from the best points of a grid of starts; bootstrap intervals over runs.
- The same law by variable projection (`fit_vpnls`): a grid over the two exponents, E, A, B by
  non-negative least squares at each point, then a local refinement; free of the parabolas' bias.
- The IsoFLOP method (`fit_isoflop`): at each compute budget a parabola of loss against log N, its
  minimum N_opt, then N_opt ~ C^a and D_opt ~ C^b across budgets; when a budget's parabola would
  misplace N_opt (`parabola_bias`, `parabola_warnings`).
- What "about 20 tokens per parameter" depends on (`tokens_per_parameter`): the ratio the fits imply
  under each way of counting N, beside the published ratios (`PUBLISHED_RATIOS`).
- Compute-optimal allocation for a budget (`allocate`), with C = 6ND or with the exact FLOPs per
  token of the swept shapes (`FlopsPerToken`, read from the records the trainer wrote).
- The published fits (`PUBLISHED`: Kaplan 2020, Hoffmann 2022, Besiroglu et al. 2024) as references.
- A held-out check (`held_out_check`): fit on the cheaper runs, predict the most expensive ones.
- What a page shows beside the fits and must not decide itself: the bootstrap interval of a predicted
  loss (`ChinchillaLaw.loss_interval`), when a law's exponent is too loose to read (`PowerLaw.loose`),
  the loss window a band is clipped to (`loss_window`), runs grouped by budget (`runs_by_budget`), the
  sweep's totals and training speed (`sweep_totals`).
- Stored fits: every report round-trips through JSON exactly (`to_dict` / `from_dict`). `fit_sweep`
  fits a sweep for both ways of counting N and stores the result beside its records (`fits_path`:
  sweeps/NAME.json -> sweeps/NAME.fits.json, runs/sweeps/NAME/ -> runs/sweeps/NAME/fits.json), tagged
  with the sha256 of the records (`records_digest`); `load_fits` tells current, stale (the records
  changed) and absent apart. `python -m core.scaling fit PATH` refits by hand; the sweep runs the same
  when it finishes, and the pages run it as a child process when the stored fits are stale.

Also `fit_in_background`: at most one child `python -m core.scaling fit` per sweep and set of records, for
a server whose pages only read stored fits (nobody waits behind a fit).

Deliberately not here: running the sweep (`core.sweep`, which needs torch), FLOP counting of a model
shape (`core.config.flops_per_token`; the records carry its result), plotting and saying what a page
shows while a fit runs (the Scaling page and `playground.shared`).
numpy and scipy only, never torch: the Scaling page runs on a hosted demo without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy.optimize import least_squares, minimize, minimize_scalar, nnls

from core import cli
from core.catalog import ROOT, SWEEP_RECORDS_DIR, fits_path, scrub_paths
from core.checks import PlaygroundError
from core.files import write_atomic

HUBER_DELTA = 1e-3          # Hoffmann et al. 2022, D.2: robust to the few runs that went wrong
BOOT_MAXITER = 300          # a resample starts next to the full fit's optimum: it converges in far fewer steps
TOKENS_PER_PARAMETER = 20   # Chinchilla's rule of thumb at the compute-optimal point
PF_DAY = 1e15 * 24 * 3600   # FLOPs in one petaflop/s-day (Kaplan's unit of compute)
N_BOOTSTRAP = 200           # resamples behind every stored fit's intervals and bands
N_KINDS = ("total", "non_embedding")    # the two ways of counting N a stored fit holds
FITS_FORMAT = 2             # bump when a stored report's layout changes: older files then read as stale
                            # (2: the VPNLS fit of L(N, D) beside the L-BFGS one)


class ScalingError(PlaygroundError):
    """The runs cannot support the fit asked for; the message says what to add or change."""


# ---------------------------------------------------------------------------------------------------
# Records

@dataclass(frozen=True)
class RunRecord:
    """One finished training run of a sweep: what was trained, on how much, and how well it did."""
    name: str
    n_params: int               # N, all parameters (Chinchilla counts these)
    n_non_embedding: int        # N without embeddings (Kaplan counts these)
    tokens: int                 # D, training tokens seen
    flops: float                # C, training FLOPs: exact FLOPs per token x tokens
    flops_per_token: float      # from core.model.flops_per_token at the run's shape and context
    train_loss: float
    val_loss: float             # nats per token on the held-out split, at the end of the run
    val_bits_per_byte: float
    wall_s: float               # seconds of training, evals excluded
    shape: dict = field(default_factory=dict)   # n_layer, n_head, n_embd, block_size, vocab_size
    budget: float | None = None                 # the IsoFLOP budget the run belongs to, if any
    sweep: str = ""                             # which sweep it came from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"name", "n_params", "n_non_embedding", "tokens", "flops", "val_loss"} - set(d)
        if missing:
            raise ScalingError(f"run record {d.get('name', '?')!r} lacks {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def params(self, kind: str = "total") -> int:
        return self.n_non_embedding if kind == "non_embedding" else self.n_params


def load_records(path: str | Path) -> list[RunRecord]:
    """Records from a sweep directory (one JSON per run under records/), a records file (a JSON list)
    or a single record file. Damaged files are skipped, not fatal: a sweep may be running."""
    path = Path(path)
    if path.is_dir():
        files = sorted((path / SWEEP_RECORDS_DIR).glob("*.json")) if (path / SWEEP_RECORDS_DIR).is_dir() else []
        out = []
        for f in files:
            try:
                out.append(RunRecord.from_dict(json.loads(f.read_text())))
            except (ValueError, TypeError, OSError):
                continue
        return out
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ScalingError(f"cannot read sweep records from {path}: {e}") from None
    items = data if isinstance(data, list) else data.get("records", [data])
    return [RunRecord.from_dict(d) for d in items]


def check_records(records: Sequence[RunRecord]) -> None:
    """Every N, D, C and loss must be positive and finite: a log of anything else is meaningless."""
    for r in records:
        for name in ("n_params", "n_non_embedding", "tokens", "flops", "val_loss"):
            v = getattr(r, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ScalingError(f"run {r.name!r} has {name} = {v!r}; every N, D, C and loss must be a "
                                   f"positive finite number (remove or re-run that run)")


# ---------------------------------------------------------------------------------------------------
# The fitting engine: Huber loss on log loss, L-BFGS from the best points of a grid

def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber values and derivatives of residuals r."""
    a = np.abs(r)
    value = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    return value, np.clip(r, -delta, delta)


def _lse_terms(theta: np.ndarray, X: np.ndarray, with_e: bool) -> tuple[np.ndarray, np.ndarray]:
    """log of sum_i exp(a_i - alpha_i * X_i) [+ exp(e)] and its gradient w.r.t. theta.

    theta = (a_1, alpha_1, ..., a_k, alpha_k[, e]); X has shape (n, k) of log inputs.
    """
    k = X.shape[1]
    a, alpha = theta[0:2 * k:2], theta[1:2 * k:2]
    terms = a[None, :] - alpha[None, :] * X                         # (n, k)
    if with_e:
        terms = np.concatenate([terms, np.full((X.shape[0], 1), theta[-1])], axis=1)
    m = terms.max(axis=1, keepdims=True)
    w = np.exp(terms - m)
    s = w.sum(axis=1, keepdims=True)
    pred = (m + np.log(s))[:, 0]
    p = w / s                                                        # softmax weights, (n, k[+1])
    grad = np.empty((X.shape[0], theta.size))
    grad[:, 0:2 * k:2] = p[:, :k]
    grad[:, 1:2 * k:2] = -p[:, :k] * X
    if with_e:
        grad[:, -1] = p[:, -1]
    return pred, grad


def _fit_lse(X: np.ndarray, log_y: np.ndarray, with_e: bool, starts: np.ndarray,
             delta: float = HUBER_DELTA, n_best: int = 6, maxiter: int = 2000) -> tuple[np.ndarray, float]:
    """Minimise sum Huber(LSE(theta; X) - log y) over theta, from the n_best grid starts."""

    def objective(theta):
        pred, grad = _lse_terms(theta, X, with_e)
        value, d = _huber(pred - log_y, delta)
        return float(value.sum()), grad.T @ d

    scores = _grid_scores(starts, X, log_y, with_e, delta)
    best_theta, best_value = None, math.inf
    for i in np.argsort(scores)[:n_best]:
        res = minimize(objective, starts[i], jac=True, method="L-BFGS-B",
                       options={"maxiter": maxiter, "gtol": 1e-12, "ftol": 1e-15})
        if np.all(np.isfinite(res.x)) and res.fun < best_value:
            best_theta, best_value = res.x, float(res.fun)
    if best_theta is None:
        raise ScalingError("the fit did not converge from any starting point; the runs may be too noisy")
    return best_theta, best_value


def _grid_scores(starts: np.ndarray, X: np.ndarray, log_y: np.ndarray, with_e: bool,
                 delta: float) -> np.ndarray:
    """The objective at every starting point at once (the grid has thousands of points)."""
    k = X.shape[1]
    a, alpha = starts[:, 0:2 * k:2], starts[:, 1:2 * k:2]                 # (S, k)
    terms = a[:, None, :] - alpha[:, None, :] * X[None, :, :]              # (S, n, k)
    if with_e:
        e = np.broadcast_to(starts[:, None, -1:], (starts.shape[0], X.shape[0], 1))
        terms = np.concatenate([terms, e], axis=2)
    m = terms.max(axis=2)
    pred = m + np.log(np.exp(terms - m[:, :, None]).sum(axis=2))           # (S, n)
    value, _ = _huber(pred - log_y[None, :], delta)
    return value.sum(axis=1)


def _best_starts(starts: np.ndarray, X: np.ndarray, log_y: np.ndarray, with_e: bool,
                 count: int = 16) -> np.ndarray:
    scores = _grid_scores(starts, X, log_y, with_e, HUBER_DELTA)
    return starts[np.argsort(scores)[:count]]


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


# JSON keeps floats exactly (shortest repr) but has no tuples: these put them back, so that a stored
# report compares equal to the fresh one it was made from.

def _intervals_out(intervals: dict) -> dict:
    return {k: [float(lo), float(hi)] for k, (lo, hi) in intervals.items()}


def _intervals_in(d: dict) -> dict:
    return {k: (lo, hi) for k, (lo, hi) in d.items()}


def _rows_out(rows) -> list:
    return [[v if isinstance(v, (str, int)) else float(v) for v in row] for row in rows]


def _rows_in(rows) -> tuple:
    return tuple(tuple(row) for row in rows)


# ---------------------------------------------------------------------------------------------------
# Kaplan-style single-variable laws

@dataclass(frozen=True)
class PowerLaw:
    """L(x) = E + A / x^alpha, with a bootstrap interval per parameter."""
    variable: str               # "N", "N (non-embedding)", "D" or "C"
    E: float
    A: float
    alpha: float
    n_points: int
    intervals: dict = field(default_factory=dict)   # name -> (lo, hi) at `level`
    level: float = 0.9
    source: str = "fit"
    samples: tuple = ()         # bootstrap (E, A, alpha) triples, for confidence bands

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return self.E + self.A * x ** (-self.alpha)

    def band(self, x, within: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The bootstrap band of the curve at x (the law itself where there are no samples), clipped to
        `within` (see `loss_window`) when given: a loose fit's band can span decades."""
        x = np.asarray(x, dtype=float)
        if not self.samples:
            lo, hi = self.predict(x), self.predict(x)
        else:
            s = np.array(self.samples)
            curves = s[:, 0:1] + s[:, 1:2] * x[None, :] ** (-s[:, 2:3])
            lo, hi = np.percentile(curves, [50 * (1 - self.level), 50 * (1 + self.level)], axis=0)
        if within is not None:
            lo, hi = np.clip(lo, *within), np.clip(hi, *within)
        return lo, hi

    @property
    def loose(self) -> bool:
        """The runs do not pin the exponent down: its interval reaches 0, or past 3x the estimate. On an
        envelope this means the other variable limits the loss (large models that saw few tokens)."""
        ci = self.intervals.get("alpha")
        return bool(ci) and (ci[0] <= 0 or ci[1] > 3 * self.alpha)

    @property
    def x_c(self) -> float:
        """Kaplan's scale: A / x^alpha = (x_c / x)^alpha."""
        return self.A ** (1 / self.alpha) if self.alpha > 0 else math.inf

    def describe(self) -> str:
        e = f"{self.E:.3g} + " if self.E else ""
        return f"L({self.variable}) = {e}{self.A:.3g} / {self.variable}^{self.alpha:.3f}"

    def to_dict(self) -> dict:
        return {"variable": self.variable, "E": self.E, "A": self.A, "alpha": self.alpha,
                "n_points": self.n_points, "intervals": _intervals_out(self.intervals), "level": self.level,
                "source": self.source, "samples": _rows_out(self.samples)}

    @classmethod
    def from_dict(cls, d: dict) -> "PowerLaw":
        return cls(d["variable"], d["E"], d["A"], d["alpha"], d["n_points"], _intervals_in(d["intervals"]),
                   d["level"], d["source"], _rows_in(d["samples"]))


def fit_power_law(x: Sequence[float], loss: Sequence[float], variable: str = "x",
                  irreducible: bool = True, n_bootstrap: int = 200, level: float = 0.9,
                  seed: int = 0) -> PowerLaw:
    """Fit L = E + A / x^alpha (E >= 0 when `irreducible`, else E = 0) by Huber on log loss."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(loss, dtype=float)
    _check_xy(x, y, variable, need=3 if irreducible else 2)
    X = np.log(x)[:, None]
    log_y = np.log(y)
    starts = _grid(irreducible, k=1)
    theta, _ = _fit_lse(X, log_y, irreducible, starts)
    law = _power_law_from(theta, variable, irreducible, len(x))
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        boot_starts = np.vstack([theta, _best_starts(starts, X, log_y, irreducible)])
        samples = []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, len(x), len(x))
            if len(np.unique(x[idx])) < (3 if irreducible else 2):
                continue
            t, _ = _fit_lse(X[idx], log_y[idx], irreducible, boot_starts, n_best=1, maxiter=BOOT_MAXITER)
            if np.max(t[0::2]) > 700:      # a resample that ran off (exp overflows): no law to keep
                continue
            b = _power_law_from(t, variable, irreducible, len(x))
            samples.append((b.E, b.A, b.alpha))
        if samples:
            s = np.array(samples)
            law = dataclasses.replace(law, level=level, samples=tuple(map(tuple, s)), intervals={
                "E": _interval(s[:, 0], level), "A": _interval(s[:, 1], level),
                "alpha": _interval(s[:, 2], level)})
    return law


def _power_law_from(theta, variable, irreducible, n) -> PowerLaw:
    return PowerLaw(variable, float(math.exp(theta[2])) if irreducible else 0.0,
                    float(math.exp(theta[0])), float(theta[1]), n)


def _grid(with_e: bool, k: int) -> np.ndarray:
    """Starting points: a_i in 0..25 by 5, alpha_i in 0..2 by 0.5, e in -1..1 by 0.5 (Hoffmann D.2)."""
    a = np.arange(0.0, 26.0, 5.0)
    alpha = np.arange(0.0, 2.01, 0.5)
    e = np.arange(-1.0, 1.01, 0.5)
    axes = [a, alpha] * k + ([e] if with_e else [])
    return np.array(list(itertools.product(*axes)))


def _check_xy(x: np.ndarray, y: np.ndarray, variable: str, need: int) -> None:
    if x.shape != y.shape or x.ndim != 1:
        raise ScalingError(f"{variable} and loss must be two lists of the same length")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ScalingError(f"{variable} and loss must be positive finite numbers")
    distinct = len(np.unique(x))
    if distinct < need:
        raise ScalingError(f"a law in {variable} needs runs at {need} or more distinct values of "
                           f"{variable}; these runs have {distinct}. Add runs at other sizes.")


def envelope(records: Sequence[RunRecord], by: str, n_kind: str = "total") -> tuple[np.ndarray, np.ndarray]:
    """The best loss at each value of `by` ("N" or "D"), or the compute frontier ("C": runs that beat
    every cheaper run). These are the points Kaplan's single-variable laws describe."""
    if by == "C":
        ordered = sorted(records, key=lambda r: r.flops)
        xs, ys, best = [], [], math.inf
        for r in ordered:
            if r.val_loss < best:
                best = r.val_loss
                xs.append(r.flops)
                ys.append(r.val_loss)
        return np.array(xs), np.array(ys)
    key = (lambda r: r.params(n_kind)) if by == "N" else (lambda r: r.tokens)
    best: dict[float, float] = {}
    for r in records:
        best[key(r)] = min(best.get(key(r), math.inf), r.val_loss)
    xs = np.array(sorted(best))
    return xs, np.array([best[x] for x in xs])


# ---------------------------------------------------------------------------------------------------
# Chinchilla's parametric law

@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    n_points: int = 0
    intervals: dict = field(default_factory=dict)
    level: float = 0.9
    source: str = "fit"
    n_kind: str = "total"
    samples: tuple = ()         # bootstrap (E, A, B, alpha, beta) tuples
    method: str = "huber-lbfgs"     # how it was fitted: "huber-lbfgs" (fit_chinchilla) or "vpnls" (fit_vpnls)

    def bootstrap_laws(self) -> list["ChinchillaLaw"]:
        return [ChinchillaLaw(*t[:5]) for t in self.samples]

    def loss_interval(self, compute: float, flops_per_token: Callable[[float], float] | None = None,
                      draws: int = 100) -> tuple[float, float] | None:
        """The bootstrap interval (at `level`) of the loss predicted at this budget's compute-optimal
        point: each of the first `draws` bootstrap laws allocates the budget itself. Laws whose exponents
        are not positive have no optimum and are left out; None without bootstrap laws."""
        spread = [allocate(b, compute, flops_per_token).loss for b in self.bootstrap_laws()[:draws]
                  if b.alpha > 0 and b.beta > 0]
        return _interval(np.array(spread), self.level) if spread else None

    def predict(self, n, d) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        d = np.asarray(d, dtype=float)
        return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)

    @property
    def a(self) -> float:
        """N_opt ~ C^a at the compute optimum (C = 6ND)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ~ C^b; a + b = 1."""
        return self.alpha / (self.alpha + self.beta)

    def describe(self) -> str:
        return (f"L(N, D) = {self.E:.3g} + {self.A:.4g} / N^{self.alpha:.3f} + "
                f"{self.B:.4g} / D^{self.beta:.3f}")

    def to_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
                "n_points": self.n_points, "intervals": _intervals_out(self.intervals), "level": self.level,
                "source": self.source, "n_kind": self.n_kind, "samples": _rows_out(self.samples), "method": self.method}

    @classmethod
    def from_dict(cls, d: dict) -> "ChinchillaLaw":
        return cls(d["E"], d["A"], d["B"], d["alpha"], d["beta"], d["n_points"], _intervals_in(d["intervals"]),
                   d["level"], d["source"], d["n_kind"], _rows_in(d["samples"]), d.get("method", "huber-lbfgs"))


def fit_chinchilla(records: Sequence[RunRecord], n_kind: str = "total", n_bootstrap: int = 200,
                   level: float = 0.9, seed: int = 0) -> ChinchillaLaw:
    """Hoffmann et al.'s approach 3 on these runs, with bootstrap intervals (resampling runs)."""
    N, D, y, design = _law_data(records, n_kind)
    X = np.log(np.stack([N, D], axis=1))
    starts = _grid(True, k=2)
    theta, _ = _fit_lse(X, np.log(y), True, starts)
    law = _chinchilla_from(theta, len(records), n_kind)
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        boot_starts = np.vstack([theta, _best_starts(starts, X, np.log(y), True)])
        samples = []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, len(records), len(records))
            if np.linalg.matrix_rank(design[idx], tol=1e-6) < 3:
                continue
            t, _ = _fit_lse(X[idx], np.log(y[idx]), True, boot_starts, n_best=1, maxiter=BOOT_MAXITER)
            if max(t[0], t[2], t[4]) > 700:    # a resample that ran off (exp overflows): no law to keep
                continue
            b = _chinchilla_from(t, len(records), n_kind)
            samples.append((b.E, b.A, b.B, b.alpha, b.beta, b.a, b.b))
        law = _with_samples(law, samples, level)
    return law


def _law_data(records: Sequence[RunRecord], n_kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """N, D and loss of every run, and the design [1, ln N, ln D] whose rank says whether N and D can be
    told apart; raises with what to add when the runs cannot support an L(N, D) fit."""
    check_records(records)
    if len(records) < 5:
        raise ScalingError(f"the L(N, D) law has 5 parameters and needs at least 5 runs (better 15+); "
                           f"there are {len(records)}. Let the sweep finish more runs.")
    N = np.array([r.params(n_kind) for r in records], dtype=float)
    D = np.array([r.tokens for r in records], dtype=float)
    y = np.array([r.val_loss for r in records], dtype=float)
    for name, col in (("model sizes", N), ("token counts", D)):
        if len(np.unique(col)) < 2:
            raise ScalingError(f"all runs share the same {name[:-1]}: L(N, D) needs at least 2 distinct "
                               f"{name}. Add runs that vary it.")
    design = np.column_stack([np.ones(len(N)), np.log(N), np.log(D)])
    if np.linalg.matrix_rank(design, tol=1e-6) < 3:
        raise ScalingError("N and D move together in every run (D is a fixed multiple of a power of N), so "
                           "their effects cannot be told apart: add runs with a different D at the same N "
                           "(a grid, or several IsoFLOP budgets).")
    return N, D, y, design


def _with_samples(law: ChinchillaLaw, samples: list, level: float) -> ChinchillaLaw:
    """The law with its bootstrap samples (E, A, B, alpha, beta, a, b) and an interval for each."""
    if not samples:
        return law
    s = np.array(samples)
    names = ("E", "A", "B", "alpha", "beta", "a", "b")
    return dataclasses.replace(law, level=level, samples=tuple(map(tuple, s[:, :5])),
                               intervals={n: _interval(s[:, i], level) for i, n in enumerate(names)})


def _chinchilla_from(theta, n, n_kind) -> ChinchillaLaw:
    return ChinchillaLaw(E=float(math.exp(theta[4])), A=float(math.exp(theta[0])),
                         B=float(math.exp(theta[2])), alpha=float(theta[1]), beta=float(theta[3]),
                         n_points=n, n_kind=n_kind)


# ---------------------------------------------------------------------------------------------------
# The same law by variable projection (VPNLS): no IsoFLOP parabolas, no start-point lottery
#
# With the exponents fixed, L = E + A N^-alpha + B D^-beta is linear in (E, A, B): the best E, A, B >= 0
# at any (alpha, beta) is one small non-negative least-squares solve. So the five-parameter fit becomes a
# search over two exponents (a grid, then a local refinement), each point profiled over the other three.
# Residuals are on the loss itself, not its log: only there is the inner problem linear, which is the
# whole point (on log loss it would be a nonlinear fit again). The losses of one sweep span a factor of
# about 2, so loss and log-loss residuals weigh the runs nearly alike. Plain squares, not Huber: the
# inner solve must stay a linear one. The motivation is Open-Athena's write-up (2026) on the bias of the
# IsoFLOP parabolas: fit the surface, not one parabola per budget.

VPNLS_EXPONENTS = (0.02, 2.0)   # where alpha and beta are searched: past 2 a term vanishes within any sweep
VPNLS_GRID = 40                 # grid points per exponent before the local refinement (1,600 NNLS solves, ~30 ms)


def _vpnls_solve(logN: np.ndarray, logD: np.ndarray, y: np.ndarray, alpha: float,
                 beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(E, A, B) >= 0 minimising the squared loss residuals at these exponents, and the residuals."""
    X = np.column_stack([np.ones_like(y), np.exp(-alpha * logN), np.exp(-beta * logD)])    # (n, 3)
    scale = np.linalg.norm(X, axis=0)           # N^-alpha can be 1e-9: equilibrate the columns for NNLS
    c, _ = nnls(X / scale, y)
    c = c / scale
    return c, y - X @ c


def _vpnls_refine(logN, logD, y, start) -> np.ndarray:
    """Local refinement of (alpha, beta) from a grid point: the projected residuals are a smooth function of
    the two exponents wherever the NNLS active set does not change, so a bounded trust-region solve fits."""
    lo, hi = VPNLS_EXPONENTS
    res = least_squares(lambda p: _vpnls_solve(logN, logD, y, p[0], p[1])[1], np.clip(start, lo, hi),
                        bounds=([lo, lo], [hi, hi]), xtol=1e-13, ftol=1e-15, gtol=1e-15, max_nfev=400)
    return res.x


def _vpnls_point(logN, logD, y, grid: bool, start=None) -> np.ndarray:
    """(E, A, B, alpha, beta): the best grid point (when `grid`, else `start`), refined."""
    if grid:
        axis = np.linspace(*VPNLS_EXPONENTS, VPNLS_GRID)
        sse = np.array([[float(np.sum(_vpnls_solve(logN, logD, y, a, b)[1] ** 2)) for b in axis] for a in axis])
        i, j = np.unravel_index(np.argmin(sse), sse.shape)
        start = np.array([axis[i], axis[j]])
    alpha, beta = _vpnls_refine(logN, logD, y, start)
    E, A, B = _vpnls_solve(logN, logD, y, alpha, beta)[0]
    return np.array([E, A, B, alpha, beta])


def fit_vpnls(records: Sequence[RunRecord], n_kind: str = "total", n_bootstrap: int = 200,
              level: float = 0.9, seed: int = 0) -> ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta by variable projection (see above), with bootstrap intervals
    (resampling runs; each resample is refined from the full fit's exponents, not re-gridded)."""
    N, D, y, design = _law_data(records, n_kind)
    logN, logD = np.log(N), np.log(D)
    E, A, B, alpha, beta = _vpnls_point(logN, logD, y, grid=True)
    for which, coef, exponent, x in (("N", A, alpha, N), ("D", B, beta, D)):
        # how much the term moves the loss across the runs: NNLS leaves a dead term at ~1e-14, not at 0
        if coef * (x.min() ** -exponent - x.max() ** -exponent) <= 1e-6 * float(np.mean(y)):
            raise ScalingError(f"the best non-negative fit has no {which} term: on these runs the loss does not "
                               f"fall with {which}. Add runs that vary {which} more widely.")
    law = ChinchillaLaw(float(E), float(A), float(B), float(alpha), float(beta), n_points=len(records),
                        n_kind=n_kind, method="vpnls")
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, len(records), len(records))
            if np.linalg.matrix_rank(design[idx], tol=1e-6) < 3:
                continue
            t = _vpnls_point(logN[idx], logD[idx], y[idx], grid=False, start=(alpha, beta))
            samples.append((*t, t[4] / (t[3] + t[4]), t[3] / (t[3] + t[4])))
        law = _with_samples(law, samples, level)
    return law


# ---------------------------------------------------------------------------------------------------
# IsoFLOP profiles

@dataclass(frozen=True)
class IsoFlopProfile:
    """One compute budget: its runs, the parabola in log N, and the minimum."""
    budget: float
    n: tuple                    # parameters of each run
    loss: tuple
    coefficients: tuple         # loss = c2 * x^2 + c1 * x + c0, x = ln N
    n_opt: float
    loss_opt: float
    d_opt: float                # tokens the optimum trains on: budget / FLOPs per token at n_opt
    inside: bool                # the minimum lies within the sizes tried (else it is extrapolated)

    def curve(self, n) -> np.ndarray:
        x = np.log(np.asarray(n, dtype=float))
        c2, c1, c0 = self.coefficients
        return c2 * x * x + c1 * x + c0

    def to_dict(self) -> dict:
        return {"budget": self.budget, "n": list(self.n), "loss": list(self.loss),
                "coefficients": list(self.coefficients), "n_opt": self.n_opt, "loss_opt": self.loss_opt,
                "d_opt": self.d_opt, "inside": self.inside}

    @classmethod
    def from_dict(cls, d: dict) -> "IsoFlopProfile":
        return cls(d["budget"], tuple(d["n"]), tuple(d["loss"]), tuple(d["coefficients"]), d["n_opt"],
                   d["loss_opt"], d["d_opt"], d["inside"])


@dataclass(frozen=True)
class IsoFlopFit:
    profiles: tuple             # IsoFlopProfile per budget, ascending
    a: float                    # N_opt = kN * C^a
    b: float                    # D_opt = kD * C^b
    kN: float
    kD: float
    intervals: dict = field(default_factory=dict)
    level: float = 0.9
    notes: tuple = ()           # budgets left out of the exponent fit, and why

    def n_opt(self, c) -> np.ndarray:
        return self.kN * np.asarray(c, dtype=float) ** self.a

    def d_opt(self, c) -> np.ndarray:
        return self.kD * np.asarray(c, dtype=float) ** self.b

    @property
    def minima(self) -> tuple:
        """The profiles whose minimum lies inside the sizes tried: the points the exponents are fitted on."""
        return tuple(p for p in self.profiles if p.inside)

    def to_dict(self) -> dict:
        return {"profiles": [p.to_dict() for p in self.profiles], "a": self.a, "b": self.b, "kN": self.kN,
                "kD": self.kD, "intervals": _intervals_out(self.intervals), "level": self.level,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict) -> "IsoFlopFit":
        return cls(tuple(IsoFlopProfile.from_dict(p) for p in d["profiles"]), d["a"], d["b"], d["kN"], d["kD"],
                   _intervals_in(d["intervals"]), d["level"], tuple(d["notes"]))


def group_by_budget(records: Sequence[RunRecord]) -> dict[float, list[RunRecord]]:
    """Runs of each IsoFLOP budget (the sweep stamps it on every record it plans that way)."""
    groups: dict[float, list[RunRecord]] = {}
    for r in records:
        if r.budget:
            groups.setdefault(float(r.budget), []).append(r)
    return dict(sorted(groups.items()))


def runs_by_budget(records: Sequence[RunRecord]) -> list[tuple[float | None, list[RunRecord]]]:
    """Every run, grouped by its IsoFLOP budget: the grid runs (no budget) first under None, then each
    budget ascending."""
    grid = [r for r in records if not r.budget]
    return ([(None, grid)] if grid else []) + list(group_by_budget(records).items())


def isoflop_profile(budget: float, runs: Sequence[RunRecord], n_kind: str = "total",
                    flops_per_token: Callable[[float], float] | None = None) -> IsoFlopProfile:
    sizes = sorted({r.params(n_kind) for r in runs})
    if len(sizes) < 3:
        raise ScalingError(f"the IsoFLOP budget {budget:.3g} has runs at {len(sizes)} model size(s); a "
                           f"parabola needs 3 or more. Add sizes to the sweep.")
    runs = sorted(runs, key=lambda r: r.params(n_kind))
    x = np.log([r.params(n_kind) for r in runs])
    y = np.array([r.val_loss for r in runs])
    c2, c1, c0 = np.polyfit(x, y, 2)
    if c2 <= 0:
        # No minimum: the loss keeps falling (or rising) across the sizes tried; take the best run.
        i = int(np.argmin(y))
        n_opt, loss_opt, inside = float(math.exp(x[i])), float(y[i]), False
    else:
        x_opt = -c1 / (2 * c2)
        n_opt, loss_opt = float(math.exp(x_opt)), float(c0 - c1 * c1 / (4 * c2))
        inside = bool(x.min() <= x_opt <= x.max())
    fpt = (flops_per_token or FlopsPerToken())(n_opt)
    return IsoFlopProfile(budget, tuple(math.exp(v) for v in x), tuple(y.tolist()),
                          (float(c2), float(c1), float(c0)), n_opt, loss_opt, budget / fpt, inside)


def fit_isoflop(records: Sequence[RunRecord], n_kind: str = "total",
                flops_per_token: Callable[[float], float] | None = None,
                n_bootstrap: int = 200, level: float = 0.9, seed: int = 0) -> IsoFlopFit:
    """Hoffmann et al.'s approach 2: minima of IsoFLOP parabolas, then power laws in C through them.

    Budgets whose minimum falls outside the sizes tried are shown but left out of the exponents.
    """
    check_records(records)
    groups = group_by_budget(records)
    if not groups:
        raise ScalingError("no run belongs to an IsoFLOP budget; run a sweep with --budgets")
    profiles, notes = [], []
    for budget, runs in groups.items():
        try:
            profiles.append(isoflop_profile(budget, runs, n_kind, flops_per_token))
        except ScalingError as e:
            notes.append(str(e))
    good = [p for p in profiles if p.inside]
    notes += [f"budget {p.budget:.3g}: the loss has no minimum inside the sizes tried, so it is left out "
              f"of the exponents (add {'larger' if p.n_opt >= max(p.n) else 'smaller'} models)"
              for p in profiles if not p.inside]
    if len(good) < 2:
        raise ScalingError(f"N_opt ~ C^a needs at least 2 budgets with a minimum inside the sizes tried; "
                           f"there are {len(good)}. " + " ".join(notes))
    logc = np.log([p.budget for p in good])
    a, log_kn = np.polyfit(logc, np.log([p.n_opt for p in good]), 1)
    b, log_kd = np.polyfit(logc, np.log([p.d_opt for p in good]), 1)
    fit = IsoFlopFit(tuple(profiles), float(a), float(b), float(math.exp(log_kn)), float(math.exp(log_kd)),
                     notes=tuple(notes))
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(n_bootstrap):
            opts = []
            for p in good:
                idx = rng.integers(0, len(p.n), len(p.n))
                if len(np.unique(idx)) < 3:
                    continue
                xs, ys = np.log(np.array(p.n)[idx]), np.array(p.loss)[idx]
                c2, c1, _ = np.polyfit(xs, ys, 2)
                if c2 > 0:
                    n_opt = math.exp(-c1 / (2 * c2))
                    fpt = (flops_per_token or FlopsPerToken())(n_opt)
                    opts.append((p.budget, n_opt, p.budget / fpt))
            if len(opts) >= 2:
                o = np.array(opts)
                samples.append((np.polyfit(np.log(o[:, 0]), np.log(o[:, 1]), 1)[0],
                                np.polyfit(np.log(o[:, 0]), np.log(o[:, 2]), 1)[0]))
        if samples:
            s = np.array(samples)
            fit = dataclasses.replace(fit, level=level,
                                      intervals={"a": _interval(s[:, 0], level), "b": _interval(s[:, 1], level)})
    return fit


# When an IsoFLOP parabola misleads. A parabola in ln N is symmetric; the valley it is fitted to is not
# (L = E + A N^-alpha + B (C / 6N)^-beta rises as e^(alpha u) on one side and e^(beta u) on the other, u the
# distance from the optimum in ln N), and it is not a parabola even when alpha = beta. So the fitted
# minimum moves toward the flatter side by an amount that depends on where the sizes tried sit around the
# true optimum. A constant offset at every budget only moves kN; the exponent a goes wrong when the offset
# changes from budget to budget, as it does when the same sizes are tried at every budget (the optimum
# drifts across them). Measured on noiseless synthetic surfaces (`python bench/parabola_bias.py`: 4 budgets
# a decade apart, 7 sizes per budget spanning a factor of 11 in N; errors in a = beta / (alpha + beta)):
#   sizes centred on the optimum at every budget: a off by < 0.001 for every law tried, even alpha 0.2 /
#     beta 0.6, whose parabolas all put N_opt 7 % low: a constant shift only moves kN;
#   the window drifting smoothly to 0.6 of its half-width off the optimum: a off by 0.001-0.003 (each N_opt
#     within 1.5 %) for alpha / beta of 0.34 / 0.28, 0.35 / 0.40, 0.30 / 0.30; 0.013-0.017 for 0.2 / 0.6,
#     whose parabolas misplace N_opt by 6-7 % at the budgets where the offset is small;
#   the same 7 sizes at every budget (the optimum crossing the window): a off by 0.025-0.056 for the
#     first three laws and 0.27 for 0.2 / 0.6; the budgets whose minimum sits within an eighth of the span
#     of an edge put N_opt 13-30 % off, the middle ones 1-2 %.
# With the law known, the misplacement a parabola makes at each budget is predicted exactly (the warned
# budgets in those runs were the ones more than 5 % off, the others 4.3 % or less). Across budgets spanning
# two decades of compute (ln 100 = 4.6), misplacements that differ by 5 % move a by about 0.01.
PARABOLA_EDGE = 0.75        # |position of the minimum| in the sizes' log span, -1 (smallest) .. 1 (largest)
PARABOLA_SHIFT = 0.05       # |ln(parabola N_opt / law N_opt)|: 5 % in N


def parabola_bias(profile: IsoFlopProfile, law: ChinchillaLaw | None = None,
                  flops_per_token: Callable[[float], float] | None = None) -> str | None:
    """Why this budget's parabola would misplace N_opt, or None. From the sizes tried alone: the minimum
    lies outside them or near an edge (the sizes are lopsided around it). With a law of the whole surface
    (the VPNLS fit): the law's own loss at these sizes, fitted by a parabola, misses the law's optimum by
    more than PARABOLA_SHIFT (the valley is lopsided where alpha and beta differ)."""
    x = np.log(np.array(sorted(profile.n), dtype=float))
    x_opt = math.log(profile.n_opt)
    below, above = int(np.sum(x < x_opt)), int(np.sum(x > x_opt))
    if not profile.inside:
        side = "larger" if x_opt > x.max() else "smaller"
        return f"its minimum lies outside the sizes tried (extrapolated): add {side} models"
    position = (x_opt - (x.max() + x.min()) / 2) / ((x.max() - x.min()) / 2)
    if abs(position) > PARABOLA_EDGE:
        side = "largest" if position > 0 else "smallest"
        return (f"its minimum sits near the {side} size tried ({below} sizes below it, {above} above): the "
                f"parabola leans on one side of the valley; centre the sizes on it")
    if law is not None and law.alpha > 0 and law.beta > 0:
        fpt = flops_per_token or FlopsPerToken()
        n = np.exp(x)
        d = np.array([profile.budget / fpt(v) for v in n])
        c2, c1, _ = np.polyfit(x, law.predict(n, d), 2)
        if c2 > 0:
            shift = -c1 / (2 * c2) - math.log(allocate(law, profile.budget, flops_per_token).n)
            if abs(shift) > PARABOLA_SHIFT:
                return (f"on the fitted surface (α {law.alpha:.2f}, β {law.beta:.2f}) a parabola through "
                        f"these sizes puts N_opt {100 * (math.exp(shift) - 1):+.0f} % off the optimum")
    return None


def parabola_warnings(report: "ScalingReport") -> dict[float, str | None]:
    """`parabola_bias` for every IsoFLOP budget whose minimum enters the exponents (`IsoFlopFit.minima`; the
    others are left out with a note already), judged against the report's VPNLS fit (else its L-BFGS one)
    with the sweep's exact FLOPs per token."""
    if report.isoflop is None:
        return {}
    law = report.vpnls or report.chinchilla
    fpt = report.flops_per_token if report.flops_per_token.exact else None
    return {p.budget: parabola_bias(p, law, fpt) for p in report.isoflop.minima}


# ---------------------------------------------------------------------------------------------------
# FLOPs and compute-optimal allocation

class FlopsPerToken:
    """Training FLOPs per token as a function of N, read off the swept shapes' exact counts.

    Between the recorded sizes it interpolates in log-log; beyond them it extends the end segments.
    With no records (or one size) it is Kaplan's 6N.
    """

    def __init__(self, records: Iterable[RunRecord] = (), n_kind: str = "total"):
        pairs = sorted({(r.params(n_kind), r.flops_per_token) for r in records if r.flops_per_token > 0})
        sizes = {}
        for n, f in pairs:
            sizes.setdefault(n, f)
        self.log_n = np.log(np.array(list(sizes), dtype=float))
        self.log_f = np.log(np.array(list(sizes.values()), dtype=float))

    @property
    def exact(self) -> bool:
        return len(self.log_n) >= 2

    def __eq__(self, other) -> bool:
        return (isinstance(other, FlopsPerToken) and np.array_equal(self.log_n, other.log_n)
                and np.array_equal(self.log_f, other.log_f))

    __hash__ = None

    def to_dict(self) -> dict:
        return {"log_n": self.log_n.tolist(), "log_f": self.log_f.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "FlopsPerToken":
        f = cls()
        f.log_n, f.log_f = np.array(d["log_n"], dtype=float), np.array(d["log_f"], dtype=float)
        return f

    def __call__(self, n: float) -> float:
        if not self.exact:
            return 6.0 * n
        x = math.log(n)
        if x <= self.log_n[0]:
            i = 0
        elif x >= self.log_n[-1]:
            i = len(self.log_n) - 2
        else:
            return float(math.exp(np.interp(x, self.log_n, self.log_f)))
        slope = (self.log_f[i + 1] - self.log_f[i]) / (self.log_n[i + 1] - self.log_n[i])
        return float(math.exp(self.log_f[i] + slope * (x - self.log_n[i])))


@dataclass(frozen=True)
class Allocation:
    compute: float
    n: float
    d: float
    loss: float
    rule: str                   # "C = 6ND" or "exact FLOPs per token"

    @property
    def tokens_per_parameter(self) -> float:
        return self.d / self.n


def allocate(law: ChinchillaLaw, compute: float,
             flops_per_token: Callable[[float], float] | None = None) -> Allocation:
    """The N and D that minimise the law's loss at this compute, and that loss.

    With C = 6ND the optimum is closed-form (Hoffmann et al. eq. 4): N_opt = G (C/6)^a,
    D_opt = (C/6)^b / G, G = (alpha A / (beta B))^(1 / (alpha + beta)). With exact FLOPs per token
    f(N) the budget fixes D = C / f(N) and the minimum over N is found numerically.
    """
    if not (isinstance(compute, (int, float)) and math.isfinite(compute) and compute > 0):
        raise ScalingError(f"the compute budget must be a positive number of FLOPs, got {compute!r}")
    if law.alpha <= 0 or law.beta <= 0:
        raise ScalingError("the law's exponents are not positive: loss does not fall with N or D, so "
                           "there is no compute optimum")
    if flops_per_token is None:
        G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
        n = G * (compute / 6) ** law.a
        d = (compute / 6) ** law.b / G
        return Allocation(compute, n, d, float(law.predict(n, d)), "C = 6ND")

    def loss_at(log_n):
        n = math.exp(log_n)
        return float(law.predict(n, compute / flops_per_token(n)))

    res = minimize_scalar(loss_at, bounds=(math.log(10.0), math.log(1e13)), method="bounded",
                          options={"xatol": 1e-6})
    n = math.exp(res.x)
    return Allocation(compute, n, compute / flops_per_token(n), float(res.fun), "exact FLOPs per token")


# ---------------------------------------------------------------------------------------------------
# Published fits (reference curves; their losses are nats per token of their own tokenizers)

@dataclass(frozen=True)
class PublishedFit:
    key: str
    citation: str
    law: ChinchillaLaw | None = None
    kaplan: dict = field(default_factory=dict)   # single-variable laws: name -> PowerLaw
    note: str = ""

    @property
    def a(self) -> float | None:
        return self.law.a if self.law else None


PUBLISHED = {
    "kaplan2020": PublishedFit(
        "kaplan2020", "Kaplan et al. 2020, Scaling Laws for Neural Language Models, arXiv:2001.08361 (eq. 1.1-1.3)",
        kaplan={"N": PowerLaw("N (non-embedding)", 0.0, 8.8e13 ** 0.076, 0.076, 0, source="kaplan2020"),
                "D": PowerLaw("D", 0.0, 5.4e13 ** 0.095, 0.095, 0, source="kaplan2020"),
                "C": PowerLaw("C", 0.0, (3.1e8 * PF_DAY) ** 0.050, 0.050, 0, source="kaplan2020")},
        note="WebText2, GPT-2 BPE; N counts non-embedding parameters; C_min in FLOPs (3.1e8 PF-days); "
             "their allocation was N_opt ~ C^0.73."),
    "hoffmann2022": PublishedFit(
        "hoffmann2022", "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, "
                        "arXiv:2203.15556 (eq. 10, approach 3)",
        law=ChinchillaLaw(1.69, 406.4, 410.7, 0.34, 0.28, source="hoffmann2022"),
        note="MassiveText, SentencePiece; approaches 1 and 2 gave a = 0.50 and 0.49; "
             "about 20 tokens per parameter at the optimum."),
    "besiroglu2024": PublishedFit(
        "besiroglu2024", "Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt, arXiv:2404.10102",
        law=ChinchillaLaw(1.8172, 482.01, 2085.43, 0.3478, 0.3658, source="besiroglu2024"),
        note="refit of Hoffmann's approach 3 on data read off their figure; consistent with approaches 1-2."),
}


# ---------------------------------------------------------------------------------------------------
# What "about 20 tokens per parameter" depends on

N_CONVENTIONS = {"total": "all parameters (Chinchilla)",
                 "non_embedding": "non-embedding (Kaplan; the blocks only: transformer-only)"}
RATIO_BUDGETS = (1e18, 1e20, 1e22, 1e24)     # where the published fits' own ratios are read: their range


@dataclass(frozen=True)
class PublishedRatio:
    """A compute-optimal tokens-per-parameter ratio someone reported, as they reported it."""
    source: str
    n_kind: str                 # what they counted as N, in their words
    low: float
    high: float
    budgets: str                # the compute range it was measured over
    citation: str


PUBLISHED_RATIOS = (
    PublishedRatio("Hoffmann et al. 2022, approaches 1 and 2", "all parameters", 20.0, 20.0,
                   "up to 1e24+ FLOPs (their Table 3)", PUBLISHED["hoffmann2022"].citation),
    PublishedRatio("nanochat (one IsoFLOP sweep)", "all parameters", 3.0, 4.0, "1e18 to 1e19 FLOPs",
                   "Karpathy, nanochat dev/LOG.md, 2026-01-27 (Bigram Hash Embeddings), quadratic fits per budget"),
    PublishedRatio("nanochat (one IsoFLOP sweep)", "non-embedding: every projection incl. lm_head (~10.5)", 10.3,
                   11.2, "1e18 to 1e19 FLOPs", "the same entry: the convention nanochat adopted (~10.5)"),
    PublishedRatio("nanochat (one IsoFLOP sweep)", "transformer-only: the projections inside the blocks", 8.5,
                   17.2, "1e18 to 1e19 FLOPs", "the same entry"),
)


@dataclass(frozen=True)
class RatioRow:
    """One line of the tokens-per-parameter table: D_opt / N_opt at each budget, from a fit or a paper."""
    key: str                    # "sweep:<method>:<n_kind>", a PUBLISHED key, or "reported:<i>" (PUBLISHED_RATIOS)
    source: str
    n_kind: str
    ratios: tuple               # ((compute, D/N), ...) where computed from a law; () for a reported range
    low: float
    high: float
    citation: str = ""


def ratio_budgets(records: Sequence[RunRecord]) -> tuple[float, ...]:
    """Where a sweep's own fits are read: a tenth of its dearest run's compute, that run's, and 10x and
    100x beyond (its cheapest budgets' optima tend to lie below the sizes tried, where the exact FLOPs per
    token are extrapolated)."""
    hi = max(r.flops for r in records)
    return (hi / 10, hi, 10 * hi, 100 * hi)


def _ratio_row(key: str, source: str, n_kind: str, law: ChinchillaLaw, budgets: Sequence[float],
               flops_per_token: Callable[[float], float] | None, citation: str = "") -> RatioRow:
    ratios = tuple((c, allocate(law, c, flops_per_token).tokens_per_parameter) for c in budgets)
    values = [r for _, r in ratios]
    return RatioRow(key, source, n_kind, ratios, min(values), max(values), citation)


def tokens_per_parameter(reports: dict, budgets: Sequence[float] | None = None,
                         exact: bool = True) -> list[RatioRow]:
    """The compute-optimal D/N the user's fits imply under each way of counting N (one report per kind,
    as StoredFits.reports holds them; both L(N, D) fits of each, with the sweep's exact FLOPs per token),
    (C = 6ND instead when not `exact`), then the published ratios: Hoffmann's approach-3 and Besiroglu et
    al.'s constants across RATIO_BUDGETS
    (C = 6ND, as they fit them) and the reported ones (PUBLISHED_RATIOS).

    Why they differ: the ratio divides by N, so what counts as N moves it (embeddings are a large share
    of a small model's parameters), and Hoffmann's approach-3 fit is inconsistent with their own
    approaches 1 and 2 (Besiroglu et al. 2024 refit it and get back to about 20)."""
    rows = []
    for kind, report in reports.items():
        if report is None or not report.records:
            continue
        c = tuple(budgets) if budgets else ratio_budgets(report.records)
        fpt = report.flops_per_token if exact and report.flops_per_token.exact else None
        for name, law in (("L-BFGS", report.chinchilla), ("VPNLS", report.vpnls)):
            if law is not None and law.alpha > 0 and law.beta > 0:
                rows.append(_ratio_row(f"sweep:{law.method}:{kind}", f"this sweep, {name}",
                                       N_CONVENTIONS.get(kind, kind), law, c, fpt))
    for key, label in (("hoffmann2022", "Hoffmann et al. 2022, approach 3 constants"),
                       ("besiroglu2024", "Besiroglu et al. 2024 refit of approach 3")):
        rows.append(_ratio_row(key, label, "all parameters", PUBLISHED[key].law, RATIO_BUDGETS, None,
                               PUBLISHED[key].citation))
    rows += [RatioRow(f"reported:{i}", p.source, p.n_kind, (), p.low, p.high, f"{p.budgets}; {p.citation}")
             for i, p in enumerate(PUBLISHED_RATIOS)]
    return rows


# ---------------------------------------------------------------------------------------------------
# Held-out check

@dataclass(frozen=True)
class HeldOutCheck:
    law: ChinchillaLaw          # fitted on the cheaper runs only
    fitted_on: tuple            # names
    held_out: tuple             # (name, N, D, C, predicted, measured)
    threshold: float            # runs with C above this were held out

    @property
    def mean_abs_error(self) -> float:
        return float(np.mean([abs(p - m) for *_, p, m in self.held_out]))

    @property
    def mean_rel_error(self) -> float:
        return float(np.mean([abs(p - m) / m for *_, p, m in self.held_out]))

    @property
    def errors(self) -> tuple:
        """Each held-out run's signed relative error, (predicted - measured) / measured."""
        return tuple((p - m) / m for *_, p, m in self.held_out)

    def to_dict(self) -> dict:
        return {"law": self.law.to_dict(), "fitted_on": list(self.fitted_on),
                "held_out": _rows_out(self.held_out), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict) -> "HeldOutCheck":
        return cls(ChinchillaLaw.from_dict(d["law"]), tuple(d["fitted_on"]), _rows_in(d["held_out"]),
                   d["threshold"])


def held_out_check(records: Sequence[RunRecord], n_kind: str = "total", hold_out: float = 0.25,
                   n_bootstrap: int = 0) -> HeldOutCheck:
    """Fit L(N, D) on the cheaper runs, predict the most expensive ones (by compute).

    With IsoFLOP budgets the largest budget is held out as a whole; otherwise the top `hold_out`
    fraction of runs by compute.
    """
    check_records(records)
    budgets = sorted(group_by_budget(records))
    if len(budgets) >= 3:
        threshold = budgets[-1] * 0.999
    else:
        flops = sorted(r.flops for r in records)
        k = max(1, int(round(len(records) * hold_out)))
        threshold = flops[-k] * 0.999
    train_set = [r for r in records if r.flops < threshold]
    test_set = [r for r in records if r.flops >= threshold]
    if len(train_set) < 5:
        raise ScalingError(f"a held-out check needs at least 5 cheaper runs to fit on; there are "
                           f"{len(train_set)}. Let the sweep finish more runs.")
    law = fit_chinchilla(train_set, n_kind, n_bootstrap=n_bootstrap)
    rows = tuple((r.name, r.params(n_kind), r.tokens, r.flops,
                  float(law.predict(r.params(n_kind), r.tokens)), r.val_loss) for r in test_set)
    return HeldOutCheck(law, tuple(r.name for r in train_set), rows, threshold)


# ---------------------------------------------------------------------------------------------------
# Everything at once, for a page or a report

@dataclass(frozen=True)
class ScalingReport:
    """Every fit the runs support; each fit that failed is None with its message in `problems`."""
    records: tuple
    n_kind: str
    law_n: PowerLaw | None
    law_d: PowerLaw | None
    law_c: PowerLaw | None
    chinchilla: ChinchillaLaw | None
    isoflop: IsoFlopFit | None
    held_out: HeldOutCheck | None
    flops_per_token: FlopsPerToken
    problems: dict              # fit name -> message
    vpnls: ChinchillaLaw | None = None      # the same law by variable projection (fit_vpnls)

    def frontier(self, computes: Sequence[float], exact: bool = True) -> list[Allocation]:
        """The compute-optimal allocation along a range of budgets, from the L(N, D) fit."""
        if self.chinchilla is None:
            return []
        f = self.flops_per_token if exact and self.flops_per_token.exact else None
        return [allocate(self.chinchilla, c, f) for c in computes]

    def to_dict(self, with_records: bool = True) -> dict:
        """Plain JSON types; `from_dict` gives back an equal report. Without records (a fits file stored
        beside them), `from_dict` is given them."""
        def opt(fit):
            return None if fit is None else fit.to_dict()
        d = {"n_kind": self.n_kind, "law_n": opt(self.law_n), "law_d": opt(self.law_d), "law_c": opt(self.law_c),
             "chinchilla": opt(self.chinchilla), "isoflop": opt(self.isoflop), "held_out": opt(self.held_out),
             "flops_per_token": self.flops_per_token.to_dict(), "problems": dict(self.problems),
             "vpnls": opt(self.vpnls)}
        if with_records:
            d["records"] = [r.to_dict() for r in self.records]
        return d

    @classmethod
    def from_dict(cls, d: dict, records: Sequence[RunRecord] | None = None) -> "ScalingReport":
        def opt(kind, key):
            return None if d[key] is None else kind.from_dict(d[key])
        if records is None:
            records = [RunRecord.from_dict(r) for r in d["records"]]
        return cls(tuple(records), d["n_kind"], opt(PowerLaw, "law_n"), opt(PowerLaw, "law_d"),
                   opt(PowerLaw, "law_c"), opt(ChinchillaLaw, "chinchilla"), opt(IsoFlopFit, "isoflop"),
                   opt(HeldOutCheck, "held_out"), FlopsPerToken.from_dict(d["flops_per_token"]),
                   dict(d["problems"]), opt(ChinchillaLaw, "vpnls"))


def analyse(records: Sequence[RunRecord], n_kind: str = "total", n_bootstrap: int = 200,
            level: float = 0.9, seed: int = 0) -> ScalingReport:
    check_records(records)
    problems: dict[str, str] = {}
    label = "N (non-embedding)" if n_kind == "non_embedding" else "N"

    def attempt(name, fn):
        try:
            return fn()
        except ScalingError as e:
            problems[name] = str(e)
            return None

    def single(by, variable):
        x, y = envelope(records, by, n_kind)
        return fit_power_law(x, y, variable, n_bootstrap=n_bootstrap, level=level, seed=seed)

    fpt = FlopsPerToken(records, n_kind)
    return ScalingReport(
        tuple(records), n_kind,
        attempt("L(N)", lambda: single("N", label)),
        attempt("L(D)", lambda: single("D", "D")),
        attempt("L(C)", lambda: single("C", "C")),
        attempt("L(N, D)", lambda: fit_chinchilla(records, n_kind, n_bootstrap, level, seed)),
        attempt("IsoFLOP", lambda: fit_isoflop(records, n_kind, fpt, n_bootstrap, level, seed)),
        attempt("held-out", lambda: held_out_check(records, n_kind)),
        fpt, problems, attempt("VPNLS", lambda: fit_vpnls(records, n_kind, n_bootstrap, level, seed)))


# ---------------------------------------------------------------------------------------------------
# What a page shows beside the fits

def loss_window(records: Sequence[RunRecord], margin: float = 0.1) -> tuple[float, float]:
    """The loss range a chart of these runs shows, 10 % beyond the best and worst run; a law's band is
    clipped to it (`PowerLaw.band(x, within=...)`), since a loose fit's band can span decades."""
    losses = [r.val_loss for r in records]
    return min(losses) * (1 - margin), max(losses) * (1 + margin)


@dataclass(frozen=True)
class SweepTotals:
    runs: int
    sizes: int                  # distinct model sizes (N, all parameters)
    flops: float                # training FLOPs, summed
    wall_s: float               # training seconds as recorded, summed

    @property
    def flops_per_second(self) -> float | None:
        """How fast the machine that ran the sweep trained, or None without recorded times."""
        return self.flops / self.wall_s if self.wall_s > 0 else None

    def seconds_for(self, compute: float) -> float | None:
        """How long that machine would train on `compute` FLOPs at the sweep's own speed."""
        rate = self.flops_per_second
        return compute / rate if rate else None


def sweep_totals(records: Sequence[RunRecord]) -> SweepTotals:
    return SweepTotals(len(records), len({r.n_params for r in records}), float(sum(r.flops for r in records)),
                       float(sum(r.wall_s for r in records)))


# ---------------------------------------------------------------------------------------------------
# Stored fits: made once per set of records, read by the pages

def canonical_records(records: Iterable[RunRecord]) -> list[RunRecord]:
    """The records in the one order a stored fit uses: a sweep directory and its records.json list
    them differently, and the bootstrap's resamples depend on the order."""
    return sorted(records, key=lambda r: (r.name, _canonical_json(r)))


def _canonical_json(r: RunRecord) -> str:
    return json.dumps(r.to_dict(), sort_keys=True, separators=(",", ":"))


def records_digest(records: Iterable[RunRecord]) -> str:
    """sha256 of the records' canonical JSON: what a stored fit was made from."""
    text = "[" + ",".join(_canonical_json(r) for r in canonical_records(records)) + "]"
    return hashlib.sha256(text.encode()).hexdigest()


def fit_command(sweep: str | Path) -> str:
    """The command that (re)makes a sweep's stored fits, run from the project folder: the sweep's runs,
    sweeps or project folder by its short name (a visitor never sees this server's layout); a folder of
    the operator's own choosing, which no page lists, in full so that the command runs."""
    sweep = Path(sweep).resolve()
    shown = sweep.relative_to(ROOT) if ROOT in sweep.parents else scrub_paths(str(sweep))
    return f"python -m core.scaling fit {shlex.quote(str(shown))}"


@dataclass(frozen=True)
class StoredFits:
    """A sweep's stored fits against its records now."""
    sweep: Path                 # the records: a file, or a sweep directory
    path: Path                  # the fits file
    status: str                 # "current", "stale" (made from other records, or an older format), "absent"
    records: tuple              # the records now, in canonical order
    digest: str                 # of the records now
    reports: dict = field(default_factory=dict)     # n_kind -> ScalingReport; only when current
    n_bootstrap: int | None = None
    note: str = ""              # why a file that is there cannot be used

    @property
    def current(self) -> bool:
        return self.status == "current"

    def report(self, n_kind: str = "total") -> ScalingReport | None:
        return self.reports.get(n_kind)

    @property
    def command(self) -> str:
        return fit_command(self.sweep)

    def explain(self) -> str:
        """One sentence for a reader: why there is no fit to show."""
        if self.status == "current":
            return f"The fits stored in `{self.path.name}` are those of these {len(self.records)} runs."
        if self.status == "stale":
            return (f"The fits stored in `{self.path.name}` were made from other runs than the "
                    f"{len(self.records)} recorded now{f' ({self.note})' if self.note else ''}.")
        return (f"No fits are stored for these {len(self.records)} runs yet"
                f"{f' ({self.note})' if self.note else ''}.")


def load_fits(sweep: str | Path) -> StoredFits:
    """The stored fits of a sweep (a records file or a sweep directory), checked against its records.
    Fits nothing. Raises ScalingError only when the records themselves cannot be read."""
    sweep = Path(sweep)
    records = tuple(canonical_records(load_records(sweep)))
    digest = records_digest(records)
    path = fits_path(sweep)
    absent = StoredFits(sweep, path, "absent", records, digest)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return absent
    except (OSError, ValueError) as e:
        return dataclasses.replace(absent, note=f"{path.name} cannot be read: {e}")
    if not isinstance(data, dict) or data.get("format") != FITS_FORMAT:
        return dataclasses.replace(absent, status="stale", note=f"{path.name} is of another format")
    if data.get("records_sha256") != digest:
        return dataclasses.replace(absent, status="stale", note="the records changed since")
    try:
        reports = {k: ScalingReport.from_dict(data["reports"][k], records) for k in N_KINDS}
    except (KeyError, TypeError, ValueError) as e:
        return dataclasses.replace(absent, status="stale", note=f"{path.name} is damaged ({e!r})")
    return StoredFits(sweep, path, "current", records, digest, reports, data.get("n_bootstrap"))


def fit_sweep(sweep: str | Path, n_bootstrap: int | None = None, level: float = 0.9,
              seed: int = 0) -> StoredFits:
    """Fit a sweep's records for both ways of counting N and store the fits beside them (atomically).
    Tens of CPU-seconds at the default bootstrap (36 s for the committed sweep's 31 runs on one idle
    core, minutes on a loaded one): a server never calls it in-process, it runs `python -m core.scaling`."""
    sweep = Path(sweep)
    records = canonical_records(load_records(sweep))
    if not records:
        raise ScalingError(f"{sweep} has no finished run yet: nothing to fit. Let the sweep "
                           f"(python -m core.sweep) record some runs first.")
    n_bootstrap = N_BOOTSTRAP if n_bootstrap is None else n_bootstrap
    reports = {k: analyse(records, k, n_bootstrap, level, seed) for k in N_KINDS}
    digest = records_digest(records)
    data = {"format": FITS_FORMAT,
            "about": "core.scaling's fits of the records beside this file, for both ways of counting N; "
                     "made by `python -m core.scaling fit`, valid while records_sha256 matches them",
            "records_sha256": digest, "n_records": len(records), "n_bootstrap": n_bootstrap, "level": level,
            "seed": seed, "reports": {k: r.to_dict(with_records=False) for k, r in reports.items()}}
    path = write_atomic(fits_path(sweep), (json.dumps(data, indent=1) + "\n").encode())
    return StoredFits(sweep, path, "current", tuple(records), digest, reports, n_bootstrap)


def ensure_fits(sweep: str | Path, n_bootstrap: int | None = None) -> StoredFits:
    """The stored fits, refitted first unless they are current (a restarted sweep that recorded nothing
    new does not fit again)."""
    stored = load_fits(sweep)
    return stored if stored.current else fit_sweep(sweep, n_bootstrap)


# ---------------------------------------------------------------------------------------------------
# Fitting in the background: for a server whose pages only read stored fits

def fits_stamp(sweep: str | Path) -> tuple:
    """Name, time and size of every file a sweep's stored fits are checked against, and of the fits file:
    a cache of `load_fits` is read again only when this changes."""
    sweep = Path(sweep)
    files = sorted((sweep / SWEEP_RECORDS_DIR).glob("*.json")) if sweep.is_dir() else [sweep]
    out = []
    for f in files + [fits_path(sweep)]:
        try:
            info = f.stat()
            out.append((f.name, info.st_mtime_ns, info.st_size))
        except OSError:
            out.append((f.name, None, None))
    return tuple(out)


class BackgroundFit:
    """A child `python -m core.scaling fit` of one sweep's records, as they were (their digest)."""

    def __init__(self, digest: str, process: subprocess.Popen, log: Path, started: float):
        self.digest, self.process, self.log, self.started = digest, process, log, started

    def failure(self) -> str | None:
        """None while it runs or once it has succeeded (its log is then removed); otherwise what it said."""
        rc = self.process.poll()
        if rc is None:
            return None
        if rc == 0:
            self.log.unlink(missing_ok=True)
            return None
        return cli.error_line(self.log) or f"it exited with status {rc}"


_fits_lock = threading.Lock()       # guards _fitting: held to look up or start a child, never during a fit
_fitting: dict[str, BackgroundFit] = {}     # resolved sweep path -> its latest background fit


def fit_in_background(stored: StoredFits) -> BackgroundFit:
    """The child process fitting this sweep's records now, started if there is none: at most one per sweep
    and digest, however many visitors ask at once (a separate process: no GIL shared with the server,
    killable, one thread)."""
    key = str(Path(stored.sweep).resolve())
    with _fits_lock:
        job = _fitting.get(key)
        if job is not None and job.digest == stored.digest:
            return job
        if job is not None and job.process.poll() is None:
            job.process.terminate()     # its records have changed since: its fits would arrive stale
            job.process.wait(timeout=30)
        if job is not None:
            job.log.unlink(missing_ok=True)
        fd, log = tempfile.mkstemp(prefix="scaling-fit-", suffix=".log")
        os.close(fd)
        job = _fitting[key] = BackgroundFit(stored.digest, _start_fit(Path(stored.sweep), Path(log)), Path(log),
                                            time.time())
        return job


def _start_fit(sweep: Path, log: Path) -> subprocess.Popen:
    env = cli.child_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")      # one thread: the server keeps the rest
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "core.scaling", "fit", str(sweep)], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)


# ---------------------------------------------------------------------------------------------------
# CLI: python -m core.scaling fit PATH

def _summary(stored: StoredFits, seconds: float) -> list[str]:
    lines = [f"fitted {len(stored.records)} runs of {stored.sweep} (records sha256 {stored.digest[:12]}), "
             f"{stored.n_bootstrap} bootstrap resamples, {seconds:.0f} s"]
    for kind in N_KINDS:
        rep = stored.reports[kind]
        lines.append(f"  N counted as {kind}:")
        if rep.chinchilla:
            law, ci = rep.chinchilla, rep.chinchilla.intervals
            a_ci = f" [{ci['a'][0]:.2f}, {ci['a'][1]:.2f}]" if "a" in ci else ""
            lines.append(f"    {law.describe()}  (a = {law.a:.2f}{a_ci})")
        for law in (rep.law_n, rep.law_d, rep.law_c):
            if law:
                lines.append(f"    {law.describe()}{'  (loose: the runs do not pin it down)' if law.loose else ''}")
        if rep.vpnls:
            lines.append(f"    VPNLS: {rep.vpnls.describe()}  (a = {rep.vpnls.a:.2f})")
        if rep.isoflop:
            lines.append(f"    IsoFLOP: N_opt ~ C^{rep.isoflop.a:.2f}, D_opt ~ C^{rep.isoflop.b:.2f}")
            lines += [f"    parabola at C = {c:.3g} may mislead: {why}" for c, why in parabola_warnings(rep).items()
                      if why]
        if rep.held_out:
            lines.append(f"    held-out: {len(rep.held_out.held_out)} runs predicted within "
                         f"{100 * rep.held_out.mean_rel_error:.1f} % on average")
        lines += [f"    not possible, {name}: {msg}" for name, msg in rep.problems.items()]
    size = stored.path.stat().st_size
    lines.append(f"wrote {stored.path} ({size / 1024:.0f} kB)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m core.scaling",
        description="Fit a sweep's records and store the fits beside them (what the Scaling page reads), or "
                    "check that the stored fits are those of the records now.")
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a sweep (both ways of counting N) and store the fits beside it")
    fit.add_argument("path", help="a records file (sweeps/NAME.json) or a sweep directory (runs/sweeps/NAME)")
    fit.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, metavar="N",
                     help=f"bootstrap resamples behind the intervals and bands (default: {N_BOOTSTRAP})")
    check = sub.add_parser("check", help="exit 0 when the stored fits are current, 1 when stale or absent")
    check.add_argument("path")
    args = p.parse_args(argv)
    try:
        if args.command == "check":
            stored = load_fits(args.path)
            print(f"{stored.status}: {stored.explain()}" + ("" if stored.current else f" Run: {stored.command}"))
            return 0 if stored.current else 1
        if args.bootstrap < 0:
            raise ScalingError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
        t0 = time.perf_counter()
        stored = fit_sweep(args.path, args.bootstrap)
        print("\n".join(_summary(stored, time.perf_counter() - t0)))
        return 0
    except (ScalingError, OSError) as e:
        return cli.report_error(e, "run the same command again: the stored fits are written whole or not at all")


if __name__ == "__main__":
    sys.exit(main())
