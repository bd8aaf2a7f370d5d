"""Beam search against the peer: core.generate.beam_search vs transformers' generate(num_beams=...).

Tiny random GPT-2s (seeded, a few tokens of vocabulary, EOS made likely on some) run through both: the
same hypotheses in the same order, with the same scores, over widths, length penalties, early-stopping
rules, n-best and the context limit. Our side sees the model only through a test adapter (a
LogitsSource whose cache is the token history), so nothing of transformers' search leaks into ours.

Not here: beam search's own properties on numpy toys (tests/test_decoding.py).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel   # the peer: a pinned test requirement, never skipped

from core.generate import BeamStep, beam_search
from core.runtime import KVCache

LENGTH_PENALTIES = (-1.0, 0.0, 1.0, 2.0)
EARLY_STOPPING = (False, True, "never")


class TinyTokenizer:
    """What beam search needs of a tokenizer: the EOS id and each token's bytes (no real text)."""

    def __init__(self, vocab_size: int, eot_id: int):
        self.vocab_size, self.eot_id = vocab_size, eot_id

    def token_bytes(self, token_id: int) -> bytes:
        return f"<{token_id}>".encode()

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(t) for t in ids).decode()


class HFSource:
    """A transformers model as a LogitsSource. The 'cache' is the token history; logits are recomputed
    from it (memoized per sequence, so the many searches of one sweep share work)."""

    def __init__(self, model, vocab_size: int, eos: int, block_size: int = 64):
        self.model, self.vocab_size, self.block_size = model, vocab_size, block_size
        self.tokenizer = TinyTokenizer(vocab_size, eos)
        self.memo: dict[tuple[int, ...], np.ndarray] = {}

    def step(self, ids, cache=None):
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        B, T = ids.shape
        history = cache.arrays[0] if cache is not None else np.zeros((B, 0), np.int64)
        full = np.concatenate([history, ids], axis=1)
        if full.shape[1] > self.block_size:
            raise ValueError("context exceeded")          # the search must stop before this
        rows = [tuple(r) for r in full.tolist()]
        missing = [r for r in dict.fromkeys(rows) if r not in self.memo]
        if missing:
            with torch.no_grad():
                logits = self.model(torch.tensor(missing)).logits[:, -T:].numpy()
            self.memo.update(zip(missing, logits))
        return np.stack([self.memo[r] for r in rows]), KVCache((full,), full.shape[1], B)

    def next_logits(self, ids, cache=None):
        logits, cache = self.step(np.asarray(ids)[None], cache)
        return logits[0, -1], cache


def tiny_gpt2(seed: int, vocab_size: int, eos: int, eos_boost: float):
    """A 2-layer GPT-2 with weights large enough for peaked, context-dependent distributions; eos_boost
    adds about that much to EOS's logit (a constant feature through ln_f's bias into an untied head)."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_layer=2, n_embd=32, n_head=2, n_positions=64,
                                       eos_token_id=eos, bos_token_id=eos, initializer_range=0.2,
                                       tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(1.3)
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[eos, 0] += eos_boost
    return model


@pytest.fixture(scope="module")
def peers():
    """Eight models: vocabularies of 6-12, EOS anywhere, from never likely to nearly always; each with its
    own prompt."""
    rng = np.random.default_rng(2026)
    out = []
    for seed in range(8):
        V = int(rng.integers(6, 13))
        eos = int(rng.integers(0, V))
        model = tiny_gpt2(seed, V, eos, eos_boost=float(rng.choice([0.0, 1.0, 1.5, 2.0, 3.0])))
        prompt = [int(t) for t in rng.integers(0, V, int(rng.integers(1, 5)))]
        out.append((model, HFSource(model, V, eos), eos, prompt))
    return out


def hf_beam(model, prompt, width, n, max_new_tokens, length_penalty, early_stopping, eos):
    """transformers' n-best (token lists, EOS kept, padding stripped) and sequences_scores."""
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         num_beams=width, num_return_sequences=n, max_new_tokens=max_new_tokens,
                         length_penalty=length_penalty, early_stopping=early_stopping, do_sample=False,
                         eos_token_id=eos, pad_token_id=0 if eos is None else eos,
                         output_scores=True, return_dict_in_generate=True)
    seqs = []
    for row in out.sequences[:, len(prompt):].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]                  # what follows is padding (pad = EOS)
        seqs.append(row)
    scores = out.sequences_scores.tolist() if getattr(out, "sequences_scores", None) is not None else None
    return seqs, scores


def ours(source, prompt, width, n, max_new_tokens, length_penalty, early_stopping, stop_at_eos=True):
    records = list(beam_search(source, prompt, width, max_new_tokens, length_penalty, n_best=n,
                               stop_at_eos=stop_at_eos, early_stopping=early_stopping))
    return records[:-1], records[-1]


def outscored(steps) -> bool:
    """Whether some live beam ever scored above a hypothesis that had already finished: the case the old
    search got wrong, ranking the unfinished text first."""
    done: list[float] = []
    for s in steps:
        done += [b.score for b in s.beams if b.finished]
        if done and any(b.score > min(done) for b in s.beams if not b.finished):
            return True
    return False


@pytest.mark.parametrize("early_stopping", EARLY_STOPPING, ids=str)
def test_beam_search_returns_what_transformers_returns(peers, early_stopping):
    rng = np.random.default_rng({False: 0, True: 1, "never": 2}[early_stopping])
    seen = {"best ended at EOS": 0, "best cut at the limit": 0, "stopped with longer live beams": 0,
            "a live beam outscored a finished, shorter one": 0, "several returned": 0}
    for (width, lp), k in itertools.product(itertools.product(range(2, 6), LENGTH_PENALTIES), range(3)):
        model, source, eos, prompt = peers[(3 * width + 5 * LENGTH_PENALTIES.index(lp) + k) % len(peers)]
        max_new, n = int(rng.integers(1, 15)), int(rng.integers(1, width + 1))
        case = dict(width=width, n=n, max_new_tokens=max_new, length_penalty=lp, early_stopping=early_stopping)
        want, want_scores = hf_beam(model, prompt, eos=eos, **case)
        steps, got = ours(source, prompt, **case)
        assert [h.tokens for h in got.hypotheses] == want, (case, prompt)
        assert np.allclose([h.score for h in got.hypotheses], want_scores, atol=1e-4, rtol=0), (case, prompt)
        assert all(h.finished for h in got.hypotheses)
        best, live = got.hypotheses[0], [b for b in steps[-1].beams if not b.finished]
        seen["best ended at EOS"] += best.end == "eos"
        seen["best cut at the limit"] += best.end == "length"
        seen["stopped with longer live beams"] += got.finish_reason == "eos" and bool(live)
        seen["a live beam outscored a finished, shorter one"] += outscored(steps)
        seen["several returned"] += n > 1
    # the sweep must keep exercising what once went wrong, not drift into easy cases
    assert all(count >= 2 for count in seen.values()), seen


@pytest.mark.parametrize("length_penalty", LENGTH_PENALTIES)
def test_without_eos_every_hypothesis_runs_to_the_limit(peers, length_penalty):
    for width, (model, source, _, prompt) in zip((2, 3, 5), peers[:3]):
        case = dict(width=width, n=width, max_new_tokens=6, length_penalty=length_penalty, early_stopping=False)
        want, want_scores = hf_beam(model, prompt, eos=None, **case)
        _, got = ours(source, prompt, stop_at_eos=False, **case)
        assert [h.tokens for h in got.hypotheses] == want
        assert np.allclose([h.score for h in got.hypotheses], want_scores, atol=1e-4, rtol=0)
        assert got.finish_reason == "length" and all(len(h.tokens) == 6 for h in got.hypotheses)


def test_width_one_is_transformers_greedy(peers):
    # generate(num_beams=1) is greedy search; beam search of width 1 agrees with it except for
    # early_stopping="never" with length_penalty > 0, which may look past an EOS (HF never runs that)
    for (model, source, eos, prompt), lp, es in itertools.product(peers[:4], LENGTH_PENALTIES, EARLY_STOPPING):
        if es == "never" and lp > 0:
            continue
        want, _ = hf_beam(model, prompt, 1, 1, 12, lp, es, eos)
        _, got = ours(source, prompt, 1, 1, 12, lp, es)
        assert [h.tokens for h in got.hypotheses] == want


def test_the_context_caps_the_length_like_max_length(peers):
    reasons = set()
    for (model, source, eos, prompt), room in itertools.product(peers, (1, 3, 7)):
        short = HFSource(model, source.vocab_size, eos, block_size=len(prompt) + room)
        want, want_scores = hf_beam(model, prompt, 3, 3, room, 1.0, False, eos)
        steps, got = ours(short, prompt, 3, 3, room + 10, 1.0, False)
        assert [h.tokens for h in got.hypotheses] == want
        assert np.allclose([h.score for h in got.hypotheses], want_scores, atol=1e-4, rtol=0)
        assert got.finish_reason in ("eos", "context") and len(steps) <= room
        assert all(h.end in ("eos", "context") for h in got.hypotheses)
        reasons.add(got.finish_reason)
        _, roomy = ours(short, prompt, 3, 3, room, 1.0, False)     # the limit asked for: not the context
        assert roomy.finish_reason in ("eos", "length")
    assert reasons == {"eos", "context"}


def test_steps_record_the_search_transformers_ran(peers):
    model, source, eos, prompt = peers[1]
    steps, got = ours(source, prompt, 4, 4, 10, 1.0, False)
    assert all(isinstance(s, BeamStep) for s in steps)
    for prev, cur in zip(steps, steps[1:]):
        live_before = [b for b in prev.beams if not b.finished]
        for beam in cur.beams:
            assert beam.tokens[:-1] == live_before[beam.parent].tokens
    # every returned hypothesis was announced as finished at some step
    announced = [tuple(b.tokens) for s in steps for b in s.beams if b.finished]
    assert all(tuple(h.tokens) in announced for h in got.hypotheses)


def test_vocabularies_about_as_small_as_the_beam():
    # HF fills a first step with fewer than 2 * width real candidates with impossible (-1e9) beams; ours
    # just has fewer live beams there, and the answers still agree
    for (V, width), lp, es in itertools.product([(6, 5), (4, 4), (3, 5)], (0.0, 1.0), EARLY_STOPPING):
        model = tiny_gpt2(11 + V, V, 1, eos_boost=2.0)
        source = HFSource(model, V, 1)
        want, want_scores = hf_beam(model, [2, 0], width, width, 6, lp, es, 1)
        _, got = ours(source, [2, 0], width, width, 6, lp, es)
        assert [h.tokens for h in got.hypotheses] == want, (V, width, lp, es)
        assert np.allclose([h.score for h in got.hypotheses], want_scores, atol=1e-4, rtol=0)
