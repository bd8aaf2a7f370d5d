"""Predict, then verify (core.verify and the Scaling page's section): the prediction at a known law against
a brute-force optimum, its JSON round trip and write-once storage, hostile and stale inputs, the child's
run name against core.sweep's, the torch-free import, and the whole flow on a tiny real sweep through
AppTest (a prediction stored before its run starts, the run trained by the job board into the sweep,
the measured loss beside the prediction)."""

import atexit
import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from core import catalog, scaling, verify
from core.config import ModelConfig, count_parameters, flops_per_token
from core.scaling import ChinchillaLaw, RunRecord, ScalingError
from playground import shared
from tests.conftest import close_board, run_without_torch

ROOT = Path(__file__).resolve().parent.parent
TRUE = ChinchillaLaw(E=1.2, A=40.0, B=250.0, alpha=0.33, beta=0.36)
CONFIG = {"shapes": ["1x16", "2x16", "1x32", "2x32", "2x48", "3x64"], "head_size": 16, "block_size": 32,
          "batch_size": 4, "pos_encoding": "rope", "min_steps": 10, "max_epochs": 4.0, "tokenizer": "byte"}
ME, OTHER = "m" * 43, "o" * 43


def shaped_record(shape: str, tokens: int, law=TRUE, vocab=257) -> RunRecord:
    layers, width = (int(v) for v in shape.split("x"))
    mc = ModelConfig(vocab_size=vocab, block_size=CONFIG["block_size"], n_layer=layers, n_head=width // 16,
                     n_embd=width, pos_encoding="rope")
    n, fpt = count_parameters(mc), flops_per_token(mc)
    return RunRecord(f"D{tokens}-{shape}", n["total"], n["non_embedding"], tokens, fpt * tokens, fpt,
                     float(law.predict(n["total"], tokens)), float(law.predict(n["total"], tokens)), 1.0, 1.0,
                     shape={"n_layer": layers, "n_head": width // 16, "n_embd": width, "block_size": 32,
                            "vocab_size": vocab})


_TEMPLATE: dict = {}      # the fitted sweep of TRUE's runs, made once per session and copied per test


def tmp_path_factory_dir() -> Path:
    d = tempfile.mkdtemp(prefix="verify-known-")
    atexit.register(shutil.rmtree, d, True)
    return Path(d)


def known_sweep(tmp_path, records=None, n_bootstrap: int = 6) -> Path:
    """A user sweep whose runs follow TRUE exactly, fitted and stored as core.sweep leaves it."""
    out = tmp_path / "runs" / "sweeps" / "known"
    if records is None:
        if "path" not in _TEMPLATE:
            _TEMPLATE["path"] = known_sweep(tmp_path_factory_dir(), [shaped_record(s, d) for s in CONFIG["shapes"]
                                                                      for d in (20_000, 80_000, 320_000)])
        shutil.copytree(_TEMPLATE["path"], out)
        return out
    (out / "records").mkdir(parents=True)
    for r in records:
        (out / "records" / f"{r.name}.json").write_text(json.dumps(r.to_dict()))
    (out / "sweep.json").write_text(json.dumps({"config": CONFIG, "recipe": {}}))
    scaling.fit_sweep(out, n_bootstrap=n_bootstrap)
    return out


def test_prediction_at_a_known_law_matches_a_brute_force_optimum(tmp_path):
    sweep = known_sweep(tmp_path)
    stored = scaling.load_fits(sweep)
    law = stored.report("total").chinchilla
    assert law.alpha == pytest.approx(TRUE.alpha, rel=0.02) and law.beta == pytest.approx(TRUE.beta, rel=0.02)
    p = verify.predict(stored, 3.0, CONFIG, "known", "p1")
    largest = max(r.flops for r in stored.records)
    assert p.compute == pytest.approx(3.0 * largest)
    # the optimum, by brute force over N with the records' own FLOPs per token (log-log between sizes)
    fpt = stored.report("total").flops_per_token
    ns = np.geomspace(1e3, 1e7, 40_001)
    losses = [TRUE.predict(n, p.compute / fpt(n)) for n in ns]
    best = ns[int(np.argmin(losses))]
    assert p.n_opt == pytest.approx(best, rel=0.05)
    # the shape: no member of the family is nearer N_opt, and it is a width multiple of the head size
    assert p.shape["n_embd"] % 16 == 0 and p.shape["n_head"] == p.shape["n_embd"] // 16
    gaps = []
    for layers, width, heads in verify.family_shapes(CONFIG):
        mc = ModelConfig(vocab_size=257, block_size=32, n_layer=layers, n_head=heads, n_embd=width,
                         pos_encoding="rope")
        gaps.append(abs(math.log(count_parameters(mc)["total"] / p.n_opt)))
    assert abs(math.log(p.n_params / p.n_opt)) == pytest.approx(min(gaps))
    # the run: the budget's compute within a step, the law's loss there, an interval around it
    step_flops = p.flops_per_token * CONFIG["batch_size"] * CONFIG["block_size"]
    assert abs(p.flops - p.compute) <= step_flops / 2 + 1
    assert p.tokens == p.steps * 4 * 32
    assert p.predicted == pytest.approx(float(law.predict(p.n_params, p.tokens)))
    assert p.predicted == pytest.approx(float(TRUE.predict(p.n_params, p.tokens)), rel=0.01)
    assert p.interval[0] <= p.predicted * 1.001 and p.interval[1] >= p.predicted * 0.999
    # JSON round trip, exactly
    assert verify.Prediction.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_a_prediction_is_written_once(tmp_path):
    sweep = known_sweep(tmp_path)
    p = verify.predict(scaling.load_fits(sweep), 2.0, CONFIG, "known", "once")
    path = verify.store_prediction(sweep, p)
    with pytest.raises(FileExistsError):
        verify.store_prediction(sweep, dataclasses.replace(p, predicted=p.predicted - 0.1))
    assert verify.read_prediction(sweep, "once") == p
    assert not path.stat().st_mode & 0o222                  # read-only on disk
    (outcome,) = verify.history(sweep, tmp_path / "runs")
    assert outcome.measured is None and outcome.error is None and outcome.inside is None
    # the run recorded: the outcome is its measured loss beside the prediction
    rec = dataclasses.replace(shaped_record("2x32", p.tokens), name=p.run, val_loss=p.predicted + 0.05)
    (sweep / "records" / f"{p.run}.json").write_text(json.dumps(rec.to_dict()))
    (outcome,) = verify.history(sweep, tmp_path / "runs")
    assert outcome.error == pytest.approx(-0.05) and outcome.relative_error == pytest.approx(-0.05 / rec.val_loss)
    assert outcome.inside == (p.interval[0] <= rec.val_loss <= p.interval[1])


@pytest.mark.parametrize("factor", [1.0, 4.5, float("nan"), float("inf"), "3", True, None])
def test_a_factor_out_of_range_is_refused_with_the_range(factor):
    with pytest.raises(ScalingError, match="budget factor"):
        verify.check_factor(factor)


def test_too_few_runs_stale_fits_and_a_missing_recipe_get_clear_messages(tmp_path):
    few = known_sweep(tmp_path, [shaped_record(s, 40_000) for s in ("1x16", "2x16", "2x32")], n_bootstrap=0)
    with pytest.raises(ScalingError, match="at least 5 runs"):
        verify.predict(scaling.load_fits(few), 2.0, CONFIG, "few", "x")
    sweep = known_sweep(tmp_path / "b")
    r = scaling.load_records(sweep)[0]
    (sweep / "records" / f"{r.name}.json").write_text(json.dumps(dataclasses.replace(r, val_loss=3.0).to_dict()))
    with pytest.raises(ScalingError, match="wait for"):
        verify.predict(scaling.load_fits(sweep), 2.0, CONFIG, "known", "x")
    (sweep / "sweep.json").unlink()
    with pytest.raises(ScalingError, match="no readable recipe"):
        verify.recipe_of(sweep)
    fitted = known_sweep(tmp_path / "c")
    with pytest.raises(ScalingError, match="max_epochs"):
        verify.predict(scaling.load_fits(fitted), 2.0, CONFIG, "known", "x", max_tokens=1000)


def test_the_run_name_is_core_sweeps():
    from core.sweep import _fmt
    for tokens, shape in ((79_872, "2x32"), (2_882_304, "3x48"), (1_000_000, "1x16"), (123, "4x128")):
        assert verify.run_name(tokens, shape) == f"D{_fmt(tokens)}-{shape}"


def test_verify_imports_without_torch():
    res = run_without_torch("import core.verify, playground.verify_section")
    assert res.returncode == 0, res.stderr


def test_a_committed_sweep_is_verified_in_a_copy_that_keeps_its_fits_current(tmp_path):
    sweep = known_sweep(tmp_path)
    committed = tmp_path / "sweeps" / "known.json"
    committed.parent.mkdir()
    records = [r.to_dict() for r in scaling.load_records(sweep)]
    committed.write_text(json.dumps({"config": CONFIG, "recipe": {}, "records": records}))
    scaling.fit_sweep(committed, n_bootstrap=3)
    runs = tmp_path / "runs2"
    target = verify.target_dir(committed, runs)
    assert target == runs / "sweeps" / "known-verify" and verify.fits_source(committed, runs) == committed
    verify.make_copy(committed, target)
    before = committed.read_bytes()
    assert scaling.load_fits(target).current and verify.fits_source(committed, runs) == target
    assert verify.recipe_of(target) == CONFIG
    assert committed.read_bytes() == before
    assert [s.name for s in catalog.list_sweeps(tmp_path / "sweeps", runs)] == ["known", "known-verify"]


# ---------------------------------------------------------------------------------------------------
# End to end: a tiny real sweep, the page, a real job

@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Nine tiny runs recorded by core.sweep (a few seconds each), fitted with few resamples."""
    from tests.conftest import make_text
    from core.sweep import main
    base = tmp_path_factory.mktemp("verify")
    corpus = base / "tiny.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    out = base / "runs" / "sweeps" / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scaling, "N_BOOTSTRAP", 5)
        assert main(["--out-dir", str(out), "--corpus", str(corpus), "--data-dir", str(base / "data"),
                     "--shapes", "1x16", "2x16", "2x32", "--budgets", "2e9", "4e9", "--tokens", "4e4", "--block-size", "32",
                     "--batch-size", "4", "--eval-iters", "4", "--min-steps", "10", "--checkpoint-interval", "20",
                     "--threads", "1"]) == 0
    assert len(scaling.load_records(out)) == 9 and scaling.load_fits(out).current
    return out


@pytest.fixture
def dirs(tiny_sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "RUNS_DIR", tiny_sweep.parent.parent)
    monkeypatch.setattr(catalog, "SWEEPS_DIR", tmp_path / "no-committed-sweeps")
    monkeypatch.setattr(scaling, "_start_fit", lambda sweep, log: pytest.fail("a page started a background fit"))
    shared._board.cache_clear()
    yield tiny_sweep
    close_board()


def scaling_page(token: str = ME, factor: str | None = None):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "playground" / "scaling.py"), default_timeout=120)
    at.session_state["owner"] = token
    at.query_params["sweep"] = "tiny (yours)"
    if factor is not None:
        at.query_params["factor"] = factor
    return at.run()


def text_of(at) -> str:
    return " ".join(e.value for kind in (at.info, at.markdown, at.caption, at.error, at.warning) for e in kind)


def wait_until(what: str, predicate, ceiling: float = 600):
    deadline = time.time() + ceiling
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {ceiling} s")


@pytest.mark.slow
def test_predict_then_verify_end_to_end_on_the_page(dirs):
    sweep = dirs
    at = scaling_page(factor="9")                           # a hostile link: clamped, and said so
    assert not at.exception, at.exception
    assert any("factor" in w.value and "cannot be used" in w.value for w in at.warning)
    assert at.slider(key="verify_factor").value == verify.FACTOR_RANGE[1]
    at.slider(key="verify_factor").set_value(2.0).run()
    assert not at.exception, at.exception
    assert any(m.label == "predicted val loss" for m in at.metric)
    recipe = (sweep / "sweep.json").read_bytes()
    at.button(key="verify_start").click().run()
    assert not at.exception, at.exception
    (outcome,) = verify.history(sweep, sweep.parent.parent)
    p = outcome.prediction
    board = shared._board()
    job = board.jobs[p.name]
    assert p.created <= job.started                         # stored before the child started
    assert verify.read_prediction(sweep, p.name) == p and p.factor == 2.0 and p.sweep == "tiny"
    # another visitor sees the prediction and the job, and cannot stop it
    with pytest.raises(verify.JobError, match="another visitor"):
        board.stop(OTHER, p.name)
    with pytest.raises(verify.JobError, match="already"):    # one verification of a sweep at a time
        verify.start(board, OTHER, sweep, 3.0)
    wait_until("the verification run finishes", lambda: board.view(ME, p.name).state == "finished")
    v = board.view(ME, p.name)
    assert v.step == p.steps and v.evals and not v.can_export
    (outcome,) = verify.history(sweep, sweep.parent.parent)
    rec = outcome.record
    assert rec.name == p.run and rec.tokens == p.tokens and rec.n_params == p.n_params
    assert v.evals[-1]["val_loss"] == rec.val_loss
    assert outcome.error == pytest.approx(p.predicted - rec.val_loss)
    assert len(scaling.load_records(sweep)) == 10
    assert (sweep / "sweep.json").read_bytes() == recipe    # the sweep keeps its shapes, budgets and tokens
    stored = scaling.load_fits(sweep)
    assert stored.current and stored.n_bootstrap == 5       # refitted by the sweep with the same resamples
    # the page, as the other visitor opens it: the outcome, the plot, the history
    at = scaling_page(token=OTHER)
    assert not at.exception, at.exception
    shown = text_of(at)
    assert f"measured **{rec.val_loss:.3f}**" in shown and f"predicted **{p.predicted:.3f}**" in shown
    assert ("inside" in shown) and "Predictions for this sweep" in shown
    (table,) = [d.value for d in at.dataframe if "prediction" in d.value.columns]
    assert list(table["run"]) == [p.run] and float(table["measured"][0]) == round(rec.val_loss, 4)
    # the same factor again: the run at that point is in the sweep now, so the budget moved past it
    p2 = verify.predict(stored, 2.0, verify.recipe_of(sweep), "tiny", "again")
    assert p2.largest == pytest.approx(rec.flops) and p2.run != p.run


@pytest.mark.slow
def test_hosted_servers_refuse_a_verification_with_the_reason(dirs, monkeypatch):
    monkeypatch.setattr(shared, "HOSTED", True)
    at = scaling_page()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.key == "verify_start"]
    assert any("shared demo" in i.value for i in at.info)
    with pytest.raises(verify.JobError, match="shared demo"):
        verify.start(shared._board(), ME, dirs, 2.0, hosted=True)


@pytest.mark.slow
def test_a_verification_survives_a_server_restart_and_resumes_from_its_checkpoint(dirs):
    """The board that started it goes away mid-run; the next one adopts the child (asks it to stop, it keeps its
    checkpoint in the sweep), and its owner resumes it to the record."""
    from core.jobs import JobBoard
    sweep = dirs
    first = shared._board()
    p, _ = verify.start(first, ME, sweep, 4.0)
    wait_until("the run takes steps", lambda: (first.view(ME, p.name).step or 0) >= 30)
    first.close()                                           # the server process ends; the child goes on
    second = JobBoard(runs_dir=catalog.RUNS_DIR)
    try:
        job = second.jobs[p.name]
        assert isinstance(job, verify.VerifyJob) and job.target == sweep
        wait_until("the adopted run stops", lambda: second.view(ME, p.name).state in ("stopped", "finished"))
        v = second.view(ME, p.name)
        if v.state == "stopped":                            # (a very fast machine may have finished it)
            assert not (sweep / "records" / f"{p.run}.json").exists()
            assert catalog.checkpoint_steps(sweep / "work" / p.run)     # kept where core.sweep resumes it
            with pytest.raises(verify.JobError, match="another visitor"):
                second.resume(OTHER, p.name)
            second.resume(ME, p.name)
            wait_until("the resumed run finishes", lambda: second.view(ME, p.name).state == "finished")
        (o,) = [o for o in verify.history(sweep, catalog.RUNS_DIR) if o.prediction.name == p.name]
        assert o.record is not None and o.record.tokens == p.tokens and o.measured == o.record.val_loss
    finally:
        second.close()
        for j in second.jobs.values():
            if j.process is not None and j.process.poll() is None:
                j.process.kill()
