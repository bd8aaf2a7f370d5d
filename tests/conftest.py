"""Shared fixtures: a generated corpus (no network, no borrowed text), tiny configs, few threads."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

# Two threads fight each other on a 2-core machine shared with pytest itself; one is steadier.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_text(n_words: int = 40_000, seed: int = 0) -> str:
    """A small synthetic language: a Zipf-ish word list, short sentences, line breaks. Enough
    structure for a tiny model's loss to fall, and no one's copyrighted text."""
    rng = random.Random(seed)
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "and", "then", "slept", "big",
             "small", "red", "house", "garden", "quickly", "slowly", "saw", "bird", "over", "under"]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choices(words, weights)[0])
        if rng.random() < 0.12:
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    p.write_text(make_text(), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data directory of our own; tokenized caches land here, never in shared/."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip("../shared/data/tinyshakespeare.txt is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _one_thread():
    import torch
    torch.set_num_threads(1)
    yield


BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
sys.path.insert(0, {root!r})
"""


def run_without_torch(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter where importing torch fails (the inference side's proof)."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH.format(root=str(ROOT)) + code],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def cached_logits(model, ids, prefill: int):
    """Logits of every position of `ids` (1, T) from the runtime as a decoder computes them: the first
    `prefill` tokens in one call, then one cached step per token. (1, T, V)."""
    import numpy as np
    logits, cache = model.step(ids[:, :prefill])
    got = [logits]
    for t in range(prefill, ids.shape[1]):
        logits, cache = model.step(ids[:, t:t + 1], cache)
        got.append(logits)
    return np.concatenate(got, axis=1)


def close_board() -> None:
    """End the pages' shared job board of a test: close it, kill any child it left running, forget it."""
    from playground import shared
    board = shared._board()
    board.close()
    for job in board.jobs.values():
        for p in (job.process, job.exporter):
            if p is not None and p.poll() is None:
                p.kill()
    shared._board.cache_clear()
