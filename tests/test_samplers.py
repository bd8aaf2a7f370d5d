"""The community samplers (top-nσ, XTC, DRY) against peers written from their reference implementations,
the stage order, per-stage deltas and the settings that travel in links.

No installed library ships these stages (transformers 5.23 has none), so each peer follows its reference's
code step by step, in its own arithmetic: text-generation-webui's DRYLogitsProcessor and XTCLogitsWarper in
torch (modules/sampler_hijack.py), llama.cpp's top-n-sigma and XTC samplers in float32
(src/llama-sampling.cpp). The peers are written afresh from those procedures, not copied."""

import math

import numpy as np
import pytest

from core import sampling
from core.generate import GenerationConfig, main as generate_main
from core.sampling import (DEFAULT_ORDER, KNOBS, STAGES, SamplerConfig, parse_breakers, parse_order, run_pipeline,
                           stage_deltas)
from core.trace import Trace
from tests.test_decoding import ToySource, log

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------------
# Peers

def webui_dry(history: list[int], scores: np.ndarray, multiplier: float, base: float, allowed_length: int,
              breakers: set[int]) -> np.ndarray:
    """text-generation-webui's DRYLogitsProcessor.__call__ (range 0: the whole context), one row: for each earlier
    occurrence of the last token, walk back while the tokens before it match the tokens before the end."""
    input_ids = torch.tensor([history], dtype=torch.long)
    scores_t = torch.tensor(scores[None], dtype=torch.float64)
    for ids_row, scores_row in zip(input_ids, scores_t):
        ids = ids_row.tolist()
        last = ids[-1]
        if last in breakers:
            continue
        longest: dict[int, int] = {}
        for i in [i for i, v in enumerate(ids[:-1]) if v == last]:
            follower = ids[i + 1]
            if follower in breakers:
                continue
            length = 1
            while length < 50:
                j = i - length
                if j < 0:
                    break
                earlier = ids[-(length + 1)]
                if ids[j] != earlier or earlier in breakers:
                    break
                length += 1
            longest[follower] = max(length, longest.get(follower, 0))
        for token, length in longest.items():
            if length >= allowed_length:
                scores_row[token] -= multiplier * base ** (length - allowed_length)
    return scores_t[0].numpy()


def webui_xtc(scores: np.ndarray, threshold: float, probability: float, coin: float,
              special_ids: tuple[int, ...] = ()) -> np.ndarray:
    """text-generation-webui's XTCLogitsWarper.__call__ with its random.random() given as `coin`: sort, then remove
    each token whose successor in the sorted list still reaches the threshold (all top choices but the last)."""
    s = torch.tensor(scores[None], dtype=torch.float64)
    if coin >= probability:
        return s[0].numpy()
    sorted_logits, sorted_indices = torch.sort(s, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    sorted_remove = torch.full_like(probs, False, dtype=torch.bool)
    sorted_remove[..., :-1] = probs[..., 1:] >= threshold
    remove = sorted_remove.scatter(1, sorted_indices, sorted_remove)
    if special_ids and remove[:, list(special_ids)].any():
        return s[0].numpy()
    return s.masked_fill(remove, -float("inf"))[0].numpy()


def llama_candidates(logits: np.ndarray) -> list[tuple[int, float]]:
    """llama.cpp's token data array after earlier stages: only the tokens still in it, as (id, float32 logit)."""
    return [(i, np.float32(v)) for i, v in enumerate(logits) if np.isfinite(v)]


def llama_top_n_sigma(logits: np.ndarray, n: float) -> set[int]:
    """llama_sampler_top_n_sigma_apply: max, mean and population σ of the finite logits in float32; logits below
    max - n·σ become -inf. Returns the ids kept."""
    cur = [(i, np.float32(v)) for i, v in enumerate(logits)]
    if n <= 0 or len(cur) <= 1:
        return {i for i, v in cur if np.isfinite(v)}
    mx, total, count = cur[0][1], np.float32(0), 0
    for _, v in cur:
        if v != -np.inf:
            mx = max(mx, v)
            total = np.float32(total + v)
            count += 1
    mean = np.float32(total / count) if count else np.float32(0)
    acc = np.float32(0)
    for _, v in cur:
        if v != -np.inf:
            acc = np.float32(acc + np.float32((v - mean) ** 2))
    std = np.float32(math.sqrt(acc / count)) if count else np.float32(0)
    return {i for i, v in cur if not v < mx - np.float32(n) * std}


def llama_xtc(logits: np.ndarray, threshold: float, probability: float, chance: float) -> set[int]:
    """llama_sample_xtc_apply (min_keep 1) on the candidates: sort by logit, softmax, find the last candidate that
    reaches the threshold and drop everything before it. Returns the ids kept."""
    cur = llama_candidates(logits)
    if probability <= 0 or threshold > 0.5 or len(cur) < 2 or chance > probability:
        return {i for i, _ in cur}
    cur.sort(key=lambda c: -c[1])
    mx = cur[0][1]
    e = [np.float32(math.exp(v - mx)) for _, v in cur]
    total = np.float32(sum(e))
    p = [x / total for x in e]
    last = 0
    for i, pi in enumerate(p):
        if pi >= threshold:
            last = i
        else:
            break
    if len(cur) - last >= 1 and last > 0:
        cur = cur[last:]
    return {i for i, _ in cur}


def kept(x: np.ndarray) -> set[int]:
    return set(np.flatnonzero(np.isfinite(x)).tolist())


def random_logits(rng: np.random.Generator, vocab: int, cut: bool) -> np.ndarray:
    """Seeded logits; with cut, a random share removed as an earlier stage would (never all)."""
    x = rng.normal(0, rng.uniform(0.5, 4), vocab)
    if cut:
        x[rng.random(vocab) < rng.uniform(0, 0.7)] = -np.inf
        if not np.isfinite(x).any():
            x[rng.integers(vocab)] = 0.0
    return x


# ---------------------------------------------------------------------------------------------------
# Each stage against its peers

def test_top_n_sigma_keeps_what_llama_cpp_keeps():
    rng = np.random.default_rng(0)
    compared = 0
    for trial in range(400):
        x = random_logits(rng, int(rng.integers(2, 200)), cut=trial % 2 == 1)
        n = float(rng.choice([rng.uniform(0.01, 3.0), 0.5, 1.0, 2.0]))
        ours = sampling.top_n_sigma(x, n)
        assert kept(ours) == llama_top_n_sigma(x, n), (trial, n)
        assert np.array_equal(ours[np.isfinite(ours)], x[np.isfinite(ours)])      # kept logits untouched
        compared += len(kept(ours)) < np.isfinite(x).sum()
    assert compared > 100           # most trials really cut something


def test_top_n_sigma_does_not_depend_on_temperature():
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = rng.normal(0, 2, 100)
        for t in (0.3, 0.7, 1.8):
            assert kept(sampling.top_n_sigma(x / t, 1.0)) == kept(sampling.top_n_sigma(x, 1.0))


def test_xtc_removes_what_text_generation_webui_and_llama_cpp_remove():
    rng = np.random.default_rng(2)
    acted = 0
    for trial in range(400):
        # small vocabularies and sharp logits so that several tokens often reach the threshold
        x = random_logits(rng, int(rng.integers(2, 30)), cut=trial % 3 == 0)
        threshold = float(rng.uniform(0.02, 0.5))
        probability, coin = float(rng.uniform(0, 1)), float(rng.random())
        ours = sampling.xtc(x, threshold, probability, coin)
        assert kept(ours) == kept(webui_xtc(x, threshold, probability, coin)), trial
        assert kept(ours) == llama_xtc(x, threshold, probability, coin), trial
        assert np.array_equal(ours[np.isfinite(ours)], x[np.isfinite(ours)])
        acted += len(kept(ours)) < np.isfinite(x).sum()
    assert acted > 50


def test_dry_penalises_as_text_generation_webui_does():
    rng = np.random.default_rng(3)
    penalised = capped = 0
    for trial in range(300):
        vocab = int(rng.integers(3, 12))
        if trial % 4 == 0:          # long verbatim repeats: runs past the cap of 50
            chunk = list(rng.integers(0, vocab, int(rng.integers(20, 40))))
            history = chunk * int(rng.integers(2, 4)) + chunk[: int(rng.integers(1, len(chunk)))]
        else:
            history = list(rng.integers(0, vocab, int(rng.integers(1, 120))))
        breakers = set(rng.choice(vocab, int(rng.integers(0, 3)), replace=False).tolist())
        multiplier, base = float(rng.uniform(0.1, 3)), float(rng.uniform(1, 3))
        allowed = int(rng.integers(1, 6))
        x = rng.normal(0, 2, vocab)
        ours = sampling.dry(x, history, multiplier, base, allowed, tuple(breakers))
        peer = webui_dry(history, x, multiplier, base, allowed, breakers)
        np.testing.assert_allclose(ours, peer, rtol=1e-12, atol=1e-9, err_msg=str(trial))
        penalised += not np.array_equal(ours, x)
        capped += bool(np.any(x - ours >= multiplier * base ** (50 - allowed) * (1 - 1e-12)))
    assert penalised > 100 and capped > 0


def test_dry_by_hand():
    # "a b c X a b": the text ends with "a b", which was followed by c: c would extend a run of 2
    a, b, c, x_ = 0, 1, 2, 3
    out = sampling.dry(np.zeros(4), [a, b, c, x_, a, b], 0.8, 1.75, 2)
    assert np.allclose(out, [0, 0, -0.8, 0])
    out = sampling.dry(np.zeros(4), [a, b, c, x_, a, b], 0.8, 1.75, 3)      # a run of 2 is allowed at 3
    assert np.allclose(out, 0)
    out = sampling.dry(np.zeros(4), [a, b, c, a, b, c, a, b], 1.0, 2.0, 2)  # "a b c a b" came before, then c:
    assert np.allclose(out, [0, 0, -2.0 ** (5 - 2), 0])                    # c would extend a run of 5
    assert np.allclose(sampling.dry(np.zeros(4), [a, b, c, x_, a, b], 0.8, 1.75, 2, breakers=(a,)), 0)   # run cut
    assert np.allclose(sampling.dry(np.zeros(4), [a, b, c, x_, a, b], 0.8, 1.75, 2, breakers=(b,)), 0)   # ends on one


# ---------------------------------------------------------------------------------------------------
# Off values, always a token, the order

NEW_OFF = dict(top_n_sigma=0.0, xtc_probability=0.0, dry_multiplier=0.0)


def test_off_values_are_identity():
    rng = np.random.default_rng(4)
    for _ in range(50):
        x = random_logits(rng, 40, cut=True)
        history = list(rng.integers(0, 40, 30))
        assert np.array_equal(sampling.top_n_sigma(x, 0.0), x)
        assert np.array_equal(sampling.xtc(x, 0.1, 0.0, float(rng.random())), x)
        assert np.array_equal(sampling.xtc(x, 0.6, 1.0, 0.0), x)            # above 0.5 nothing can be excluded
        assert np.array_equal(sampling.dry(x, history, 0.0, 1.75, 2), x)
        res = run_pipeline(x, SamplerConfig(), history)
        assert all(np.array_equal(s.logits, x) for s in res.stages)
    cfg = SamplerConfig(**NEW_OFF)
    assert not any(sampling.is_active(s, cfg) for s in STAGES)
    assert all(KNOBS[k].default == v for k, v in NEW_OFF.items())


def test_every_setting_keeps_at_least_one_token_and_process_agrees_with_the_pipeline():
    x = np.array([0.0, 0.0, 5.0, 0.0])
    assert kept(sampling.top_n_sigma(x, 1e-9)) == {2}
    assert kept(sampling.xtc(x, 0.0, 1.0, 0.0)) == {0}      # every token a top choice: the least likely stays
    assert len(kept(sampling.dry(x, [2, 2, 2, 2], 100.0, 10.0, 1))) == 4     # a penalty, never a removal
    rng = np.random.default_rng(5)
    for trial in range(300):
        knobs = {k.name: (int(rng.integers(k.slider[0], k.slider[1] + 1)) if k.integer
                          else float(rng.uniform(k.slider[0], k.slider[1])))
                 for k in KNOBS.values() if rng.random() < 0.5}
        order = tuple(rng.permutation(STAGES))
        cfg = SamplerConfig(**knobs, dry_breaker_ids=(1,), order=order)
        logits, history = rng.normal(0, 3, 20), list(rng.integers(0, 20, 40))
        seed = int(rng.integers(0, 100))
        res = run_pipeline(logits, cfg, history, seed=seed)
        assert [s.name for s in res.stages] == ["raw", *order]
        for s in res.stages:
            assert s.kept >= 1 and math.isclose(s.probs.sum(), 1.0, rel_tol=1e-9)
        assert np.allclose(sampling.process(logits, cfg, history, seed=seed), res.final.logits)


def test_xtc_coin_replays_from_the_seed_and_is_not_the_choices_number():
    assert sampling.xtc_draw(7, 12) == sampling.xtc_draw(7, 12)
    draws = np.array([sampling.xtc_draw(7, p) for p in range(4000)])
    choices = np.array([sampling.position_rng(7, p).random() for p in range(4000)])
    assert abs(np.corrcoef(draws, choices)[0, 1]) < 0.05 and abs((draws < 0.3).mean() - 0.3) < 0.03
    x = log([0.4, 0.35, 0.2, 0.05])
    cfg = SamplerConfig(xtc_probability=0.3, xtc_threshold=0.3)
    acted = [run_pipeline(x, cfg, [0] * p).final.kept < 4 for p in range(1, 2001)]
    assert abs(np.mean(acted) - 0.3) < 0.04       # it acts as often as asked, and the same positions each time
    assert acted == [run_pipeline(x, cfg, [0] * p).final.kept < 4 for p in range(1, 2001)]


def test_order_changes_what_temperature_and_min_p_keep_but_not_top_n_sigma():
    x = log([0.6, 0.3, 0.1])      # at temperature 3: 0.427, 0.339, 0.235
    hot = dict(temperature=3.0, min_p=0.4)
    # min-p's bar is 0.4 x the top token: 0.24 before flattening (0.1 is cut), 0.17 after (all stay)
    assert run_pipeline(x, SamplerConfig(**hot, order=("temperature", "min_p"))).final.kept == 3
    assert run_pipeline(x, SamplerConfig(**hot, order=("min_p", "temperature"))).final.kept == 2
    a = run_pipeline(x, SamplerConfig(temperature=3.0, top_n_sigma=0.5, order=("temperature", "top_n_sigma")))
    b = run_pipeline(x, SamplerConfig(temperature=3.0, top_n_sigma=0.5, order=("top_n_sigma", "temperature")))
    assert kept(a.final.logits) == kept(b.final.logits)


def test_parse_order_completes_a_partial_order_and_names_a_bad_one():
    assert parse_order(",".join(DEFAULT_ORDER)) == DEFAULT_ORDER
    order = parse_order("xtc, temperature")
    assert order[:2] == ("xtc", "temperature") and sorted(order) == sorted(STAGES)
    for bad in ("temperature,tempurature", "top_k,top_k", "<script>"):
        with pytest.raises(ValueError, match="order must name distinct stages from repetition_penalty"):
            parse_order(bad)


@pytest.mark.parametrize("kw, message", [
    (dict(top_n_sigma=-1), r"top_n_sigma must be a finite number in \[0, 100\], got -1"),
    (dict(top_n_sigma=float("nan")), "top_n_sigma must be a finite number"),
    (dict(xtc_threshold=1.5), r"xtc_threshold must be a finite number in \[0, 1\], got 1.5"),
    (dict(xtc_probability=-0.1), r"xtc_probability must be a finite number in \[0, 1\], got -0.1"),
    (dict(dry_multiplier=-1), r"dry_multiplier must be a finite number in \[0, 100\], got -1"),
    (dict(dry_base=0.5), r"dry_base must be a finite number in \[1, 10\], got 0.5"),
    (dict(dry_allowed_length=0), r"dry_allowed_length must be an integer in \[1, 1000\], got 0"),
    (dict(dry_allowed_length=2.5), "dry_allowed_length must be an integer, got 2.5"),
    (dict(dry_breaker_ids=(-1,)), r"dry_breaker_ids must be at most 64 token ids \(integers in \[0, 2\*\*31\)\)"),
    (dict(dry_breaker_ids=(2 ** 70,)), r"integers in \[0, 2\*\*31\)"),
    (dict(dry_breaker_ids="ab"), "dry_breaker_ids must be at most 64 token ids"),
    (dict(dry_breaker_ids=tuple(range(65))), "dry_breaker_ids must be at most 64"),
    (dict(order=("temperature", "xtc2")), "order must list distinct stages"),
    (dict(dry_multiplier=0.5, order=("temperature",)), "order leaves out dry, which is set to act"),
    (dict(top_n_sigma=1.0, xtc_probability=0.5, order=("temperature",)), "order leaves out top_n_sigma, xtc"),
])
def test_every_bad_new_knob_is_named(kw, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kw)


def test_dry_breakers_are_read_in_text_generation_webuis_form():
    assert parse_breakers('"\\n", ":", "\\"", "*"') == sampling.DRY_BREAKERS
    assert parse_breakers('["a", "b", "a"]') == ("a", "b")
    assert parse_breakers(sampling.format_breakers(("x", "\n"))) == ("x", "\n")
    for bad, message in [("x", "quoted strings separated by commas"), ('"", "a"', "non-empty strings"),
                         ("1, 2", "non-empty strings"), (", ".join(['"a"'] * 65), "at most 64")]:
        with pytest.raises(ValueError, match=message):
            parse_breakers(bad if "at most" not in message else ", ".join(f'"{i}"' for i in range(65)))
    toy = ToySource(vocab=257, order=1)
    ids, unknown = sampling.breaker_ids(toy.tokenizer.encode, ("\n", ":"))
    assert ids == (10, 58) and unknown == []


# ---------------------------------------------------------------------------------------------------
# What each stage changed

def test_stage_deltas_report_kept_removed_and_moved_mass():
    x = log([0.5, 0.2, 0.15, 0.1, 0.05])
    cfg = SamplerConfig(temperature=0.5, top_k=3, min_p=0.5)
    res = run_pipeline(x, cfg)
    deltas = {d.name: d for d in stage_deltas(res, cfg, n_top=4)}
    assert [d.name for d in stage_deltas(res, cfg)] == list(DEFAULT_ORDER)
    t, k, m = deltas["temperature"], deltas["top_k"], deltas["min_p"]
    assert t.on and t.changed and t.removed.size == 0 and t.kept == 5 and t.moved > 0.1
    assert list(k.removed) == [3, 4] and k.kept_before == 5 and k.kept == 3
    before = res.stages[list(DEFAULT_ORDER).index("top_k") + 1 - 1].probs
    assert k.mass_removed == pytest.approx(before[[3, 4]].sum()) and k.moved == pytest.approx(k.mass_removed)
    assert list(k.top) == [0, 1, 2, 3] and k.after[3] == 0 and k.after[0] > k.before[0]
    assert m.kept == 1 and list(m.removed) == [1, 2]                    # 0.2² / 0.5² = 0.16 < 0.5 at T = 0.5
    off = [d for d in deltas.values() if not d.on]
    assert {d.name for d in off} == set(STAGES) - {"temperature", "top_k", "min_p"}
    assert not any(d.changed for d in off)


# ---------------------------------------------------------------------------------------------------
# Settings in links, dicts and the terminal

def test_an_old_sampler_dict_or_trace_still_loads_and_samples_as_before():
    old_order = ["repetition_penalty", "frequency_presence_penalty", "temperature", "top_k", "top_p", "min_p",
                 "typical_p"]
    old = dict(temperature=0.9, top_k=0, top_p=0.9, min_p=0.0, typical_p=1.0, repetition_penalty=1.2,
               frequency_penalty=0.0, presence_penalty=0.0, order=old_order)
    cfg = SamplerConfig.from_dict(old)
    assert cfg.order == tuple(old_order) and cfg.dry_multiplier == 0 and cfg.xtc_probability == 0
    x, history = np.random.default_rng(6).normal(0, 2, 30), [1, 2, 3, 1]
    now = SamplerConfig(temperature=0.9, top_p=0.9, repetition_penalty=1.2)
    assert np.array_equal(sampling.process(x, cfg, history), sampling.process(x, now, history))

    toy = ToySource(vocab=257, order=1, seed=9, scale=1.0)
    t = Trace(toy, "hello", GenerationConfig(seed=5, sampler=now))
    t.run(4)
    d = t.to_dict()
    d["config"]["sampler"] = old
    restored = Trace.from_dict(toy, d)
    assert restored.run(5) == t.run(5)

    full = SamplerConfig(top_n_sigma=1.5, xtc_probability=0.4, dry_multiplier=0.7, dry_breaker_ids=(3, 4),
                         order=parse_order("xtc,dry"))
    assert SamplerConfig.from_dict(full.to_dict()) == full
    t = Trace(toy, "hello", GenerationConfig(seed=5, sampler=full))
    t.run(6)
    assert Trace.from_url(toy, t.to_url()).to_dict() == t.to_dict()
    d["config"]["sampler"] = {**old, "dry_breaker_ids": 5}
    with pytest.raises(ValueError, match="cannot be restored"):
        Trace.from_dict(toy, d)


def test_the_cli_takes_the_new_knobs_and_an_order(capsys):
    model = "exported/shakespeare-char"
    args = [model, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "1"]
    assert generate_main(args + ["--top-n-sigma", "1.5", "--xtc-probability", "0.5", "--dry-multiplier", "0.8",
                                 "--order", "xtc,temperature"]) == 0
    assert "12 tokens" in capsys.readouterr().err
    assert generate_main(args + ["--order", "temperature,bogus"]) == 1
    assert "order must name distinct stages" in capsys.readouterr().err
    assert generate_main(args + ["--dry-base", "0.5"]) == 1
    assert "dry_base must be a finite number in [1, 10], got 0.5" in capsys.readouterr().err
