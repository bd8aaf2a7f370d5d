"""Generation: decoding strategies over any next-token-logits source, as generators of records.

Holds:
  decode()       greedy (temperature 0) and sampling through the staged sampler, yielding `Step`s:
                 token id and text, probability and logprob (under the distribution drawn from and
                 under the model's own), entropy, top-N alternatives and, on request, every stage's
                 distribution; stop strings matched on the text (so across token boundaries), EOS,
                 max new tokens; the window slides at the context limit and the step says so
  beam_search()  beams stepped together in one batch over the KV cache, length penalty, early stop at
                 EOS, n-best with scores, and a `BeamStep` per step with every beam and its parent (the
                 tree a page draws)
  sample_n(), best_of()   n seeded samples, and the one with the highest total logprob
  complete()     a whole `Completion` (text cut at the stop string) from decode()
  Limits         the ceilings a hosted server enforces, one place, each with its message
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

from core import sampling
from core.sampling import SamplerConfig, StageView


class LogitsSource(Protocol):
    block_size: int
    vocab_size: int
    tokenizer: object

    def next_logits(self, ids, cache=None): ...

    def step(self, ids, cache=None): ...


# ---------------------------------------------------------------------------------------------------
# Limits and configuration

@dataclass(frozen=True)
class Limits:
    """Ceilings on what one request may ask; a hosted deployment lowers them."""
    max_new_tokens: int = 1024
    max_beam_width: int = 16
    max_samples: int = 16
    max_stop_strings: int = 8
    max_stop_chars: int = 64
    max_prompt_chars: int = 20_000
    max_top_n: int = 50
    max_strategies: int = 8             # strategies in one comparison

    @classmethod
    def hosted(cls) -> "Limits":
        """For a shared demo on a small machine: every visitor's request stays short."""
        return cls(max_new_tokens=256, max_beam_width=8, max_samples=4, max_stop_strings=4,
                   max_prompt_chars=2_000, max_top_n=20, max_strategies=6)


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
        _int_in("max_new_tokens", self.max_new_tokens, 1, limits.max_new_tokens)
        _int_in("top_n", self.top_n, 0, limits.max_top_n)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stops) > limits.max_stop_strings:
            raise ValueError(f"stop takes at most {limits.max_stop_strings} strings, got {len(stops)}")
        for s in stops:
            if not isinstance(s, str) or s == "":
                raise ValueError(f"stop strings must be non-empty text, got {s!r}")
            if len(s) > limits.max_stop_chars:
                raise ValueError(f"a stop string may have at most {limits.max_stop_chars} characters, got {len(s)}")
        if not isinstance(self.sampler, SamplerConfig):
            raise ValueError("sampler must be a SamplerConfig")
        return self if stops == self.stop else GenerationConfig(**{**self.__dict__, "stop": stops})


def _int_in(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def prompt_ids(source: LogitsSource, prompt: str | Sequence[int], limits: Limits = Limits()) -> list[int]:
    """A prompt as token ids: text is checked against the limits and encoded, ids are taken as given."""
    return source.tokenizer.encode(check_prompt(prompt, limits)) if isinstance(prompt, str) else list(prompt)


def check_prompt(prompt: str, limits: Limits = Limits()) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > limits.max_prompt_chars:
        raise ValueError(f"the prompt has {len(prompt):,} characters; the limit is {limits.max_prompt_chars:,}")
    return prompt


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
    text: str                   # this token's text on its own (partial UTF-8 shows as U+FFFD)
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
            raise ValueError("the prompt encodes to no tokens; give some text")
        self.source = source
        self.ids = list(ids)
        self.slid = len(self.ids) > source.block_size
        self.logits, self.cache = source.next_logits(self.ids[-source.block_size:])

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
    # ids here come from the model's own distribution, so in range: skip the tokenizer's id check
    return source.tokenizer.encoding.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")


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
        view = sampling.run_pipeline(logits, cfg.sampler, history, generated, keep_stages=True)
        return view.final.logits, view.stages
    return sampling.process(logits, cfg.sampler, history, generated), None


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
    _int_in("n", n, 1, limits.max_samples)
    return [complete(source, prompt, GenerationConfig(**{**cfg.__dict__, "seed": cfg.seed + i}), limits)
            for i in range(n)]


def best_of(source: LogitsSource, prompt: str | Sequence[int], cfg: GenerationConfig, n: int,
            limits: Limits = Limits()) -> Completion:
    """Of n samples, the one with the highest total logprob under the model."""
    return max(sample_n(source, prompt, cfg, n, limits), key=lambda c: c.total_logprob)


# ---------------------------------------------------------------------------------------------------
# Beam search

@dataclass
class Beam:
    tokens: list[int]           # generated so far
    sum_logprob: float          # under the model
    score: float                # sum_logprob / len(tokens) ** length_penalty
    parent: int | None          # index of the beam it extends in the previous BeamStep
    finished: bool = False


@dataclass
class BeamStep:
    step: int
    beams: list[Beam]           # live beams after this step, best first, and any that just finished


@dataclass
class BeamResult:
    prompt_ids: list[int]
    hypotheses: list[Beam]      # n-best, best first
    texts: list[str]
    finish_reason: str          # "eos" (enough beams finished), "length", or "context"


def beam_search(source: LogitsSource, prompt: str | Sequence[int], width: int = 4, max_new_tokens: int = 50,
                length_penalty: float = 1.0, n_best: int | None = None, stop_at_eos: bool = True,
                limits: Limits = Limits()) -> Iterator[BeamStep | BeamResult]:
    """Beam search on the model's own log-probabilities (no sampler stages), batched over beams.

    Yields a BeamStep per step and finally a BeamResult. Candidates are ranked by summed logprob, as
    Hugging Face does; finished hypotheses by sum / length ** length_penalty (> 0 favours longer ones).
    Stops early once `width` hypotheses have ended at EOS; stops at the context limit rather than
    slide (beams share one cache).
    """
    width = _int_in("beam width", width, 1, limits.max_beam_width)
    max_new_tokens = _int_in("max_new_tokens", max_new_tokens, 1, limits.max_new_tokens)
    sampling._number("length_penalty", length_penalty, -10.0, 10.0)
    n_best = width if n_best is None else _int_in("n_best", n_best, 1, width)
    ids = prompt_ids(source, prompt, limits)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give some text")
    if len(ids) >= source.block_size:
        raise ValueError(f"the prompt has {len(ids)} tokens; beam search needs room in the context of "
                         f"{source.block_size}: shorten it")
    eos = getattr(source.tokenizer, "eot_id", None)

    def norm(sum_lp: float, length: int) -> float:
        return sum_lp / (max(1, length) ** length_penalty)

    logits, cache = source.next_logits(ids)                 # one prefill, then batch = live beams
    live = [Beam([], 0.0, 0.0, None)]
    logps = sampling.log_softmax(logits[None, :] if logits.ndim == 1 else logits)
    finished: list[Beam] = []
    reason = "length"
    for step in range(max_new_tokens):
        cand = []                                          # (sum_logprob, beam index, token)
        for b, beam in enumerate(live):
            top = np.argpartition(-logps[b], min(2 * width, logps.shape[1] - 1))[: 2 * width]
            cand.extend((beam.sum_logprob + float(logps[b, t]), b, int(t)) for t in top)
        cand.sort(key=lambda c: (-c[0], c[1], c[2]))
        new_live, just_done = [], []
        for sum_lp, b, t in cand:
            tokens = live[b].tokens + [t]
            if stop_at_eos and t == eos:
                if len(just_done) + len(finished) < width:
                    just_done.append(Beam(tokens, sum_lp, norm(sum_lp, len(tokens)), b, finished=True))
                continue
            new_live.append(Beam(tokens, sum_lp, norm(sum_lp, len(tokens)), b))
            if len(new_live) == width:
                break
        finished.extend(just_done)
        yield BeamStep(step, new_live + just_done)
        live = new_live
        if len(finished) >= width or not live:
            reason = "eos"
            break
        if cache.length + 1 > source.block_size:
            reason = "context"
            break
        if step == max_new_tokens - 1:
            break
        order = np.array([beam.parent for beam in live])
        cache = type(cache)(tuple(a[order] for a in cache.arrays), cache.length, len(live))
        step_logits, cache = source.step(np.array([[beam.tokens[-1]] for beam in live]), cache)
        logps = sampling.log_softmax(step_logits[:, -1])   # row i is live[i]: the next step's parents
    pool = finished + live
    pool.sort(key=lambda h: -h.score)
    best = pool[:n_best]
    texts = [bytes(b"".join(source.tokenizer.token_bytes(t) for t in h.tokens if t != eos))
             .decode("utf-8", errors="replace") for h in best]
    yield BeamResult(ids, best, texts, reason)


# ---------------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    from core.runtime import Model, ModelError

    p = argparse.ArgumentParser(prog="python -m core.generate",
                                description="Stream text from an exported model (onnxruntime, no torch).")
    p.add_argument("model", help="an exported model directory, e.g. exported/shakespeare-byte")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep; 1 = off")
    p.add_argument("--min-p", type=float, default=0.0, help="keep tokens this fraction as likely as the top; 0 = off")
    p.add_argument("--typical-p", type=float, default=1.0, help="typical mass to keep; 1 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--beam", type=int, default=0, help="beam search with this width instead of sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="fp32", help="fp32, or int8 / fp16 if exported")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: by model width)")
    args = p.parse_args(argv)
    try:
        model = Model(args.model, variant=args.variant, threads=args.threads)
        if args.beam:
            result = [r for r in beam_search(model, args.prompt, args.beam, args.max_new_tokens)][-1]
            for h, text in zip(result.hypotheses, result.texts):
                print(f"[score {h.score:.3f}] {args.prompt}{text}")
            return 0
        cfg = GenerationConfig(
            max_new_tokens=args.max_new_tokens, seed=args.seed, stop=tuple(args.stop),
            sampler=SamplerConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  min_p=args.min_p, typical_p=args.typical_p,
                                  repetition_penalty=args.repetition_penalty,
                                  frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty))
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
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    note = f"; the context ({model.block_size}) was full {slides} time(s) and the window slid" if slides else ""
    print(f"[{n} tokens in {dt:.2f} s, {n / dt:.0f} tokens/s, {model.provider}{note}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
