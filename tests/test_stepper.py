"""The Generate stepper's live trace: each click costs one decode step, never a pass over the whole text,
and what it shows equals what a trace rebuilt from scratch (a reload, a shared link) shows."""

import dataclasses

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.generate import GenerationConfig
from core.sampling import SamplerConfig
from core.trace import Trace
from tests.test_decoding import ToySource, ROOT

APP = str(ROOT / "streamlit_app.py")


class Counting(ToySource):
    """Counts model calls and the positions each call computes."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.positions = 0

    def step(self, ids, cache=None):
        self.positions += np.asarray(ids).reshape(-1).size
        return super().step(ids, cache)


def records(trace: Trace) -> list:
    return [dataclasses.asdict(s) for s in trace.steps()]


def test_a_click_is_one_decode_step():
    toy = Counting(vocab=40, order=2, seed=1, block_size=512)
    t = Trace(toy, "ab", GenerationConfig(seed=4, sampler=SamplerConfig(temperature=0.9, top_k=20)))
    t.view()
    for n in range(1, 201):
        calls, positions = toy.calls, toy.positions
        t.step()
        steps, dist = t.view()                       # what the page draws after the click
        assert len(steps) == n
        assert toy.calls - calls == 1 and toy.positions - positions == 1, n
    calls = toy.calls
    t.back()
    t.view()
    t.forward()
    t.view()
    assert toy.calls - calls == 2                    # back: one prefill of the prefix; forward: one step


def test_the_live_trace_shows_what_a_rebuilt_one_shows():
    toy = ToySource(vocab=257, order=1, seed=2, scale=1.0)     # byte ids: the prompt's too, for the penalties
    t = Trace(toy, "hi", GenerationConfig(seed=9, sampler=SamplerConfig(temperature=1.1, repetition_penalty=1.3,
                                                                      frequency_penalty=0.5)))
    t.run(12)
    t.back()
    t.back()
    t.force(3)
    t.run(5)
    t.switch("main")
    t.back()
    t.run(2)
    rebuilt = Trace.from_dict(toy, t.to_dict())
    assert records(t) == records(rebuilt)
    assert np.array_equal(t.distribution().final.probs, rebuilt.distribution().final.probs)
    t.config = dataclasses.replace(t.config, sampler=SamplerConfig(temperature=0.5))   # a knob changes
    rebuilt.config = t.config
    assert records(t) == records(Trace.from_dict(toy, t.to_dict())) == records(rebuilt)
    assert [s.forced for s in t.steps()] == [s.forced for s in rebuilt.steps()]


def test_the_window_slides_the_same_live_and_rebuilt():
    toy = ToySource(vocab=30, order=2, seed=3, block_size=8)
    t = Trace(toy, "abc", GenerationConfig(seed=1))
    t.run(20)
    assert any(s.window_slid for s in t.steps())
    assert records(t) == records(Trace.from_dict(toy, t.to_dict()))


@pytest.mark.parametrize("tokens", [10, 200])
def test_the_page_keeps_the_trace_and_clicks_step_once(tokens, monkeypatch):
    """On the page: after `tokens` tokens, a click runs the model once (the counts come from the real
    model's runtime)."""
    from core import runtime
    calls = {"n": 0, "positions": 0}
    real = runtime.Model.step

    def counting(self, ids, cache=None):
        calls["n"] += 1
        calls["positions"] += np.asarray(ids).size
        return real(self, ids, cache)
    monkeypatch.setattr(runtime.Model, "step", counting)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("playground/generate.py")
    at.run()
    at.number_input(key="run_n").set_value(min(tokens, 100)).run()

    def generated() -> int:
        return len(at.session_state["trace"]["state"]["branches"][0]["tokens"]) if "trace" in at.session_state else 0
    while generated() < tokens:
        next(b for b in at.button if b.label.startswith("Run")).click().run()
    assert not at.exception
    calls["n"] = calls["positions"] = 0
    next(b for b in at.button if b.label == "Sample one").click().run()
    assert not at.exception
    assert generated() == tokens + 1
    assert calls == {"n": 1, "positions": 1}


class WindowSource(ToySource):
    """Logits that depend on how many tokens the window holds: a window that slid differently shows."""

    def step(self, ids, cache=None):
        logits, cache = super().step(ids, cache)
        T = np.asarray(ids).reshape(logits.shape[0], -1).shape[1]
        for j in range(T):
            logits[:, j, 0] += 0.3 * (cache.length - T + j)
        return logits, cache


def test_going_back_past_the_context_shows_what_a_replay_shows():
    toy = WindowSource(vocab=30, order=1, seed=4, block_size=8)
    t = Trace(toy, "abc", GenerationConfig(seed=2))
    t.run(20)
    for _ in range(3):
        t.back()
        assert records(t) == records(Trace.from_dict(toy, t.to_dict()))
        assert np.array_equal(t.distribution().final.probs, Trace.from_dict(toy, t.to_dict()).distribution().final.probs)


def test_a_link_cannot_ask_for_more_than_the_server_allows():
    from core.generate import GenerationError
    from core.limits import Limits
    toy = ToySource(vocab=30, order=1)
    d = Trace(toy, "ab").to_dict()
    d["branches"][0]["tokens"] = [1] * 300
    with pytest.raises(GenerationError, match="length must be an integer in \\[0, 256\\]"):
        Trace.from_dict(toy, d, Limits.hosted())
    d = Trace(toy, "ab").to_dict()
    d["branches"] += [dict(name=f"b{i}", tokens=[1], forced=[], parent="main", fork_at=0) for i in range(40)]
    with pytest.raises(GenerationError, match="branches"):
        Trace.from_dict(toy, d, Limits.hosted())
    d = Trace(toy, "ab").to_dict()
    d["branches"][0]["forced"] = [5]
    with pytest.raises(GenerationError, match="forced"):
        Trace.from_dict(toy, d)
    d = Trace(toy, "x" * 3000).to_dict()
    with pytest.raises(GenerationError, match="limit is 2,000"):
        Trace.from_dict(toy, d, Limits.hosted())


def test_the_loom_continues_from_any_token_keeps_every_path_and_survives_json_and_links():
    toy = ToySource(vocab=40, order=2, seed=3, block_size=512)
    t = Trace(toy, "ab", GenerationConfig(seed=2, sampler=SamplerConfig(temperature=0.9)))
    t.run(8)
    main = list(t.branch.tokens)
    other = next(a for a in range(toy.vocab_size) if a != main[3])
    t.continue_with(3, other)                        # a different token at the 4th: a child of main
    child = t.current
    assert t.tokens == main[:3] + [other] and t.branches["main"].tokens == main
    t.run(2)
    t.switch("main")
    t.continue_with(3, main[3])                      # the same token main already has there: no new branch
    assert t.current == "main" and t.cursor == 4 and len(t.branches) == 2
    t.switch(child)
    grand_other = next(a for a in range(toy.vocab_size) if a != t.branch.tokens[4])
    t.continue_with(4, grand_other)                  # a child of the child
    t.switch("main")
    t.continue_with(1, next(a for a in range(toy.vocab_size) if a != main[1]))   # a second child of main
    outline = [(n.name, n.parent, n.fork_at, n.depth) for n in t.tree()]
    assert outline[0] == ("main", None, 0, 0)
    # depth-first, children in the order of where they fork: main's fork at 1, then its fork at 3 and that one's child
    assert [n[3] for n in outline] == [0, 1, 1, 2] and outline[1][2] == 1 and outline[2][2] == 3
    assert outline[3][1] == outline[2][0] and outline[3][2] == 4
    assert t.tree()[2].added == toy.tokenizer.decode(t.branches[outline[2][0]].tokens[3:])
    for restored in (Trace.from_dict(toy, t.to_dict()), Trace.from_url(toy, t.to_url())):
        assert [(n.name, n.parent, n.fork_at, n.depth, n.added) for n in restored.tree()] == \
               [(n.name, n.parent, n.fork_at, n.depth, n.added) for n in t.tree()]
        assert restored.steps() == t.steps()
    with pytest.raises(Exception, match="position"):
        t.continue_with(99, 1)


def test_xtc_s_coin_follows_the_trace_s_seed_in_the_view_and_the_draw():
    """XTC draws a coin per position from the trace's seed: the stage view shows XTC acting exactly where that
    seed's coin says, and the token then drawn is one the view allows."""
    from core.sampling import xtc_draw
    toy = ToySource(vocab=40, order=2, seed=5, block_size=512)
    acted_somewhere = {}
    for seed in (0, 7):
        t = Trace(toy, "ab", GenerationConfig(seed=seed, sampler=SamplerConfig(xtc_threshold=0.05, xtc_probability=0.5)))
        acted_somewhere[seed] = []
        for _ in range(30):
            stages = t.distribution().stages
            assert stages[-1].name == "xtc"
            before, after = stages[-2].probs, stages[-1].probs
            acted = (after > 0).sum() < (before > 0).sum()
            assert acted == (xtc_draw(seed, len(t.ids)) < 0.5 and (before >= 0.05).sum() >= 2), (seed, len(t.ids))
            acted_somewhere[seed].append(acted)
            token = t.step()
            assert after[token] > 0, (seed, len(t.tokens))
    assert acted_somewhere[0] != acted_somewhere[7] and any(acted_somewhere[7])


def test_a_saved_loom_loads_back_and_a_bad_one_is_refused_with_what_to_do():
    from core.generate import GenerationError
    from core.trace import MAX_SAVED_BYTES, loom_file, read_loom
    import json
    toy = ToySource(vocab=40, order=2, seed=3, block_size=512)
    t = Trace(toy, "ab", GenerationConfig(seed=2, sampler=SamplerConfig(temperature=0.9)))
    t.run(6)
    t.continue_with(2, next(a for a in range(40) if a != t.branch.tokens[2]))
    saved = loom_file(t, "toy")
    back = read_loom(toy, saved.encode(), "toy")
    assert back.to_dict() == t.to_dict() and back.steps() == t.steps()
    state = json.loads(saved)
    tampered = json.loads(saved)
    tampered["trace"]["branches"][0]["tokens"][0] = 10_000
    for raw, name, message in [
            (saved.encode(), "other", "made with 'toy'"),
            (b"{not json", "toy", "not a saved loom"),
            (json.dumps({"trace": state["trace"]}).encode(), "toy", "not a saved loom"),
            (json.dumps({"model": "toy", "trace": []}).encode(), "toy", "not a saved loom"),
            (json.dumps(tampered).encode(), "toy", "cannot be restored|out of range|vocabulary|token"),
            (b" " * (MAX_SAVED_BYTES + 1), "toy", "at most")]:
        with pytest.raises(GenerationError, match=message):
            read_loom(toy, raw, name)


def test_continue_with_refused_at_the_branch_limit_leaves_the_text_in_view():
    from core.generate import GenerationError
    from core.limits import Limits
    toy = ToySource(vocab=40, order=2, seed=3, block_size=512)
    t = Trace(toy, "ab", GenerationConfig(seed=2), Limits(max_branches=2))
    t.run(8)
    t.continue_with(5, next(a for a in range(40) if a != t.branch.tokens[5]))      # the second branch: the limit
    t.run(2)
    cursor, tokens = t.cursor, list(t.tokens)
    with pytest.raises(GenerationError, match="branches"):
        t.continue_with(3, next(a for a in range(40) if a != t.branch.tokens[3]))
    assert t.cursor == cursor and t.tokens == tokens
