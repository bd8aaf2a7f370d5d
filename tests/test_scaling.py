"""Scaling fits on synthetic data from known laws, their messages on degenerate runs, the published
constants, stored fits (round trip, current / stale / absent, the committed sweep's), the sweep runner
(kill and restart, fits written), and the Scaling page (reads stored fits, never fits in the server)."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core import catalog, scaling
from core.scaling import ChinchillaLaw, RunRecord, ScalingError
from playground import shared

ROOT = Path(__file__).resolve().parent.parent
TRUE = ChinchillaLaw(E=1.3, A=60.0, B=300.0, alpha=0.35, beta=0.40)
PAGE_BOOTSTRAP = scaling.N_BOOTSTRAP     # what the stored fits are made with (the tests fit with fewer)


@pytest.fixture(autouse=True)
def few_resamples_and_no_real_background_fit(monkeypatch):
    """Fits made here (a sweep's at its end) use few resamples; a page that would start a real child fit
    fails the test instead, and no test sees another's background fits."""
    monkeypatch.setattr(scaling, "N_BOOTSTRAP", 5)
    monkeypatch.setattr(scaling, "_fitting", {})

    def refuse(sweep, log):
        raise AssertionError(f"a test started a real background fit of {sweep}")
    monkeypatch.setattr(scaling, "_start_fit", refuse)


def record(n, d, loss, budget=None, name=None, fpt=None):
    fpt = fpt or 6.0 * n
    return RunRecord(name or f"N{n:.0f}-D{d:.0f}", int(n), int(0.8 * n), int(d), fpt * d, fpt, loss, loss,
                     loss / math.log(2), 1.0, budget=budget)


def grid_records(noise=0.005, seed=1):
    rng = np.random.default_rng(seed)
    return [record(n, d, float(TRUE.predict(n, d)) * math.exp(rng.normal(0, noise)))
            for n in (2e4, 5e4, 1e5, 2e5, 5e5) for d in (1e5, 3e5, 1e6, 3e6)]


def isoflop_records(law=TRUE, budgets=(1e12, 3e12, 1e13, 3e13), noise=0.002, seed=2):
    rng = np.random.default_rng(seed)
    out = []
    for c in budgets:
        n_opt = scaling.allocate(law, c).n
        for k in np.linspace(-1.2, 1.2, 7):
            n = n_opt * math.exp(k)
            d = c / (6 * n)
            out.append(record(n, d, float(law.predict(n, d)) * math.exp(rng.normal(0, noise)), budget=c))
    return out


# ---------------------------------------------------------------------------------------------------
# Fits recover known laws

def test_chinchilla_fit_recovers_a_known_law_with_intervals_that_contain_it():
    law = scaling.fit_chinchilla(grid_records(), n_bootstrap=100)
    assert abs(law.alpha - TRUE.alpha) < 0.04 and abs(law.beta - TRUE.beta) < 0.04
    assert abs(law.E - TRUE.E) < 0.1
    for name, true in (("alpha", TRUE.alpha), ("beta", TRUE.beta), ("E", TRUE.E)):
        lo, hi = law.intervals[name]
        assert lo <= true <= hi, (name, lo, hi)
    assert abs(law.a - TRUE.a) < 0.04 and len(law.bootstrap_laws()) > 80
    # the law predicts the noiseless truth within the noise level everywhere on the grid
    for r in grid_records(noise=0):
        assert abs(law.predict(r.n_params, r.tokens) / r.val_loss - 1) < 0.01


def test_noiseless_data_is_fitted_exactly():
    law = scaling.fit_chinchilla(grid_records(noise=0), n_bootstrap=0)
    assert law.alpha == pytest.approx(TRUE.alpha, abs=1e-3) and law.beta == pytest.approx(TRUE.beta, abs=1e-3)
    assert law.E == pytest.approx(TRUE.E, abs=1e-3) and law.A == pytest.approx(TRUE.A, rel=0.02)


@pytest.mark.parametrize("irreducible", [True, False])
def test_power_law_recovers_exponent(irreducible):
    rng = np.random.default_rng(3)
    x = np.geomspace(1e4, 1e7, 8)
    E = 1.5 if irreducible else 0.0
    y = (E + 30 * x ** -0.3) * np.exp(rng.normal(0, 0.003, x.size))
    law = scaling.fit_power_law(x, y, "N", irreducible=irreducible, n_bootstrap=100)
    assert abs(law.alpha - 0.3) < 0.03 and abs(law.E - E) < 0.1
    lo, hi = law.intervals["alpha"]
    assert lo <= 0.3 <= hi
    band_lo, band_hi = law.band(x)
    assert np.all(band_lo <= law.predict(x) + 1e-9) and np.all(law.predict(x) <= band_hi + 1e-9)


def test_isoflop_recovers_the_allocation_exponents():
    fit = scaling.fit_isoflop(isoflop_records(), n_bootstrap=50)
    assert all(p.inside for p in fit.profiles)
    assert fit.a == pytest.approx(TRUE.a, abs=0.03) and fit.b == pytest.approx(TRUE.b, abs=0.03)
    for p in fit.profiles:   # each parabola's minimum lands on the law's own optimum
        assert p.n_opt == pytest.approx(scaling.allocate(TRUE, p.budget).n, rel=0.15)
    lo, hi = fit.intervals["a"]
    assert lo <= TRUE.a <= hi


def test_allocation_is_the_minimum_and_exact_flops_agree_with_6nd_when_they_are_6n():
    c = 1e15
    closed = scaling.allocate(TRUE, c)
    numeric = scaling.allocate(TRUE, c, lambda n: 6.0 * n)
    assert numeric.n == pytest.approx(closed.n, rel=1e-4) and numeric.loss == pytest.approx(closed.loss, rel=1e-9)
    for f in (0.8, 1.25):     # moving N either way at the same compute costs loss
        n = closed.n * f
        assert TRUE.predict(n, c / (6 * n)) > closed.loss
    assert closed.n * closed.d * 6 == pytest.approx(c, rel=1e-9)
    # a model whose attention adds FLOPs per token gets fewer tokens at the same budget
    heavy = scaling.allocate(TRUE, c, lambda n: 6.0 * n + 2e5)
    assert heavy.d < closed.d


def test_flops_per_token_interpolates_the_recorded_shapes():
    recs = [record(1e4, 1e5, 3.0, fpt=1e5), record(1e5, 1e5, 2.5, fpt=8e5)]
    f = scaling.FlopsPerToken(recs)
    assert f.exact and f(1e4) == pytest.approx(1e5) and f(1e5) == pytest.approx(8e5)
    assert 1e5 < f(3e4) < 8e5 and f(1e6) > 8e5
    assert scaling.FlopsPerToken([])(1e4) == 6e4


def test_published_constants_and_what_they_imply():
    hoff, bes = scaling.PUBLISHED["hoffmann2022"].law, scaling.PUBLISHED["besiroglu2024"].law
    assert (hoff.E, hoff.A, hoff.B, hoff.alpha, hoff.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    assert hoff.a == pytest.approx(0.4516, abs=1e-4)
    # Besiroglu et al.: their refit puts Gopher's budget (5.76e23 FLOPs) near Chinchilla's 70B at ~20 tokens/param
    a = scaling.allocate(bes, 5.76e23)
    assert 60e9 < a.n < 80e9 and 15 < a.tokens_per_parameter < 25
    kaplan = scaling.PUBLISHED["kaplan2020"].kaplan
    assert kaplan["N"].alpha == 0.076 and kaplan["N"].x_c == pytest.approx(8.8e13, rel=1e-9)


def test_held_out_check_predicts_the_largest_budget():
    recs = isoflop_records(budgets=(1e12, 3e12, 1e13, 3e13, 1e14), noise=0.003)
    h = scaling.held_out_check(recs)
    assert {row[0] for row in h.held_out} == {r.name for r in recs if r.budget == 1e14}
    assert h.mean_rel_error < 0.02


# ---------------------------------------------------------------------------------------------------
# Degenerate data: a message, not a fit

def test_too_few_runs_and_degenerate_designs_give_messages():
    recs = grid_records()
    with pytest.raises(ScalingError, match="needs at least 5 runs"):
        scaling.fit_chinchilla(recs[:4])
    same_n = [record(1e5, d, 2.0 + 1e3 / d) for d in (1e5, 2e5, 4e5, 8e5, 1.6e6)]
    with pytest.raises(ScalingError, match="same model size"):
        scaling.fit_chinchilla(same_n)
    tied = [record(n, 20 * n, 2.0 + 10 / n ** 0.3) for n in (1e4, 2e4, 4e4, 8e4, 1.6e5, 3.2e5)]
    with pytest.raises(ScalingError, match="cannot be told apart"):
        scaling.fit_chinchilla(tied)
    bad = recs[:5] + [dataclass_replace(recs[5], val_loss=float("nan"))]
    with pytest.raises(ScalingError, match=recs[5].name):
        scaling.fit_chinchilla(bad)
    with pytest.raises(ScalingError, match="3 or more distinct"):
        scaling.fit_power_law([1e4, 1e5, 1e4], [3.0, 2.5, 3.1], "N")
    with pytest.raises(ScalingError, match="positive finite"):
        scaling.fit_power_law([1e4, -1, 1e6], [3.0, 2.5, 2.0], "N")
    with pytest.raises(ScalingError, match="positive number of FLOPs"):
        scaling.allocate(TRUE, float("inf"))
    with pytest.raises(ScalingError, match="no compute optimum"):
        scaling.allocate(ChinchillaLaw(1.0, 1.0, 1.0, -0.1, 0.3), 1e15)


def test_isoflop_messages_and_a_budget_without_a_minimum():
    recs = isoflop_records(budgets=(1e12, 3e12))
    two_sizes = [r for r in recs if r.budget == 1e12][:2]
    with pytest.raises(ScalingError, match="parabola needs 3 or more"):
        scaling.isoflop_profile(1e12, two_sizes)
    # every size on the small side of the optimum: the loss only falls, the budget is left out, with a note
    one_sided = [r for r in isoflop_records(budgets=(1e12, 3e12, 1e13)) if r.budget != 1e13]
    n_opt = scaling.allocate(TRUE, 1e13).n
    for k in (0.05, 0.1, 0.2, 0.4):
        n = n_opt * k
        one_sided.append(record(n, 1e13 / (6 * n), float(TRUE.predict(n, 1e13 / (6 * n))), budget=1e13))
    fit = scaling.fit_isoflop(one_sided, n_bootstrap=0)
    assert [p.inside for p in fit.profiles] == [True, True, False]
    assert any("larger" in n for n in fit.notes)
    with pytest.raises(ScalingError, match="at least 2 budgets"):
        scaling.fit_isoflop([r for r in one_sided if r.budget != 3e12], n_bootstrap=0)
    with pytest.raises(ScalingError, match="--budgets"):
        scaling.fit_isoflop(grid_records())


def test_analyse_reports_problems_instead_of_raising():
    report = scaling.analyse(grid_records()[::4][:4], n_bootstrap=0)    # 4 sizes, one token count
    assert report.chinchilla is None and "L(N, D)" in report.problems and "IsoFLOP" in report.problems
    assert report.law_n is not None and "L(D)" in report.problems        # 4 sizes are enough for L(N)
    assert report.frontier([1e15]) == []


def test_records_load_from_a_sweep_dir_a_file_and_skip_damage(tmp_path):
    (tmp_path / "records").mkdir()
    recs = grid_records()[:3]
    for r in recs:
        (tmp_path / "records" / f"{r.name}.json").write_text(json.dumps(r.to_dict()))
    (tmp_path / "records" / "cut.json").write_text('{"name": "cut", "n_par')
    assert {r.name for r in scaling.load_records(tmp_path)} == {r.name for r in recs}
    f = tmp_path / "all.json"
    f.write_text(json.dumps({"records": [r.to_dict() for r in recs]}))
    assert scaling.load_records(f) == recs
    with pytest.raises(ScalingError, match="cannot read"):
        scaling.load_records(tmp_path / "missing.json")


def dataclass_replace(r, **kw):
    import dataclasses
    return dataclasses.replace(r, **kw)


# ---------------------------------------------------------------------------------------------------
# Stored fits

def rich_records():
    """Every fit possible: five IsoFLOP budgets (the largest held out) and a few grid runs."""
    return isoflop_records(budgets=(1e12, 3e12, 1e13, 3e13, 1e14), noise=0.003) + grid_records()[::3]


def user_sweep(runs: Path, records, name: str = "mine") -> Path:
    """A sweep directory as core.sweep leaves it: one JSON per run under records/."""
    out = runs / "sweeps" / name
    (out / "records").mkdir(parents=True)
    for r in records:
        (out / "records" / f"{r.name}.json").write_text(json.dumps(r.to_dict(), indent=2))
    return out


@pytest.mark.slow
def test_a_stored_report_is_the_fresh_one(tmp_path):
    """What a page reads from the fits file equals the report a fit in the page would have made: the same
    laws and bootstrap draws, intervals, bands, IsoFLOP profiles, held-out check and FLOPs per token."""
    recs = rich_records()
    sweep = user_sweep(tmp_path, recs)
    made = scaling.fit_sweep(sweep, n_bootstrap=12)
    stored = scaling.load_fits(sweep)
    assert made.status == stored.status == "current" and stored.path == sweep / "fits.json"
    assert stored.digest == scaling.records_digest(recs) == scaling.records_digest(recs[::-1])
    xs = np.geomspace(1e3, 1e8, 40)
    for kind in scaling.N_KINDS:
        fresh = scaling.analyse(scaling.canonical_records(recs), kind, n_bootstrap=12)
        got = stored.report(kind)
        assert not fresh.problems, fresh.problems
        assert got.law_n == fresh.law_n and got.law_d == fresh.law_d and got.law_c == fresh.law_c
        assert got.chinchilla == fresh.chinchilla and len(got.chinchilla.samples) == 12
        assert got.isoflop == fresh.isoflop and got.held_out == fresh.held_out
        assert got.flops_per_token == fresh.flops_per_token and got == fresh
        for law in ("law_n", "law_d", "law_c"):
            window = (1.0, 5.0)
            for a, b in zip(getattr(got, law).band(xs, within=window), getattr(fresh, law).band(xs, within=window)):
                assert np.array_equal(a, b)
        assert got.chinchilla.loss_interval(1e15) == fresh.chinchilla.loss_interval(1e15)
        assert got.frontier([1e13, 1e15]) == fresh.frontier([1e13, 1e15])
        # a report on its own carries its records
        assert scaling.ScalingReport.from_dict(json.loads(json.dumps(fresh.to_dict()))) == fresh


def test_stale_and_absent_fits_are_told_apart(tmp_path):
    recs = grid_records()[:8]
    sweep = user_sweep(tmp_path, recs)
    assert scaling.load_fits(sweep).status == "absent"
    scaling.fit_sweep(sweep, n_bootstrap=0)
    assert scaling.load_fits(sweep).current
    changed = dataclass_replace(recs[3], val_loss=recs[3].val_loss * 1.01)
    (sweep / "records" / f"{recs[3].name}.json").write_text(json.dumps(changed.to_dict()))
    stale = scaling.load_fits(sweep)
    assert stale.status == "stale" and not stale.reports and "other runs" in stale.explain()
    assert stale.command == f"python -m core.scaling fit {sweep}"
    assert changed in stale.records                                  # the records now, for the page's points
    (sweep / "records" / f"{recs[3].name}.json").write_text(json.dumps(recs[3].to_dict()))
    assert scaling.load_fits(sweep).current                          # the same records again: current again
    (sweep / "fits.json").write_text('{"format": 1, "rec')
    damaged = scaling.load_fits(sweep)
    assert damaged.status == "absent" and "cannot be read" in damaged.note
    # a committed sweep: sweeps/NAME.json -> sweeps/NAME.fits.json, which is not a sweep itself
    committed = tmp_path / "committed" / "x.json"
    committed.parent.mkdir()
    committed.write_text(json.dumps({"records": [r.to_dict() for r in recs]}))
    assert scaling.fit_sweep(committed, n_bootstrap=0).path == committed.with_name("x.fits.json")
    assert scaling.load_fits(committed).current and catalog.is_fits_file(committed.with_name("x.fits.json"))
    assert catalog.fits_path(sweep / "records.json") == sweep / "fits.json"
    with pytest.raises(ScalingError, match="no finished run"):
        scaling.fit_sweep(user_sweep(tmp_path, [], name="empty"))


@pytest.mark.slow
def test_the_fit_command_stores_current_fits_and_check_says_so(tmp_path):
    sweep = user_sweep(tmp_path, grid_records()[:8])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "core.scaling", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    res = cli("check", str(sweep))
    assert res.returncode == 1 and "absent" in res.stdout and "python -m core.scaling fit" in res.stdout
    res = cli("fit", str(sweep), "--bootstrap", "3")
    assert res.returncode == 0, res.stderr
    assert "fitted 8 runs" in res.stdout and "L(N, D) = " in res.stdout and "fits.json" in res.stdout
    stored = scaling.load_fits(sweep)
    assert stored.current and stored.n_bootstrap == 3
    assert cli("check", str(sweep)).returncode == 0
    res = cli("fit", str(tmp_path / "nowhere.json"))
    assert res.returncode == 1 and "cannot read sweep records" in res.stderr


def committed_sweep() -> Path:
    files = sorted(p for p in (ROOT / "sweeps").glob("*.json") if not catalog.is_fits_file(p))
    assert files, "the project's own sweep is committed under sweeps/"
    return files[0]


def test_the_committed_fits_are_those_of_the_committed_records():
    """Reads only. Fails when someone changes the committed records without refitting:
    run `python -m core.scaling fit sweeps/NAME.json` and commit the .fits.json beside them."""
    stored = scaling.load_fits(committed_sweep())
    assert stored.status == "current", f"{stored.explain()} Run `{stored.command}` and commit its file."
    assert stored.path.name == committed_sweep().stem + ".fits.json"
    assert stored.n_bootstrap == PAGE_BOOTSTRAP and stored.path.stat().st_size < 2_000_000
    for kind in scaling.N_KINDS:
        report = stored.report(kind)
        assert not report.problems, report.problems
        assert len(report.chinchilla.samples) > 0.9 * PAGE_BOOTSTRAP and report.law_n.samples
        assert report.vpnls.method == "vpnls" and len(report.vpnls.samples) > 0.9 * PAGE_BOOTSTRAP


def test_the_committed_fits_match_a_fresh_fit():
    """The stored point estimates are what the fitting code gives on these records today (the bootstrap
    does not move them, so a fit without it is enough)."""
    stored = scaling.load_fits(committed_sweep())
    for kind in scaling.N_KINDS:
        got, fresh = stored.report(kind), scaling.analyse(stored.records, kind, n_bootstrap=0)
        close = dict(rel=1e-5)
        for name in ("law_n", "law_d", "law_c"):
            a, b = getattr(got, name), getattr(fresh, name)
            assert (a.E, a.A, a.alpha) == pytest.approx((b.E, b.A, b.alpha), **close), (kind, name)
        for a, b in ((got.chinchilla, fresh.chinchilla), (got.held_out.law, fresh.held_out.law),
                     (got.vpnls, fresh.vpnls)):
            assert (a.E, a.A, a.B, a.alpha, a.beta) == pytest.approx((b.E, b.A, b.B, b.alpha, b.beta), **close)
        predicted = [row[4] for row in got.held_out.held_out]
        assert predicted == pytest.approx([row[4] for row in fresh.held_out.held_out], **close)
        assert (got.isoflop.a, got.isoflop.b, got.isoflop.kN, got.isoflop.kD) == pytest.approx(
            (fresh.isoflop.a, fresh.isoflop.b, fresh.isoflop.kN, fresh.isoflop.kD), **close)
        n_opts = [p.n_opt for p in got.isoflop.profiles]
        assert n_opts == pytest.approx([p.n_opt for p in fresh.isoflop.profiles], **close)
        assert got.flops_per_token == fresh.flops_per_token and got.problems == fresh.problems


# ---------------------------------------------------------------------------------------------------
# VPNLS, the parabolas' bias, and tokens per parameter under each way of counting N

LAWS = [TRUE,                                                          # beta > alpha
        ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),  # Hoffmann's constants
        ChinchillaLaw(E=0.8, A=20.0, B=900.0, alpha=0.2, beta=0.6),     # very unequal exponents
        ChinchillaLaw(E=1.5, A=100.0, B=400.0, alpha=0.3, beta=0.3)]


def fixed_size_records(law, budgets=(1e12, 1e13, 1e14, 1e15), per_budget=7):
    """The same sizes at every budget, spanning the smallest and the largest budget's optimum: the common
    sweep design under which the optimum drifts across the sizes tried (C = 6ND, noiseless)."""
    lo, hi = (math.log(scaling.allocate(law, c).n) for c in (budgets[0], budgets[-1]))
    return [record(n, c / (6 * n), float(law.predict(n, c / (6 * n))), budget=c)
            for c in budgets for n in np.exp(np.linspace(lo, hi, per_budget))]


def off_centre_records(law, offset=1.0, budgets=(1e12, 1e13, 1e14)):
    """Sizes only on the large side of each budget's optimum (from N_opt e^offset up)."""
    out = []
    for c in budgets:
        n_opt = scaling.allocate(law, c).n
        for k in np.linspace(0, 1.5, 5):
            n = n_opt * math.exp(offset + k)
            out.append(record(n, c / (6 * n), float(law.predict(n, c / (6 * n))), budget=c))
    return out


@pytest.mark.parametrize("law", LAWS, ids=lambda law: f"a{law.alpha}-b{law.beta}")
@pytest.mark.parametrize("design", ["grid", "off-centre", "fixed sizes"])
def test_vpnls_recovers_known_constants_to_one_percent(law, design):
    recs = {"grid": lambda: [record(n, d, float(law.predict(n, d))) for n in (2e4, 5e4, 1e5, 2e5, 5e5)
                             for d in (1e5, 3e5, 1e6, 3e6)],
            "off-centre": lambda: off_centre_records(law),
            "fixed sizes": lambda: fixed_size_records(law)}[design]()
    fit = scaling.fit_vpnls(recs, n_bootstrap=0)
    assert fit.method == "vpnls" and fit.n_points == len(recs)
    got, want = (fit.E, fit.A, fit.B, fit.alpha, fit.beta), (law.E, law.A, law.B, law.alpha, law.beta)
    assert got == pytest.approx(want, rel=0.01), (got, want)


def test_vpnls_is_the_least_squares_optimum_and_its_intervals_contain_the_truth():
    recs = grid_records(noise=0.005)
    fit = scaling.fit_vpnls(recs, n_bootstrap=40)
    N, D = (np.array([getattr(r, k) for r in recs], dtype=float) for k in ("n_params", "tokens"))
    y = np.array([r.val_loss for r in recs])

    def sse(law):
        return float(np.sum((law.predict(N, D) - y) ** 2))
    # an independent optimiser on all five parameters, from the truth and from the fit, finds nothing better
    from scipy.optimize import minimize
    for start in ((TRUE.E, TRUE.A, TRUE.B, TRUE.alpha, TRUE.beta), (fit.E, fit.A, fit.B, fit.alpha, fit.beta)):
        res = minimize(lambda p: sse(ChinchillaLaw(*p)), start, method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
        assert sse(fit) <= res.fun * (1 + 1e-6)
    for name, true in (("alpha", TRUE.alpha), ("beta", TRUE.beta), ("a", TRUE.a)):
        lo, hi = fit.intervals[name]
        assert lo <= true <= hi, (name, lo, hi)
    assert len(fit.samples) >= 35 and all(len(s) == 5 for s in fit.samples)
    again = ChinchillaLaw.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert again == fit and again.method == "vpnls"
    assert ChinchillaLaw.from_dict({k: v for k, v in fit.to_dict().items() if k != "method"}).method == "huber-lbfgs"


def test_vpnls_says_what_to_add_when_a_term_is_missing():
    flat = [record(n, d, 2.0 + 300.0 / d ** 0.4) for n in (2e4, 5e4, 1e5) for d in (1e5, 3e5, 1e6)]
    with pytest.raises(ScalingError, match="does not fall with N"):
        scaling.fit_vpnls(flat, n_bootstrap=0)
    with pytest.raises(ScalingError, match="at least 5 runs"):
        scaling.fit_vpnls(flat[:3], n_bootstrap=0)


def test_where_the_parabolas_are_biased_vpnls_recovers_the_allocation_and_the_rule_warns():
    law = LAWS[0]
    recs = fixed_size_records(law)
    iso = scaling.fit_isoflop(recs, n_bootstrap=0)
    vp = scaling.fit_vpnls(recs, n_bootstrap=0)
    assert abs(iso.a - law.a) > 0.03                # the parabolas' N_opt exponent is off (0.056 measured)
    assert vp.a == pytest.approx(law.a, abs=0.002)
    off = {p.budget: abs(math.log(p.n_opt / scaling.allocate(law, p.budget).n)) for p in iso.profiles}
    warned = {p.budget: scaling.parabola_bias(p, vp) for p in iso.profiles}
    assert {c for c, why in warned.items() if why} == {c for c, e in off.items() if e > scaling.PARABOLA_SHIFT}
    assert all("near the" in warned[c] for c in (1e12, 1e15))


def test_the_parabola_rule_is_quiet_where_the_parabola_is_right_and_predicts_the_misplacement():
    # centred sizes and equal exponents: every parabola lands within 1 %; no warning, with or without a law
    equal = LAWS[3]
    iso = scaling.fit_isoflop(isoflop_records(equal, noise=0.0), n_bootstrap=0)
    for p in iso.profiles:
        assert abs(p.n_opt / scaling.allocate(equal, p.budget).n - 1) < 0.01
        assert scaling.parabola_bias(p) is None and scaling.parabola_bias(p, equal) is None
    # centred sizes, lopsided valley: the geometry looks fine, the law says the parabola is off, and by
    # as much as the parabolas fitted to the runs themselves are
    lop = LAWS[2]
    iso = scaling.fit_isoflop(isoflop_records(lop, noise=0.0), n_bootstrap=0)
    for p in iso.profiles:
        actual = 100 * (p.n_opt / scaling.allocate(lop, p.budget).n - 1)
        assert scaling.parabola_bias(p) is None and actual < -5
        assert f"{actual:+.0f} %" in scaling.parabola_bias(p, lop)
    # a budget whose minimum is extrapolated
    edge = [r for r in isoflop_records(TRUE, noise=0.0) if r.params() > scaling.allocate(TRUE, r.budget).n * 1.1]
    p = scaling.isoflop_profile(1e12, [r for r in edge if r.budget == 1e12])
    assert "outside the sizes tried" in scaling.parabola_bias(p) and "smaller models" in scaling.parabola_bias(p)


def test_tokens_per_parameter_under_each_convention_and_the_published_ratios():
    recs = [dataclass_replace(r, n_non_embedding=int(round(0.5 * r.n_params))) for r in isoflop_records(noise=0.0)]
    reports = {k: scaling.ScalingReport(tuple(recs), k, None, None, None, scaling.fit_chinchilla(recs, k, 0), None,
                                        None, scaling.FlopsPerToken(recs, k), {}, scaling.fit_vpnls(recs, k, 0))
               for k in scaling.N_KINDS}
    rows = scaling.tokens_per_parameter(reports, budgets=(1e12, 1e14))
    by_key = {r.key: r for r in rows}
    assert {k for k in by_key if k.startswith("sweep:")} == {f"sweep:{m}:{k}" for m in ("huber-lbfgs", "vpnls")
                                                            for k in scaling.N_KINDS}
    total = by_key["sweep:vpnls:total"]
    for (c, ratio) in total.ratios:     # a brute-force optimum of the true law at C = 6ND
        ns = np.geomspace(1e2, 1e9, 200_001)
        n = ns[np.argmin(TRUE.predict(ns, c / (6 * ns)))]
        assert ratio == pytest.approx(c / (6 * n) / n, rel=0.01)
    # counting half the parameters as N doubles the ratio at the same optimum
    non_emb = by_key["sweep:vpnls:non_embedding"]
    for (_, r_total), (_, r_half) in zip(total.ratios, non_emb.ratios):
        assert r_half == pytest.approx(2 * r_total, rel=0.01)
    hoffmann = by_key["hoffmann2022"]
    values = [v for _, v in hoffmann.ratios]
    assert [c for c, _ in hoffmann.ratios] == list(scaling.RATIO_BUDGETS) and values == sorted(values)
    assert values[0] < 30 and values[-1] > 90       # Hoffmann's own fit: far from 20 at large budgets
    besiroglu = by_key["besiroglu2024"]
    assert 15 < besiroglu.low and besiroglu.high < 30
    nanochat = [r for r in rows if r.key.startswith("reported:") and r.source.startswith("nanochat")]
    assert [(r.low, r.high) for r in nanochat] == [(3.0, 4.0), (10.3, 11.2), (8.5, 17.2)]
    assert all("dev/LOG.md" in r.citation or "same entry" in r.citation for r in nanochat)


# ---------------------------------------------------------------------------------------------------
# The sweep runner

def sweep_args(out, corpus_file, data_dir):
    return ["--out-dir", str(out), "--corpus", str(corpus_file), "--data-dir", str(data_dir),
            "--shapes", "1x16", "2x16", "2x32", "--budgets", "2e9", "4e9", "--tokens", "4e4",
            "--block-size", "32", "--batch-size", "4", "--eval-iters", "4", "--min-steps", "10",
            "--checkpoint-interval", "20", "--threads", "1"]


def test_sweep_plan_leaves_out_runs_with_reasons(corpus_file, data_dir):
    from core.sweep import SweepConfig, plan_sweep
    cfg = SweepConfig(shapes=("1x16", "4x64"), budgets=(1e9,), tokens=(), min_steps=20, max_epochs=1.0)
    runs, skipped = plan_sweep(cfg, 257, 50_000)
    reasons = dict(skipped)
    assert "min_steps" in reasons["C1e09-4x64"]
    assert [r.name for r in runs] == ["C1e09-1x16"] and runs[0].budget == 1e9
    assert runs[0].flops == pytest.approx(1e9, rel=0.05)
    runs, skipped = plan_sweep(SweepConfig(shapes=("1x16",), budgets=(1e11,), max_epochs=1.0), 257, 50_000)
    assert not runs and "repeat" in skipped[0][1]
    with pytest.raises(ValueError, match="LAYERSxWIDTH"):
        SweepConfig(shapes=("4by64",))
    with pytest.raises(ValueError, match="budgets"):
        SweepConfig(budgets=(), tokens=())


@pytest.mark.slow
def test_sweep_killed_and_restarted_loses_nothing_finished(tmp_path, corpus_file, data_dir):
    """kill -9 mid-sweep, then the same command: finished runs are skipped, the run in progress resumes,
    and every record equals the one an uninterrupted sweep writes."""
    from core.sweep import main
    clean = tmp_path / "clean"
    assert main(sweep_args(clean, corpus_file, data_dir)) == 0
    expected = {r.name: r for r in scaling.load_records(clean)}
    assert len(expected) >= 5
    assert scaling.load_fits(clean).current             # a finished sweep stores its fits

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "core.sweep", *sweep_args(killed, corpus_file, data_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # wait until two runs are recorded and a third has a checkpoint, then kill without warning
    while time.time() < deadline:
        done = list((killed / "records").glob("*.json")) if (killed / "records").is_dir() else []
        work = list((killed / "work").glob("*/checkpoints/*.safetensors")) if (killed / "work").is_dir() else []
        if len(done) >= 2 and work:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name for p in (killed / "records").glob("*.json")}
    assert 2 <= len(before) < len(expected)
    assert scaling.load_fits(killed).status == "absent"   # a kill leaves no fits; the page or the CLI makes them
    assert main(sweep_args(killed, corpus_file, data_dir)) == 0
    assert scaling.load_fits(killed).current
    got = {r.name: r for r in scaling.load_records(killed)}
    assert set(got) == set(expected)
    for name, r in got.items():
        assert r.val_loss == expected[name].val_loss and r.tokens == expected[name].tokens, name
    assert not list((killed / "work").glob("*")), "finished runs' working directories are removed"
    collected = json.loads((killed / "records.json").read_text())
    assert len(collected["records"]) == len(expected) and collected["recipe"]["block_size"] == 32


@pytest.mark.slow
def test_sweep_refuses_another_recipe_and_changes_nothing(tmp_path, corpus_file, data_dir, capsys):
    from core.sweep import main
    out = tmp_path / "s"
    args = sweep_args(out, corpus_file, data_dir)
    args[args.index("--budgets") + 1:args.index("--tokens")] = ["2e9"]
    args[args.index("--tokens"):args.index("--tokens") + 2] = []
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in (out / "records").glob("*.json")}
    assert main(args + ["--learning-rate", "0.01"]) == 1
    assert "another recipe" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "records").glob("*.json")} == before
    # a kill between writing a record and removing its run directory leaves a directory behind
    leftover = out / "work" / Path(next(iter(before))).stem / "checkpoints"
    leftover.mkdir(parents=True)
    assert main(args + ["--shapes", "1x16", "2x16", "2x32", "3x32"]) == 0   # adding a shape is fine
    assert len(list((out / "records").glob("*.json"))) == len(before) + 1
    assert not leftover.parent.exists()


@pytest.mark.slow
def test_a_sweep_stopped_with_records_stores_their_fits(tmp_path, corpus_file, data_dir):
    from core.sweep import RunRecorded, main, parse_args, run_sweep
    out = tmp_path / "s"
    assert main(sweep_args(out, corpus_file, data_dir) + ["--plan"]) == 0
    assert not catalog.fits_path(out).exists()            # a plan trains and fits nothing
    cfg, _ = parse_args(sweep_args(out, corpus_file, data_dir))
    gen = run_sweep(cfg)
    recorded = 0
    for ev in gen:
        if isinstance(ev, RunRecorded):
            recorded += 1
            if recorded == 2:
                break
    assert not catalog.fits_path(out).exists()            # fitted when the sweep stops, not after every run
    gen.close()
    stored = scaling.load_fits(out)
    assert stored.current and len(stored.records) == 2


# ---------------------------------------------------------------------------------------------------
# The committed sweep and the page

def test_committed_sweep_supports_every_fit():
    recs = scaling.load_records(committed_sweep())
    report = scaling.analyse(recs, n_bootstrap=20)
    assert not report.problems, report.problems
    assert report.chinchilla.alpha > 0 and report.chinchilla.beta > 0
    assert report.held_out.mean_rel_error < 0.1
    first = catalog.list_sweeps()[0]
    assert first.committed and first.path == committed_sweep()     # its fits file is not offered as a sweep


def page_text(at) -> str:
    return " ".join(e.value for kind in (at.info, at.markdown, at.caption, at.error, at.warning) for e in kind)


def open_scaling_page(sweep: str | None = None):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "playground" / "scaling.py"), default_timeout=60)
    if sweep:
        at.query_params["sweep"] = sweep
    return at.run()


def stale_user_sweep(tmp_path, monkeypatch) -> Path:
    """A sweep of the user's whose fits were made before one of its runs changed."""
    runs = tmp_path / "runs"
    recs = grid_records()[:8]
    sweep = user_sweep(runs, recs)
    scaling.fit_sweep(sweep, n_bootstrap=0)
    changed = dataclass_replace(recs[0], val_loss=recs[0].val_loss * 1.02)
    (sweep / "records" / f"{recs[0].name}.json").write_text(json.dumps(changed.to_dict()))
    monkeypatch.setattr(catalog, "RUNS_DIR", runs)
    assert scaling.load_fits(sweep).status == "stale"
    return sweep


def test_the_scaling_page_opens_the_committed_sweep_without_fitting(tmp_path, monkeypatch):
    """Every fit is read from the committed fits file: with every fitting function broken, the Scaling
    page (both ways of counting N) and the Learn page's scaling section still show the fits."""
    from streamlit.testing.v1 import AppTest

    def no_fit(*args, **kwargs):
        raise AssertionError("a page fitted in the server")
    for name in ("analyse", "fit_sweep", "ensure_fits", "fit_chinchilla", "fit_power_law", "fit_isoflop",
                 "held_out_check", "fit_vpnls"):
        monkeypatch.setattr(scaling, name, no_fit)
    monkeypatch.setattr(catalog, "RUNS_DIR", tmp_path / "runs")      # none of this machine's own sweeps
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    at.switch_page("playground/scaling.py")
    at.run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "a = " in text and "Mean absolute error" in text and "background" not in text
    assert "Chinchilla's *about 20 tokens per parameter*" in text           # the tokens-per-parameter tab
    warned = [why for why in scaling.parabola_warnings(scaling.load_fits(committed_sweep()).report()).values() if why]
    assert warned and all(any(why in w.value for w in at.warning) for why in warned)
    tables = [t.value for t in at.dataframe]
    fits = next(t for t in tables if "fit" in t.columns and t["fit"].str.startswith("VPNLS").any())
    assert fits["fit"].str.startswith("L-BFGS").any() and "IsoFLOP parabolas" in set(fits["fit"])
    ratios = next(t for t in tables if "N counted as" in t.columns)
    assert len(ratios) == 4 + 2 + len(scaling.PUBLISHED_RATIOS) and ratios["source"].str.startswith("nanochat").any()
    at.radio(key="n_kind").set_value("non_embedding").run()
    assert not at.exception, at.exception
    assert "L(N (non-embedding))" in page_text(at) and "Mean absolute error" in page_text(at)
    at.switch_page("playground/learn.py")
    at.run()
    at.radio(key="section").set_value("scaling").run()
    assert not at.exception, at.exception
    assert any("N_opt ∝ C^" in m.value for m in at.markdown)
    assert any("What the 20 depends on" in m.value and "non-embedding fit" in m.value for m in at.markdown)


def test_hosted_mode_never_fits_a_stale_sweep_and_says_how(tmp_path, monkeypatch):
    sweep = stale_user_sweep(tmp_path, monkeypatch)
    monkeypatch.setattr(shared, "HOSTED", True)
    at = open_scaling_page("mine (yours)")
    assert not at.exception, at.exception
    text = page_text(at)
    command = scaling.fit_command(sweep)
    assert command == "python -m core.scaling fit runs/sweeps/mine"      # never this server's layout
    assert "hosted mode" in text and command in text and str(tmp_path) not in text
    assert len(at.get("plotly_chart")) == 3                         # the runs' points, at once
    report, message = shared.scaling_report(sweep)                  # what the Learn page reads
    assert report is None and command in message
    assert scaling._fitting == {}                                   # nothing started (_start_fit would raise)


class FakeFit:
    """Stands in for the child process: still running until terminated."""

    def __init__(self):
        self.terminated = False

    def poll(self):
        return -15 if self.terminated else None

    def terminate(self):
        self.terminated = True

    def wait(self, timeout=None):
        return self.poll()


def test_a_stale_sweep_is_fitted_once_in_the_background_however_many_ask(tmp_path, monkeypatch):
    sweep = stale_user_sweep(tmp_path, monkeypatch)
    started = []

    def slow_start(path, log):
        time.sleep(0.2)         # the other requests arrive while this one spawns
        started.append(Path(path))
        return FakeFit()
    monkeypatch.setattr(scaling, "_start_fit", slow_start)
    monkeypatch.setattr(shared, "HOSTED", False)
    stored, _ = shared.scaling_fits(sweep)
    jobs, barrier = [], threading.Barrier(4)

    def ask():
        barrier.wait()
        jobs.append(scaling.fit_in_background(stored))
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert started == [sweep] and len(jobs) == 4 and all(j is jobs[0] for j in jobs)
    # two visitors open the page meanwhile: each sees the runs and the note at once, and no second fit starts
    for _ in range(2):
        t0 = time.perf_counter()
        at = open_scaling_page("mine (yours)")
        assert not at.exception, at.exception
        assert "Fitting in the background (started" in page_text(at)
        assert len(at.get("plotly_chart")) == 3 and time.perf_counter() - t0 < 30
    assert len(started) == 1
    # the records change again: the fit of the old ones is stopped, and one for the new ones starts
    recs = scaling.load_records(sweep)
    (sweep / "records" / f"{recs[1].name}.json").write_text(json.dumps(
        dataclass_replace(recs[1], val_loss=recs[1].val_loss * 0.99).to_dict()))
    newer, _ = shared.scaling_fits(sweep)
    assert newer.digest != stored.digest and scaling.fit_in_background(newer) is not jobs[0]
    assert jobs[0].process.terminated and len(started) == 2


def test_scaling_page_renders_committed_results_and_a_users_degenerate_sweep(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    runs = tmp_path / "runs"
    mine = runs / "sweeps" / "mine" / "records"
    mine.mkdir(parents=True)
    for r in grid_records()[:3]:
        (mine / f"{r.name}.json").write_text(json.dumps(r.to_dict()))
    scaling.fit_sweep(mine.parent, n_bootstrap=0)
    monkeypatch.setattr(catalog, "RUNS_DIR", runs)
    at = AppTest.from_file(str(ROOT / "playground" / "scaling.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert "Scaling laws" in at.title[0].value
    assert any("a = " in m.value for m in at.markdown)                 # IsoFLOP exponents shown
    assert any("Mean absolute error" in m.value for m in at.markdown)  # held-out check shown
    at.slider(key="budget").set_value(14.0).run()
    assert not at.exception
    at.selectbox(key="sweep").set_value("mine (yours)").run()          # 3 runs: messages, no crash
    assert not at.exception
    shown = " ".join(e.value for e in at.info) + " ".join(e.value for e in at.markdown)
    assert "needs at least 5 runs" in shown
