"""Emergence: synthetic tasks, their symbol tokenizer, progress measures, Grokfast, the presets and the page.

The measures are checked on attention patterns and embeddings built by hand (where the right answer is
known exactly), the trainer on real tiny runs, and one shortened preset for the jump it promises."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core import measures
from core.checks import ConfigError
from core.config import ModelConfig, TrainConfig, count_parameters
from core.emergence import PRESETS, find_emergence, preset_runs
from core.model import GPT
from core.tasks import IGNORE, ModularAddition, RepeatedSequences, TaskDataset, TaskError, make_task
from core.tokenizer import SymbolTokenizer, TokenizerError, load_tokenizer
from core.train import Grokfast, Measures, RunFinished, train

ROOT = Path(__file__).resolve().parent.parent


# -- tasks ------------------------------------------------------------------------------------------------
def test_fixed_offset_sequences_repeat_their_first_half():
    task = make_task("induction:vocab=16,length=8")
    x, y = task.batch("train", 5, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 16) and x.max() < 16
    assert (x[:, 8:] == x[:, :8]).all()
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == IGNORE).all()


def test_random_offset_sequences_end_with_a_copy_from_a_varying_distance():
    task = RepeatedSequences(vocab=64, length=16, offset="random")
    x, _ = task.batch("train", 200, np.random.default_rng(1))
    distances = set()
    for row in x:
        m = next(m for m in range(16, 7, -1) for a in range(0, 32 - 2 * m + 1)
                 if (row[32 - m:] == row[a:a + m]).all())
        a = next(a for a in range(0, 32 - 2 * m + 1) if (row[32 - m:] == row[a:a + m]).all())
        distances.add(32 - m - a)
    assert len(distances) > 8          # no single offset (and no narrow band) finds the first copy


def test_modular_addition_splits_every_pair_once_and_scores_only_the_answer():
    task = ModularAddition(p=7, train_fraction=0.4)
    (xt, yt), (xv, _) = task.eval_set("train"), task.eval_set("val")
    pairs = {(a, b) for a, _, b, _ in xt} | {(a, b) for a, _, b, _ in xv}
    assert len(xt) + len(xv) == 49 and len(pairs) == 49 and len(xt) == round(0.4 * 49)
    assert (yt[:, :3] == IGNORE).all() and (yt[:, 3] == (xt[:, 0] + xt[:, 2]) % 7).all()
    assert (xt[:, 1] == 7).all() and (xt[:, 3] == 8).all()
    tok = task.tokenizer()
    assert tok.decode(xt[0].tolist()).split()[1:] == ["+", str(xt[0, 2]), "="]


def test_task_specs_round_trip_and_bad_specs_say_what_to_change():
    task = make_task("modular-addition:p=11,train_fraction=0.3")
    assert make_task(task.spec()) == task and task.p == 11
    with pytest.raises(TaskError, match="unknown task 'nope'; choose one of induction, modular-addition"):
        make_task("nope")
    with pytest.raises(TaskError, match="option 'q=3' is not key=value with a key among p, train_fraction"):
        make_task("modular-addition:q=3")
    with pytest.raises(TaskError, match="p must be an integer"):
        make_task("modular-addition:p=seven")
    with pytest.raises(ConfigError, match="offset"):
        make_task("induction:offset=sideways")
    with pytest.raises(TaskError, match="no fixed training set"):
        make_task("induction").full_batch()
    with pytest.raises(ConfigError, match="a corpus has none"):
        TrainConfig(full_batch=True)
    with pytest.raises(TaskError, match="raise block_size to 64"):
        TaskDataset(make_task("induction")).check_block_size(32)


def test_symbol_tokenizer_round_trips_and_refuses_unknown_symbols(tmp_path):
    tok = SymbolTokenizer("digits", ["0", "1", "10", "+"])
    ids = tok.encode("10 + 1")
    assert ids == [2, 3, 1] and tok.decode(ids) == " 10 + 1" and tok.token_text(2) == " 10"
    assert [s.text for s in tok.spans("1 + 0")] == [" 1", " +", " 0"]
    again = load_tokenizer(tok.save(tmp_path / "tok"))
    assert again.encode("0 + 10") == tok.encode("0 + 10") and again.n_vocab == 4 and again.eot_id is None
    with pytest.raises(TokenizerError, match="'2' is not a symbol of digits"):
        tok.encode("1 + 2")
    with pytest.raises(TokenizerError, match="holds whitespace"):
        SymbolTokenizer("bad", ["a b"])


# -- model options --------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [dict(mlp="none"), dict(norm="none", mlp="relu"),
                                     dict(norm="none", mlp="none", bias=False)])
def test_toy_model_options_count_their_parameters(options):
    cfg = ModelConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16, **options)
    model = GPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg)["total"]
    if cfg.mlp == "none":
        assert all(b.mlp is None and b.ln_2 is None for b in model.transformer.h)
    out = model(torch.randint(0, 20, (2, 8)), targets=torch.randint(0, 20, (2, 8)))
    assert math.isfinite(out.loss.item())


def test_init_std_sets_the_initial_weights_scale():
    torch.manual_seed(0)
    wide = GPT(ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=64, init_std=0.25))
    assert wide.transformer.wte.weight.std().item() == pytest.approx(0.25, rel=0.05)
    assert wide.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.25, rel=0.05)
    with pytest.raises(ConfigError, match="init_std"):
        ModelConfig(init_std=0.0)


# -- measures ------------------------------------------------------------------------------------------
def pattern(T: int, source) -> np.ndarray:
    """(T, T) attention where row i attends wholly to source(i) (row 0 to itself)."""
    p = np.zeros((T, T))
    for i in range(T):
        p[i, source(i) if i else 0] = 1.0
    return p


def test_head_scores_read_previous_token_induction_and_duplicate_heads_exactly():
    L = 6                                                        # half-length: T = 12
    ids = np.concatenate([np.arange(L), np.arange(L)])           # six distinct tokens, repeated
    prev = pattern(12, lambda i: i - 1)
    induction = pattern(12, lambda i: i - L + 1 if i >= L else i)
    duplicate = pattern(12, lambda i: i - L if i >= L else i)
    uniform = np.tril(np.ones((12, 12))) / np.arange(1, 13)[:, None]
    probs = np.stack([prev, induction, duplicate, uniform])[None, None]      # (B=1, L=1, H=4, T, T)
    s = measures.head_scores(probs, ids[None])
    assert s["previous_token"][0, 0] == 1.0 and s["induction"][0, 1] == 1.0 and s["duplicate"][0, 2] == 1.0
    assert s["previous_token"][0, 1] < 0.2 and s["induction"][0, 0] < 0.2 and s["induction"][0, 3] < 0.2
    # unbatched, and on text with no repeated token: duplicate and induction are undefined
    s = measures.head_scores(probs[0], np.arange(12))
    assert s["previous_token"][0, 0] == 1.0 and np.isnan(s["induction"]).all()
    with pytest.raises(ValueError, match="ids of shape"):
        measures.head_scores(probs, ids[None, :10])


def test_icl_score_is_late_minus_early_loss_and_nan_without_them():
    losses = np.full(100, 4.0)
    losses[80:] = 1.0
    assert measures.icl_score(losses) == pytest.approx(-3.0)
    assert math.isnan(measures.icl_score(np.array([np.nan, np.nan, np.nan, 2.0])))


def test_fourier_norms_find_the_frequency_an_embedding_uses():
    p, k = 23, 5
    a = np.arange(p)
    emb = np.stack([np.cos(2 * np.pi * k * a / p), np.sin(2 * np.pi * k * a / p)], axis=1)
    norms = measures.fourier_norms(emb)
    assert len(norms) == p // 2 + 1 and int(np.argmax(norms)) == k
    assert norms[k] > 1e6 * np.delete(norms, k).max()


def test_a_jump_is_an_abrupt_change_not_a_slow_drift():
    steps = list(range(0, 1000, 50))
    drift = list(np.linspace(0, -3, len(steps)))                  # 3 nats over 20 evaluations
    assert measures.jump(steps, drift, 2.0, window=5) is None
    cliff = [0.0] * 8 + [-0.5, -2.5] + [-3.0] * 10
    j = measures.jump(steps, cliff, 2.0, window=5)
    assert j is not None and j.step == 450 and j.before == 0.0 and j.after == -2.5
    assert measures.first_reaching(steps, [0.1] * 5 + [0.96] * 15, 0.95) == 250


# -- Grokfast -------------------------------------------------------------------------------------------
def test_grokfast_adds_lambda_times_the_gradients_moving_average():
    model = GPT(ModelConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, mlp="none", norm="none"))
    g = Grokfast(model, alpha=0.5, lam=2.0)
    w = model.transformer.wte.weight
    g1, g2 = torch.randn_like(w), torch.randn_like(w)
    w.grad = g1.clone()
    g.amplify()
    assert torch.allclose(w.grad, g1 + 2.0 * g1)                 # the EMA starts at the first gradient
    w.grad = g2.clone()
    g.amplify()
    assert torch.allclose(w.grad, g2 + 2.0 * (0.5 * g1 + 0.5 * g2))


def tiny_modular(out_dir: Path, **kw) -> tuple[TrainConfig, ModelConfig]:
    cfg = TrainConfig(**{**dict(out_dir=str(out_dir), task="modular-addition:p=11,train_fraction=0.5",
                                full_batch=True, max_steps=6, learning_rate=3e-3, warmup_steps=0, weight_decay=1.0,
                                grokfast_alpha=0.9, eval_interval=3, eval_iters=1, checkpoint_interval=3, lr_decay_steps=6,
                                threads=1, seed=3), **kw})
    return cfg, ModelConfig(vocab_size=13, block_size=4, n_layer=1, n_head=2, n_embd=16, mlp="relu", norm="none")


def test_a_task_run_logs_measures_and_resumes_its_grokfast_state_bit_for_bit(tmp_path):
    cfg, mc = tiny_modular(tmp_path / "whole")
    records = list(train(cfg, mc))
    got = [r for r in records if isinstance(r, Measures)]
    assert [m.step for m in got] == [0, 3, 6]
    assert got[-1].fourier is not None and len(got[-1].fourier) == 11 // 2 + 1
    assert 0 <= got[-1].val_accuracy <= 1 and len(got[-1].head_scores["induction"]) == 1
    assert math.isnan(got[-1].icl_score)          # one scored position: no early/late to compare
    logged = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "Measures" for r in logged) == 3
    # stopped after step 3, then resumed: the same weights as the run that never stopped
    half, _ = tiny_modular(tmp_path / "halves", max_steps=3)
    list(train(half, mc))
    resumed, _ = tiny_modular(tmp_path / "halves", resume=True)
    finished = [r for r in train(resumed, mc) if isinstance(r, RunFinished)][0]
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "whole" / "checkpoints" / "step_00000006.safetensors"))
    b = load_file(finished.checkpoint)
    assert any(k.startswith("grokfast.") for k in b)
    for k in a:
        if k.startswith("model."):
            assert torch.equal(a[k], b[k]), k


def test_a_corpus_run_logs_icl_and_head_scores_too(tmp_path, corpus_file, data_dir):
    cfg = TrainConfig(out_dir=str(tmp_path / "text"), corpus=str(corpus_file), data_dir=str(data_dir), max_steps=2,
                      batch_size=2, eval_interval=2, eval_iters=2, checkpoint_interval=0, threads=1)
    mc = ModelConfig(block_size=32, n_layer=1, n_head=2, n_embd=16)
    got = [r for r in train(cfg, mc) if isinstance(r, Measures)]
    assert len(got) == 2 and math.isfinite(got[-1].icl_score) and got[-1].fourier is None
    assert np.array(got[-1].head_scores["previous_token"]).shape == (1, 2)


# -- presets ---------------------------------------------------------------------------------------------
def test_presets_start_a_run_and_its_control_and_differ_only_where_they_should():
    for key, preset in PRESETS.items():
        (name, t1, m1), (cname, t2, m2) = preset_runs(key, "mine")
        assert name == "mine" and cname == "mine-control" and t1.task and t1.task == t2.task
        changed = {f for f in ("n_layer",) if getattr(m1, f) != getattr(m2, f)} | \
                  {f for f in ("weight_decay",) if getattr(t1, f) != getattr(t2, f)}
        assert len(changed) == 1, key
        assert make_task(t1.task).tokenizer().n_vocab == m1.vocab_size
    assert len(preset_runs("grokking", "g", with_control=False)) == 1


@pytest.mark.parametrize("key, steps, window", [("induction-fixed", 300, (60, 260))])
def test_a_shortened_induction_preset_jumps_within_its_step_range_every_time(tmp_path, key, steps, window):
    preset = PRESETS[key]
    run = preset.runs[0]
    cfg = dataclasses.replace(run.train, out_dir=str(tmp_path / "run"), max_steps=steps, checkpoint_interval=0,
                              milestones=0)
    got = [dataclasses.asdict(r) for r in train(cfg, run.model) if isinstance(r, Measures)]
    e = find_emergence(preset, got)
    assert e.step is not None and window[0] <= e.step <= window[1], e
    assert e.before - e.after >= 2.0
    best = max(v for row in got[-1]["head_scores"]["induction"] for v in row)
    assert best > 0.5                  # the head that looks back to the copy


@pytest.mark.slow
def test_the_random_offset_preset_forms_an_induction_circuit_and_its_control_does_not(tmp_path):
    preset = PRESETS["induction"]
    found = {}
    for r in preset.runs:
        cfg = dataclasses.replace(r.train, out_dir=str(tmp_path / r.role), max_steps=1200, checkpoint_interval=0,
                                  milestones=0)
        got = [dataclasses.asdict(m) for m in train(cfg, r.model) if isinstance(m, Measures)]
        found[r.role] = (find_emergence(preset, got), got[-1])
    (jumped, last), (flat, _) = found["run"], found["control"]
    assert jumped.step is not None and flat.step is None
    scores = last["head_scores"]
    assert max(scores["previous_token"][0]) > 0.2 and max(scores["induction"][1]) > 0.5


def test_starting_a_pair_beyond_the_servers_capacity_starts_neither(tmp_path):
    from core.jobs import JobBoard, JobError
    from core.limits import Limits
    board = JobBoard(tmp_path / "runs", Limits(max_running=1), tmp_path / "exported")
    try:
        with pytest.raises(JobError, match="2 runs were asked together, nothing was started"):
            board.start_runs("t" * 43, preset_runs("induction", "pair"))
        assert not (tmp_path / "runs" / "pair").exists() and not board.jobs
        with pytest.raises(JobError, match="run name"):
            board.start_runs("t" * 43, preset_runs("induction", "../evil", with_control=False))
    finally:
        board.close()


def test_the_emergence_page_explains_each_preset_and_refuses_a_bad_name(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core import catalog
    from playground import shared
    monkeypatch.setattr(catalog, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path / "exported")
    shared._board.cache_clear()
    try:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        at.run()
        at.switch_page("playground/emergence.py")
        at.run()
        assert not at.exception
        text = " ".join(m.value for m in at.markdown)
        assert "previous-token head" in text
        at.radio(key="emergence_preset").set_value("induction-fixed").run()
        assert any("Positional shortcut" in w.value for w in at.warning)
        at.radio(key="emergence_preset").set_value("grokking").run()
        assert "a + b mod 97" in " ".join(m.value for m in at.markdown)
        at.text_input(key="emergence_name_grokking").set_value("no spaces allowed").run()
        next(b for b in at.button if b.key == "emergence_start").click().run()
        assert any("run name" in e.value for e in at.error)
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    finally:
        shared._board().close()
        shared._board.cache_clear()
