"""Progress measures: the numbers that show a capability forming inside a model, as formulas on arrays.

Holds the definitions that the trainer logs during a run and the inspection tools compute on any model,
so both read one home:
  - `repeated_tokens`: the probe of Olsson et al. (2022), uniformly random tokens repeated once;
  - `head_scores`: each head's previous-token, induction and duplicate-token scores from its attention on
    any text (the mean attention from each position to the position one back; to the token after an
    earlier copy of the current token; to the earlier copy itself);
  - `icl_score`: in-context learning as loss at a late position minus loss at an early one (negative when
    later tokens are predicted better because the context helps);
  - `fourier_norms`: how much of an embedding lives at each frequency over the residues 0..p-1 (Nanda et
    al. 2023: a model that groks modular addition uses a handful of frequencies);
  - `jump`: where a curve changes by at least a threshold, the marker the Emergence page draws.
Everything here is numpy: the runtime's inspection (torch-free) and the trainer (torch) call the same code.

Deliberately not here: running a model (the trainer and `core.runtime` produce the attention and the
losses), the tasks (`core.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORES = ("previous_token", "induction", "duplicate")
ICL_EARLY = (0.05, 0.15)     # ICL's early positions, as fractions of the context (Olsson et al.: token 50 of 512)
ICL_LATE = (0.85, 0.95)      # and late ones (their token 500 of 512)


def repeated_tokens(n_vocab: int, length: int, batch: int, rng: np.random.Generator,
                    allowed: np.ndarray | None = None) -> np.ndarray:
    """(batch, 2 * length) ids: `length` random tokens, then the same again; drawn from `allowed` ids
    when given (e.g. without special tokens)."""
    pool = np.arange(n_vocab) if allowed is None else np.asarray(allowed)
    first = pool[rng.integers(0, len(pool), size=(batch, length))]
    return np.concatenate([first, first], axis=1).astype(np.int64)


def head_scores(probs: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Scores (layers, heads) from attention probabilities `probs` ([batch,] layers, heads, T, T) on token
    ids `ids` ([batch,] T), any text (on `repeated_tokens` the classic probe):
      previous_token: mean attention from position t to t - 1 (over t >= 1);
      duplicate:      attention from t to the earlier positions s < t holding the same token as t;
      induction:      attention from t to the positions s + 1 (< t) right after those earlier copies: what an
                      induction head reads, to copy the token that followed last time.
    duplicate and induction average over the positions whose token occurred before (NaN if none did).
    Each is in [0, 1]: 1 is a head that does only that."""
    probs, ids = np.asarray(probs, dtype=np.float64), np.asarray(ids)
    if probs.ndim == 4:
        probs, ids = probs[None], ids[None]
    B, L, H, T, _ = probs.shape
    if ids.shape != (B, T):
        raise ValueError(f"attention over {T} positions of {B} sequence(s), but ids of shape {ids.shape}")
    earlier = np.tri(T, k=-1, dtype=bool)                                   # s < t
    same = (ids[:, :, None] == ids[:, None, :]) & earlier                  # (B, T, T): x_s == x_t
    after = np.zeros_like(same)
    after[:, :, 1:] = same[:, :, :-1]                                       # s + 1 for each such s ...
    after &= earlier                                                        # ... still before t
    repeats = same.any(axis=-1)                                             # (B, T)
    previous = probs[..., np.arange(1, T), np.arange(T - 1)].mean(axis=(0, -1)) if T > 1 else \
        np.full((L, H), np.nan)
    if not repeats.any():
        return {"previous_token": previous, "induction": np.full((L, H), np.nan),
                "duplicate": np.full((L, H), np.nan)}
    weight = repeats[:, None, None, :]                                      # (B, 1, 1, T)

    def mean_on(mask: np.ndarray) -> np.ndarray:
        per_position = (probs * mask[:, None, None]).sum(-1)                # (B, L, H, T)
        return (per_position * weight).sum(axis=(0, -1)) / repeats.sum()
    return {"previous_token": previous, "induction": mean_on(after), "duplicate": mean_on(same)}


def icl_positions(seq_len: int) -> tuple[slice, slice]:
    """The early and late positions ICL compares, for sequences of `seq_len` tokens."""
    def window(lo: float, hi: float) -> slice:
        a = min(seq_len - 1, int(lo * seq_len))
        return slice(a, max(a + 1, int(hi * seq_len)))
    return window(*ICL_EARLY), window(*ICL_LATE)


def icl_score(loss_by_position: np.ndarray) -> float:
    """Mean loss at late positions minus at early ones (nats), from the mean loss at each position (T,);
    NaN where a position has no scored target."""
    early, late = icl_positions(len(loss_by_position))
    a, b = loss_by_position[early], loss_by_position[late]
    if not (np.isfinite(a).any() and np.isfinite(b).any()):
        return float("nan")          # e.g. a task that scores one position only
    return float(np.nanmean(b) - np.nanmean(a))


def fourier_norms(embedding: np.ndarray) -> np.ndarray:
    """The L2 norm of an embedding (p, C) at each frequency k = 0..p//2 over its p rows: the rows' DFT along
    the residues, |F_k| summed over the C dimensions (cos and sin parts together). A model that adds
    mod p by rotations has its norm in a few k; a random embedding spreads it evenly."""
    spectrum = np.fft.rfft(np.asarray(embedding, dtype=np.float64), axis=0)    # (p//2 + 1, C)
    return np.sqrt((np.abs(spectrum) ** 2).sum(axis=1))


@dataclass(frozen=True)
class Jump:
    """Where a curve changed by at least `threshold` within `window` consecutive points."""
    step: int            # the step at the end of the change
    start_step: int      # the step where the change began
    before: float
    after: float


def jump(steps: list[int], values: list[float], threshold: float, window: int = 5,
         direction: int = -1) -> Jump | None:
    """The first place a curve moves by `threshold` in `direction` (-1: falls, +1: rises) within `window`
    points: an abrupt change rather than a slow drift (a drift of the same size over the whole run is not
    one). None when it never does."""
    v = np.asarray(values, dtype=float)
    for i in range(1, len(v)):
        for j in range(max(0, i - window), i):
            if np.isfinite(v[i]) and np.isfinite(v[j]) and direction * (v[i] - v[j]) >= threshold:
                return Jump(int(steps[i]), int(steps[j]), float(v[j]), float(v[i]))
    return None


def first_reaching(steps: list[int], values: list[float], level: float) -> int | None:
    """The first step whose value is >= level (e.g. held-out accuracy 0.95), None if none."""
    for s, v in zip(steps, values):
        if v is not None and np.isfinite(v) and v >= level:
            return int(s)
    return None
