"""Sampling: turning next-token logits into a choice, one pure numpy stage at a time.

Holds softmax / log-softmax, entropy, and the sampler stages. Each stage is a pure function of a 1-D
float logits array (and, for the penalties, the token history) that returns processed logits, removed
tokens at -inf, and keeps at least one token:

  repetition_penalty(logits, history, penalty)   CTRL (Keskar et al. 2019) as Hugging Face applies it:
                                                 a seen token's logit is divided by the penalty when
                                                 positive, multiplied when negative; 1 is off
  frequency_presence_penalty(logits, history, frequency, presence)
                                                 OpenAI's form: logit - count * frequency
                                                 - (count > 0) * presence; 0 is off
  temperature(logits, t)                         divide by t; t == 0 is greedy (only the argmax stays)
  top_k(logits, k)                               keep the k most likely; 0 is off
  top_p(logits, p)                               nucleus (Holtzman et al. 2020): the smallest set of most
                                                 likely tokens whose mass reaches p; 1 is off
  min_p(logits, p)                               keep tokens whose probability is at least p times the top
                                                 token's (Nguyen et al. 2024); 0 is off
  typical_p(logits, p)                           locally typical sampling (Meister et al. 2023): keep the
                                                 tokens whose surprise is closest to the entropy until
                                                 their mass reaches p; 1 is off

`KNOBS` is the one table of the knobs (range, default, what is "off", a line of explanation): it
drives the validation of `SamplerConfig` (as serving engines do: a bad value raises ConfigError naming
the knob, its range and the value), the CLI's flags and the pages' sliders and help. `SamplerConfig`
holds the knobs' values and the order of the stages; `run_pipeline` returns the
distribution after every stage, which is what the Generate page draws; `choose` draws a token with
one uniform number, so a seed gives the same token on every path that asks.

Deliberately not here: torch, models, decoding loops and beam search (`core.generate`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from core import checks
from core.checks import ConfigError

NEG_INF = -np.inf

# raw -> penalties -> temperature -> truncations, as Hugging Face's generate and vLLM order them:
# penalties act on the model's own scores, temperature reshapes, truncations cut the reshaped tail.
DEFAULT_ORDER = ("repetition_penalty", "frequency_presence_penalty", "temperature", "top_k", "top_p",
                 "min_p", "typical_p")


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


def entropy(logits: np.ndarray) -> float:
    """Shannon entropy of softmax(logits), in nats."""
    p = softmax(logits)
    nz = p > 0
    return float(-(p[nz] * np.log(p[nz])).sum())


def entropy_by_temperature(logits, temperatures: Sequence[float]) -> np.ndarray:
    """Entropy (nats) of softmax(logits / T) for each T > 0: how temperature spreads or sharpens."""
    x = _as_logits(logits)
    t = np.array([checks.number("temperature", t, 0.0, KNOBS["temperature"].high, low_open=True)
                  for t in temperatures])
    x = x[np.isfinite(x)]
    # (n_T, V) in float32, all temperatures in one pass: a curve for a chart, and at a 150k vocabulary the
    # float64 loop cost a page 150 ms per click; H = log Z - E_p[z] agrees with `entropy` to ~1e-5 nats
    z = ((x - x.max()).astype(np.float32)[None, :] / t[:, None].astype(np.float32))
    e = np.exp(z)
    s = e.sum(axis=1, dtype=np.float64)
    return np.log(s) - (e * z).sum(axis=1, dtype=np.float64) / s


# ---------------------------------------------------------------------------------------------------
# The knobs, once: range, default, what "off" is and a line of explanation. Validation, the CLI's flags
# and the pages' sliders and help all read this table.

@dataclass(frozen=True)
class Knob:
    name: str                   # the SamplerConfig field (and the CLI flag, with dashes)
    label: str                  # what a page calls it
    default: float | int        # also the value that leaves the distribution as it is ("off")
    low: float                  # the valid range, as vLLM and Hugging Face accept it
    high: float
    low_open: bool = False
    slider: tuple[float, float, float] = (0.0, 1.0, 0.01)   # a page's slider: min, max, step (within the range)
    explain: str = ""
    integer: bool = False

    def check(self, value):
        """The value, or ConfigError naming the knob, its range and the value."""
        if self.integer:
            return checks.integer(self.name, value, int(self.low), None if math.isinf(self.high) else int(self.high))
        return checks.number(self.name, value, self.low, self.high, low_open=self.low_open)

    @property
    def range_text(self) -> str:
        if self.integer:
            return f">= {self.low:g}" if math.isinf(self.high) else f"[{self.low:g}, {self.high:g}]"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


KNOBS: dict[str, Knob] = {k.name: k for k in [
    Knob("temperature", "Temperature", 1.0, 0.0, 100.0, slider=(0.0, 3.0, 0.05),
         explain="Divides the logits: below 1 sharpens the distribution, above 1 flattens it; 0 always takes "
                 "the most likely token (greedy)."),
    Knob("top_k", "Top-k", 0, 0, math.inf, slider=(0, 200, 1), integer=True,
         explain="Keeps only the k most likely tokens. 0 keeps them all."),
    Knob("top_p", "Top-p (nucleus)", 1.0, 0.0, 1.0, low_open=True, slider=(0.01, 1.0, 0.01),
         explain="Keeps the most likely tokens until their probabilities add up to p: a fixed share of the "
                 "probability mass, however many tokens that takes. 1 keeps all."),
    Knob("min_p", "Min-p", 0.0, 0.0, 1.0, slider=(0.0, 1.0, 0.01),
         explain="Keeps tokens at least this fraction as likely as the single most likely one: a bar relative "
                 "to the model's confidence, unlike top-p's fixed mass. 0 keeps all."),
    Knob("typical_p", "Typical-p", 1.0, 0.0, 1.0, slider=(0.01, 1.0, 0.01),
         explain="Keeps the tokens whose surprise is closest to the distribution's average surprise (its "
                 "entropy) until their mass reaches p. 1 keeps all."),
    Knob("repetition_penalty", "Repetition penalty", 1.0, 0.0, 1e6, low_open=True, slider=(0.5, 2.0, 0.05),
         explain="Above 1, every token already in the text (prompt included) becomes less likely, once, however "
                 "often it appeared; below 1, more likely. 1 is off."),
    Knob("frequency_penalty", "Frequency penalty", 0.0, -2.0, 2.0, slider=(-2.0, 2.0, 0.1),
         explain="Subtracts this from a token's logit for every time it was already generated. 0 is off."),
    Knob("presence_penalty", "Presence penalty", 0.0, -2.0, 2.0, slider=(-2.0, 2.0, 0.1),
         explain="Subtracts this from a token's logit once if it was generated at all. 0 is off."),
]}


def _as_logits(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ConfigError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
    if np.isnan(x).any() or not np.isfinite(x).any():
        raise ConfigError("logits hold NaN, or no finite value: nothing can be sampled")
    return x


def _keep(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits where mask, -inf elsewhere; when nothing would survive, the most likely token does."""
    if not mask.any():
        mask = np.zeros_like(mask)
        mask[int(np.argmax(x))] = True
    return np.where(mask, x, NEG_INF)


# ---------------------------------------------------------------------------------------------------
# Stages

def repetition_penalty(logits, history: Sequence[int], penalty: float) -> np.ndarray:
    penalty = KNOBS["repetition_penalty"].check(penalty)
    x = _as_logits(logits).copy()
    if penalty == 1.0 or len(history) == 0:
        return x
    seen = np.unique(np.asarray(history, dtype=np.int64))
    v = x[seen]
    x[seen] = np.where(v > 0, v / penalty, v * penalty)
    return x


def frequency_presence_penalty(logits, history: Sequence[int], frequency: float, presence: float) -> np.ndarray:
    frequency = KNOBS["frequency_penalty"].check(frequency)
    presence = KNOBS["presence_penalty"].check(presence)
    x = _as_logits(logits).copy()
    if (frequency == 0 and presence == 0) or len(history) == 0:
        return x
    counts = np.bincount(np.asarray(history, dtype=np.int64), minlength=x.size)[: x.size]
    return x - counts * frequency - (counts > 0) * presence


def temperature(logits, t: float) -> np.ndarray:
    """Scale by 1/t: t < 1 sharpens, t > 1 flattens; t == 0 keeps only the most likely token."""
    t = KNOBS["temperature"].check(t)
    x = _as_logits(logits)
    if t == 0.0:
        return _keep(x, np.zeros(x.size, dtype=bool))
    return x / t


def top_k(logits, k: int) -> np.ndarray:
    """Keep the k highest logits (ties at the k-th value are kept too); k == 0 is off."""
    k = KNOBS["top_k"].check(k)
    x = _as_logits(logits)
    if k == 0 or k >= x.size:
        return x.copy()
    kth = np.partition(x, -k)[-k]
    return _keep(x, x >= kth)


def top_p(logits, p: float) -> np.ndarray:
    """Nucleus: keep the smallest set of most likely tokens whose probability mass reaches p."""
    p = KNOBS["top_p"].check(p)
    x = _as_logits(logits)
    if p >= 1.0:
        return x.copy()
    order = np.argsort(-x, kind="stable")
    cum = np.cumsum(softmax(x)[order])
    n_keep = int(np.searchsorted(cum, p - 1e-12)) + 1        # first index where the mass reaches p
    mask = np.zeros(x.size, dtype=bool)
    mask[order[:n_keep]] = True
    return _keep(x, mask)


def min_p(logits, p: float) -> np.ndarray:
    """Keep tokens with probability >= p * (the top token's probability); 0 is off."""
    p = KNOBS["min_p"].check(p)
    x = _as_logits(logits)
    if p == 0.0:
        return x.copy()
    probs = softmax(x)
    return _keep(x, probs >= p * probs.max())


def typical_p(logits, p: float) -> np.ndarray:
    """Locally typical: sort tokens by |surprise - entropy| and keep them until their mass reaches p."""
    p = KNOBS["typical_p"].check(p)
    x = _as_logits(logits)
    if p >= 1.0:
        return x.copy()
    logp = log_softmax(x)
    probs = np.exp(logp)
    finite = np.isfinite(logp)
    ent = -(probs[finite] * logp[finite]).sum()
    distance = np.where(finite, np.abs(-logp - ent), np.inf)
    order = np.argsort(distance, kind="stable")
    cum = np.cumsum(probs[order])
    n_keep = int(np.searchsorted(cum, p - 1e-12)) + 1
    mask = np.zeros(x.size, dtype=bool)
    mask[order[:n_keep]] = True
    return _keep(x, mask)


# ---------------------------------------------------------------------------------------------------
# The pipeline

@dataclass(frozen=True)
class SamplerConfig:
    temperature: float = 1.0            # 0 = greedy; < 1 sharper, > 1 flatter
    top_k: int = 0                      # keep the k most likely tokens; 0 = off
    top_p: float = 1.0                  # keep the smallest set with this much probability; 1 = off
    min_p: float = 0.0                  # keep tokens at least this fraction as likely as the top one; 0 = off
    typical_p: float = 1.0              # keep the most typical tokens up to this mass; 1 = off
    repetition_penalty: float = 1.0     # > 1 discourages any token already present; 1 = off
    frequency_penalty: float = 0.0      # subtract per occurrence so far; 0 = off; [-2, 2]
    presence_penalty: float = 0.0       # subtract once if present at all; 0 = off; [-2, 2]
    order: tuple[str, ...] = DEFAULT_ORDER

    def __post_init__(self):
        for knob in KNOBS.values():
            knob.check(getattr(self, knob.name))
        order = tuple(self.order)
        unknown = [s for s in order if s not in STAGES]
        if unknown or len(set(order)) != len(order):
            raise ConfigError(f"order must list distinct stages from {', '.join(DEFAULT_ORDER)}; got {list(order)}")
        object.__setattr__(self, "order", order)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["order"] = list(self.order)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerConfig":
        d = dict(d)
        if "order" in d:
            d["order"] = tuple(d["order"])
        return cls(**d)


def _apply(stage: str, x: np.ndarray, cfg: SamplerConfig, history: Sequence[int],
           generated: Sequence[int]) -> np.ndarray:
    if stage == "repetition_penalty":
        return repetition_penalty(x, history, cfg.repetition_penalty)
    if stage == "frequency_presence_penalty":
        return frequency_presence_penalty(x, generated, cfg.frequency_penalty, cfg.presence_penalty)
    if stage == "temperature":
        return temperature(x, cfg.temperature)
    if stage == "top_k":
        return top_k(x, cfg.top_k)
    if stage == "top_p":
        return top_p(x, cfg.top_p)
    if stage == "min_p":
        return min_p(x, cfg.min_p)
    return typical_p(x, cfg.typical_p)


STAGES = DEFAULT_ORDER


@dataclass
class StageView:
    name: str               # "raw" first, then each stage
    logits: np.ndarray      # after this stage (-inf: removed)
    probs: np.ndarray       # softmax of those
    kept: int               # tokens still possible


@dataclass
class PipelineResult:
    stages: list[StageView] = field(default_factory=list)

    @property
    def final(self) -> StageView:
        return self.stages[-1]


def run_pipeline(logits, cfg: SamplerConfig, history: Sequence[int] = (), generated: Sequence[int] | None = None,
                 keep_stages: bool = True) -> PipelineResult:
    """Apply the stages in cfg.order; with keep_stages, record the distribution after each.

    history: every token so far, prompt included (the repetition penalty looks at it, as in Hugging
    Face and vLLM); generated: only the tokens generated (frequency and presence penalties count
    these, as vLLM does); None means the whole history."""
    x = _as_logits(logits)
    generated = history if generated is None else generated
    out = PipelineResult()

    def record(name, v):
        probs = softmax(v)
        out.stages.append(StageView(name, v, probs, int((probs > 0).sum())))

    if keep_stages:
        record("raw", x)
    for stage in cfg.order:
        x = _apply(stage, x, cfg, history, generated)
        if keep_stages:
            record(stage, x)
    if not keep_stages:
        record("final", x)
    return out


def is_active(stage: str, cfg: SamplerConfig) -> bool:
    """Whether a stage changes anything with these settings (off stages are skipped when sampling)."""
    return {"repetition_penalty": cfg.repetition_penalty != 1.0,
            "frequency_presence_penalty": cfg.frequency_penalty != 0.0 or cfg.presence_penalty != 0.0,
            "temperature": cfg.temperature != 1.0,
            "top_k": cfg.top_k != 0,
            "top_p": cfg.top_p < 1.0,
            "min_p": cfg.min_p > 0.0,
            "typical_p": cfg.typical_p < 1.0}[stage]


def process(logits, cfg: SamplerConfig, history: Sequence[int] = (),
            generated: Sequence[int] | None = None) -> np.ndarray:
    """The final processed logits (no per-stage record): the fast path of a decoding loop, which
    skips the stages that are off."""
    x = _as_logits(logits)
    generated = history if generated is None else generated
    for stage in cfg.order:
        if is_active(stage, cfg):
            x = _apply(stage, x, cfg, history, generated)
    return x


def choose(logits, rng: np.random.Generator | None) -> int:
    """Draw a token id from softmax(logits) by inverse CDF with one uniform number.

    A single surviving token is returned without a draw (greedy needs no generator: rng may be None)."""
    probs = softmax(logits)
    alive = np.flatnonzero(probs > 0)
    if alive.size == 1:
        return int(alive[0])
    if rng is None:
        raise ConfigError("several tokens remain possible, so a random generator is needed to choose")
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


def position_rng(seed: int, position: int) -> np.random.Generator:
    """The generator for the token at absolute position `position`: a given seed draws the same token
    there whether it is reached by a stepper, a batch run, or a branch replayed from a URL."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(position)])
