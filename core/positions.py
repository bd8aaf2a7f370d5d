"""Positional encodings as formulas, in numpy: one definition for the model and for the pages.

Holds the sinusoidal table (Vaswani et al. 2017) and RoPE's rotation angles (Su et al. 2021). The model
(`core.model`) turns them into its buffers; the Learn page draws them.

Deliberately not here: applying them (the model adds the table or rotates q and k), learned tables
(weights of a trained model).
"""

from __future__ import annotations

import math

import numpy as np


def sinusoidal_table(n_positions: int, dim: int) -> np.ndarray:
    """Vaswani et al. 2017: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    pos = np.arange(n_positions, dtype=np.float32)[:, None]
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, dim, 2, dtype=np.float32) / dim).astype(np.float32)
    table = np.zeros((n_positions, dim), dtype=np.float32)
    table[:, 0::2] = np.sin(pos * inv_freq)
    table[:, 1::2] = np.cos(pos * inv_freq[: dim // 2])
    return table


def rope_angles(n_positions: int, head_dim: int, base: float = 10000.0) -> np.ndarray:
    """Su et al. 2021: position pos turns the pair (i, i + hs/2) of q and k by pos * base^(-2i/hs)."""
    inv_freq = (1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(np.float32)
    return np.outer(np.arange(n_positions, dtype=np.float32), inv_freq).astype(np.float32)
