"""Compare: one prompt and seed through several decoding strategies, with one set of metrics.

Holds `Strategy` (a named greedy / sampling / beam setting), `PRESETS` (the strategies people usually
compare: greedy, beam 4, temperature, top-k, top-p, min-p, typical), `Inputs` (everything a comparison's
results depend on, kept with them), `Outcome` (one strategy's text, tokens, time, `core.metrics` figures
and beam tree, or the error that kept it from running) and `compare()` / `run()`, which run each strategy
on the same prompt and seed. A strategy that cannot run (a beam search with no room left in the context)
gets its error in its own outcome and does not stop the others.

Texts and beam labels are decoded here, by the tokenizer that produced the tokens, so results shown later
(after the visitor picks another model) still read right.

Deliberately not here: the decoding itself (`core.generate`), rendering (the Compare page).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.checks import PlaygroundError
from core.generate import (BeamResult, BeamStep, GenerationConfig, GenerationError, LogitsSource, beam_search,
                           check_early_stopping, complete, prompt_ids)
from core.limits import Limits
from core.metrics import GenerationMetrics, measure
from core.sampling import SamplerConfig


@dataclass(frozen=True)
class Strategy:
    name: str
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    beam_width: int = 0                 # > 0: beam search with this width (the sampler is unused)
    length_penalty: float = 1.0


CUSTOM = "custom"       # the name of the visitor's own strategy beside the presets

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


@dataclass(frozen=True)
class Inputs:
    """What a comparison's results depend on: a page compares these to tell whether the results it shows
    are still for the settings on screen."""
    model: str                          # the model's directory
    prompt: str
    strategies: tuple[Strategy, ...]    # custom knobs included (a Strategy carries its SamplerConfig)
    seed: int
    max_new_tokens: int
    early_stopping: bool | str = False  # beam search's rule, as Hugging Face's (whose default is False)


@dataclass
class Outcome:
    strategy: Strategy
    text: str = ""                      # decoded by the tokenizer that produced token_ids
    token_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    metrics: GenerationMetrics | None = None
    finish_reason: str = ""             # "eos", "stop", "length", "context"
    beam_steps: list[BeamStep] = field(default_factory=list)
    beam_labels: list[list[str]] = field(default_factory=list)   # per step, each beam's newest token as text
    error: str | None = None            # why this strategy did not run (then the fields above are empty)


@dataclass
class Comparison:
    inputs: Inputs
    outcomes: list[Outcome]


def compare(source: LogitsSource, prompt: str, strategies: list[Strategy], max_new_tokens: int = 100,
            seed: int = 0, limits: Limits = Limits(), early_stopping: bool | str = False) -> list[Outcome]:
    """An Outcome per strategy, in order. Raises GenerationError only for what concerns them all (no strategy,
    too many, an empty or too long prompt, a bad early_stopping); a strategy's own failure is its
    outcome's `error`."""
    if not strategies:
        raise GenerationError("choose at least one strategy to compare")
    if len(strategies) > limits.max_strategies:
        custom = " (a custom strategy counts too)" if any(s.name == CUSTOM for s in strategies) else ""
        raise GenerationError(f"compare at most {limits.max_strategies} strategies at once, got {len(strategies)}"
                              f"{custom}: remove {len(strategies) - limits.max_strategies}")
    early_stopping = check_early_stopping(early_stopping)
    ids = prompt_ids(source, prompt, limits)
    if not ids:
        raise GenerationError("the prompt is empty; type some text to continue")
    out = []
    for s in strategies:
        try:
            out.append(_run_one(source, ids, s, max_new_tokens, seed, limits, early_stopping))
        except PlaygroundError as e:    # a setting this strategy cannot run with, a model refusal
            out.append(Outcome(s, error=str(e)))
    return out


def run(source: LogitsSource, inputs: Inputs, limits: Limits = Limits()) -> Comparison:
    """compare() on `inputs`, with them kept beside the outcomes."""
    return Comparison(inputs, compare(source, inputs.prompt, list(inputs.strategies), inputs.max_new_tokens,
                                      inputs.seed, limits, inputs.early_stopping))


def _run_one(source: LogitsSource, ids: list[int], s: Strategy, max_new_tokens: int, seed: int, limits: Limits,
             early_stopping: bool | str) -> Outcome:
    t0 = time.perf_counter()
    if s.beam_width:
        # beam search stops at the context's end itself (finish_reason "context"); beams share one cache
        records = list(beam_search(source, ids, s.beam_width, max_new_tokens, s.length_penalty,
                                   early_stopping=early_stopping, limits=limits))
        result: BeamResult = records[-1]
        steps = [r for r in records if isinstance(r, BeamStep)]
        tokens, text, reason = result.hypotheses[0].tokens, result.texts[0], result.finish_reason
        labels = [[source.tokenizer.token_text(b.tokens[-1]) for b in step.beams] for step in steps]
    else:
        c = complete(source, ids, GenerationConfig(max_new_tokens=max_new_tokens, sampler=s.sampler, seed=seed,
                                                   top_n=0), limits)
        tokens, text, reason, steps, labels = c.token_ids, c.text, c.finish_reason, [], []
    seconds = time.perf_counter() - t0
    return Outcome(s, text, tokens, seconds, measure(source, ids, tokens, seconds), reason, steps, labels)
