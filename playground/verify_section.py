"""The Scaling page's "Predict, then verify" tab: a budget past the sweep's largest run, what the fitted law
predicts there (allocation, shape, loss and interval), a button that stores the prediction and trains that
run as a job, the job's progress, and the measured loss beside the prediction (a table, a plot and the
sweep's history of predictions). Draws only: the prediction, the job and the outcome come from
`core.verify`; the lifecycle from `core.jobs`."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import streamlit as st

from core import catalog, scaling, verify
from core.checks import PlaygroundError
from playground import shared
from playground.shared import figure, job_board, url_float, visitor_token

MEASURED = "#dc2626"
PREDICTED = "#d97706"     # amber: visible on the light and the dark theme
RUNS = "#9ca3af"


@functools.lru_cache(maxsize=64)
def _preview(sweep: str, digest: str, status: str, factor: float) -> tuple[verify.Prediction | None, str | None]:
    """The prediction the button would store now (not stored): once per sweep's records, fits and factor."""
    source = verify.fits_source(sweep, catalog.RUNS_DIR)
    try:
        config = verify.recipe_of(sweep)
        return verify.predict(scaling.load_fits(source), factor, config, Path(sweep).stem, "preview",
                              verify.max_tokens(config)), None
    except PlaygroundError as e:
        return None, str(e)


def compute_traces(sweep: Path) -> list[dict]:
    """The sweep's predictions on a loss-vs-compute plot: each a point with its interval as an error bar,
    and each measured loss as a distinct marker."""
    outcomes = verify.history(sweep, catalog.RUNS_DIR)
    if not outcomes:
        return []
    ps = [o.prediction for o in outcomes]
    done = [o for o in outcomes if o.measured is not None]
    traces = [dict(type="scatter", x=[p.flops for p in ps], y=[p.predicted for p in ps], mode="markers",
                   marker=dict(symbol="diamond-open", size=12, color=PREDICTED, line=dict(width=2)),
                   error_y=dict(type="data", symmetric=False, array=[p.interval[1] - p.predicted for p in ps],
                                arrayminus=[p.predicted - p.interval[0] for p in ps], color=PREDICTED),
                   name="predicted (interval)", hoverinfo="text",
                   text=[f"{p.name}: predicted {p.predicted:.3f} [{p.interval[0]:.3f}, {p.interval[1]:.3f}]"
                         for p in ps])]
    if done:
        traces.append(dict(type="scatter", x=[o.record.flops for o in done], y=[o.measured for o in done],
                           mode="markers", marker=dict(symbol="x", size=13, color=MEASURED), name="measured",
                           hoverinfo="text", text=[f"{o.prediction.run}: measured {o.measured:.3f}" for o in done]))
    return traces


def _factor() -> float:
    low, high = verify.FACTOR_RANGE
    factor = st.slider("Budget: times the largest run's compute", low, high,
                       url_float("factor", verify.DEFAULT_FACTOR, low, high), step=0.5, key="verify_factor",
                       help="The run to predict gets this multiple of the sweep's largest training compute.")
    st.query_params["factor"] = f"{factor:g}"
    return float(factor)


def _show_prediction(p: verify.Prediction, totals: scaling.SweepTotals) -> None:
    m = st.columns(5)
    m[0].metric("budget C (FLOPs)", f"{p.compute:.3g}".replace("+", ""),
                help=f"{p.factor:g} x the largest run's {p.largest:.3g}")
    m[1].metric("shape", f"{p.shape_label}", help=f"{p.shape['n_layer']} layers, {p.shape['n_head']} heads, "
                                                 f"{p.shape['n_embd']} wide: the sweep's family at N_opt")
    m[2].metric("parameters N", f"{p.n_params:,}", help=f"the law's optimum: {p.n_opt:,.0f}")
    m[3].metric("tokens D", f"{p.tokens:,}", help=f"the law's optimum: {p.d_opt:,.0f}")
    m[4].metric("predicted val loss", f"{p.predicted:.3f}",
                help=f"{int(p.level * 100)} % bootstrap interval {p.interval[0]:.3f} to {p.interval[1]:.3f}")
    seconds = totals.seconds_for(p.flops)
    lo, hi = p.interval
    if not lo <= p.predicted <= hi:
        st.caption("The fit's own prediction lies outside its bootstrap interval: the fits of resampled runs "
                   "disagree with the fit of all of them, so these runs pin the law down poorly here.")
    st.caption(f"{int(p.level * 100)} % interval {p.interval[0]:.3f} to {p.interval[1]:.3f} nats/token, from the "
               f"L(N, D) fit of {p.n_records} runs. The shape is the sweep's family member nearest the law's "
               f"compute-optimal N ({p.n_opt:,.0f}); it trains {p.steps:,} steps with the sweep's recipe, "
               f"{p.flops_per_token:,.0f} FLOPs per token"
               + (f", about {seconds / 60:.1f} minutes at the sweep's speed" if seconds else "") + ".")


def _outcome_table(outcomes: list[verify.Outcome], board, token: str) -> None:
    rows = []
    for o in outcomes:
        p, v = o.prediction, board.view(token, o.prediction.name)
        rows.append({"prediction": p.name, "made": time.strftime("%Y-%m-%d %H:%M", time.gmtime(p.created)),
                     "factor": p.factor, "run": p.run, "N": p.n_params, "D": p.tokens,
                     "predicted": round(p.predicted, 4),
                     "interval": f"{p.interval[0]:.3f} to {p.interval[1]:.3f}",
                     "measured": None if o.measured is None else round(o.measured, 4),
                     "error": None if o.error is None else round(o.error, 4),
                     "error %": None if o.relative_error is None else round(100 * o.relative_error, 2),
                     "inside": None if o.inside is None else ("yes" if o.inside else "no"),
                     "job": v.state if v else ("recorded" if o.measured is not None else "no job here")})
    st.dataframe(rows, hide_index=True, key="verify_history")


def _result(o: verify.Outcome) -> None:
    p = o.prediction
    st.markdown(f"**{p.run}**: predicted **{p.predicted:.3f}**, measured **{o.measured:.3f}** nats/token; "
                f"error {o.error:+.4f} ({100 * o.relative_error:+.2f} %), "
                + ("inside" if o.inside else "**outside**") + f" the {int(p.level * 100)} % interval "
                f"({p.interval[0]:.3f} to {p.interval[1]:.3f}).")


def _plot(sweep: Path, records, fits: scaling.StoredFits, outcomes: list[verify.Outcome]) -> None:
    traces = [dict(type="scatter", x=[r.flops for r in records], y=[r.val_loss for r in records], mode="markers",
                   marker=dict(color=RUNS, size=7), name="the sweep's runs", hoverinfo="text",
                   text=[f"{r.name}: val {r.val_loss:.4f}" for r in records])]
    report = fits.report(verify.N_KIND) if fits.current else None
    if report is not None and report.chinchilla is not None:
        top = max([r.flops for r in records] + [o.prediction.flops for o in outcomes])
        cs = np.geomspace(min(r.flops for r in records), top * 1.5, 40)
        traces.append(dict(type="scatter", x=cs, y=[a.loss for a in report.frontier(cs)], mode="lines",
                           line=dict(color=RUNS, dash="dash"), name="L(N, D) optimum, fit of all runs now"))
    traces += compute_traces(sweep)
    st.plotly_chart(figure(traces, height=380, margin=dict(t=20, b=10), legend=dict(orientation="h", y=-0.2),
                           xaxis=dict(type="log", title=dict(text="training FLOPs C")),
                           yaxis=dict(type="log", title=dict(text="val loss (nats/token)"))),
                    width="stretch", key="verify_plot")


def section(sweep: Path, stored: scaling.StoredFits) -> None:
    """The section's content for one sweep (a committed records file or a sweep directory). The job board
    (and the visitor's token) are asked for only once there is a verification to start or to show: reading
    the page starts no supervisor."""
    runs_dir = catalog.RUNS_DIR
    target = verify.target_dir(sweep, runs_dir)
    st.markdown("A law earns trust by predicting a run nobody has trained. Choose a budget past the largest run; "
                "the L(N, D) fit picks the model size and tokens, and predicts the loss with its interval. The "
                "prediction is stored first, then the run trains with the sweep's own recipe, and its measured "
                "loss lands beside the prediction.")
    if not sweep.is_dir():
        st.caption(f"This sweep is committed and stays as it is: verification runs are recorded in your copy, "
                   f"`runs/sweeps/{target.name}/`, which the sweep list shows once it exists (and which later "
                   f"predictions fit on).")
    factor = _factor()
    source = verify.fits_source(sweep, runs_dir)
    fits = stored if source == Path(sweep) else (shared.scaling_fits(source)[0] or stored)
    preview, problem = _preview(str(sweep), fits.digest, fits.status, factor)
    why = verify.unavailable(shared.HOSTED)
    if problem:
        st.warning(problem)
    elif preview is not None:
        _show_prediction(preview, scaling.sweep_totals(fits.records))
    if why:
        st.info(why, icon="⏸️")
    elif st.button("Predict, then train this run", type="primary", key="verify_start", disabled=preview is None):
        try:
            p, _ = verify.start(job_board(), visitor_token(), sweep, factor, shared.HOSTED)
            st.session_state["verify_job"] = p.name
        except PlaygroundError as e:
            st.error(str(e))
    outcomes = verify.history(sweep, runs_dir)
    if not outcomes:
        return
    board, token = job_board(), visitor_token()
    names = [o.prediction.name for o in outcomes]
    watched = st.session_state.get("verify_job")
    if watched not in names:
        watched = next((n for n in names if (v := board.view(token, n)) and v.active), None)
    if watched:
        _live(watched)
    done = [o for o in outcomes if o.measured is not None]
    if done:
        st.subheader("Predicted and measured")
        _result(done[0])
    _plot(sweep, [r for r in fits.records if r.name not in {o.prediction.run for o in outcomes}], fits, outcomes)
    st.markdown(f"**Predictions for this sweep** ({len(outcomes)}), newest first")
    _outcome_table(outcomes, board, token)


def _act(what: str, name: str) -> None:
    try:
        getattr(job_board(), what)(visitor_token(), name)
    except PlaygroundError as e:
        st.session_state["verify_notice"] = str(e)


@st.fragment(run_every=1.0)
def _live(name: str) -> None:
    """The verification job's progress; when it ends the whole page draws again (the outcome arrives)."""
    board, token = job_board(), visitor_token()
    board.heartbeat(token)
    v = board.view(token, name)
    if v is None:
        return
    was_active = st.session_state.get("verify_active", {}).get(name)
    st.session_state.setdefault("verify_active", {})[name] = v.active
    if was_active and not v.active:
        st.rerun()
    st.markdown(f"**Verification run `{name}`: {v.state}**" + (f" ({v.phase})" if v.active else ""))
    if "verify_notice" in st.session_state:
        st.warning(st.session_state.pop("verify_notice"))
    if v.message:
        (st.error if v.state == "failed" else st.info)(v.message)
    if v.last:
        st.progress(min(1.0, v.step / max(v.max_steps, 1)),
                    text=f"step {v.step:,} / {v.max_steps:,} · loss {v.last['loss']:.3f} · "
                         f"{v.last['tokens_per_s']:,.0f} tokens/s")
    b1, b2 = st.columns(2)
    b1.button("Stop", key="verify_stop", on_click=_act, args=("stop", name), disabled=not v.can_stop)
    b2.button("Resume", key="verify_resume", on_click=_act, args=("resume", name), disabled=not v.can_resume)
    if not v.mine:
        st.caption("Another visitor started this verification: you can watch it, not change it.")
