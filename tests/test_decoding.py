"""Decoding engine: sampler stages by hand, strategies on a numpy toy model, traces, metrics, and
comparisons (core.compare, and the Compare page through AppTest on the committed models)."""

import dataclasses
import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core import sampling
from core.compare import PRESETS, Comparison, Inputs, Strategy, compare, continuation_prompt, run
from core.generate import (GenerationConfig, BeamResult, BeamStep, beam_search, best_of, complete, decode,
                           sample_n)
from core.limits import Limits
from core.metrics import distinct_n, measure, repeated_ngram_rate
from core.runtime import KVCache
from core.sampling import SamplerConfig, run_pipeline
from core.tokenizer import byte_tokenizer
from core.trace import Trace, replay


class ToySource:
    """A numpy language model: logits from the last token (and, with order 2, the one before),
    looked up in fixed random tables. It keeps its 'cache' as the token history, in a KVCache."""

    def __init__(self, vocab=4, block_size=64, order=2, seed=0, scale=2.0, boost=None):
        rng = np.random.default_rng(seed)
        self.vocab_size, self.block_size, self.order = vocab, block_size, order
        self.t1 = rng.normal(0, scale, (vocab, vocab))
        self.t2 = rng.normal(0, scale, (vocab, vocab, vocab)) if order == 2 else None
        if boost is not None:
            self.t1[:, boost] += 6.0          # make some tokens (e.g. ASCII letters) likely
        self.tokenizer = byte_tokenizer()
        self.calls = 0

    def step(self, ids, cache=None):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        B, T = ids.shape
        hist = cache.arrays[0] if cache is not None else np.zeros((B, 0), np.int64)
        if hist.shape[1] + T > self.block_size:
            raise ValueError("context exceeded")
        full = np.concatenate([hist, ids], axis=1)
        self.calls += 1
        logits = np.zeros((B, T, self.vocab_size))
        for j in range(T):
            pos = hist.shape[1] + j
            last = full[:, pos] % self.vocab_size        # text prompts bring byte ids beyond a small vocab
            logits[:, j] = self.t1[last]
            if self.order == 2:
                prev = full[:, pos - 1] % self.vocab_size if pos >= 1 else np.zeros(B, np.int64)
                logits[:, j] += self.t2[prev, last]
        return logits, KVCache((full,), full.shape[1], B)

    def next_logits(self, ids, cache=None):
        logits, cache = self.step(np.asarray(ids)[None] if np.asarray(ids).ndim == 1 else ids, cache)
        return logits[0, -1], cache


def log(p):
    return np.log(np.asarray(p, dtype=np.float64))


# ---------------------------------------------------------------------------------------------------
# Stages, worked by hand

def test_temperature():
    assert np.allclose(sampling.temperature([1.0, 2.0, 3.0], 2.0), [0.5, 1.0, 1.5])
    greedy = sampling.temperature([1.0, 3.0, 2.0], 0)
    assert np.isneginf(greedy[[0, 2]]).all() and greedy[1] == 3.0


def test_top_k():
    out = sampling.top_k([1.0, 3.0, 2.0, 0.0], 2)
    assert out[1] == 3.0 and out[2] == 2.0 and np.isneginf(out[[0, 3]]).all()
    assert np.array_equal(sampling.top_k([1.0, 2.0], 0), [1.0, 2.0])          # 0 = off
    assert np.isfinite(sampling.top_k([1.0, 1.0, 1.0], 1)).all()              # ties at the k-th are kept


@pytest.mark.parametrize("p, kept", [(0.5, [0]), (0.6, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2])])
def test_top_p(p, kept):
    out = sampling.top_p(log([0.5, 0.3, 0.2]), p)
    assert list(np.flatnonzero(np.isfinite(out))) == kept


@pytest.mark.parametrize("p, kept", [(0.0, [0, 1, 2]), (0.4, [0, 1, 2]), (0.5, [0, 1]), (0.7, [0]), (1.0, [0])])
def test_min_p(p, kept):
    # 0.2 >= 0.4 * 0.5 survives at 0.4; at 0.5 only tokens >= 0.25 stay
    out = sampling.min_p(log([0.5, 0.3, 0.2]), p)
    assert list(np.flatnonzero(np.isfinite(out))) == kept


@pytest.mark.parametrize("p, kept", [(0.2, [1]), (0.3, [1]), (0.5, [0, 1]), (0.8, [0, 1]), (0.9, [0, 1, 2])])
def test_typical_p(p, kept):
    # H = 1.0297 nats; surprises 0.693, 1.204, 1.609 -> distances 0.337, 0.174, 0.580:
    # order of typicality 1, 0, 2 with masses 0.3, 0.8, 1.0
    out = sampling.typical_p(log([0.5, 0.3, 0.2]), p)
    assert list(np.flatnonzero(np.isfinite(out))) == kept


def test_repetition_penalty_is_ctrl_as_hugging_face_applies_it():
    out = sampling.repetition_penalty([2.0, -2.0, 1.0], [0, 1, 1], 2.0)
    assert np.allclose(out, [1.0, -4.0, 1.0])        # positive divided, negative multiplied, once each


def test_frequency_and_presence_penalties_are_openais():
    out = sampling.frequency_presence_penalty([0.0, 0.0, 0.0], [0, 0, 1], 0.5, 1.0)
    assert np.allclose(out, [-2.0, -1.5, 0.0])


def test_every_stage_keeps_at_least_one_token():
    x = np.array([0.0, 0.0, 5.0, 0.0])
    for out in (sampling.top_p(x, 1e-9), sampling.min_p(x, 1.0), sampling.typical_p(x, 0.0),
                sampling.top_k(x, 1), sampling.temperature(x, 0)):
        assert np.isfinite(out).sum() >= 1 and np.isfinite(out[2])


def test_pipeline_outputs_are_valid_distributions():
    rng = np.random.default_rng(0)
    for trial in range(300):
        cfg = SamplerConfig(temperature=float(rng.choice([0, 0.3, 1, 2.5])), top_k=int(rng.integers(0, 8)),
                            top_p=float(rng.uniform(0.05, 1)), min_p=float(rng.uniform(0, 1)),
                            typical_p=float(rng.uniform(0, 1)), repetition_penalty=float(rng.uniform(0.5, 2)),
                            frequency_penalty=float(rng.uniform(-2, 2)), presence_penalty=float(rng.uniform(-2, 2)))
        logits = rng.normal(0, 3, 20)
        history = list(rng.integers(0, 20, 5))
        res = run_pipeline(logits, cfg, history)
        assert [s.name for s in res.stages] == ["raw", *cfg.order]
        for s in res.stages:
            assert np.all(s.probs >= 0) and math.isclose(s.probs.sum(), 1.0, rel_tol=1e-9)
            assert s.kept >= 1
        assert np.allclose(sampling.process(logits, cfg, history), res.final.logits)


def test_stage_order_is_a_parameter():
    logits = log([0.6, 0.3, 0.1])    # at temperature 3: 0.427, 0.339, 0.235
    a = SamplerConfig(temperature=3.0, top_p=0.5)
    b = SamplerConfig(temperature=3.0, top_p=0.5, order=("top_p", "temperature"))
    # nucleus before flattening keeps one token; after flattening it needs two
    assert run_pipeline(logits, a).final.kept == 2
    assert run_pipeline(logits, b).final.kept == 1
    assert [s.name for s in run_pipeline(logits, b).stages] == ["raw", "top_p", "temperature"]


def test_choose_follows_the_distribution_and_skips_the_draw_when_forced():
    probs = np.array([0.5, 0.3, 0.2])
    rng = np.random.default_rng(0)
    draws = np.bincount([sampling.choose(log(probs), rng) for _ in range(20000)], minlength=3) / 20000
    assert np.allclose(draws, probs, atol=0.015)
    r = np.random.default_rng(1)
    state = r.bit_generator.state
    assert sampling.choose(sampling.temperature(log(probs), 0), r) == 0
    assert r.bit_generator.state == state
    assert sampling.choose(sampling.temperature(log(probs), 0), None) == 0     # greedy needs no generator
    with pytest.raises(ValueError, match="random generator is needed"):
        sampling.choose(log(probs), None)


@pytest.mark.parametrize("kw, message", [
    (dict(temperature=-1), r"temperature must be a finite number in \[0, 100\], got -1"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(temperature="hot"), "temperature must be a number, got 'hot'"),
    (dict(top_p=0.0), r"top_p must be a finite number in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"top_p must be a finite number in \(0, 1\], got 1.5"),
    (dict(top_k=-1), "top_k must be an integer >= 0, got -1"),
    (dict(top_k=2.5), "top_k must be an integer, got 2.5"),
    (dict(top_k=True), "top_k must be an integer, got True"),
    (dict(min_p=1.5), r"min_p must be a finite number in \[0, 1\], got 1.5"),
    (dict(typical_p=-0.1), r"typical_p must be a finite number in \[0, 1\], got -0.1"),
    (dict(repetition_penalty=0), r"repetition_penalty must be a finite number in \(0, 1e\+06\], got 0"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number"),
    (dict(frequency_penalty=3), r"frequency_penalty must be a finite number in \[-2, 2\], got 3"),
    (dict(presence_penalty=-2.5), r"presence_penalty must be a finite number in \[-2, 2\], got -2.5"),
    (dict(order=("temperature", "top_q")), "order must list distinct stages"),
    (dict(order=("top_k", "top_k")), "order must list distinct stages"),
])
def test_every_bad_knob_is_named(kw, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kw)


def test_bad_generation_settings_are_named():
    toy = ToySource()
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer in \[1, 1024\], got 0"):
        list(decode(toy, [1], GenerationConfig(max_new_tokens=0)))
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer in \[1, 10\], got 11"):
        list(decode(toy, [1], GenerationConfig(max_new_tokens=11), Limits(max_new_tokens=10)))
    with pytest.raises(ValueError, match="stop strings must be non-empty text, got ''"):
        list(decode(toy, [1], GenerationConfig(stop=("",))))
    with pytest.raises(ValueError, match="stop takes at most 8 strings"):
        list(decode(toy, [1], GenerationConfig(stop=tuple("abcdefghi"))))
    with pytest.raises(ValueError, match=r"beam width must be an integer in \[1, 16\], got 17"):
        list(beam_search(toy, [1], width=17))
    with pytest.raises(ValueError, match=r"beam width must be an integer in \[1, 16\], got 0"):
        list(beam_search(toy, [1], width=0))
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 16\], got 0"):
        sample_n(toy, [1], GenerationConfig(), 0)
    with pytest.raises(ValueError, match="the prompt has 30,001 characters; the limit is 20,000"):
        list(decode(toy, "x" * 30_001))
    with pytest.raises(ValueError, match="prompt encodes to no tokens"):
        list(decode(toy, ""))


# ---------------------------------------------------------------------------------------------------
# Strategies

def tokens_of(steps):
    return [s.token_id for s in steps]


def test_sampling_is_reproducible_by_seed():
    toy = ToySource(vocab=30, order=1, seed=1, scale=1.0)
    cfg = GenerationConfig(max_new_tokens=40, seed=7, stop_at_eos=False)
    a, b = tokens_of(decode(toy, [3], cfg)), tokens_of(decode(toy, [3], cfg))
    c = tokens_of(decode(toy, [3], dataclasses.replace(cfg, seed=8)))
    assert a == b and a != c


def test_the_stepper_draws_what_a_batch_run_draws():
    toy = ToySource(vocab=30, order=1, seed=1, scale=1.0)
    cfg = GenerationConfig(max_new_tokens=25, seed=11, stop_at_eos=False, sampler=SamplerConfig(top_k=10))
    batch = tokens_of(decode(toy, "ab", cfg))
    trace = Trace(toy, "ab", cfg)
    stepped = [trace.step() for _ in range(10)] + trace.run(15)
    assert stepped == batch


def test_steps_report_probabilities_alternatives_and_stages():
    toy = ToySource(vocab=30, order=1, seed=2, scale=1.0)
    cfg = GenerationConfig(max_new_tokens=5, sampler=SamplerConfig(temperature=0.7, top_k=5), keep_stages=True,
                           top_n=3, stop_at_eos=False)
    for s in decode(toy, [1], cfg):
        raw = sampling.softmax(s.stages[0].logits)
        assert math.isclose(s.raw_prob, raw[s.token_id]) and s.prob >= s.raw_prob * 0.999
        assert np.allclose([a.prob for a in s.alternatives], sorted(raw, reverse=True)[:3], rtol=1e-12)
        assert math.isclose(s.entropy, -(raw * np.log(raw)).sum())
        assert [v.name for v in s.stages] == ["raw", *SamplerConfig().order]
        assert s.stages[-1].kept <= 5


def test_beam_width_one_is_greedy():
    toy = ToySource(vocab=20, order=2, seed=3)
    greedy = tokens_of(decode(toy, [1, 2], GenerationConfig(max_new_tokens=12, sampler=SamplerConfig(temperature=0),
                                                          stop_at_eos=False)))
    result = list(beam_search(toy, [1, 2], width=1, max_new_tokens=12, stop_at_eos=False))[-1]
    assert result.hypotheses[0].tokens == greedy


def test_wide_beam_search_finds_what_exhaustive_search_finds():
    found_better_than_greedy = False
    for seed in range(6):
        toy = ToySource(vocab=3, order=2, seed=seed, scale=2.5)
        prompt, length = [1], 4
        best, best_lp = None, -math.inf
        for seq in itertools.product(range(3), repeat=length):
            lp, ids = 0.0, list(prompt)
            for t in seq:
                lp += sampling.log_softmax(toy.next_logits(ids)[0])[t]
                ids.append(t)
            if lp > best_lp:
                best, best_lp = list(seq), lp
        result = list(beam_search(toy, prompt, width=9, max_new_tokens=length, length_penalty=0.0,
                                  stop_at_eos=False))[-1]
        assert result.hypotheses[0].tokens == best
        assert math.isclose(result.hypotheses[0].sum_logprob, best_lp, rel_tol=1e-9)
        greedy = list(beam_search(toy, prompt, width=1, max_new_tokens=length, stop_at_eos=False))[-1]
        found_better_than_greedy |= greedy.hypotheses[0].tokens != best
    assert found_better_than_greedy, "the toy models should include a case where greedy is not optimal"


def test_beam_steps_form_a_tree_and_n_best_is_sorted():
    toy = ToySource(vocab=6, order=2, seed=4)
    records = list(beam_search(toy, [2], width=3, max_new_tokens=5, n_best=3, stop_at_eos=False))
    steps, result = records[:-1], records[-1]
    assert all(isinstance(s, BeamStep) for s in steps) and isinstance(result, BeamResult)
    for prev, cur in zip(steps, steps[1:]):
        for beam in cur.beams:
            parent = prev.beams[beam.parent]
            assert beam.tokens[:-1] == parent.tokens
    scores = [h.score for h in result.hypotheses]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_beam_search_stops_early_at_eos():
    toy = ToySource(vocab=257, order=1, seed=5, scale=0.5)
    toy.t1[:, 256] += 8.0                     # <|endoftext|> is by far the likeliest next token
    result = list(beam_search(toy, [65], width=2, max_new_tokens=20))[-1]
    assert result.finish_reason == "eos"
    assert all(h.finished and h.tokens[-1] == 256 for h in result.hypotheses)
    assert result.texts[0] == ""


class TableSource(ToySource):
    """A first-order model given as next-token probabilities per last token; token 0 is EOS."""

    def __init__(self, probs):
        super().__init__(vocab=len(probs), order=1)
        self.t1 = np.log(np.asarray(probs, dtype=np.float64))
        self.tokenizer = SimpleNamespace(eot_id=0, token_bytes=lambda t: b"EABC"[t:t + 1],
                                         decode=lambda ids: bytes(b"EABC"[t] for t in ids).decode())


# the bug report's model: [0] ends at once (log 0.5 = -0.693); [1, 3] scores (log 0.45 + log 0.66) / 2 = -0.607
BUG_TABLE = [[0.25] * 4, [0.3, 0.02, 0.02, 0.66], [0.5, 0.45, 0.03, 0.02], [0.25] * 4]


def test_a_finished_text_beats_a_better_scoring_unfinished_one():
    records = list(beam_search(TableSource(BUG_TABLE), [2], width=2, max_new_tokens=50, length_penalty=1.0,
                               early_stopping=True))
    result, last = records[-1], records[-2]
    # Hugging Face (generate(num_beams=2, early_stopping=True)) stops once [0] and [1, 0] have finished
    assert [h.tokens for h in result.hypotheses] == [[0], [1, 0]]
    assert [h.score for h in result.hypotheses] == pytest.approx([math.log(0.5), (math.log(0.45) + math.log(0.3)) / 2])
    assert all(h.finished and h.end == "eos" for h in result.hypotheses) and result.finish_reason == "eos"
    assert result.texts == ["", "A"]
    unfinished = next(b for b in last.beams if not b.finished)
    assert unfinished.tokens == [1, 3] and unfinished.score == pytest.approx(-0.607, abs=1e-3)
    assert unfinished.score > result.hypotheses[0].score          # it outscores the answer, yet never competes


def test_eos_below_the_top_width_candidates_does_not_finish():
    table = [[0.25] * 4, [0.7, 0.1, 0.1, 0.1], [0.2, 0.7, 0.05, 0.05], [0.01, 0.5, 0.45, 0.04]]
    steps = list(beam_search(TableSource(table), [3], width=2, max_new_tokens=4, length_penalty=0.0))[:-1]
    assert [b.tokens for b in steps[0].beams] == [[1], [2]] and not any(b.finished for b in steps[0].beams)
    # step 1 ranks [1, 0] (EOS), [2, 1], [2, 0] (EOS, third: it only backs up the live set), [1, 1]
    assert [b.tokens for b in steps[1].beams if b.finished] == [[1, 0]]
    assert [b.tokens for b in steps[1].beams if not b.finished] == [[2, 1], [1, 1]]


@pytest.mark.parametrize("value", ["always", "True", 1, 0, None, "Never"])
def test_early_stopping_takes_only_hugging_faces_values(value):
    with pytest.raises(ValueError, match=r"early_stopping must be False, True or 'never'.*got"):
        list(beam_search(ToySource(), [1], early_stopping=value))


def test_the_context_caps_beam_search_like_a_max_length():
    toy = ToySource(vocab=30, order=1, block_size=8)
    result = list(beam_search(toy, [1, 2, 3], width=3, max_new_tokens=20, stop_at_eos=False))[-1]
    assert result.finish_reason == "context" and all(len(h.tokens) == 5 for h in result.hypotheses)
    exact = list(beam_search(toy, [1, 2, 3], width=3, max_new_tokens=5, stop_at_eos=False))[-1]
    assert exact.finish_reason == "length" and [h.tokens for h in exact.hypotheses] == [h.tokens for h in result.hypotheses]
    assert {h.end for h in result.hypotheses} == {"context"} and {h.end for h in exact.hypotheses} == {"length"}
    with pytest.raises(ValueError, match="beam search needs room in the context of 8: shorten it"):
        list(beam_search(toy, list(range(8)), width=2))


def test_a_stop_string_split_across_tokens_is_honoured():
    letters = list(range(97, 123))
    toy = ToySource(vocab=257, order=1, seed=6, scale=1.0, boost=letters)
    greedy = GenerationConfig(max_new_tokens=30, sampler=SamplerConfig(temperature=0), stop_at_eos=False)
    full = complete(toy, "q", greedy)
    stop = full.text[6:8]                      # two characters, two byte tokens
    assert len(stop) == 2
    cut = complete(toy, "q", dataclasses.replace(greedy, stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert cut.steps[-1].stop_sequence == stop and len(cut.token_ids) == full.text.find(stop) + 2


def test_max_new_tokens_and_eos_finish_reasons():
    toy = ToySource(vocab=30, order=1)
    steps = list(decode(toy, [1], GenerationConfig(max_new_tokens=7, stop_at_eos=False)))
    assert len(steps) == 7 and steps[-1].finish_reason == "length" and steps[0].finish_reason is None
    eos_toy = ToySource(vocab=257, order=1, seed=5, scale=0.5)
    eos_toy.t1[:, 256] += 20.0
    c = complete(eos_toy, [65], GenerationConfig(max_new_tokens=7))
    assert c.finish_reason == "eos" and c.token_ids == [256] and c.text == ""


def test_the_window_slides_at_the_context_limit():
    toy = ToySource(vocab=30, order=1, block_size=8)
    steps = list(decode(toy, [1, 2, 3], GenerationConfig(max_new_tokens=20, stop_at_eos=False)))
    assert len(steps) == 20 and any(s.window_slid for s in steps)


def test_n_samples_and_best_of():
    toy = ToySource(vocab=30, order=1, seed=7, scale=1.0)
    cfg = GenerationConfig(max_new_tokens=10, seed=100, stop_at_eos=False)
    samples = sample_n(toy, [1], cfg, 4)
    assert [c.seed for c in samples] == [100, 101, 102, 103]
    assert samples[2].token_ids == complete(toy, [1], dataclasses.replace(cfg, seed=102)).token_ids
    best = best_of(toy, [1], cfg, 4)
    assert best.total_logprob == max(c.total_logprob for c in samples)


# ---------------------------------------------------------------------------------------------------
# Traces

def test_trace_force_back_fork_and_switch():
    toy = ToySource(vocab=30, order=1, seed=8, scale=1.0)
    t = Trace(toy, "ab", GenerationConfig(seed=3))
    first = t.run(3)
    t.back()
    assert t.tokens == first[:2]
    t.forward()
    assert t.tokens == first
    t.back()
    other = (first[2] + 1) % 30
    t.force(other)                            # a different choice forks; the old path is kept
    assert t.current != "main" and t.tokens == first[:2] + [other]
    assert t.branches["main"].tokens == first
    assert t.steps()[-1].forced and not t.steps()[0].forced
    t.switch("main")
    assert t.tokens == first
    t.back()
    t.force(first[2])                         # the same token as the branch: just follows it
    assert t.current == "main" and t.cursor == 3
    name = t.fork("mine")
    assert name == "mine" and t.tokens == first
    with pytest.raises(ValueError, match="no branch named 'nope'"):
        t.switch("nope")
    with pytest.raises(ValueError, match=r"token id must be an integer in \[0, 29\], got 30"):
        t.force(30)


def test_a_restored_trace_continues_identically():
    toy = ToySource(vocab=30, order=1, seed=9, scale=1.0)
    t = Trace(toy, "hello", GenerationConfig(seed=5, sampler=SamplerConfig(temperature=0.9, top_p=0.9)))
    t.run(4)
    t.back()
    t.force(7)
    t.run(2)
    url = t.to_url()
    restored = Trace.from_url(toy, url)
    assert restored.to_dict() == t.to_dict()
    assert restored.run(6) == t.run(6)
    assert restored.text == t.text
    assert [s.prob for s in restored.steps()] == [s.prob for s in t.steps()]


def test_a_damaged_share_link_says_so():
    toy = ToySource()
    with pytest.raises(ValueError, match="damaged"):
        Trace.from_url(toy, "not-a-trace!!")
    d = Trace(toy, "a").to_dict()
    d["cursor"] = 99
    with pytest.raises(ValueError, match="cannot be restored.*cursor 99"):
        Trace.from_dict(toy, d)
    d = Trace(toy, "a").to_dict()
    d["branches"][0]["tokens"] = [999]
    with pytest.raises(ValueError, match="cannot be restored"):
        Trace.from_dict(toy, d)


def test_a_trace_longer_than_the_context_replays_to_the_same_records():
    # a first-order model's logits do not depend on the window, so sliding changes nothing
    long_ctx, short_ctx = ToySource(vocab=30, order=1, seed=12, block_size=64), ToySource(vocab=30, order=1, seed=12, block_size=8)
    cfg = GenerationConfig(seed=2)
    a, b = Trace(long_ctx, "ab", cfg), Trace(short_ctx, "ab", cfg)
    assert a.run(20) == b.run(20)
    sa, sb = a.steps(), b.steps()
    assert [s.prob for s in sa] == pytest.approx([s.prob for s in sb])
    assert any(s.window_slid for s in sb) and not any(s.window_slid for s in sa)
    assert np.allclose(a.view()[1].final.probs, b.view()[1].final.probs)


def test_trace_distribution_shows_every_stage():
    toy = ToySource(vocab=30, order=1)
    t = Trace(toy, "x", GenerationConfig(sampler=SamplerConfig(top_k=3)))
    view = t.distribution()
    assert view.stages[0].name == "raw" and view.final.kept == 3
    assert replay(toy, "x", GenerationConfig(), [1, 2]).tokens == [1, 2]


# ---------------------------------------------------------------------------------------------------
# Metrics

def test_distinct_and_repetition():
    assert distinct_n([1, 2, 3, 1], 1) == 0.75
    assert distinct_n([1, 2, 1, 2, 1], 2) == 0.5
    assert distinct_n([1], 2) == 0.0
    assert repeated_ngram_rate([1, 2, 3, 1, 2, 3, 1], 3) == 2 / 5
    assert repeated_ngram_rate([1, 2, 3, 4], 3) == 0.0


def test_measure_scores_under_the_model():
    toy = ToySource(vocab=30, order=1, seed=10, scale=1.0)
    c = complete(toy, [1], GenerationConfig(max_new_tokens=12, stop_at_eos=False))
    m = measure(toy, [1], c.token_ids, seconds=0.012)
    assert math.isclose(m.mean_logprob, c.total_logprob / 12, rel_tol=1e-9)
    assert math.isclose(m.perplexity, math.exp(-m.mean_logprob))
    assert m.length == 12 and m.ms_per_token == pytest.approx(1.0)
    with pytest.raises(ValueError, match="nothing was generated"):
        measure(toy, [1], [])


# ---------------------------------------------------------------------------------------------------
# Comparisons

def test_compare_gives_each_strategy_its_outcome_or_its_error():
    toy = ToySource(vocab=257, order=1, seed=5, block_size=8)
    beam2 = Strategy("beam 2", beam_width=2)
    out = compare(toy, "abcdefgh", [PRESETS["greedy"], beam2, PRESETS["top-k 40"]], max_new_tokens=6)
    assert [o.strategy.name for o in out] == ["greedy", "beam 2", "top-k 40"]
    assert out[0].error is None and len(out[0].token_ids) == out[0].metrics.length > 0
    assert "beam search needs room in the context of 8" in out[1].error and out[1].metrics is None
    assert out[2].error is None and out[2].text == complete(toy, "abcdefgh", GenerationConfig(
        max_new_tokens=6, sampler=SamplerConfig(top_k=40), top_n=0)).text
    with pytest.raises(ValueError, match="early_stopping must be False, True or 'never'"):
        compare(toy, "ab", [beam2], early_stopping="yes")
    with pytest.raises(ValueError, match="compare at most 2 strategies at once, got 3: remove 1"):
        compare(toy, "ab", [beam2] * 3, limits=Limits(max_strategies=2))


def test_a_comparison_keeps_its_inputs_and_decoded_beam_labels():
    toy = ToySource(vocab=257, order=1, seed=5, scale=0.5, block_size=32)
    toy.t1[:, 256] += 3.0
    inputs = Inputs("toy", "ab", (Strategy("beam 3", beam_width=3),), 0, 10, early_stopping=True)
    result = run(toy, inputs)
    assert isinstance(result, Comparison) and result.inputs == inputs
    o = result.outcomes[0]
    direct = list(beam_search(toy, "ab", 3, 10, early_stopping=True))
    assert o.token_ids == direct[-1].hypotheses[0].tokens and o.finish_reason == direct[-1].finish_reason
    assert [[b.tokens for b in s.beams] for s in o.beam_steps] == [[b.tokens for b in s.beams] for s in direct[:-1]]
    labels = [n.label for n in o.tree.nodes[1:]]
    assert labels == [toy.tokenizer.token_text(b.tokens[-1]) for s in o.beam_steps for b in s.beams]
    assert "\\xa8" in labels and "\ufffd" not in str(labels)     # bytes shown, not U+FFFD
    # the tree's answer is the text returned, its per-token log-probs those the scoring pass gives
    path = [n for n in o.tree.nodes[1:] if n.best]
    assert [n.label for n in path] == [toy.tokenizer.token_text(t) for t in o.token_ids]
    assert [n.logprob for n in path] == pytest.approx([s.raw_logprob for s in o.tokens], abs=1e-9)


def test_compare_scores_every_text_once_under_the_model_with_its_alternatives():
    toy = ToySource(vocab=257, order=1, seed=7, scale=1.0, boost=list(range(97, 123)))
    out = compare(toy, "ab", [PRESETS["greedy"], PRESETS["top-p 0.9"], Strategy("beam 2", beam_width=2)],
                  max_new_tokens=12)
    for o in out:
        assert [s.token_id for s in o.tokens] == o.token_ids and len(o.pieces) == len(o.token_ids)
        expected = measure(toy, toy.tokenizer.encode("ab"), o.token_ids, o.seconds)
        assert o.metrics == dataclasses.replace(expected, mean_logprob=pytest.approx(expected.mean_logprob),
                                                perplexity=pytest.approx(expected.perplexity))
        for s in o.tokens:
            assert s.prob == pytest.approx(s.raw_prob) and len(s.alternatives) == 10
            probs = [a.prob for a in s.alternatives]
            assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
            listed = {a.token_id: a.prob for a in s.alternatives}
            assert listed[s.token_id] == s.raw_prob if s.token_id in listed else s.raw_prob <= probs[-1]
    greedy = out[0]
    assert all(s.token_id == s.alternatives[0].token_id for s in greedy.tokens)     # greedy takes the top one
    # a sampled text's probabilities are the ones decoding recorded (the same distribution, one pass each)
    sampled = complete(toy, "ab", GenerationConfig(max_new_tokens=12, sampler=SamplerConfig(top_p=0.9), top_n=0))
    assert [s.raw_prob for s in out[1].tokens] == pytest.approx([s.raw_prob for s in sampled.steps], abs=1e-12)


def test_a_continuation_prompt_is_the_text_before_the_token_within_the_limit():
    toy = ToySource(vocab=257, order=1, seed=7, scale=1.0, boost=list(range(97, 123)))
    o = compare(toy, "ab", [PRESETS["greedy"]], max_new_tokens=8)[0]
    assert continuation_prompt("ab", o, 0, 100) == ("ab", False)
    assert continuation_prompt("ab", o, 5, 100) == ("ab" + o.text[:5], False)
    assert continuation_prompt("ab", o, 5, 4) == (("ab" + o.text[:5])[-4:], True)     # the end is kept
    assert o.text_before(len(o.token_ids)) == o.text


ROOT = Path(__file__).resolve().parent.parent


def compare_page(query: dict | None = None):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    at.switch_page("playground/compare.py")
    return at.run()


def shown_texts(at) -> list[str]:
    """Each strategy's text as drawn: its token chips, the prompt's first (newlines drawn as ↵)."""
    return [m.value for m in at.markdown if 'title="prompt"' in m.value]


def metrics_table(at):
    return next(d.value for d in at.dataframe if "strategy" in d.value.columns)


@pytest.mark.parametrize("raw, used", [("-1", 0), ("99999999999", 2**31 - 1), ("seven", 0)])
def test_compare_opens_a_link_with_a_bad_seed(raw, used):
    at = compare_page({"seed": raw, "strategies": "greedy"})
    assert not at.exception, at.exception
    assert at.number_input(key="cmp_seed").value == used
    assert any("`seed` value" in w.value for w in at.warning)


@pytest.mark.parametrize("n", [7, 8])
def test_compare_in_hosted_mode_opens_a_link_with_too_many_strategies(monkeypatch, n):
    from playground import shared
    monkeypatch.setattr(shared, "HOSTED", True)
    at = compare_page({"strategies": ",".join(list(PRESETS)[:n])})
    assert not at.exception, at.exception
    assert at.multiselect(key="cmp_strategies").value == list(PRESETS)[:6]
    assert any("at most 6 at once" in w.value for w in at.warning)
    assert len(metrics_table(at)) == 6


def test_compare_refuses_a_custom_strategy_past_the_limit_and_keeps_the_results():
    at = compare_page({"strategies": "greedy"})
    at.multiselect(key="cmp_strategies").set_value(list(PRESETS))
    at.checkbox(key="cmp_custom").check()
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    assert any("at most 8 strategies" in w.value and "custom strategy counts too" in w.value for w in at.warning)
    assert list(metrics_table(at)["strategy"]) == ["greedy"]                # the last results, kept
    assert any("previous settings" in w.value for w in at.warning)


def test_compare_marks_results_stale_when_the_prompt_or_model_changes():
    at = compare_page({"strategies": "greedy,beam 4"})
    before = shown_texts(at)
    assert len(before) == 2 and all(">ROMEO:↵</span>" in t for t in before)
    at.text_area(key="cmp_prompt").set_value("JULIET:\n").run()
    assert not at.exception
    assert any("previous settings (the prompt changed" in w.value and "press Run" in w.value for w in at.warning)
    assert shown_texts(at) == before                                        # their own prompt, not the new one
    at.selectbox(key="model").set_value("shakespeare-bpe").run()
    assert not at.exception
    assert any("the model, the prompt changed" in w.value for w in at.warning)
    assert shown_texts(at) == before                                        # decoded by the model that made them
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception and not any("previous settings" in w.value for w in at.warning)
    assert all(">JULIET:↵</span>" in t for t in shown_texts(at))
    assert at.session_state["cmp_result"].inputs.model.endswith("shakespeare-bpe")


def test_compare_shows_a_strategy_that_cannot_run_in_its_own_column():
    from playground.shared import DEFAULT_MODEL, model_by_name
    context = model_by_name(DEFAULT_MODEL).block_size
    line = "To be, or not to be, that is the question. "
    prompt = "ROMEO:\n" + line * (context // len(line) + 1)                               # past the context
    at = compare_page({"prompt": prompt, "strategies": "greedy,beam 4"})
    assert not at.exception, at.exception
    assert any(f"beam search needs room in the context of {context}" in e.value for e in at.error)
    assert list(metrics_table(at)["strategy"]) == ["greedy"]
    from playground.shared import visible
    assert len(shown_texts(at)) == 1 and visible(prompt) in shown_texts(at)[0]


def test_compare_early_stopping_is_chosen_named_and_shared():
    at = compare_page({"strategies": "beam 4", "early_stopping": "never"})
    assert not at.exception, at.exception
    assert at.selectbox(key="cmp_es").value == "never" and at.query_params["early_stopping"] == "never"
    assert at.session_state["cmp_result"].inputs.early_stopping == "never"
    assert any("early_stopping='never'" in c.value for c in at.caption)
    at.selectbox(key="cmp_es").set_value("true").run()
    assert at.query_params["early_stopping"] == "true"
    assert any("previous settings (the early-stopping rule changed" in w.value for w in at.warning)
    bad = compare_page({"strategies": "greedy", "early_stopping": "maybe"})
    assert not bad.exception and bad.selectbox(key="cmp_es").value == "false"
    assert any("`early_stopping` value" in w.value for w in bad.warning)
    assert any("early_stopping=False" in c.value for c in bad.caption)      # Hugging Face's default, said


def test_compare_draws_its_trees_with_the_shared_figure_helper(monkeypatch):
    from playground import shared
    calls = []
    real = shared.figure

    def counting(traces, **layout):
        calls.append(len(traces))
        return real(traces, **layout)
    monkeypatch.setattr(shared, "figure", counting)
    at = compare_page({"strategies": "greedy,beam 4"})
    assert not at.exception, at.exception
    assert len(calls) == 1 and calls[0] > 1                                  # one tree, for beam 4


def test_entropy_by_temperature_is_the_entropy_of_each_scaled_distribution():
    x = np.random.default_rng(3).normal(0, 3, 5000)
    x[:7] = -np.inf                                            # tokens a stage removed
    temps = [0.05, 0.3, 1.0, 2.5, 100.0]
    got = sampling.entropy_by_temperature(x, temps)
    assert np.allclose(got, [sampling.entropy(x / t) for t in temps], atol=1e-5)
    with pytest.raises(ValueError, match="temperature must be a finite number in \\(0, 100\\]"):
        sampling.entropy_by_temperature(x, [0.0])
