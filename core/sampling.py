"""Sampling: turning next-token logits into a choice, one pure numpy stage at a time.

Holds softmax / log-softmax and the sampler stages as pure functions on a 1-D float logits array that
return processed logits, removed tokens at -inf, and every stage keeps at least one token:
  temperature(logits, t)   divide by t; t == 0 means greedy (only the argmax survives)
  top_k(logits, k)         keep the k highest; k == 0 is off
  top_p(logits, p)         keep the smallest set of most likely tokens whose mass reaches p (nucleus)
and `choose()`, which draws a token from the processed logits with a seeded numpy Generator.

Deliberately not here: torch (this runs on the inference side), models, decoding loops
(`core.generate`).
"""

from __future__ import annotations

import math

import numpy as np

NEG_INF = -np.inf


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float64; -inf logits get probability 0."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (stable: shifts by the max first)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _check_number(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}")
    return v


def temperature(logits: np.ndarray, t: float) -> np.ndarray:
    """Scale by 1/t: t < 1 sharpens, t > 1 flattens; t == 0 keeps only the most likely token."""
    t = _check_number("temperature", t, 0.0, 1e6)
    x = np.asarray(logits, dtype=np.float64)
    if t == 0.0:
        out = np.full_like(x, NEG_INF)
        i = int(np.argmax(x))
        out[i] = x[i]
        return out
    return x / t


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest logits (ties at the k-th value are kept too); k == 0 is off."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {k!r}")
    x = np.asarray(logits, dtype=np.float64)
    if k == 0 or k >= x.size:
        return x
    kth = np.partition(x, -k)[-k]
    return np.where(x >= kth, x, NEG_INF)


def top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: keep the smallest set of most likely tokens whose probability mass reaches p."""
    p = _check_number("top_p", p, 0.0, 1.0, low_open=True)
    x = np.asarray(logits, dtype=np.float64)
    if p >= 1.0:
        return x
    order = np.argsort(-x, kind="stable")
    cum = np.cumsum(softmax(x)[order])
    n_keep = int(np.searchsorted(cum, p - 1e-12)) + 1        # first index where the mass reaches p
    keep = order[:max(1, n_keep)]
    out = np.full_like(x, NEG_INF)
    out[keep] = x[keep]
    return out


def choose(logits: np.ndarray, rng: np.random.Generator) -> int:
    """Draw a token id from softmax(logits); a single surviving token is returned without a draw."""
    probs = softmax(logits)
    finite = np.flatnonzero(probs > 0)
    if finite.size == 1:
        return int(finite[0])
    # inverse-CDF with one uniform: the same seed gives the same token on every path that asks
    return int(min(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"), probs.size - 1))
