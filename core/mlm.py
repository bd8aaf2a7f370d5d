"""Masked language modelling (BERT's objective), in numpy: hiding tokens for training, and reading what a masked
LM says about the hidden ones.

Holds `mask_tokens` (BERT's masking of a batch: 15 % of the positions chosen, of those 80 % become [MASK], 10 %
a random token, 10 % stay as they are; the targets are the original tokens there and IGNORE everywhere else,
so the loss is computed only at the chosen positions), `fill_blanks` (the top-k tokens and probabilities at
each [MASK] of a sequence: fill in the blank, from both sides) and `unmask_left_to_right` (asking a masked LM to
write: append a [MASK], fill it, repeat; what it produces shows why an encoder does not generate).

Why the losses differ: a masked LM predicts a token with the words on both sides in view, a GPT the next one
from the left alone; the first task is easier, so an MLM's loss (nats per masked token) is lower than a GPT's
(nats per token) at the same size and data, and the two numbers measure different tasks, not better models.

Deliberately not here: torch (the trainer turns these arrays into tensors; the runtime runs the graph),
the [MASK] token itself (`core.tokenizer.with_mask_token`), batches of windows (`core.data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.checks import PlaygroundError
from core.sampling import log_softmax
from core.tasks import IGNORE

# BERT's split of the chosen positions (Devlin et al. 2019, section 3.1): replaced by [MASK], by a random
# token, kept as they are. The last two keep the model from trusting that an unmasked token is never a target.
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


class MaskError(PlaygroundError):
    """A masked-LM input cannot be used as asked; the message says what to change."""


def mask_tokens(x: np.ndarray, rng: np.random.Generator, mask_id: int, ordinary: np.ndarray,
                rate: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking of token windows x (B, T): inputs (B, T) and targets (B, T).

    Each position holding an ordinary token (one of `ordinary`; special tokens such as <|endoftext|> are never
    chosen) is chosen with probability `rate`; a row where none was chosen gets one (so every row adds to the
    loss). Chosen positions become mask_id (80 %), a random ordinary token (10 %) or stay (10 %); targets hold
    the original token there and IGNORE elsewhere. Same rng state, same masks."""
    x = np.asarray(x, dtype=np.int64)
    eligible = np.isin(x, ordinary)                                      # (B, T)
    chosen = (rng.random(x.shape) < rate) & eligible
    for b in np.flatnonzero(~chosen.any(axis=1) & eligible.any(axis=1)):
        chosen[b, rng.choice(np.flatnonzero(eligible[b]))] = True
    how = rng.random(x.shape)                                            # which of BERT's three replacements
    to_mask = chosen & (how < MASK_SHARE)
    to_random = chosen & (how >= MASK_SHARE) & (how < MASK_SHARE + RANDOM_SHARE)
    inputs = x.copy()
    inputs[to_mask] = mask_id
    inputs[to_random] = rng.choice(ordinary, size=int(to_random.sum()))
    targets = np.where(chosen, x, IGNORE)
    return inputs, targets


@dataclass
class Blank:
    position: int               # index of the [MASK] in the sequence
    ids: list[int]              # the likeliest tokens there, best first
    probs: list[float]          # their probabilities


def fill_blanks(logits: np.ndarray, ids: list[int], mask_id: int, k: int = 5) -> list[Blank]:
    """The top-k tokens (never [MASK] itself) with their probabilities among the real tokens ([MASK]'s own share
    left out) at each [MASK] of `ids`, from a masked LM's logits (T, V) of that sequence."""
    blanks = []
    for t in (i for i, tok in enumerate(ids) if tok == mask_id):
        row = logits[t].astype(np.float64)
        row[mask_id] = -np.inf                  # never an answer: the probabilities are over the real tokens
        lp = log_softmax(row)
        top = np.argsort(-lp, kind="stable")[:k]
        blanks.append(Blank(t, top.tolist(), np.exp(lp[top]).tolist()))
    return blanks


def unmask_left_to_right(logits_of: Callable[[list[int]], np.ndarray], ids: list[int], mask_id: int,
                         n_tokens: int, block_size: int, trailing: int = 0) -> list[int]:
    """Make a masked LM write: n_tokens times, append a [MASK] (and `trailing` more after it, the blanks still
    to come), fill the first with its likeliest token, and go on. The MLM never saw a sequence ending in a
    blank with nothing to its right during training, so it guesses from the left alone with a model trained
    to lean on both sides: the text soon repeats or drifts. Returns the new ids (greedy: deterministic)."""
    out = list(ids)
    written = []
    for _ in range(n_tokens):
        seq = (out + [mask_id] * (1 + trailing))[-block_size:]
        where = len(seq) - 1 - trailing
        logits = np.asarray(logits_of(seq), dtype=np.float64)[where].copy()
        logits[mask_id] = -np.inf
        tok = int(np.argmax(logits))
        out.append(tok)
        written.append(tok)
    return written
