"""Plumbing every page shares: the model picker, open models, limits, URL state, token rendering.

Open models live in a process-wide cache (functools.lru_cache), not st.cache_resource: any anonymous
client can ask Streamlit to clear its caches for everyone, and a shared demo should not reopen its
onnxruntime sessions because one visitor pressed a key. A `Model` keeps no per-user state, so one per
process serves every session; per-user traces live in st.session_state.
"""

from __future__ import annotations

import functools
import html
import os
import threading
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core import catalog
from core.generate import Limits
from core.runtime import Model, ModelError

DEFAULT_MODEL = "shakespeare-char"
HOSTED = os.environ.get("LLM_PLAYGROUND_HOSTED", "") == "1"


def limits() -> Limits:
    return Limits.hosted() if HOSTED else Limits()


def job_limits():
    from core.jobs import JobLimits
    return JobLimits.hosted() if HOSTED else JobLimits()


@functools.lru_cache(maxsize=1)
def _board():
    from core.jobs import JobBoard
    return JobBoard()


def job_board():
    """The server's training jobs, shared by every session (one board per process)."""
    board = _board()
    board.limits = job_limits()
    return board


@functools.lru_cache(maxsize=8)
def open_model(path: str) -> Model:
    return Model(path)


def model_names() -> list[str]:
    return [m.name for m in catalog.list_exported_models()]


def model_by_name(name: str) -> Model:
    return open_model(str(catalog.EXPORTED_DIR / name))


def pick_model(checkpoints: bool = False) -> Model | None:
    """The sidebar's model picker (shared through the URL's `model`); None, with a message, if none opens.

    checkpoints: offer the model's earlier checkpoints too (a scrubber: the same prompt as the model
    learns)."""
    names = model_names()
    if not names:
        st.sidebar.warning("No exported model in `exported/`. Train and export one (see Home).")
        return None
    wanted = st.query_params.get("model", DEFAULT_MODEL)
    index = names.index(wanted) if wanted in names else (names.index(DEFAULT_MODEL) if DEFAULT_MODEL in names else 0)
    name = st.sidebar.selectbox("Model", names, index=index, key="model",
                                help="Exported models in `exported/`; each page uses the one chosen here.")
    st.query_params["model"] = name
    try:
        model = model_by_name(name)
    except ModelError as e:
        st.sidebar.error(f"{name} cannot be opened: {e}")
        return None
    steps = catalog.model_checkpoints(model.directory) if checkpoints else []
    if steps:
        final = model.card["training"]["step"]
        options = [s for s, _ in steps] + [final]
        chosen = st.sidebar.select_slider("Checkpoint (training step)", options, value=final,
                                          key=f"checkpoint_{model.name}",
                                          help="Earlier checkpoints of this run: see the same prompt as the "
                                               "model learns.")
        if chosen != final:
            model = open_model(str(dict(steps)[chosen]))
    card = model.card
    st.sidebar.caption(f"{card['parameters']['total']:,} parameters · {model.tokenizer.name} tokenizer · "
                       f"context {model.block_size} · val {card.get('val_loss') or float('nan'):.3f} nats/token")
    return model


def open_page(title: str | None, caption: str | None = None, checkpoints: bool = False) -> tuple[Model, Limits]:
    """A model page's opening: the model picker (stopping the page with its message if no model opens),
    the limits in force, the title and a one-line caption."""
    model = pick_model(checkpoints)
    if model is None:
        st.stop()
    if title:
        st.title(title)
    if caption:
        st.caption(caption)
    return model, limits()


def url_value(key: str, default, cast=str):
    """A value from the URL's query string (for shared links), or the default if absent or malformed."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError):
        return default


def visible(text: str) -> str:
    """Spaces and line breaks made visible, as token viewers show them."""
    return html.escape(text).replace(" ", "·").replace("\n", "↵").replace("\t", "→")


PALETTE = ["#fde68a", "#bbf7d0", "#bfdbfe", "#fbcfe8", "#ddd6fe", "#fed7aa", "#a5f3fc", "#d9f99d"]


def tokens_html(pieces: list[tuple[str, str, str | None]]) -> str:
    """Inline token chips: (text, hover title, background colour or None for the palette's cycle)."""
    chips = []
    for i, (text, title, colour) in enumerate(pieces):
        bg = colour or PALETTE[i % len(PALETTE)]
        chips.append(f'<span title="{html.escape(title)}" style="background:{bg};border-radius:3px;'
                     f'padding:1px 2px;margin:1px;display:inline-block;font-family:monospace;'
                     f'white-space:pre">{visible(text)}</span>')
    return '<div style="line-height:2.0">' + "".join(chips) + "</div>"


def figure(traces: list[dict], **layout) -> go.Figure:
    """A plotly figure from plain trace and layout dicts, without plotly's per-property validation
    (st.plotly_chart validates once more anyway): 3-5x cheaper to build, which a page that redraws its
    charts on every click of every visitor feels. Traces are dicts with a "type" ("bar", "heatmap"...)."""
    return go.Figure(data=traces, layout=layout, _validate=False)


def prob_colour(p: float) -> str:
    """Red (unlikely) to green (likely) for a probability in [0, 1]."""
    p = min(1.0, max(0.0, p))
    return f"hsl({int(120 * p)}, 75%, 80%)"


# -- scaling fits: a few seconds of bootstrap per sweep, so computed once per process and warmed at start

_fit_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _scaling_report(path: str, stamp: float, n_kind: str, n_bootstrap: int):
    from core import scaling
    try:
        records = scaling.load_records(path)
        if not records:
            return None, "this sweep has no finished run yet"
        return scaling.analyse(records, n_kind, n_bootstrap=n_bootstrap), None
    except scaling.ScalingError as e:
        return None, str(e)


def scaling_report(path, n_kind: str = "total", n_bootstrap: int = 200):
    """(ScalingReport, None) or (None, message) for a sweep (a records file or a sweep directory); refitted
    when a running sweep adds records. One fit at a time: a page waits for the warm-up's result."""
    p = Path(path)
    files = list(p.glob("records/*.json")) if p.is_dir() else [p]
    stamp = max((f.stat().st_mtime for f in files if f.exists()), default=0.0)
    with _fit_lock:
        return _scaling_report(str(p), stamp, n_kind, n_bootstrap)


_warmed = threading.Event()


def warm_caches() -> None:
    """Fit the committed sweeps in the background once per process, so the Scaling and Learn pages open
    on ready results."""
    if _warmed.is_set():
        return
    _warmed.set()

    def work():
        for sweep in catalog.list_sweeps():
            if sweep.committed:
                scaling_report(sweep.path)
    threading.Thread(target=work, name="warm-scaling-fits", daemon=True).start()
