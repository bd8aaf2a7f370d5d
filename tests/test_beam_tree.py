"""The beam tree's layout (core.compare.beam_tree / tidy_slots): on random beam records and on real beam
searches, no two edges cross (checked geometrically), slots are integers, every node's parent is one step
to the left, and each node's kind, rank and the answer's path are what the records say."""

import random
import pytest

from core.compare import BeamTree, beam_tree, tidy_slots
from core.generate import Beam, BeamStep, beam_search
from tests.test_decoding import ToySource


def random_records(rng: random.Random, width: int, n_steps: int) -> tuple[list[BeamStep], list[Beam]]:
    """Beam records shaped as beam_search's: each step's live beams (best first) extend some of the previous
    step's live beams, then the beams that just finished; the n-best are some of the finished ones."""
    steps, live, finished = [], [Beam([], 0.0, 0.0, None)], []
    for s in range(n_steps):
        last = s == n_steps - 1
        n_live = 0 if last and rng.random() < 0.5 else rng.randint(1, width)
        n_done = rng.randint(1 if n_live == 0 else 0, 2)
        # a token id per (parent, child) pair within the step, so every beam's token list is unique
        new_live, done = [], []
        for j in range(n_live + n_done):
            p = rng.randrange(len(live))
            total = live[p].sum_logprob - rng.random() * 3
            beam = Beam(live[p].tokens + [j], total, total / (s + 1), p, finished=j >= n_live,
                        end=None if j < n_live else rng.choice(["eos", "length"]))
            (new_live if j < n_live else done).append(beam)
        steps.append(BeamStep(s, new_live + done))
        finished += done
        live = new_live
        if not live:
            break
    best = sorted(finished, key=lambda b: -b.score)[:width]
    return steps, best


def real_records(width: int, max_new: int, seed: int, **kw) -> tuple[list[BeamStep], list[Beam]]:
    toy = ToySource(vocab=12, order=2, seed=seed, scale=1.5)
    records = list(beam_search(toy, [1, 2], width, max_new, **kw))
    return records[:-1], records[-1].hypotheses


def crosses(a, b) -> bool:
    """Whether segments a and b meet anywhere but at an endpoint they share (exact: integer points)."""
    (p1, p2), (q1, q2) = a, b

    def orient(o, p, q):
        v = (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])
        return (v > 0) - (v < 0)

    def on(o, p, q):            # q on segment o-p, given collinear
        return min(o[0], p[0]) <= q[0] <= max(o[0], p[0]) and min(o[1], p[1]) <= q[1] <= max(o[1], p[1])

    shared = {p1, p2} & {q1, q2}
    if shared:
        if len(shared) == 2:
            return True         # the same edge twice
        s = shared.pop()
        a_other, b_other = (p2 if p1 == s else p1), (q2 if q1 == s else q1)
        # sharing an endpoint is fine unless they run along each other from it
        return orient(s, a_other, b_other) == 0 and (on(s, a_other, b_other) or on(s, b_other, a_other))
    o1, o2, o3, o4 = orient(p1, p2, q1), orient(p1, p2, q2), orient(q1, q2, p1), orient(q1, q2, p2)
    if o1 != o2 and o3 != o4:
        return True
    return any(o == 0 and on(*seg, pt) for o, seg, pt in
               [(o1, (p1, p2), q1), (o2, (p1, p2), q2), (o3, (q1, q2), p1), (o4, (q1, q2), p2)])


def segments(tree: BeamTree):
    xy = [(n.step, n.slot) for n in tree.nodes]
    return [(xy[p], xy[c]) for p, c in tree.edges]


def check_layout(tree: BeamTree, steps: list[BeamStep], best: list[Beam]) -> None:
    nodes = tree.nodes
    assert nodes[0].kind == "prompt" and nodes[0].parent is None and nodes[0].step == 0
    assert all(type(n.slot) is int and n.slot >= 0 for n in nodes) and min(n.slot for n in nodes) == 0
    assert all(nodes[n.parent].step == n.step - 1 for n in nodes[1:])
    assert len({(n.step, n.slot) for n in nodes}) == len(nodes)                 # no two nodes in one place
    segs = segments(tree)
    bad = [(a, b) for i, a in enumerate(segs) for b in segs[i + 1:] if crosses(a, b)]
    assert not bad, bad[:3]
    # tidy: a parent sits between its first and last child
    kids = {}
    for p, c in tree.edges:
        kids.setdefault(p, []).append(nodes[c].slot)
    assert all(min(s) <= nodes[p].slot <= max(s) for p, s in kids.items())
    # kinds: one node per beam of every step, in order, flagged as the records say
    beams = [b for s in steps for b in s.beams]
    assert len(nodes) == 1 + len(beams)
    parents = {p for p, _ in tree.edges}
    for i, (n, b) in enumerate(zip(nodes[1:], beams), start=1):
        assert n.step == len(b.tokens) and n.sum_logprob == b.sum_logprob and n.score == b.score
        assert (n.kind == "finished") == b.finished and n.end == b.end
        if not b.finished:
            assert n.kind == ("extended" if i in parents else "stopped" if n.step == len(steps) else "pruned")
    ranks = {tuple(h.tokens): r for r, h in enumerate(best, 1)}
    for n, b in zip(nodes[1:], beams):
        assert n.rank == (ranks.get(tuple(b.tokens)) if b.finished else None)
    path = [n for n in nodes if n.best]
    if best:
        answer = next(n for n in nodes if n.rank == 1)
        assert answer.kind == "finished" and len(path) == answer.step + 1
        node, on_path = answer, []
        while node is not None:
            on_path.append(node)
            node = nodes[node.parent] if node.parent is not None else None
        assert sorted(map(id, on_path)) == sorted(map(id, path))
    else:
        assert not path


@pytest.mark.parametrize("seed", range(60))
def test_random_beam_records_lay_out_as_an_uncrossed_tree(seed):
    rng = random.Random(seed)
    steps, best = random_records(rng, rng.randint(1, 6), rng.randint(1, 25))
    tree = beam_tree(steps, best, lambda t: f"t{t}")
    check_layout(tree, steps, best)


@pytest.mark.parametrize("width, max_new, seed, kw", [
    (4, 30, 0, {}), (3, 40, 1, {"stop_at_eos": False}), (5, 25, 2, {"early_stopping": True}),
    (2, 20, 3, {"length_penalty": 0.0, "early_stopping": "never"}), (1, 10, 4, {})])
def test_real_beam_searches_lay_out_as_an_uncrossed_tree(width, max_new, seed, kw):
    steps, best = real_records(width, max_new, seed, **kw)
    tree = beam_tree(steps, best, ToySource().tokenizer.token_text)
    check_layout(tree, steps, best)
    kinds = {n.kind for n in tree.nodes}
    assert "finished" in kinds and (width == 1 or "pruned" in kinds)
    answer = next(n for n in tree.nodes if n.rank == 1)
    assert answer.sum_logprob == best[0].sum_logprob
    # per-token log-probs add up along the path to the answer's total
    assert sum(n.logprob for n in tree.nodes if n.best) == pytest.approx(best[0].sum_logprob)


def test_width_one_is_a_straight_line():
    steps, best = real_records(1, 12, 5, stop_at_eos=False)
    tree = beam_tree(steps, best, str)
    assert {n.slot for n in tree.nodes} == {0} and all(n.best for n in tree.nodes)


def test_tidy_slots_keeps_a_short_branch_beside_a_long_one_and_centres_parents():
    # 0 -> 1, 2, 3; 1 -> 4 -> 5 -> 6 (a long stem); 2 and 3 pruned at once; 4 -> 7 (pruned)
    parents = [None, 0, 0, 0, 1, 4, 5, 4]
    children = [[1, 2, 3], [4], [], [], [5, 7], [6], [], []]
    slots = tidy_slots(parents, children)
    assert slots == [1, 0, 1, 2, 0, 0, 0, 1]
    # a sibling is pushed only past the depths it shares: 2 sits at slot 1 beside 1, not below 5
    parents = [None, 0, 0, 1, 3, 3]
    children = [[1, 2], [3], [], [4, 5], [], []]
    assert tidy_slots(parents, children) == [0, 0, 1, 0, 0, 1]


def test_the_crossing_check_sees_crossings():
    assert crosses(((0, 0), (1, 2)), ((0, 1), (1, 0)))          # an X
    assert crosses(((0, 0), (2, 2)), ((0, 0), (1, 1)))          # one along the other
    assert crosses(((0, 1), (1, 1)), ((1, 0), (1, 2)))          # one ending on the other
    assert not crosses(((0, 0), (1, 0)), ((0, 0), (1, 1)))      # a fork
    assert not crosses(((0, 0), (1, 1)), ((0, 1), (1, 2)))      # parallel
