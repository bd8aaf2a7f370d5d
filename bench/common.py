"""Shared helpers of the bench/ scripts: thread pinning, the shared corpus, a matmul peak, medians."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"


def set_threads(n: int) -> None:
    """Pin every thread pool before torch starts: oversubscribed OpenMP threads spin and thrash."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch
    torch.set_num_threads(n)


def quiet_transformers() -> None:
    """Silence the peer's warnings and logging: a bench prints its own figures only."""
    import warnings
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()


def default_data_dir() -> str | None:
    """The shared copy of tiny shakespeare when present (no network), else the normal cache."""
    from core.data import DATA_DIR_ENV
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    return str(SHARED_DATA) if (SHARED_DATA / "tinyshakespeare.txt").is_file() else None


def matmul_peak_gflops(n: int = 1024, dtype: str = "float32", seconds: float = 2.0) -> float:
    """Best sustained GFLOP/s of square matmuls on the current thread setting."""
    import torch
    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def median(xs) -> float:
    return statistics.median(xs)


def matmul_median_gflops(n: int = 1024, dtype: str = "float32", seconds: float = 2.0) -> float:
    """Median GFLOP/s of square matmuls on the current thread setting: the peak an MFU is measured
    against (a best-of peak is a lucky moment and understates MFU by 15-25 % on a shared machine)."""
    import torch
    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 5:
        t0 = time.perf_counter()
        a @ b
        rates.append(2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)
