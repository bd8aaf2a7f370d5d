"""Metrics: numbers that compare decoding strategies on one prompt.

Holds distinct-n (diversity), the repeated n-gram rate (degeneration), and `measure()`, which scores
any continuation under the model's own distribution (mean logprob, perplexity) whatever strategy
produced it, so greedy, beams and samples are judged by one ruler.

Deliberately not here: torch, running the strategies (`core.generate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from core import sampling
from core.generate import Context, LogitsSource


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[int], n: int) -> float:
    """Distinct n-grams / all n-grams (Li et al. 2016); 0 when the text is shorter than n."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(tokens: Sequence[int], n: int = 3) -> float:
    """Share of n-grams that already occurred earlier in the same text: loops score high."""
    grams = ngrams(tokens, n)
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


@dataclass
class GenerationMetrics:
    length: int                 # tokens generated
    mean_logprob: float         # per token, under the model's own distribution (nats)
    perplexity: float           # exp(-mean_logprob)
    distinct_1: float
    distinct_2: float
    distinct_3: float
    repeated_3gram_rate: float
    ms_per_token: float | None  # wall time of the strategy that produced it, when known


def continuation_logprobs(source: LogitsSource, prompt_ids: Sequence[int], tokens: Sequence[int]) -> list[float]:
    """log p(token | everything before it) for each token of the continuation."""
    ctx = Context(source, list(prompt_ids))
    out = []
    for t in tokens:
        out.append(float(sampling.log_softmax(ctx.logits)[t]))
        ctx.push(t)
    return out


def measure(source: LogitsSource, prompt_ids: Sequence[int], tokens: Sequence[int],
            seconds: float | None = None) -> GenerationMetrics:
    if not tokens:
        raise ValueError("nothing was generated, so there is nothing to measure")
    return metrics_from_logprobs(tokens, continuation_logprobs(source, prompt_ids, tokens), seconds)


def metrics_from_logprobs(tokens: Sequence[int], logprobs: Sequence[float],
                          seconds: float | None = None) -> GenerationMetrics:
    """`measure`'s figures from each token's log-prob under the model, for a caller that has them already
    (Compare scores every text once, for its colours and these)."""
    if not tokens or len(logprobs) != len(tokens):
        raise ValueError(f"one log-prob per generated token is needed; got {len(logprobs)} for {len(tokens)} tokens")
    mean = sum(logprobs) / len(logprobs)
    return GenerationMetrics(len(tokens), mean, math.exp(min(-mean, 700)), distinct_n(tokens, 1),
                             distinct_n(tokens, 2), distinct_n(tokens, 3), repeated_ngram_rate(tokens, 3),
                             None if seconds is None else 1000 * seconds / len(tokens))
