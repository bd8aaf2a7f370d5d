"""Scaling: loss against parameters, data and compute on real sweeps, the fitted laws, IsoFLOP profiles,
the compute-optimal frontier, a budget predictor and a held-out check. Every number comes from
`core.scaling`, and every fit from the file a sweep stores beside its records: this page picks records,
reads their fits and draws. It never fits; when a sweep's fits are stale or absent it shows the runs, and
`playground.shared` says how the fits get made."""

import math

import numpy as np
import streamlit as st

from core import catalog, scaling
from playground import verify_section
from playground.shared import budget_interval, figure, fits_notice, scaling_fits, url_choice

st.title("Scaling laws")
st.caption("How loss falls as a power law in parameters N, data D and compute C, measured on real training "
           "runs: the project's own sweep on tiny shakespeare, and any sweep you run with `python -m core.sweep`.")

sweeps = catalog.list_sweeps()
if not sweeps:
    st.warning("No sweep found: the project's records live in `sweeps/`; run `python -m core.sweep` to make "
               "your own under `runs/sweeps/`.")
    st.stop()


names = [s.name + ("" if s.committed else " (yours)") for s in sweeps]
by_label = dict(zip(names, sweeps))
side = st.sidebar
label = side.selectbox("Sweep to fit", names, index=names.index(url_choice("sweep", names[0], names)), key="sweep",
                       help="The fits use this sweep's runs. Committed sweeps first; yours live in runs/sweeps/.")
st.query_params["sweep"] = label
others = side.multiselect("Show beside it (points only)", [n for n in names if n != label], key="others")
n_kind = side.radio("Count N as", list(scaling.N_KINDS), key="n_kind",
                    format_func=lambda k: {"total": "all parameters (Chinchilla)",
                                           "non_embedding": "non-embedding (Kaplan)"}[k])
stored, problem = scaling_fits(by_label[label].path)
if stored is None:
    st.error(f"{label}: {problem}")
    st.stop()
if not stored.records:
    st.info(f"{label}: this sweep has no finished run yet.")
    st.stop()
records = list(stored.records)
report = stored.report(n_kind)
extra = {n: scaling.load_records(by_label[n].path) for n in others}
if report is not None and report.problems:
    with st.expander(f"{len(report.problems)} fit(s) not possible on these runs", expanded=False):
        for name, msg in report.problems.items():
            st.markdown(f"**{name}**: {msg}")

totals = scaling.sweep_totals(records)
c = st.columns(4)
c[0].metric("runs", totals.runs)
c[1].metric("sizes", totals.sizes, help="distinct model shapes")
c[2].metric("training compute", f"{totals.flops:.2g} FLOPs", help="exact FLOPs per token x tokens, summed")
c[3].metric("wall time", f"{totals.wall_s / 60:.1f} min", help="as recorded on the machine that ran the sweep")

PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
colour = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(scaling.group_by_budget(records))}
GREY = "#6b7280"


def log_layout(x: str, y: str = "val loss (nats/token)", height: int = 380, y_range=None) -> dict:
    yaxis = dict(type="log", title=dict(text=y))
    if y_range is not None:
        yaxis["range"] = [math.log10(y_range[0]), math.log10(y_range[1])]
    return dict(height=height, margin=dict(t=30, b=10), legend=dict(orientation="h", y=-0.2),
                xaxis=dict(type="log", title=dict(text=x)), yaxis=yaxis)


def run_points(recs, x_of, name_prefix: str = "", symbol: str = "circle") -> list[dict]:
    return [dict(type="scatter", x=[x_of(r) for r in rs], y=[r.val_loss for r in rs], mode="markers",
                 marker=dict(color=colour.get(b, GREY), symbol=symbol, size=8),
                 name=f"{name_prefix}C = {b:.0e}" if b else f"{name_prefix}grid runs",
                 text=[f"{r.name}<br>N {r.params(n_kind):,} · D {r.tokens:,} · C {r.flops:.2g}<br>"
                       f"val {r.val_loss:.4f}" for r in rs], hoverinfo="text")
            for b, rs in scaling.runs_by_budget(recs)]


def law_curve(law, x_range, name: str, window) -> list[dict]:
    """The fitted law and its bootstrap band (clipped to the runs' loss window by core.scaling)."""
    if law is None:
        return []
    xs = np.geomspace(*x_range, 80)
    lo, hi = law.band(xs, within=window)
    return [dict(type="scatter", x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself",
                 fillcolor="rgba(37,99,235,0.12)", line=dict(width=0), hoverinfo="skip",
                 name=f"{int(law.level * 100)} % band"),
            dict(type="scatter", x=xs, y=law.predict(xs), mode="lines", line=dict(color="#111827", dash="dash"),
                 name=name)]


def describe_power(law) -> str:
    if law is None:
        return "not fitted"
    ci = law.intervals.get("alpha")
    ci_text = f" ({int(law.level * 100)} % interval {ci[0]:.3f} to {ci[1]:.3f})" if ci else ""
    loose = (" These runs do not pin it down (the interval is that wide): on the envelope the other variable "
             "limits the loss (here the large models saw few tokens), so read the L(N, D) fit instead."
             ) if law.loose else ""
    return f"`{law.describe()}`: exponent **{law.alpha:.3f}**{ci_text}.{loose}"


def loss_charts(report) -> None:
    """Loss against N, D and C: the runs, and the laws when there is a report."""
    cols = st.columns(3)
    laws = (report.law_n, report.law_d, report.law_c) if report else (None, None, None)
    specs = [("N", lambda r: r.params(n_kind), "parameters N"), ("D", lambda r: r.tokens, "tokens D"),
             ("C", lambda r: r.flops, "training FLOPs C")]
    window = scaling.loss_window(records)
    for col, (key, x_of, title), law in zip(cols, specs, laws):
        traces = run_points(records, x_of)
        for n, recs in extra.items():
            traces += run_points(recs, x_of, name_prefix=f"{n}: ", symbol="diamond-open")
        xs = [x_of(r) for r in records]
        traces += law_curve(law, (min(xs) / 1.5, max(xs) * 1.5), f"fit L({key})", window)
        if key == "C":      # predictions made on this sweep, and what their runs measured
            traces += verify_section.compute_traces(by_label[label].path)
        col.plotly_chart(figure(traces, **log_layout(title, y_range=window)), width="stretch", key=f"loss_vs_{key}")
        if report:
            col.caption(describe_power(law))


def runs_table() -> None:
    st.dataframe([{"run": r.name, "layers": r.shape.get("n_layer"), "width": r.shape.get("n_embd"),
                   "N": r.n_params, "N non-emb": r.n_non_embedding, "D": r.tokens, "C": f"{r.flops:.3g}",
                   "FLOPs/token": f"{r.flops_per_token:,.0f}", "train loss": round(r.train_loss, 4),
                   "val loss": round(r.val_loss, 4), "bits/byte": round(r.val_bits_per_byte, 4),
                   "wall s": round(r.wall_s, 1)} for r in records], hide_index=True)
    st.caption("Reproduce or extend: `python -m core.sweep --help`. A sweep that is stopped and started again "
               "skips its finished runs and resumes the one in progress.")


if report is None:
    # stale or absent fits: the runs now, the fits when they are stored
    fits_notice(stored)
    loss_charts(None)
    runs_table()
    st.stop()


def fitted(fit, name: str) -> bool:
    """True when the fit exists; otherwise show why it could not be made."""
    if fit is None:
        st.info(report.problems.get(name, f"no {name} fit on these runs"))
    return fit is not None


def law_row(fit: str, law, source: str) -> dict:
    """One L(N, D) fit as a table row, each value with its bootstrap interval where there is one."""
    ci = law.intervals

    def with_ci(name, v):
        return f"{v:.3g}" + (f" [{ci[name][0]:.3g}, {ci[name][1]:.3g}]" if name in ci else "")
    return {"fit": fit, "E": with_ci("E", law.E), "A": with_ci("A", law.A), "B": with_ci("B", law.B),
            "α": with_ci("alpha", law.alpha), "β": with_ci("beta", law.beta), "a = β/(α+β)": with_ci("a", law.a),
            "source": source}


FIT_NAMES = {"huber-lbfgs": "L-BFGS (Huber on log loss)", "vpnls": "VPNLS (least squares on loss)"}

tab_n, tab_iso, tab_front, tab_ratio, tab_budget, tab_held, tab_pub, tab_runs = st.tabs(
    ["Loss vs N, D, C", "IsoFLOP", "Frontier", "Tokens per parameter", "Budget predictor", "Held-out check",
     "Published laws", "Runs"])

with tab_n:
    st.markdown("Each point is one finished run. Kaplan et al. (2020) fit each variable on the *envelope*: "
                "the best loss at each N (data not limiting), at each D, and along the compute frontier. "
                "Dashed: the fitted law L(x) = E + A / x^α with its bootstrap band.")
    loss_charts(report)

with tab_iso:
    iso = report.isoflop
    if fitted(iso, "IsoFLOP"):
        st.markdown("Hoffmann et al. (2022), approach 2: at a fixed compute budget a bigger model sees fewer "
                    "tokens. Loss against log N is a valley; a parabola through each budget's runs finds its "
                    "minimum N_opt (stars). Then N_opt ∝ C^a and D_opt ∝ C^b across budgets.")
        left, right = st.columns(2)
        valleys = []
        for p in iso.profiles:
            col = colour.get(p.budget, GREY)
            xs = np.geomspace(min(p.n) / 1.3, max(p.n) * 1.3, 60)
            valleys += [dict(type="scatter", x=p.n, y=p.loss, mode="markers", marker=dict(color=col, size=8),
                             name=f"C = {p.budget:.0e}"),
                        dict(type="scatter", x=xs, y=p.curve(xs), mode="lines", line=dict(color=col, width=1),
                             showlegend=False, hoverinfo="skip"),
                        dict(type="scatter", x=[p.n_opt], y=[p.loss_opt], mode="markers", showlegend=False,
                             marker=dict(symbol="star" if p.inside else "star-open", size=15, color=col),
                             text=f"N_opt {p.n_opt:,.0f}, D_opt {p.d_opt:,.0f}", hoverinfo="text")]
        good = iso.minima
        cs = np.geomspace(min(p.budget for p in iso.profiles) / 2, max(p.budget for p in iso.profiles) * 2, 40)
        exponents = [
            dict(type="scatter", x=[p.budget for p in good], y=[p.n_opt for p in good], mode="markers",
                 marker=dict(size=10, symbol="star"), name="N_opt (parabola minima)"),
            dict(type="scatter", x=cs, y=iso.n_opt(cs), mode="lines", name=f"N_opt ∝ C^{iso.a:.2f}"),
            dict(type="scatter", x=[p.budget for p in good], y=[p.d_opt for p in good], mode="markers",
                 marker=dict(size=10, symbol="diamond"), name="D_opt"),
            dict(type="scatter", x=cs, y=iso.d_opt(cs), mode="lines", name=f"D_opt ∝ C^{iso.b:.2f}")]
        left.plotly_chart(figure(valleys, **log_layout("parameters N", height=420)), width="stretch",
                          key="isoflop_valleys")
        right.plotly_chart(figure(exponents, **log_layout("training FLOPs C", "N_opt, D_opt", height=420)),
                           width="stretch", key="isoflop_exponents")
        ci = iso.intervals
        st.markdown(f"**a = {iso.a:.2f}**" + (f" ({int(iso.level * 100)} % interval {ci['a'][0]:.2f} to "
                                                f"{ci['a'][1]:.2f})" if "a" in ci else "") +
                    f", **b = {iso.b:.2f}**" + (f" ({ci['b'][0]:.2f} to {ci['b'][1]:.2f})" if "b" in ci else "") +
                    ". Chinchilla found a ≈ b ≈ 0.5 (parameters and tokens grow together); Kaplan found "
                    "N_opt ∝ C^0.73.")
        for note in iso.notes:
            st.caption(note)
        for budget, why in scaling.parabola_warnings(report).items():
            if why:
                st.warning(f"C = {budget:.0e}: {why}.", icon="⚠️")
        st.markdown("The same allocation without parabolas: the whole surface L(N, D) fitted at once, by L-BFGS "
                    "(Hoffmann's approach 3) and by variable projection (VPNLS: a grid over α and β, E, A, B by "
                    "non-negative least squares at each point). Where the parabolas are warned about, trust these.")
        rows = [law_row(FIT_NAMES.get(law.method, law.method), law, f"{len(records)} runs, "
                        f"{int(law.level * 100)} % bootstrap intervals")
                for law in (report.chinchilla, report.vpnls) if law is not None]
        a_ci = f" [{ci['a'][0]:.3g}, {ci['a'][1]:.3g}]" if "a" in ci else ""
        rows.append({**dict.fromkeys(("E", "A", "B", "α", "β"), "—"), "fit": "IsoFLOP parabolas",
                     "a = β/(α+β)": f"{iso.a:.3g}{a_ci}", "source": f"{len(iso.minima)} budgets"})
        st.dataframe(rows, hide_index=True)

with tab_front:
    law = report.chinchilla
    if fitted(law, "L(N, D)"):
        st.markdown(f"The parametric fit (Hoffmann et al. 2022, approach 3): `{law.describe()}`. "
                    "Runs in the (N, D) plane coloured by loss; the compute-optimal frontier is where each "
                    "budget's lowest loss sits; the dotted line is Chinchilla's 20 tokens per parameter.")
        cs = np.geomspace(min(r.flops for r in records) / 3, max(r.flops for r in records) * 30, 40)
        exact = report.frontier(cs, exact=True)
        simple = report.frontier(cs, exact=False)
        ns = np.geomspace(min(r.params(n_kind) for r in records) / 2, max(r.params(n_kind) for r in records) * 2, 20)
        traces = [
            dict(type="scatter", x=[r.params(n_kind) for r in records], y=[r.tokens for r in records],
                 mode="markers", marker=dict(color=[r.val_loss for r in records], colorscale="Viridis_r", size=10,
                                             showscale=True, colorbar=dict(title=dict(text="loss"))),
                 text=[f"{r.name}: val {r.val_loss:.3f}" for r in records], hoverinfo="text", name="runs"),
            dict(type="scatter", x=[a.n for a in exact], y=[a.d for a in exact], mode="lines",
                 name="optimum (exact FLOPs/token)", line=dict(color="#dc2626")),
            dict(type="scatter", x=[a.n for a in simple], y=[a.d for a in simple], mode="lines",
                 name="optimum (C = 6ND)", line=dict(color="#dc2626", dash="dash"))]
        if report.isoflop:
            good = report.isoflop.minima
            traces.append(dict(type="scatter", x=[p.n_opt for p in good], y=[p.d_opt for p in good], mode="markers",
                               marker=dict(symbol="star", size=14, color="#111827"), name="IsoFLOP minima"))
        traces.append(dict(type="scatter", x=ns, y=scaling.TOKENS_PER_PARAMETER * ns, mode="lines",
                           line=dict(color=GREY, dash="dot"), name="D = 20 N (Chinchilla)"))
        st.plotly_chart(figure(traces, **log_layout("parameters N", "tokens D", height=460)), width="stretch",
                        key="frontier")
        ratios = [a.tokens_per_parameter for a in exact]
        st.caption(f"On these runs the optimum trains on {min(ratios):.0f} to {max(ratios):.0f} tokens per "
                   f"parameter across the budgets shown. Small character models spend a large share of their "
                   f"FLOPs on attention and the output head, which the exact count includes and 6ND does not.")

with tab_ratio:
    st.markdown("Chinchilla's *about 20 tokens per parameter* is one fit's answer under one way of counting N. "
                "What counts as N moves the ratio (it divides D by N, and embeddings are a large share of a small "
                "model's parameters), and Hoffmann's own approach-3 constants give a ratio that grows with the "
                "budget, the inconsistency with their approaches 1 and 2 that Besiroglu et al. (2024) corrected.")
    table = []
    for row in scaling.tokens_per_parameter(stored.reports):
        each = (" · ".join(f"{r:.0f}" for _, r in row.ratios) +
                f" at {row.ratios[0][0]:.0e} … {row.ratios[-1][0]:.0e}") if row.ratios else "as reported"
        table.append({"source": row.source, "N counted as": row.n_kind,
                      "tokens per parameter": f"{row.low:.3g}" + (f" to {row.high:.3g}" if row.high != row.low else ""),
                      "at each budget C (FLOPs)": each, "reference": row.citation})
    st.dataframe(table, hide_index=True)
    st.caption("This sweep's rows use its exact FLOPs per token; the published fits' rows use C = 6ND, as they "
               "were fitted. nanochat's figures are one IsoFLOP sweep's parabola minima, as reported.")

with tab_budget:
    law = report.chinchilla
    if fitted(law, "L(N, D)"):
        st.markdown("Given a compute budget, the fitted law picks the model size and token count with the "
                    "lowest predicted loss.")
        lo_c = math.log10(min(r.flops for r in records))
        log_c = st.slider("Budget: log10 of training FLOPs", round(lo_c - 1, 1), round(lo_c + 6, 1),
                          float(round(math.log10(max(r.flops for r in records)) + 1, 1)), step=0.1, key="budget")
        rule = st.radio("FLOPs per token", ["exact", "6N"], horizontal=True, key="rule",
                        format_func=lambda r: {"exact": "exact (this sweep's shapes)", "6N": "C = 6ND"}[r])
        compute = 10 ** log_c
        fpt = report.flops_per_token if rule == "exact" else None
        a = scaling.allocate(law, compute, fpt)
        m = st.columns(4)
        m[0].metric("parameters N", f"{a.n:,.0f}")
        m[1].metric("tokens D", f"{a.d:,.0f}")
        m[2].metric("predicted val loss", f"{a.loss:.3f}")
        m[3].metric("tokens per parameter", f"{a.tokens_per_parameter:.1f}", help="Chinchilla: about 20")
        interval = budget_interval(by_label[label].path, stored.digest, n_kind, round(log_c, 3), rule == "exact")
        if interval:
            seconds = totals.seconds_for(compute)
            speed = (f"; this machine trained this sweep at about {totals.flops_per_second / 1e9:.0f} GFLOP/s, so "
                     f"about {seconds / 60:.1f} minutes") if seconds is not None else ""
            st.caption(f"Predicted loss {int(law.level * 100)} % bootstrap interval: {interval[0]:.3f} to "
                       f"{interval[1]:.3f}. {compute:.2g} FLOPs is {compute / scaling.PF_DAY:.2g} petaflop/s-days"
                       f"{speed}.")
        ref = scaling.allocate(scaling.PUBLISHED["hoffmann2022"].law, compute)
        st.caption(f"Hoffmann et al.'s own fit at this budget: N {ref.n:,.0f}, D {ref.d:,.0f} "
                   f"({ref.tokens_per_parameter:.0f} tokens per parameter).")

with tab_held:
    h = report.held_out
    if fitted(h, "held-out"):
        st.markdown(f"Fit L(N, D) on the {len(h.fitted_on)} cheaper runs only (C < {h.threshold:.2g}), then "
                    f"predict the {len(h.held_out)} most expensive ones before looking. Mean absolute error "
                    f"**{h.mean_abs_error:.3f} nats** ({100 * h.mean_rel_error:.1f} % of the loss).")
        st.dataframe([{"run": n, "N": int(N), "D": int(D), "C": f"{C:.2g}", "predicted": round(p, 4),
                       "measured": round(m, 4), "error %": round(100 * e, 2)}
                      for (n, N, D, C, p, m), e in zip(h.held_out, h.errors)], hide_index=True)
        meas = [m for *_, m in h.held_out]
        span = [min(meas) * 0.97, max(meas) * 1.03]
        st.plotly_chart(figure(
            [dict(type="scatter", x=meas, y=[p for *_, p, _ in h.held_out], mode="markers", marker=dict(size=10),
                  text=[row[0] for row in h.held_out], name="held-out runs"),
             dict(type="scatter", x=span, y=span, mode="lines", line=dict(dash="dot", color=GREY),
                  name="perfect prediction")],
            height=340, margin=dict(t=20, b=10), xaxis=dict(title=dict(text="measured val loss")),
            yaxis=dict(title=dict(text="predicted val loss"))), width="stretch", key="held_out")

with tab_pub:
    st.markdown("The published fits, with their constants and sources. Their losses are nats per token of "
                "their own tokenizers on their own data, so the absolute values do not carry over to a "
                "character model of a million parameters; the exponents and the allocation do.")
    rows = [law_row(f"this sweep ({label}), {FIT_NAMES.get(law.method, law.method)}", law,
                    f"{len(records)} runs, bootstrap intervals")
            for law in (report.chinchilla, report.vpnls) if law is not None]
    for pub in scaling.PUBLISHED.values():
        if pub.law:
            p = pub.law
            rows.append({"fit": pub.key, "E": f"{p.E}", "A": f"{p.A}", "B": f"{p.B}", "α": f"{p.alpha}",
                         "β": f"{p.beta}", "a = β/(α+β)": f"{p.a:.3f}", "source": pub.citation})
    st.dataframe(rows, hide_index=True)
    kap = scaling.PUBLISHED["kaplan2020"]
    st.markdown(f"**{kap.citation}**: α_N = {kap.kaplan['N'].alpha}, α_D = {kap.kaplan['D'].alpha}, "
                f"α_C = {kap.kaplan['C'].alpha} ({kap.note}) · this sweep: α_N = "
                f"{report.law_n.alpha if report.law_n else float('nan'):.3f}, α_D = "
                f"{report.law_d.alpha if report.law_d else float('nan'):.3f}, α_C = "
                f"{report.law_c.alpha if report.law_c else float('nan'):.3f} (with an irreducible term E, which "
                f"Kaplan's forms leave out).")
    for pub in scaling.PUBLISHED.values():
        st.caption(f"{pub.key}: {pub.note}")

with tab_runs:
    runs_table()


# -- Predict, then verify: a run past the sweep, predicted, stored, trained, compared (playground.verify_section)
st.divider()
st.header("Predict, then verify")
verify_section.section(by_label[label].path, stored)
