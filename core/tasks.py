"""Synthetic tasks: generated, seeded data on which known phenomena appear in minutes on a CPU.

Holds `Task` (a vocabulary, a sequence length, batches whose unscored targets are -1, fixed evaluation
sets) and the tasks the emergence presets train on:
  induction          `RepeatedSequences`: random tokens, then the same tokens again. Only the repeat can
                     be predicted, and only by looking back at the first copy: the induction heads of
                     Olsson et al. (2022) form to do that. offset "fixed" ([x x], |x| = half the
                     sequence) leaves a positional shortcut (a head that always looks `half` positions
                     back solves it); "random" ends the sequence with a segment of random length whose
                     first copy starts at a random place, so the distance back varies and only content
                     matching works.
  modular-addition   `ModularAddition`: "a + b =" -> (a + b) mod p, on a fixed random share of the p^2
                     pairs, the rest held out: the grokking task of Power et al. (2022) and Nanda et al.
                     (2023).
A task is named by a spec, `name` or `name:key=value,...` (`make_task("modular-addition:p=113")`), which a
run's config records, so a run's data is its spec and seed: nothing is downloaded or stored. `TaskDataset`
gives a task the interface the trainer reads from a tokenized corpus (`core.data.TokenDataset`).

Deliberately not here: the measures computed on a model during training (`core.measures`), the presets
that train on these tasks (`core.emergence`), torch (the batches are numpy; a hosted demo reads a task's
vocabulary without torch).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, fields

import numpy as np

from core import checks
from core.checks import ConfigError
from core.tokenizer import SymbolTokenizer, Tokenizer

IGNORE = -1     # a target the loss skips (core.model's cross-entropy ignores it)


class TaskError(ConfigError):
    """A task spec that cannot be built; the message names the field and what to change."""


@dataclass(frozen=True)
class Task:
    """A generated dataset: `symbols` (the vocabulary), sequences of `seq_len` tokens, and which targets
    count. Subclasses are dataclasses whose fields are the spec's options."""

    name = ""
    description = ""

    @property
    def symbols(self) -> list[str]:
        raise NotImplementedError

    @property
    def seq_len(self) -> int:
        raise NotImplementedError

    @property
    def finite(self) -> bool:
        """Whether the training set is a fixed set of examples (full-batch training is possible)."""
        return False

    def batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """x (B, seq_len) int64 and y (B, seq_len): the next tokens, IGNORE where the loss skips them."""
        raise NotImplementedError

    def eval_set(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The fixed examples every evaluation of `split` reads (x, y as `batch`)."""
        raise NotImplementedError

    def full_batch(self) -> tuple[np.ndarray, np.ndarray]:
        raise TaskError(f"{self.name} generates fresh sequences every step: there is no fixed training set to "
                        f"train on in full batches; leave full_batch off")

    # -- identity ------------------------------------------------------------------------------------
    def spec(self) -> str:
        """`name:key=value,...` with every option, the form a run's config records."""
        options = ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))
        return f"{self.name}:{options}" if options else self.name

    def tokenizer(self) -> Tokenizer:
        return SymbolTokenizer(self.name, self.symbols, {"task": self.spec()})

    def sha256(self) -> str:
        """Identifies the data as a corpus's sha256 does: the spec determines every sequence."""
        return hashlib.sha256(self.spec().encode()).hexdigest()


# 64 readable one-character symbols: letters, digits and two more
_SYMBOLS = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + "#@")


def _check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


@dataclass(frozen=True)
class RepeatedSequences(Task):
    """Uniformly random tokens, then the same tokens again (see the module's docstring)."""

    vocab: int = 64              # distinct tokens: the plateau before the jump sits at ln(vocab)
    length: int = 32             # tokens of the copied segment x; a sequence is 2 * length long
    offset: str = "fixed"        # fixed: [x x] (a positional shortcut exists) | random: [r x r' x], |x| and
                                 # the distance between the copies vary
    eval_sequences: int = 256    # sequences in each fixed evaluation set

    name = "induction"
    description = "random tokens repeated: predictable only by looking back at the first copy"

    def __post_init__(self):
        checks.integer("vocab", self.vocab, 2, len(_SYMBOLS), error=TaskError)
        checks.integer("length", self.length, 2, 1024, error=TaskError)
        checks.choice("offset", self.offset, ("fixed", "random"), TaskError)
        checks.integer("eval_sequences", self.eval_sequences, 1, 100_000, error=TaskError)

    @property
    def symbols(self) -> list[str]:
        return _SYMBOLS[:self.vocab]

    @property
    def seq_len(self) -> int:
        return 2 * self.length

    def batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _check_split(split)
        T = self.seq_len
        seq = rng.integers(0, self.vocab, size=(batch_size, T + 1))            # (B, T+1)
        if self.offset == "fixed":
            seq[:, self.length:2 * self.length] = seq[:, :self.length]
        else:
            # [r x r' x]: a segment x of random length in [length/2, length] ends the sequence, and its first
            # copy starts anywhere before: the distance back to it varies from |x| to T - |x|, so neither
            # a fixed offset nor a band of offsets finds it; only matching content does
            for b, m in enumerate(rng.integers(max(1, self.length // 2), self.length + 1, size=batch_size)):
                a = rng.integers(0, T - 2 * m + 1)
                seq[b, T - m:T] = seq[b, a:a + m]
        x, y = seq[:, :-1].copy(), seq[:, 1:].copy()
        y[:, -1] = IGNORE                                                      # the extra token is noise
        return x, y

    def eval_set(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        _check_split(split)
        return self.batch(split, self.eval_sequences, np.random.default_rng([0x1D, split == "val"]))


@dataclass(frozen=True)
class ModularAddition(Task):
    """"a + b =" -> c = (a + b) mod p, one scored target per sequence; a random `train_fraction` of the
    p^2 pairs is the training set, the rest held out (the split is fixed by `split_seed`)."""

    p: int = 97                  # the modulus (a prime, as in Power et al. and Nanda et al.)
    train_fraction: float = 0.4  # share of the pairs trained on; grokking needs it small (0.3-0.5)
    split_seed: int = 0          # which pairs are held out

    name = "modular-addition"
    description = "a + b = (a + b) mod p on part of the pairs; the rest held out"

    def __post_init__(self):
        checks.integer("p", self.p, 2, 1000, error=TaskError)
        checks.number("train_fraction", self.train_fraction, 0.0, 1.0, low_open=True, high_open=True,
                      error=TaskError)
        checks.integer("split_seed", self.split_seed, 0, error=TaskError)

    @property
    def symbols(self) -> list[str]:
        return [str(i) for i in range(self.p)] + ["+", "="]

    @property
    def seq_len(self) -> int:
        return 4                 # a + b = ; the answer is the target at "="

    @property
    def finite(self) -> bool:
        return True

    def _pairs(self, split: str) -> np.ndarray:
        _check_split(split)
        order = np.random.default_rng([0x6A, self.split_seed, self.p]).permutation(self.p * self.p)
        n_train = max(1, int(round(self.train_fraction * self.p * self.p)))
        chosen = order[:n_train] if split == "train" else order[n_train:]
        return np.stack([chosen // self.p, chosen % self.p], axis=1)          # (N, 2): a, b

    def _examples(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = pairs[:, 0], pairs[:, 1]
        plus, equals = self.p, self.p + 1
        x = np.stack([a, np.full_like(a, plus), b, np.full_like(a, equals)], axis=1).astype(np.int64)
        y = np.full_like(x, IGNORE)
        y[:, -1] = (a + b) % self.p
        return x, y

    def batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pairs = self._pairs(split)
        return self._examples(pairs[rng.integers(0, len(pairs), size=batch_size)])

    def eval_set(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self._examples(self._pairs(split))

    def full_batch(self) -> tuple[np.ndarray, np.ndarray]:
        return self.eval_set("train")


TASKS: dict[str, type[Task]] = {t.name: t for t in (RepeatedSequences, ModularAddition)}


def make_task(spec: str) -> Task:
    """The task a spec names: `name` or `name:key=value,...` (options as the task's fields)."""
    spec = checks.text("task", spec, TaskError)
    name, _, options = spec.partition(":")
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    cls = TASKS[name]
    types = {f.name: f.type for f in fields(cls)}
    values = {}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or key not in types:
            raise TaskError(f"{name}: option {item!r} is not key=value with a key among {', '.join(types)}")
        kind = types[key] if isinstance(types[key], str) else types[key].__name__
        try:
            values[key] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
        except ValueError:
            raise TaskError(f"{name}: {key} must be a{'n integer' if kind == 'int' else ' number'}, got {raw!r}") from None
    return cls(**values)


@dataclass
class TaskDataset:
    """A task behind the interface the trainer reads from a tokenized corpus (`core.data.TokenDataset`):
    `get_batch`, the fixed `windows` of a split, sizes. `train` and `val` are the fixed evaluation sets'
    tokens (a generated task has no other split to count)."""

    task: Task

    def __post_init__(self):
        self._sets = {split: self.task.eval_set(split) for split in ("train", "val")}
        self.train, self.val = (self._sets[s][0].reshape(-1) for s in ("train", "val"))

    @property
    def val_bytes_per_token(self) -> float:
        """Bytes per token of the symbols as text (a space and the symbol): bits per byte stay defined."""
        return float(np.mean([len(s.encode()) + 1 for s in self.task.symbols]))

    def check_block_size(self, block_size: int) -> None:
        if block_size < self.task.seq_len:
            raise TaskError(f"{self.task.name}'s sequences are {self.task.seq_len} tokens long, longer than the "
                            f"model's context (block_size {block_size}): raise block_size to {self.task.seq_len}")

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.task.batch(split, batch_size, rng)

    def windows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Every fixed example of `split` (x, y): what an exact evaluation reads."""
        return self._sets[split]


def task_of(tokenizer: Tokenizer) -> Task | None:
    """The task a model was trained on, read from its tokenizer (a task's symbols record their spec); None for
    a text model's tokenizer or a spec this version cannot build."""
    spec = tokenizer.meta.get("task") if tokenizer.kind == "symbols" else None
    try:
        return make_task(spec) if isinstance(spec, str) else None
    except ConfigError:
        return None


def example_text(tokenizer: Tokenizer) -> str | None:
    """A held-out example of the model's task, as text a page can start from (a repeated sequence; "3 + 5 ="),
    or None for a text model."""
    task = task_of(tokenizer)
    if task is None:
        return None
    x, y = task.eval_set("val")
    scored = np.flatnonzero(y[0] != IGNORE)
    end = len(x[0]) if task.name != "modular-addition" else int(scored[-1]) + 1   # up to the answer's cue
    return tokenizer.decode(x[0, :end].tolist()).strip()
