"""Generation: decoding strategies over any next-token-logits source, as generators of records.

Holds:
  decode()       greedy (temperature 0) and sampling through the staged sampler, yielding `Step`s:
                 token id and text, probability and logprob (under the distribution drawn from and
                 under the model's own), entropy, top-N alternatives and, on request, every stage's
                 distribution; stop strings matched on the text (so across token boundaries), EOS,
                 max new tokens; the window slides at the context limit and the step says so
  beam_search()  Hugging Face's beam search, rule for rule (candidates, finished set, length penalty,
                 early_stopping False / True / "never"; only finished texts are ranked, so results match
                 `generate(num_beams=...)`), beams stepped together in one batch over the KV cache, n-best
                 with scores, and a `BeamStep` per step with every beam and its parent (the tree a page
                 draws)
  sample_n(), best_of()   n seeded samples, and the one with the highest total logprob
  complete()     a whole `Completion` (text cut at the stop string) from decode()
Every request is checked against the server's `core.limits.Limits`, each refusal naming the ceiling.
`python -m core.generate exported/NAME --prompt ...` streams text in the terminal.

A source is anything with `next_logits(ids, cache) -> (logits[V], cache)`, `step(ids[B, T], cache)
-> (logits[B, T, V], cache)` (beam search batches its beams), `block_size`, `vocab_size` and
`tokenizer` (core.runtime.Model, or a test's numpy model). Randomness is drawn per absolute
position (`sampling.position_rng`), so a seed gives the same tokens however a page steps through them.

Deliberately not here: torch, the sampler stages' math (`core.sampling`), branching traces
(`core.trace`), comparison metrics (`core.metrics`).
"""

from __future__ import annotations

import argparse
import codecs
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np

from core import checks, cli, sampling
from core.checks import PlaygroundError
from core.limits import Limits
from core.sampling import SamplerConfig, StageView


class LogitsSource(Protocol):
    block_size: int
    vocab_size: int
    tokenizer: object

    def next_logits(self, ids, cache=None): ...

    def step(self, ids, cache=None): ...


# ---------------------------------------------------------------------------------------------------
# Configuration

class GenerationError(PlaygroundError):
    """A decoding request cannot be run as asked (a setting, the prompt, a move on a trace); the message
    says what to change."""


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 200
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0
    stop: tuple[str, ...] = ()          # strings that end the text (not included in it)
    stop_at_eos: bool = True            # end at <|endoftext|>
    top_n: int = 5                      # alternatives reported per step
    keep_stages: bool = False           # record every stage's distribution (the Generate page)

    def check(self, limits: Limits = Limits()) -> "GenerationConfig":
        checks.integer("max_new_tokens", self.max_new_tokens, 1, limits.max_new_tokens, GenerationError)
        checks.integer("top_n", self.top_n, 0, limits.max_top_n, GenerationError)
        checks.integer("seed", self.seed, error=GenerationError)
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > limits.max_stop_strings:
            raise GenerationError(f"stop takes at most {limits.max_stop_strings} strings, got {len(stops)}")
        for s in stops:
            if not isinstance(s, str) or s == "":
                raise GenerationError(f"stop strings must be non-empty text, got {s!r}")
            if len(s) > limits.max_stop_chars:
                raise GenerationError(f"a stop string may have at most {limits.max_stop_chars} characters, got {len(s)}")
        if not isinstance(self.sampler, SamplerConfig):
            raise GenerationError("sampler must be a SamplerConfig")
        return self if stops == self.stop else GenerationConfig(**{**self.__dict__, "stop": stops})


def prompt_ids(source: LogitsSource, prompt: str | Sequence[int], limits: Limits = Limits()) -> list[int]:
    """A prompt as token ids: text is checked against the limits and encoded, ids are taken as given."""
    return source.tokenizer.encode_prompt(check_prompt(prompt, limits)) if isinstance(prompt, str) else list(prompt)


def check_prompt(prompt: str, limits: Limits = Limits()) -> str:
    if not isinstance(prompt, str):
        raise GenerationError(f"prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > limits.max_prompt_chars:
        raise GenerationError(f"the prompt has {len(prompt):,} characters; the limit is {limits.max_prompt_chars:,}")
    return prompt


def prompt_tail(text: str, max_chars: int) -> tuple[str, bool]:
    """`text` as a prompt of at most max_chars characters: past that its start is dropped (the end is what the
    model continues from); the flag says whether it was."""
    return (text[-max_chars:], True) if len(text) > max_chars else (text, False)


# ---------------------------------------------------------------------------------------------------
# Records

@dataclass
class Alternative:
    token_id: int
    text: str
    prob: float                 # under the model's own distribution


@dataclass
class Step:
    index: int                  # 0 for the first generated token
    position: int               # absolute position in the sequence (prompt tokens come first)
    token_id: int
    text: str                   # this token's text on its own (partial UTF-8 shows as \xNN bytes)
    prob: float                 # under the distribution it was drawn from (after the stages)
    logprob: float
    raw_prob: float             # under the model's own distribution
    raw_logprob: float
    entropy: float              # of the model's own distribution, nats
    alternatives: list[Alternative]
    stages: list[StageView] | None = None
    forced: bool = False
    window_slid: bool = False
    finish_reason: str | None = None    # on the last step: "stop", "eos", "length"
    stop_sequence: str | None = None
    seconds: float = 0.0        # time to produce this step (model call + sampling)


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str                   # generated text, cut before a stop string
    steps: list[Step]
    finish_reason: str
    seed: int

    @property
    def total_logprob(self) -> float:
        return float(sum(s.raw_logprob for s in self.steps))


# ---------------------------------------------------------------------------------------------------
# Context: the KV cache, sliding when full

class Context:
    """The token sequence and its cache; `push` advances one token and returns the next logits.

    At the context limit the most recent half-context is prefilled again (the window slides)."""

    def __init__(self, source: LogitsSource, ids: Sequence[int]):
        if len(ids) == 0:
            raise GenerationError("the prompt encodes to no tokens; give some text")
        self.source = source
        self.ids = list(ids)
        self.slid = len(self.ids) > source.block_size
        self.logits, self.cache = source.next_logits(self.ids[-source.block_size:])

    @classmethod
    def from_prefill(cls, source: LogitsSource, ids: Sequence[int], logits: np.ndarray, cache) -> "Context":
        """A context for `ids` (within the context length) from a pass the caller already made."""
        ctx = cls.__new__(cls)
        ctx.source, ctx.ids, ctx.slid, ctx.logits, ctx.cache = source, list(ids), False, logits, cache
        return ctx

    def push(self, token: int) -> np.ndarray:
        self.ids.append(int(token))
        if self.cache.length >= self.source.block_size:
            keep = max(1, self.source.block_size // 2)
            self.logits, self.cache = self.source.next_logits(self.ids[-keep:])
            self.slid = True
        else:
            self.logits, self.cache = self.source.next_logits([int(token)], self.cache)
            self.slid = False
        return self.logits


def token_text(source: LogitsSource, token_id: int) -> str:
    # token_bytes checks only the id's range (one comparison), cheap for every alternative shown
    return source.tokenizer.token_text(token_id)


def alternatives(source: LogitsSource, probs: np.ndarray, n: int) -> list[Alternative]:
    if n <= 0:
        return []
    top = np.argsort(-probs, kind="stable")[:n]
    return [Alternative(int(t), token_text(source, int(t)), float(probs[t])) for t in top]


def make_step(source: LogitsSource, logits: np.ndarray, processed: np.ndarray, token: int, index: int,
              position: int, top_n: int, stages: list[StageView] | None = None, forced: bool = False) -> Step:
    """The record of choosing `token`: its probability under the processed and the raw distributions,
    the raw distribution's entropy and top-n alternatives."""
    raw_logp = sampling.log_softmax(logits)
    raw_probs = np.exp(raw_logp)
    alive = raw_probs > 0
    entropy = float(-(raw_probs[alive] * raw_logp[alive]).sum())
    p = float(sampling.softmax(processed)[token])
    return Step(index, position, int(token), token_text(source, token), p,
                math.log(p) if p > 0 else -math.inf, float(raw_probs[token]), float(raw_logp[token]),
                entropy, alternatives(source, raw_probs, top_n), stages, forced)


def next_choice(logits: np.ndarray, cfg: GenerationConfig, history: Sequence[int], generated: Sequence[int]
                ) -> tuple[np.ndarray, list[StageView] | None]:
    """Processed logits for the next token (and every stage's view when cfg.keep_stages)."""
    if cfg.keep_stages:
        view = sampling.run_pipeline(logits, cfg.sampler, history, generated, keep_stages=True, seed=cfg.seed)
        return view.final.logits, view.stages
    return sampling.process(logits, cfg.sampler, history, generated, seed=cfg.seed), None


def decode(source: LogitsSource, prompt: str | Sequence[int], cfg: GenerationConfig = GenerationConfig(),
           limits: Limits = Limits()) -> Iterator[Step]:
    """Greedy or sampled decoding, one `Step` per new token; the last one carries finish_reason."""
    cfg = cfg.check(limits)
    ids = prompt_ids(source, prompt, limits)
    ctx = Context(source, ids)
    n_prompt = len(ids)
    eos = getattr(source.tokenizer, "eot_id", None)
    text_bytes = bytearray()
    for i in range(cfg.max_new_tokens):
        t0 = time.perf_counter()
        position = len(ctx.ids)
        processed, stages = next_choice(ctx.logits, cfg, ctx.ids, ctx.ids[n_prompt:])
        rng = None if cfg.sampler.greedy else sampling.position_rng(cfg.seed, position)
        token = sampling.choose(processed, rng)
        step = make_step(source, ctx.logits, processed, token, i, position, cfg.top_n, stages)
        step.window_slid = ctx.slid
        text_bytes += source.tokenizer.token_bytes(token)
        hit = _stop_hit(text_bytes, cfg.stop, source.tokenizer.token_bytes(token))
        if hit is not None:
            step.finish_reason, step.stop_sequence = "stop", hit
        elif cfg.stop_at_eos and token == eos:
            step.finish_reason = "eos"
        elif i == cfg.max_new_tokens - 1:
            step.finish_reason = "length"
        if step.finish_reason is None:
            ctx.push(token)
        step.seconds = time.perf_counter() - t0
        yield step
        if step.finish_reason:
            return


def _stop_hit(text_bytes: bytearray, stops: Sequence[str], new: bytes) -> str | None:
    """The stop string that the text now contains for the first time (it ends in the new bytes)."""
    if not stops:
        return None
    text = text_bytes.decode("utf-8", errors="replace")
    for s in stops:
        # only matches that end inside the newly added bytes are new
        window = len(s) + len(new.decode("utf-8", errors="replace")) + 1
        if s in text[-window:]:
            return s
    return None


def complete(source: LogitsSource, prompt: str | Sequence[int], cfg: GenerationConfig = GenerationConfig(),
             limits: Limits = Limits()) -> Completion:
    ids = prompt_ids(source, prompt, limits)
    steps = list(decode(source, ids, cfg, limits))
    tokens = [s.token_id for s in steps]
    last = steps[-1]
    shown = tokens[:-1] if last.finish_reason == "eos" else tokens     # <|endoftext|> is not text
    text = b"".join(source.tokenizer.token_bytes(t) for t in shown).decode("utf-8", errors="replace")
    if last.finish_reason == "stop":
        text = text[: text.find(last.stop_sequence)]
    return Completion(ids, tokens, text, steps, last.finish_reason, cfg.seed)


def sample_n(source: LogitsSource, prompt: str | Sequence[int], cfg: GenerationConfig, n: int,
             limits: Limits = Limits()) -> list[Completion]:
    """n samples; sample i uses seed + i, so the set is reproducible and each member on its own too."""
    checks.integer("n", n, 1, limits.max_samples, GenerationError)
    return [complete(source, prompt, GenerationConfig(**{**cfg.__dict__, "seed": cfg.seed + i}), limits)
            for i in range(n)]


def best_of(source: LogitsSource, prompt: str | Sequence[int], cfg: GenerationConfig, n: int,
            limits: Limits = Limits()) -> Completion:
    """Of n samples, the one with the highest total logprob under the model."""
    return max(sample_n(source, prompt, cfg, n, limits), key=lambda c: c.total_logprob)


# ---------------------------------------------------------------------------------------------------
# Beam search: Hugging Face's rules (transformers 5.23's `_beam_search`; tests/test_beam_vs_transformers.py
# runs both), for one prompt, in numpy

@dataclass
class Beam:
    tokens: list[int]           # generated so far (a finished one ends with EOS unless cut at the limit)
    sum_logprob: float          # under the model
    score: float                # sum_logprob / len(tokens) ** length_penalty
    parent: int | None          # index of the live beam it extends in the previous BeamStep
    finished: bool = False      # in the finished set: it will not be extended
    end: str | None = None      # a finished one: "eos", or "length" / "context" when cut at the limit


@dataclass
class BeamStep:
    step: int
    beams: list[Beam]           # live beams after this step, best first, then the ones that just finished


@dataclass
class BeamResult:
    prompt_ids: list[int]
    hypotheses: list[Beam]      # n-best finished hypotheses, best score first
    texts: list[str]
    finish_reason: str          # "eos" (ended early: no live beam could do better, or early_stopping=True
                                # and `width` finished), "length" (max_new_tokens), "context" (block_size)


# Hugging Face's early_stopping values by the names a CLI flag or a link uses
EARLY_STOPPING = {"false": False, "true": True, "never": "never"}


def check_early_stopping(value) -> bool | str:
    # exactly Hugging Face's three values: 1 or "true" would silently mean something else there
    if value is True or value is False or (isinstance(value, str) and value == "never"):
        return value
    raise GenerationError(f"early_stopping must be False, True or 'never' (as in Hugging Face's generate), "
                     f"got {value!r}")


def beam_search(source: LogitsSource, prompt: str | Sequence[int], width: int = 4, max_new_tokens: int = 50,
                length_penalty: float = 1.0, n_best: int | None = None, stop_at_eos: bool = True,
                early_stopping: bool | str = False, limits: Limits = Limits()) -> Iterator[BeamStep | BeamResult]:
    """Beam search on the model's own log-probabilities (no sampler stages), batched over beams.

    Yields a BeamStep per step and finally a BeamResult. The rules are Hugging Face's
    (`generate(num_beams=width, early_stopping=..., length_penalty=...)`), so results match it:
    - each step ranks every live beam's continuations by summed logprob and keeps the best 2 * width
      candidates; the best `width` that did not end (at EOS, or at the length limit) live on;
    - only candidates ranked in the top `width` that ended join the finished set, scored
      sum_logprob / generated_length ** length_penalty (EOS counted; > 0 favours longer texts); the set
      keeps the best `width`, a better newcomer evicting the worst;
    - the search stops when every candidate ended (the length limit), or once the set is full and
      early_stopping is True, or (False / "never") once the best live beam's sum_logprob /
      length ** length_penalty cannot beat the worst finished score, where length is the current length
      or, for "never" with length_penalty > 0, the longest allowed;
    - the n-best are the finished set's best `n_best`: an unfinished text never competes.
    stop_at_eos=False means no EOS token at all. The context (block_size) caps the length like HF's
    max_length: prompt + generated tokens fit in it (the beams share one cache, so nothing slides).
    Where the first step has fewer than 2 * width candidates (a tiny vocabulary), HF pads it with
    impossible (-1e9) beams; here it just has fewer live beams.
    """
    width = checks.integer("beam width", width, 1, limits.max_beam_width, GenerationError)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1, limits.max_new_tokens, GenerationError)
    length_penalty = checks.number("length_penalty", length_penalty, -10.0, 10.0, error=GenerationError)
    early_stopping = check_early_stopping(early_stopping)
    n_best = width if n_best is None else checks.integer("n_best", n_best, 1, width, GenerationError)
    ids = prompt_ids(source, prompt, limits)
    if not ids:
        raise GenerationError("the prompt encodes to no tokens; give some text")
    room = source.block_size - len(ids)
    if room < 1:
        raise GenerationError(f"the prompt has {len(ids)} tokens; beam search needs room in the context of "
                         f"{source.block_size}: shorten it")
    limit = min(max_new_tokens, room)
    cut = "context" if room < max_new_tokens else "length"
    eos = getattr(source.tokenizer, "eot_id", None) if stop_at_eos else None
    n_candidates = 2 * width            # HF: max(2, 1 + number of EOS ids) * num_beams, with one EOS id

    logits, cache = source.next_logits(ids)                 # one prefill, then batch = live beams
    logps = sampling.log_softmax(np.atleast_2d(logits))
    live = [Beam([], 0.0, 0.0, None)]
    finished: list[Beam] = []                               # best score first, at most `width`
    reason = cut
    for step in range(limit):
        length = step + 1
        totals = (np.array([b.sum_logprob for b in live])[:, None] + logps).ravel()
        k = min(n_candidates, totals.size)
        top = np.argpartition(-totals, k - 1)[:k] if k < totals.size else np.arange(totals.size)
        top = top[np.lexsort((top, -totals[top]))]           # best first; ties to the lower index
        parents, tokens = np.divmod(top, logps.shape[1])
        ended = np.full(k, length == limit) if eos is None else (tokens == eos) | (length == limit)
        cands = [(int(p), int(t), float(totals[i])) for p, t, i in zip(parents, tokens, top)]
        new_live = [Beam(live[p].tokens + [t], s, s / length ** length_penalty, p)
                    for (p, t, s), e in zip(cands, ended) if not e][:width]
        # Only the top `width` may finish: the others are there so that `width` beams can live on.
        # (HF also refuses newcomers once the set is full with early_stopping=True, or once no live beam
        # can improve on it; with one prompt either condition has already ended the loop.)
        newcomers = [Beam(live[p].tokens + [t], s, s / length ** length_penalty, p, finished=True,
                          end="eos" if t == eos else cut)
                     for (p, t, s), e in zip(cands[:width], ended[:width]) if e]
        finished = sorted(finished + newcomers, key=lambda h: -h.score)[:width]    # stable: older wins ties
        just_finished = [h for h in newcomers if any(h is f for f in finished)]
        yield BeamStep(step, new_live + just_finished)
        live = new_live
        if not live:                                        # every candidate ended: the length limit
            reason = cut if length == limit else "eos"
            break
        full = len(finished) == width
        if full and early_stopping is True:
            reason = "eos"
            break
        if full:
            horizon = limit if early_stopping == "never" and length_penalty > 0 else length
            if live[0].sum_logprob / horizon ** length_penalty <= finished[-1].score:
                reason = "eos"                               # no live beam can beat the worst finished one
                break
        order = np.array([beam.parent for beam in live])
        cache = cache.select(order)
        step_logits, cache = source.step(np.array([[beam.tokens[-1]] for beam in live]), cache)
        logps = sampling.log_softmax(step_logits[:, -1])   # row i is live[i]: the next step's parents
    best = finished[:n_best]
    texts = [b"".join(source.tokenizer.token_bytes(t) for t in (h.tokens[:-1] if h.end == "eos" else h.tokens))
             .decode("utf-8", errors="replace") for h in best]
    yield BeamResult(ids, best, texts, reason)


# ---------------------------------------------------------------------------------------------------
# CLI

CLI_TEMPERATURE = 0.8       # the terminal samples a little cooler than the raw model by default, as nanoGPT's sample.py


def main(argv: list[str] | None = None) -> int:
    from core.runtime import Model

    p = argparse.ArgumentParser(prog="python -m core.generate",
                                description="Stream text from an exported model (onnxruntime, no torch).")
    p.add_argument("model", help="an exported model directory, e.g. exported/shakespeare-byte")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    for knob in sampling.KNOBS.values():           # the sampler's own table: the same ranges and words as the pages
        default = CLI_TEMPERATURE if knob.name == "temperature" else knob.default
        p.add_argument("--" + knob.name.replace("_", "-"), type=int if knob.integer else float, default=default,
                       help=f"{knob.explain} Valid: {knob.range_text} (default: {default})")
    p.add_argument("--dry-sequence-breakers", default=sampling.format_breakers(sampling.DRY_BREAKERS),
                   help="DRY: quoted strings, comma-separated, that end a repeated run (default: %(default)s)")
    p.add_argument("--order", default=",".join(sampling.DEFAULT_ORDER),
                   help="the sampler stages' order, comma-separated; stages left out follow in the default order "
                        "(default: %(default)s)")
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--beam", type=int, default=0, help="beam search with this width instead of sampling")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search: finished texts score sum logprob / length ** this (> 0 favours longer ones)")
    p.add_argument("--early-stopping", choices=list(EARLY_STOPPING), default="false",
                   help="beam search's stopping rule, as Hugging Face's early_stopping (default: false, as there)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="fp32", help="fp32, or int8 / fp16 if exported")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: by model width)")
    args = p.parse_args(argv)
    try:
        model = Model(args.model, variant=args.variant, threads=args.threads)
        if args.beam:
            es = EARLY_STOPPING[args.early_stopping]
            result = [r for r in beam_search(model, args.prompt, args.beam, args.max_new_tokens,
                                             args.length_penalty, early_stopping=es)][-1]
            for h, text in zip(result.hypotheses, result.texts):
                print(f"[score {h.score:.3f}, {h.end}] {args.prompt}{text}")
            return 0
        breakers, _ = sampling.breaker_ids(model.tokenizer.encode, sampling.parse_breakers(args.dry_sequence_breakers))
        sampler = SamplerConfig(**{name: getattr(args, name) for name in sampling.KNOBS}, dry_breaker_ids=breakers,
                                order=sampling.parse_order(args.order))
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, seed=args.seed, stop=tuple(args.stop), sampler=sampler)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")   # bytes split across tokens
        t0, n, slides, printed, data = time.perf_counter(), 0, 0, "", b""
        for step in decode(model, args.prompt, cfg):
            if n == 0:
                sys.stdout.write(args.prompt)   # only once the knobs have been accepted
            piece = model.tokenizer.token_bytes(step.token_id)
            data += piece
            if step.finish_reason == "stop":     # print up to the stop string, which may span tokens
                text = data.decode("utf-8", errors="replace")
                out = text[: text.find(step.stop_sequence)][len(printed):]
            elif step.finish_reason == "eos":
                out = ""
            else:
                out = decoder.decode(piece)
            sys.stdout.write(out)
            sys.stdout.flush()
            printed += out
            n += 1
            slides += step.window_slid
        if step.finish_reason != "stop":
            sys.stdout.write(decoder.decode(b"", final=True))   # a character cut off at the end
        sys.stdout.write("\n")
    except PlaygroundError as e:
        return cli.report_error(e, "")
    dt = time.perf_counter() - t0
    note = f"; the context ({model.block_size}) was full {slides} time(s) and the window slid" if slides else ""
    print(f"[{n} tokens in {dt:.2f} s, {n / dt:.0f} tokens/s, {model.provider}{note}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
