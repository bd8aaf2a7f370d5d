"""Figures of a run's progress measures (core.train's `Measures` records), shared by the Train and Emergence
pages: the measure curves with a jump marker, each head's scores as a layer x head grid, and a modular
task's Fourier spectrum. Draws only: the records and the jump come from core."""

from __future__ import annotations

import math

import streamlit as st

from core.measures import SCORES
from playground.shared import figure

SCORE_TITLES = {"previous_token": "previous-token", "induction": "induction", "duplicate": "duplicate-token"}


def _finite(values) -> list:
    return [v if v is not None and math.isfinite(v) else None for v in values]


def measure_curve(runs: dict[str, list[dict]], measure: str, title: str, marker: int | None = None,
                  key: str = "", height: int = 260) -> None:
    """One measure of several runs ({label: Measures records}) against the step; a dashed line at `marker`."""
    traces = [dict(type="scatter", x=[r["step"] for r in recs], y=_finite(r.get(measure) for r in recs),
                   name=label, mode="lines+markers") for label, recs in runs.items() if recs]
    if not traces:
        return
    layout = dict(height=height, margin=dict(t=30, b=20), title=dict(text=title),
                  xaxis=dict(title=dict(text="step")))
    if marker is not None:
        layout["shapes"] = [dict(type="line", x0=marker, x1=marker, yref="paper", y0=0, y1=1,
                                 line=dict(dash="dash", color="#d62728"))]
        layout["annotations"] = [dict(x=marker, yref="paper", y=1, text=f"jump at {marker:,}", showarrow=False,
                                      yanchor="bottom", font=dict(color="#d62728"))]
    st.plotly_chart(figure(traces, **layout), width="stretch",
                    key=f"measure_{key}_{measure}_{sum(len(r) for r in runs.values())}")


def head_scores(record: dict, key: str = "") -> None:
    """The latest head scores, one layer x head grid per score (0..1: 1 is a head that does only that)."""
    cols = st.columns(len(SCORES))
    for col, name in zip(cols, SCORES):
        grid = record["head_scores"][name]
        fig = figure([dict(type="heatmap", z=grid, zmin=0, zmax=1, colorscale="Viridis",
                           x=[f"head {h}" for h in range(len(grid[0]))], y=[f"layer {i}" for i in range(len(grid))],
                           text=[[f"{v:.2f}" for v in row] for row in grid], texttemplate="%{text}",
                           showscale=False)],
                     height=90 + 45 * len(grid), margin=dict(t=30, b=10, l=10, r=10),
                     title=dict(text=SCORE_TITLES[name]), yaxis=dict(autorange="reversed"))
        col.plotly_chart(fig, width="stretch", key=f"scores_{key}_{name}_{record['step']}")


def fourier(record: dict, key: str = "") -> None:
    """A modular task's embedding: its norm at each frequency over the residues."""
    if not record.get("fourier"):
        return
    norms = record["fourier"]
    fig = figure([dict(type="bar", x=list(range(len(norms))), y=norms, name="norm")], height=240,
                 margin=dict(t=30, b=20), title=dict(text=f"embedding's Fourier spectrum at step {record['step']:,}"),
                 xaxis=dict(title=dict(text="frequency k")), yaxis=dict(title=dict(text="norm")))
    st.plotly_chart(fig, width="stretch", key=f"fourier_{key}_{record['step']}")
