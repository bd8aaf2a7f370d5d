"""Compare: one prompt and seed through several decoding strategies, with one set of metrics.

Holds `Strategy` (a named greedy / sampling / beam setting), `PRESETS` (the strategies people usually
compare: greedy, beam 4, temperature, top-k, top-p, min-p, typical), `Inputs` (everything a comparison's
results depend on, kept with them), `Outcome` (one strategy's text, tokens, time, metrics, every token
scored under the model with its alternatives, and the laid-out beam tree, or the error that kept it from
running) and `compare()` / `run()`, which run each strategy on the same prompt and seed. A strategy that
cannot run (a beam search with no room left in the context) gets its error in its own outcome and does not
stop the others.

`beam_tree()` lays a beam search's records out as a tidy tree for drawing: step across, an integer slot
down, no two edges crossing, each node's kind (extended, pruned, finished, stopped) and the answer's path.

Texts, token views and beam labels are decoded here, by the tokenizer that produced the tokens, so results
shown later (after the visitor picks another model) still read right.

Deliberately not here: the decoding itself (`core.generate`), rendering (the Compare page).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from core.checks import PlaygroundError
from core.generate import (Beam, BeamResult, BeamStep, Context, GenerationConfig, GenerationError, LogitsSource, Step,
                           beam_search, check_early_stopping, complete, make_step, prompt_ids, prompt_tail)
from core.limits import Limits
from core.metrics import GenerationMetrics, metrics_from_logprobs
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


ALTERNATIVES = 10      # the model's top choices kept for every token of every text


@dataclass(frozen=True)
class TreeNode:
    """One node of a beam tree as drawn: the prompt, or a beam after `step` tokens."""
    step: int                   # tokens generated (0: the prompt); a node's parent is at step - 1
    slot: int                   # integer position across the tree, 0 at the top
    parent: int | None          # index of the parent in BeamTree.nodes (None for the prompt)
    label: str                  # the newest token as text ("" for the prompt)
    logprob: float              # of the newest token, under the model
    sum_logprob: float          # of all tokens generated so far
    score: float                # sum_logprob / length ** length_penalty: what finished hypotheses are ranked by
    kind: str                   # "prompt", "extended", "pruned" (dropped from the beam), "finished",
                                # "stopped" (still live when the search ended: unfinished texts never compete)
    end: str | None = None      # a finished one: "eos", or "length" / "context" when cut at the limit
    rank: int | None = None     # a finished one still in the n-best: 1 is the text beam search returned
    best: bool = False          # on the path from the prompt to the returned text


@dataclass
class BeamTree:
    nodes: list[TreeNode]       # parents before children; node 0 is the prompt

    @property
    def edges(self) -> list[tuple[int, int]]:
        return [(n.parent, i) for i, n in enumerate(self.nodes) if n.parent is not None]


@dataclass
class Outcome:
    strategy: Strategy
    text: str = ""                      # decoded by the tokenizer that produced token_ids
    token_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    metrics: GenerationMetrics | None = None
    finish_reason: str = ""             # "eos", "stop", "length", "context"
    tokens: list[Step] = field(default_factory=list)    # each token scored under the model's own distribution
                                                        # (raw_prob; prob is the same), with its top alternatives there
    pieces: list[bytes] = field(default_factory=list)   # each token's bytes in the text (b"" for end-of-text)
    beam_steps: list[BeamStep] = field(default_factory=list)
    tree: BeamTree | None = None        # beam_steps laid out for drawing
    error: str | None = None            # why this strategy did not run (then the fields above are empty)

    def text_before(self, index: int) -> str:
        """The generated text before token `index` (the model's context when it chose that token)."""
        return b"".join(self.pieces[:index]).decode("utf-8", errors="replace")


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


def continuation_prompt(prompt: str, outcome: Outcome, index: int, max_chars: int) -> tuple[str, bool]:
    """The prompt that puts a reader where `outcome` chose token `index`: the comparison's prompt and the text
    before that token, so the next-token candidates there are that token's alternatives. Past max_chars the
    start is dropped (the end is what the model continues from); the flag says whether it was."""
    return prompt_tail(prompt + outcome.text_before(index), max_chars)


def _run_one(source: LogitsSource, ids: list[int], s: Strategy, max_new_tokens: int, seed: int, limits: Limits,
             early_stopping: bool | str) -> Outcome:
    t0 = time.perf_counter()
    tree = None
    if s.beam_width:
        # beam search stops at the context's end itself (finish_reason "context"); beams share one cache
        records = list(beam_search(source, ids, s.beam_width, max_new_tokens, s.length_penalty,
                                   early_stopping=early_stopping, limits=limits))
        result: BeamResult = records[-1]
        steps = [r for r in records if isinstance(r, BeamStep)]
        tokens, text, reason = result.hypotheses[0].tokens, result.texts[0], result.finish_reason
        tree = beam_tree(steps, result.hypotheses, source.tokenizer.token_text)
    else:
        # top_n=0: the strategy's time is its own; alternatives come from the scoring pass below
        c = complete(source, ids, GenerationConfig(max_new_tokens=max_new_tokens, sampler=s.sampler, seed=seed,
                                                   top_n=0), limits)
        tokens, text, reason, steps = c.token_ids, c.text, c.finish_reason, []
    seconds = time.perf_counter() - t0
    scored = score_tokens(source, ids, tokens, ALTERNATIVES)
    eos = getattr(source.tokenizer, "eot_id", None)
    pieces = [b"" if t == eos else source.tokenizer.token_bytes(t) for t in tokens]
    return Outcome(s, text, tokens, seconds, _metrics(tokens, scored, seconds), reason, scored, pieces, steps, tree)


def score_tokens(source: LogitsSource, prompt_ids: Sequence[int], tokens: Sequence[int], top_n: int) -> list[Step]:
    """Each token of a continuation under the model's own distribution (whatever strategy chose it), with the
    model's top_n alternatives at its position: one pass, which the metrics are computed from too."""
    ctx = Context(source, list(prompt_ids))
    out = []
    for i, t in enumerate(tokens):
        out.append(make_step(source, ctx.logits, ctx.logits, t, i, len(ctx.ids), top_n))
        if i < len(tokens) - 1:         # the distribution after the last token is not needed
            ctx.push(t)
    return out


def _metrics(tokens: Sequence[int], scored: Sequence[Step], seconds: float) -> GenerationMetrics:
    # core.metrics' figures from the scoring pass's log-probs (the same Context walk `measure` makes), so a
    # comparison runs the model over each text once, not twice
    return metrics_from_logprobs(tokens, [s.raw_logprob for s in scored], seconds)


# ---------------------------------------------------------------------------------------------------
# The beam tree, laid out

def beam_tree(steps: Sequence[BeamStep], hypotheses: Sequence[Beam], token_text: Callable[[int], str]) -> BeamTree:
    """A beam search's records as a tree to draw: node 0 is the prompt, then every beam of every step, its
    parent one step to the left. Slots come from `tidy_slots`, so no two edges cross. `hypotheses` are the
    search's n-best, best first: they get their rank, and the first one its path marked."""
    ranked = {tuple(h.tokens): r for r, h in enumerate(hypotheses, start=1)}
    beams: list[Beam | None] = [None]
    parents: list[int | None] = [None]
    previous = [0]                                  # node ids of the previous step's beams (its live ones first)
    for record in steps:
        ids = []
        for b in record.beams:
            ids.append(len(beams))
            beams.append(b)
            parents.append(previous[b.parent])
        previous = ids
    children: list[list[int]] = [[] for _ in beams]
    for i, p in enumerate(parents):
        if p is not None:
            children[p].append(i)
    slots = tidy_slots(parents, children)
    answer = next((i for i, b in enumerate(beams) if b is not None and ranked.get(tuple(b.tokens)) == 1), None)
    best = set()
    while answer is not None:
        best.add(answer)
        answer = parents[answer]
    last = len(steps)
    nodes = [TreeNode(0, slots[0], None, "", 0.0, 0.0, 0.0, "prompt", best=0 in best)]
    for i, b in enumerate(beams[1:], start=1):
        step = len(b.tokens)
        before = 0.0 if parents[i] == 0 else beams[parents[i]].sum_logprob     # 0: the prompt
        if b.finished:
            kind = "finished"
        elif children[i]:
            kind = "extended"
        else:
            kind = "stopped" if step == last else "pruned"
        nodes.append(TreeNode(step, slots[i], parents[i], token_text(b.tokens[-1]), b.sum_logprob - before,
                              b.sum_logprob, b.score, kind, b.end, ranked.get(tuple(b.tokens)) if b.finished else None,
                              i in best))
    return BeamTree(nodes)


def tidy_slots(parents: Sequence[int | None], children: Sequence[Sequence[int]]) -> list[int]:
    """Integer slots for a tree whose nodes come after their parents (node 0 the root), children in order.

    Reingold and Tilford's tidy tree on a grid: each subtree is laid out on its own, then its children's
    subtrees are stacked in order, each pushed down just far enough to sit at least one slot below every
    earlier sibling's subtree at every depth they share (their contours), and the parent goes at the
    (rounded down) middle of its first and last child. Every subtree thus lies strictly above the next at
    every depth, so no two edges cross, and a long branch does not push away a short one beside it as a
    one-slot-per-leaf layout would (a beam tree is mostly short pruned branches off one long stem).

    A contour is (off, rows): rows[-1 - d] = (top, bottom) of the subtree at d levels below its root, plus
    off; kept deepest first so a parent adds its own row by appending, and a merge touches only the depths
    two subtrees share."""
    n = len(parents)
    rel = [0] * n                                   # slot relative to the parent's
    contour: list[tuple[int, list[tuple[int, int]]] | None] = [None] * n
    for v in reversed(range(n)):                    # children (higher ids) before their parents
        kids = children[v]
        if not kids:
            contour[v] = (0, [(0, 0)])
            continue
        off, rows = contour[kids[0]]                # relative to the first child's slot
        shifts = [0]
        for c in kids[1:]:
            c_off, c_rows = contour[c]
            common = min(len(rows), len(c_rows))
            shift = 1 + max(rows[-1 - d][1] + off - c_rows[-1 - d][0] - c_off for d in range(common))
            c_off += shift
            if len(c_rows) > len(rows):             # keep the deeper list; the shared depths take the top from above
                for d in range(common):
                    c_rows[-1 - d] = (rows[-1 - d][0] + off - c_off, c_rows[-1 - d][1])
                off, rows = c_off, c_rows
            else:                                   # the new subtree is the lowest at every depth it reaches
                for d in range(common):
                    rows[-1 - d] = (rows[-1 - d][0], c_rows[-1 - d][1] + c_off - off)
            shifts.append(shift)
            contour[c] = None
        mid = (shifts[0] + shifts[-1]) // 2
        for c, shift in zip(kids, shifts):
            rel[c] = shift - mid
        off -= mid
        rows.append((-off, -off))                   # the parent's own row: slot 0 relative to itself
        contour[v] = (off, rows)
        contour[kids[0]] = None
    slots = [0] * n
    for v in range(1, n):
        slots[v] = slots[parents[v]] + rel[v]
    top = min(slots, default=0)
    return [s - top for s in slots]
