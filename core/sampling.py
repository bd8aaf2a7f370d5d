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
  dry(logits, history, multiplier, base, allowed_length, breakers)
                                                 "don't repeat yourself" (text-generation-webui's
                                                 DRYLogitsProcessor): the token that would extend a
                                                 repeated run loses multiplier * base^(run - allowed);
                                                 multiplier 0 is off
  temperature(logits, t)                         divide by t; t == 0 is greedy (only the argmax stays)
  top_n_sigma(logits, n)                         Top-nσ (Tang et al. 2024, as llama.cpp): keep logits
                                                 >= max - n * std; 0 is off
  top_k(logits, k)                               keep the k most likely; 0 is off
  top_p(logits, p)                               nucleus (Holtzman et al. 2020): the smallest set of most
                                                 likely tokens whose mass reaches p; 1 is off
  min_p(logits, p)                               keep tokens whose probability is at least p times the top
                                                 token's (Nguyen et al. 2024); 0 is off
  typical_p(logits, p)                           locally typical sampling (Meister et al. 2023): keep the
                                                 tokens whose surprise is closest to the entropy until
                                                 their mass reaches p; 1 is off
  xtc(logits, threshold, probability, draw)      exclude top choices (text-generation-webui, llama.cpp):
                                                 sometimes remove every token above the threshold but the
                                                 least likely of them; probability 0 is off

`KNOBS` is the one table of the knobs (range, default, what is "off", a line of explanation): it
drives the validation of `SamplerConfig` (as serving engines do: a bad value raises ConfigError naming
the knob, its range and the value), the CLI's flags and the pages' sliders and help. `SamplerConfig`
holds the knobs' values and the order of the stages; `run_pipeline` returns the
distribution after every stage and `stage_deltas` what each stage changed, which is what the Generate
page draws; `choose` draws a token with one uniform number, so a seed gives the same token on every
path that asks.

Deliberately not here: torch, models, tokenizers, decoding loops and beam search (`core.generate`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from core import checks
from core.checks import ConfigError

NEG_INF = -np.inf

# raw -> penalties -> temperature -> truncations, as Hugging Face's generate and vLLM order them:
# penalties act on the model's own scores, temperature reshapes, truncations cut the reshaped tail. The
# three community samplers sit where text-generation-webui's default `sampler_priority` puts them: DRY
# with the penalties (after presence/frequency, before temperature), top-nσ first of the truncations
# (right after temperature, before top-k) and XTC last of all, after every truncation (llama.cpp's
# default chain also runs DRY after its penalties and XTC after min-p; it puts temperature last).
DEFAULT_ORDER = ("repetition_penalty", "frequency_presence_penalty", "dry", "temperature", "top_n_sigma", "top_k",
                 "top_p", "min_p", "typical_p", "xtc")
STAGES = DEFAULT_ORDER

# what a page calls each stage
STAGE_LABELS = {"repetition_penalty": "Repetition penalty", "frequency_presence_penalty": "Frequency / presence",
                "dry": "DRY", "temperature": "Temperature", "top_n_sigma": "Top-nσ", "top_k": "Top-k",
                "top_p": "Top-p", "min_p": "Min-p", "typical_p": "Typical-p", "xtc": "XTC"}

# DRY's sequence breakers by default: text-generation-webui's and llama.cpp's (a newline, a colon, a quote,
# an asterisk: chat and markup text repeats across them on purpose)
DRY_BREAKERS = ("\n", ":", "\"", "*")
DRY_MAX_MATCH = 50          # text-generation-webui's cap on a run's length: base^run stays finite
MAX_BREAKERS = 64


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
    default: float | int        # a stage's switch (temperature, top-k, DRY's multiplier...): also the value that
                                # leaves the distribution as it is ("off"); a setting (DRY's base): its usual value
    low: float                  # the valid range, as vLLM and Hugging Face accept it
    high: float
    low_open: bool = False
    slider: tuple[float, float, float] = (0.0, 1.0, 0.01)   # a page's slider: min, max, step (within the range)
    explain: str = ""
    integer: bool = False
    stage: str = ""             # the stage it sets (STAGES)

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
    Knob("temperature", "Temperature", 1.0, 0.0, 100.0, slider=(0.0, 3.0, 0.05), stage="temperature",
         explain="Divides the logits: below 1 sharpens the distribution, above 1 flattens it; 0 always takes "
                 "the most likely token (greedy)."),
    Knob("top_k", "Top-k", 0, 0, math.inf, slider=(0, 200, 1), integer=True, stage="top_k",
         explain="Keeps only the k most likely tokens. 0 keeps them all."),
    Knob("top_p", "Top-p (nucleus)", 1.0, 0.0, 1.0, low_open=True, slider=(0.01, 1.0, 0.01), stage="top_p",
         explain="Keeps the most likely tokens until their probabilities add up to p: a fixed share of the "
                 "probability mass, however many tokens that takes. 1 keeps all."),
    Knob("min_p", "Min-p", 0.0, 0.0, 1.0, slider=(0.0, 1.0, 0.01), stage="min_p",
         explain="Keeps tokens at least this fraction as likely as the single most likely one: a bar relative "
                 "to the model's confidence, unlike top-p's fixed mass. 0 keeps all."),
    Knob("typical_p", "Typical-p", 1.0, 0.0, 1.0, slider=(0.01, 1.0, 0.01), stage="typical_p",
         explain="Keeps the tokens whose surprise is closest to the distribution's average surprise (its "
                 "entropy) until their mass reaches p. 1 keeps all."),
    Knob("top_n_sigma", "Top-nσ", 0.0, 0.0, 100.0, slider=(0.0, 5.0, 0.05), stage="top_n_sigma",
         explain="Keeps the tokens whose logit is within n standard deviations (of all the logits still in play) "
                 "of the highest one. Temperature scales the logits and their spread alike, so the kept set does "
                 "not depend on it. 0 keeps all."),
    Knob("repetition_penalty", "Repetition penalty", 1.0, 0.0, 1e6, low_open=True, slider=(0.5, 2.0, 0.05),
         stage="repetition_penalty",
         explain="Above 1, every token already in the text (prompt included) becomes less likely, once, however "
                 "often it appeared; below 1, more likely. 1 is off."),
    Knob("frequency_penalty", "Frequency penalty", 0.0, -2.0, 2.0, slider=(-2.0, 2.0, 0.1),
         stage="frequency_presence_penalty",
         explain="Subtracts this from a token's logit for every time it was already generated. 0 is off."),
    Knob("presence_penalty", "Presence penalty", 0.0, -2.0, 2.0, slider=(-2.0, 2.0, 0.1),
         stage="frequency_presence_penalty",
         explain="Subtracts this from a token's logit once if it was generated at all. 0 is off."),
    Knob("dry_multiplier", "DRY multiplier", 0.0, 0.0, 100.0, slider=(0.0, 5.0, 0.05), stage="dry",
         explain="Don't repeat yourself: when the text ends with a run of tokens that already appeared earlier, the "
                 "token that continued it back then loses multiplier × base^(run length − allowed length) from "
                 "its logit, so copying grows costlier the longer the copy. 0 is off."),
    Knob("dry_base", "DRY base", 1.75, 1.0, 10.0, slider=(1.0, 4.0, 0.05), stage="dry",
         explain="How fast DRY's penalty grows with each extra repeated token."),
    Knob("dry_allowed_length", "DRY allowed length", 2, 1, 1000, slider=(1, 20, 1), integer=True, stage="dry",
         explain="Repeated runs up to this many tokens are free (names, common phrases); longer ones are penalised."),
    Knob("xtc_threshold", "XTC threshold", 0.1, 0.0, 1.0, slider=(0.0, 0.5, 0.01), stage="xtc",
         explain="Exclude top choices: tokens at least this likely count as top choices. Above 0.5 at most one "
                 "token can reach it, so XTC never acts."),
    Knob("xtc_probability", "XTC probability", 0.0, 0.0, 1.0, slider=(0.0, 1.0, 0.01), stage="xtc",
         explain="How often XTC acts: then every top choice but the least likely one is removed, steering away "
                 "from the most predictable continuation while keeping a likely one. 0 is off."),
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


def top_n_sigma(logits, n: float) -> np.ndarray:
    """Top-nσ (Tang et al. 2024, "Top-nσ: Not All Logits Are You Need"): keep the tokens whose logit is at least
    max - n * σ, where σ is the standard deviation of the logits still in play; 0 is off.

    As llama.cpp's `llama_sampler_top_n_sigma_apply`: mean and σ over the finite logits only (a population σ),
    so tokens an earlier stage removed do not widen the band. (text-generation-webui's TopNSigmaLogitsWarper
    counts removed tokens as zeros and divides by V - 1, which differs once something was cut.) Scaling the
    logits scales max and σ alike, so the kept set does not depend on temperature."""
    n = KNOBS["top_n_sigma"].check(n)
    x = _as_logits(logits)
    if n == 0.0:
        return x.copy()
    finite = x[np.isfinite(x)]
    return _keep(x, x >= finite.max() - n * finite.std())


def xtc(logits, threshold: float, probability: float, draw: float) -> np.ndarray:
    """Exclude Top Choices (XTC; p-e-w, text-generation-webui's XTCLogitsWarper, llama.cpp's
    `llama_sampler_xtc`): when draw < probability, remove every token whose probability is >= threshold
    except the least likely of them, so the most predictable continuations give way while one that is
    still likely remains; with fewer than two such tokens nothing changes. probability 0 is off.

    draw: one uniform number in [0, 1), the stage's coin (`xtc_draw` derives it from the seed and the
    position, so a shared link replays the same decision). Only tokens still possible count (llama.cpp
    applies it to the candidates its earlier stages left). text-generation-webui also skips the stage
    when it would remove the newline or EOS token; this stage knows no tokenizer and, as llama.cpp,
    does not."""
    threshold = KNOBS["xtc_threshold"].check(threshold)
    probability = KNOBS["xtc_probability"].check(probability)
    x = _as_logits(logits)
    if not draw < probability:
        return x.copy()
    probs = softmax(x)
    top = np.flatnonzero((probs >= threshold) & (probs > 0))
    if top.size < 2:
        return x.copy()
    least = top[np.argmin(x[top])]
    mask = np.ones(x.size, dtype=bool)
    mask[top] = False
    mask[least] = True
    return _keep(x, mask)


def dry(logits, history: Sequence[int], multiplier: float, base: float, allowed_length: int,
        breakers: Sequence[int] = ()) -> np.ndarray:
    """DRY, "don't repeat yourself" (p-e-w; text-generation-webui's DRYLogitsProcessor is the reference):
    if the history ends with a run of tokens that also appeared earlier, the token that followed that
    earlier run is the one that would extend the repetition; its logit loses
    multiplier * base ** (run - allowed_length) when run >= allowed_length (the longest such run per
    token; runs are capped at DRY_MAX_MATCH). A sequence breaker (a token id) stops a run: nothing is
    penalised after one, and no run reaches back across one. multiplier 0 is off.

    Where the reference walks back from every earlier occurrence of the last token one at a time, this
    extends all candidate runs together, one step back per pass."""
    multiplier = KNOBS["dry_multiplier"].check(multiplier)
    base = KNOBS["dry_base"].check(base)
    allowed_length = KNOBS["dry_allowed_length"].check(allowed_length)
    x = _as_logits(logits).copy()
    h = np.asarray(history, dtype=np.int64)
    n = h.size
    if multiplier == 0.0 or n < 2:
        return x
    is_breaker = np.isin(h, np.asarray(list(breakers), dtype=np.int64))
    if is_breaker[-1]:
        return x
    # earlier places where the last token also stands, whose follower is no breaker: each is a run of 1
    starts = np.flatnonzero(h[:-1] == h[-1])
    starts = starts[~is_breaker[starts + 1]]
    run = np.ones(starts.size, dtype=np.int64)
    growing = np.ones(starts.size, dtype=bool)
    for k in range(1, DRY_MAX_MATCH):           # does the token k back from the end match k back from each start?
        if n - 1 - k < 0 or is_breaker[n - 1 - k]:
            break
        back = starts - k
        growing &= back >= 0
        growing[growing] = h[back[growing]] == h[n - 1 - k]
        if not growing.any():
            break
        run += growing
    followers = h[starts + 1]
    longest = np.zeros(x.size, dtype=np.int64)
    np.maximum.at(longest, followers, run)
    hit = longest >= allowed_length
    x[hit] -= multiplier * base ** (longest[hit] - allowed_length).astype(np.float64)
    return x


def parse_breakers(text: str) -> tuple[str, ...]:
    """DRY's sequence breakers from text-generation-webui's form: JSON strings separated by commas
    ('"\\n", ":", "\\"", "*"'), brackets optional. ConfigError when it is not that."""
    text = checks.text("dry_sequence_breakers", text).strip()
    try:
        items = json.loads(text if text.startswith("[") else f"[{text}]")
    except ValueError as e:
        raise ConfigError(f"dry_sequence_breakers must be quoted strings separated by commas, such as "
                          f"{format_breakers(DRY_BREAKERS)}; got {text[:60]!r} ({e})") from e
    if not isinstance(items, list) or not all(isinstance(b, str) and b for b in items):
        raise ConfigError(f"dry_sequence_breakers must be non-empty strings; got {text[:60]!r}")
    if len(items) > MAX_BREAKERS:
        raise ConfigError(f"dry_sequence_breakers takes at most {MAX_BREAKERS} strings; got {len(items)}")
    return tuple(dict.fromkeys(items))


def format_breakers(breakers: Sequence[str]) -> str:
    """The inverse of `parse_breakers`."""
    return ", ".join(json.dumps(b) for b in breakers)


def breaker_ids(encode: Callable[[str], list[int]], breakers: Sequence[str]) -> tuple[tuple[int, ...], list[str]]:
    """The token ids of DRY's breakers for a tokenizer, as text-generation-webui finds them: the last token of
    'a' + breaker (a breaker as it ends a piece of text, not as it starts one). Returns (ids, breakers this
    tokenizer cannot encode)."""
    ids, unknown = [], []
    for b in breakers:
        try:
            ids.append(encode("a" + b)[-1])
        except (ValueError, KeyError, IndexError):      # a symbol vocabulary may hold neither 'a' nor the breaker
            try:
                ids.append(encode(b)[-1])
            except (ValueError, KeyError, IndexError):
                unknown.append(b)
    return tuple(dict.fromkeys(int(i) for i in ids)), unknown


def xtc_draw(seed: int, position: int) -> float:
    """XTC's coin at `position`: from its own stream of the position's generator, so it neither repeats nor
    shifts the number `choose` draws there."""
    return float(position_rng(seed, position, stream=1).random())


# ---------------------------------------------------------------------------------------------------
# The pipeline

@dataclass(frozen=True)
class SamplerConfig:
    temperature: float = 1.0            # 0 = greedy; < 1 sharper, > 1 flatter
    top_k: int = 0                      # keep the k most likely tokens; 0 = off
    top_p: float = 1.0                  # keep the smallest set with this much probability; 1 = off
    min_p: float = 0.0                  # keep tokens at least this fraction as likely as the top one; 0 = off
    typical_p: float = 1.0              # keep the most typical tokens up to this mass; 1 = off
    top_n_sigma: float = 0.0            # keep logits within n standard deviations of the top one; 0 = off
    repetition_penalty: float = 1.0     # > 1 discourages any token already present; 1 = off
    frequency_penalty: float = 0.0      # subtract per occurrence so far; 0 = off; [-2, 2]
    presence_penalty: float = 0.0       # subtract once if present at all; 0 = off; [-2, 2]
    dry_multiplier: float = 0.0         # DRY's penalty scale; 0 = off
    dry_base: float = 1.75              # DRY's growth per repeated token
    dry_allowed_length: int = 2         # repeated runs this long are free
    dry_breaker_ids: tuple[int, ...] = ()   # token ids that stop a run (`breaker_ids` finds them for a tokenizer)
    xtc_threshold: float = 0.1          # XTC: tokens this likely are top choices
    xtc_probability: float = 0.0        # XTC: how often it removes them; 0 = off
    order: tuple[str, ...] = DEFAULT_ORDER

    def __post_init__(self):
        for knob in KNOBS.values():
            knob.check(getattr(self, knob.name))
        ids = self.dry_breaker_ids
        if (not isinstance(ids, (tuple, list)) or len(ids) > MAX_BREAKERS
                or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < 2 ** 31
                       for i in ids)):
            raise ConfigError(f"dry_breaker_ids must be at most {MAX_BREAKERS} token ids (integers in [0, 2**31)); got "
                              f"{str(ids)[:80]}")
        object.__setattr__(self, "dry_breaker_ids", tuple(int(i) for i in ids))
        order = tuple(self.order) if isinstance(self.order, (tuple, list)) else None
        if order is None or any(s not in STAGES for s in order) or len(set(order)) != len(order):
            raise ConfigError(f"order must list distinct stages from {', '.join(STAGES)}; got {self.order!r}")
        # a stage that is set but not in the order would do nothing without a word: say so instead
        missing = [s for s in STAGES if s not in order and is_active(s, self)]
        if missing:
            raise ConfigError(f"order leaves out {', '.join(missing)}, which is set to act; add it to the order "
                              f"or turn it off")
        object.__setattr__(self, "order", order)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["order"] = list(self.order)
        d["dry_breaker_ids"] = list(self.dry_breaker_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerConfig":
        """A config from `to_dict`'s form. A dict saved before a knob existed loads with that knob off, and its
        stored order (which lacks the newer stages) stays as it was: the result samples as it did."""
        d = dict(d)
        for key in ("order", "dry_breaker_ids"):
            if key in d:
                if not isinstance(d[key], (list, tuple)):
                    raise ConfigError(f"{key} must be a list; got {str(d[key])[:80]}")
                d[key] = tuple(d[key])
        return cls(**d)


def parse_order(text: str) -> tuple[str, ...]:
    """A stage order from comma-separated stage names (a link's or a flag's). Stages it leaves out follow
    in their default order; ConfigError for an unknown or repeated name."""
    names = [w.strip() for w in checks.text("order", text).split(",") if w.strip()]
    unknown = [w for w in names if w not in STAGES]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"order must name distinct stages from {', '.join(STAGES)}; got {text[:120]!r}")
    return complete_order(names)


def complete_order(names: Sequence[str]) -> tuple[str, ...]:
    """`names` (known, distinct stages) first, then every stage they leave out, in the default order."""
    return tuple(names) + tuple(s for s in DEFAULT_ORDER if s not in names)


def _apply(stage: str, x: np.ndarray, cfg: SamplerConfig, history: Sequence[int],
           generated: Sequence[int], seed: int) -> np.ndarray:
    if stage == "repetition_penalty":
        return repetition_penalty(x, history, cfg.repetition_penalty)
    if stage == "frequency_presence_penalty":
        return frequency_presence_penalty(x, generated, cfg.frequency_penalty, cfg.presence_penalty)
    if stage == "dry":
        return dry(x, history, cfg.dry_multiplier, cfg.dry_base, cfg.dry_allowed_length, cfg.dry_breaker_ids)
    if stage == "temperature":
        return temperature(x, cfg.temperature)
    if stage == "top_n_sigma":
        return top_n_sigma(x, cfg.top_n_sigma)
    if stage == "top_k":
        return top_k(x, cfg.top_k)
    if stage == "top_p":
        return top_p(x, cfg.top_p)
    if stage == "min_p":
        return min_p(x, cfg.min_p)
    if stage == "typical_p":
        return typical_p(x, cfg.typical_p)
    if cfg.xtc_probability == 0.0:          # off: no coin to draw
        return x.copy()
    return xtc(x, cfg.xtc_threshold, cfg.xtc_probability, xtc_draw(seed, len(history)))


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
                 keep_stages: bool = True, seed: int = 0) -> PipelineResult:
    """Apply the stages in cfg.order; with keep_stages, record the distribution after each.

    history: every token so far, prompt included (the repetition penalty and DRY look at it, as in Hugging
    Face, vLLM and text-generation-webui); generated: only the tokens generated (frequency and presence
    penalties count these, as vLLM does); None means the whole history. seed: XTC's coin comes from it and
    the position len(history)."""
    x = _as_logits(logits)
    generated = history if generated is None else generated
    out = PipelineResult()

    def record(name, v):
        probs = softmax(v)
        out.stages.append(StageView(name, v, probs, int((probs > 0).sum())))

    if keep_stages:
        record("raw", x)
    for stage in cfg.order:
        x = _apply(stage, x, cfg, history, generated, seed)
        if keep_stages:
            record(stage, x)
    if not keep_stages:
        record("final", x)
    return out


def is_active(stage: str, cfg: SamplerConfig) -> bool:
    """Whether a stage changes anything with these settings (off stages are skipped when sampling)."""
    return {"repetition_penalty": cfg.repetition_penalty != 1.0,
            "frequency_presence_penalty": cfg.frequency_penalty != 0.0 or cfg.presence_penalty != 0.0,
            "dry": cfg.dry_multiplier > 0.0,
            "temperature": cfg.temperature != 1.0,
            "top_n_sigma": cfg.top_n_sigma > 0.0,
            "top_k": cfg.top_k != 0,
            "top_p": cfg.top_p < 1.0,
            "min_p": cfg.min_p > 0.0,
            "typical_p": cfg.typical_p < 1.0,
            # above 0.5 at most one token can reach the threshold, and the least likely of one is kept
            "xtc": cfg.xtc_probability > 0.0 and cfg.xtc_threshold <= 0.5}[stage]


def process(logits, cfg: SamplerConfig, history: Sequence[int] = (),
            generated: Sequence[int] | None = None, seed: int = 0) -> np.ndarray:
    """The final processed logits (no per-stage record): the fast path of a decoding loop, which
    skips the stages that are off."""
    x = _as_logits(logits)
    generated = history if generated is None else generated
    for stage in cfg.order:
        if is_active(stage, cfg):
            x = _apply(stage, x, cfg, history, generated, seed)
    return x


@dataclass
class StageDelta:
    """What one stage did to the distribution it was given (what the Generate page draws per stage)."""
    name: str
    on: bool                    # its knobs are set to act (`is_active`)
    kept_before: int            # tokens possible before it
    kept: int                   # and after it
    removed: np.ndarray         # ids it removed, ascending (unsorted by probability: a top-k can remove 150k)
    mass_removed: float         # the probability those had before it
    moved: float                # total variation between before and after: mass cut or shifted between tokens
    top: np.ndarray             # the most likely ids before it (at most n_top)
    before: np.ndarray          # their probabilities before it
    after: np.ndarray           # and after it (0: removed)

    @property
    def changed(self) -> bool:
        return self.moved > 1e-9 or self.removed.size > 0


def stage_deltas(result: PipelineResult, cfg: SamplerConfig, n_top: int = 12) -> list[StageDelta]:
    """Per stage of a `run_pipeline(..., keep_stages=True)` result, what it changed: kept counts, the ids it
    removed and their mass, the mass it moved, and its top tokens before and after."""
    def most_likely(probs: np.ndarray) -> np.ndarray:
        top = np.argpartition(-probs, n_top)[:n_top] if probs.size > n_top else np.arange(probs.size)
        top = top[np.argsort(-probs[top], kind="stable")]         # a partition first: vocabularies reach 150k
        return top[probs[top] > 0]

    out, top = [], None
    for prev, cur in zip(result.stages, result.stages[1:]):
        top = most_likely(prev.probs) if top is None else top
        if not is_active(cur.name, cfg):        # an off stage is the identity (tests hold it to that): its top carries on
            out.append(StageDelta(cur.name, False, prev.kept, cur.kept, np.zeros(0, dtype=np.int64), 0.0, 0.0, top,
                                  prev.probs[top], cur.probs[top]))
            continue
        gone = np.flatnonzero((prev.probs > 0) & (cur.probs == 0))
        out.append(StageDelta(cur.name, True, prev.kept, cur.kept, gone, float(prev.probs[gone].sum()),
                              float(0.5 * np.abs(cur.probs - prev.probs).sum()), top, prev.probs[top],
                              cur.probs[top]))
        top = None
    return out


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


def position_rng(seed: int, position: int, stream: int = 0) -> np.random.Generator:
    """The generator for the token at absolute position `position`: a given seed draws the same token
    there whether it is reached by a stepper, a batch run, or a branch replayed from a URL. stream > 0:
    another independent generator for the same place (a stage's own coin, such as XTC's)."""
    key = [int(seed) & 0xFFFFFFFF, int(position)]
    return np.random.default_rng(key if stream == 0 else key + [int(stream)])
