"""Compare: one prompt and seed through several decoding strategies, with one set of metrics.

Holds `Strategy` (a named greedy / sampling / beam setting), `PRESETS` (the strategies people usually
compare: greedy, beam 4, temperature, top-k, top-p, min-p, typical), and `compare()`, which runs each on
the same prompt and seed and returns its text, tokens, time and `core.metrics` figures, plus the beam
steps for drawing the search tree.

Deliberately not here: the decoding itself (`core.generate`), rendering (the Compare page).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.generate import (BeamResult, BeamStep, GenerationConfig, LogitsSource, Limits, beam_search,
                           complete, prompt_ids)
from core.metrics import GenerationMetrics, measure
from core.sampling import SamplerConfig


@dataclass(frozen=True)
class Strategy:
    name: str
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    beam_width: int = 0                 # > 0: beam search with this width (the sampler is unused)
    length_penalty: float = 1.0


PRESETS: dict[str, Strategy] = {s.name: s for s in [
    Strategy("greedy", SamplerConfig(temperature=0.0)),
    Strategy("beam 4", beam_width=4),
    Strategy("temperature 0.7", SamplerConfig(temperature=0.7)),
    Strategy("pure sampling (T 1)", SamplerConfig()),
    Strategy("top-k 40", SamplerConfig(top_k=40)),
    Strategy("top-p 0.9", SamplerConfig(top_p=0.9)),
    Strategy("min-p 0.1", SamplerConfig(min_p=0.1)),
    Strategy("typical 0.9", SamplerConfig(typical_p=0.9)),
]}


@dataclass
class Outcome:
    strategy: Strategy
    text: str
    token_ids: list[int]
    seconds: float
    metrics: GenerationMetrics
    beam_steps: list[BeamStep] = field(default_factory=list)


def compare(source: LogitsSource, prompt: str, strategies: list[Strategy], max_new_tokens: int = 100,
            seed: int = 0, limits: Limits = Limits()) -> list[Outcome]:
    if not strategies:
        raise ValueError("choose at least one strategy to compare")
    if len(strategies) > limits.max_strategies:
        raise ValueError(f"compare at most {limits.max_strategies} strategies at once, got {len(strategies)}")
    ids = prompt_ids(source, prompt, limits)
    if not ids:
        raise ValueError("the prompt is empty; type some text to continue")
    out = []
    for s in strategies:
        t0 = time.perf_counter()
        if s.beam_width:
            room = source.block_size - len(ids) - 1
            records = list(beam_search(source, ids, s.beam_width, min(max_new_tokens, max(1, room)),
                                       s.length_penalty, limits=limits))
            result: BeamResult = records[-1]
            tokens, text = result.hypotheses[0].tokens, result.texts[0]
            steps = [r for r in records if isinstance(r, BeamStep)]
        else:
            c = complete(source, ids, GenerationConfig(max_new_tokens=max_new_tokens, sampler=s.sampler,
                                                              seed=seed, top_n=0), limits)
            tokens, text, steps = c.token_ids, c.text, []
        seconds = time.perf_counter() - t0
        out.append(Outcome(s, text, tokens, seconds, measure(source, ids, tokens, seconds), steps))
    return out
