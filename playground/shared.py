"""Plumbing every page shares: the model picker, open models, limits, URL state, token rendering.

Open models live in a process-wide cache (functools.lru_cache), not st.cache_resource: any anonymous
client can ask Streamlit to clear its caches for everyone, and a shared demo should not reopen its
onnxruntime sessions because one visitor pressed a key. A `Model` keeps no per-user state, so one per
process serves every session; per-user traces live in st.session_state.
"""

from __future__ import annotations

import base64
import colorsys
import functools
import html
import io
import math
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL.Image
import plotly.graph_objects as go
import streamlit as st

from core import catalog, scaling
from core.generate import Alternative
from core.limits import Limits, allowed_models, hosted
from core.quantize import is_approximate
from core.runtime import Model, ModelError
from core.sampling import KNOBS

DEFAULT_MODEL = "shakespeare-char"
HOSTED = hosted()
OWNER_COOKIE = "llmpg_owner"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


def limits() -> Limits:
    """The ceilings in force for this server (a hosted demo's are lower)."""
    return Limits.hosted() if HOSTED else Limits()


_board_lock = threading.Lock()      # two first visitors at once must not build two boards (two supervisors)


@functools.lru_cache(maxsize=1)
def _board():
    import importlib
    importlib.import_module("core.verify")      # registers its job kind: the board adopts verification runs too
    from core.jobs import JobBoard
    return JobBoard(limits=limits())


def job_board():
    """The server's training jobs, shared by every session (one board per process)."""
    with _board_lock:
        board = _board()
        board.limits = limits()     # HOSTED is the page's switch (tests flip it); Limits are immutable values
    return board


def keep_jobs_alive() -> None:
    """While a visitor with a running job is on any page, tell the board every few seconds: a hosted server
    stops a job whose visitor has gone (its heartbeat), not one whose visitor is reading another page."""
    token = st.session_state.get("owner") or _cookie_token()
    if token and job_board().has_running(token):
        _heartbeat(token)


@st.fragment(run_every=15.0)
def _heartbeat(token: str) -> None:
    job_board().heartbeat(token)


def _cookie_token() -> str | None:
    cookie = st.context.cookies.get(OWNER_COOKIE, "") if st.context.cookies else ""
    return cookie if _TOKEN_RE.match(cookie or "") else None


def visitor_token() -> str:
    """This visitor's secret: the training jobs they start belong to it. Kept in a cookie, so a reload
    (a new Streamlit session) or a second tab of the same browser is still the same visitor; another
    visitor never sees it (the board stores only its hash)."""
    token = st.session_state.get("owner")
    if token:
        return token
    cookie = _cookie_token()
    token = cookie or secrets.token_urlsafe(32)
    st.session_state["owner"] = token
    if token != cookie:
        st.html(f"<script>document.cookie = '{OWNER_COOKIE}={token}; path=/; max-age=31536000; "
                f"SameSite=Strict';</script>", unsafe_allow_javascript=True)
    return token


@functools.lru_cache(maxsize=8)
def open_model(path: str, variant: str = "fp32") -> Model:
    return Model(path, variant=variant)


def model_key(model: Model) -> str:
    """What a page's kept results were made by: the model's directory and the weights it runs."""
    return str(model.directory) if model.variant == "fp32" else f"{model.directory} ({model.variant})"


def variant_label(card: dict, variant: str) -> str:
    """A variant as the picker offers it: its speed, and for a quantized one how often it agrees with fp32."""
    v = card["variants"][variant]
    speed = f"{v['decode_ms_median']:.2f} ms/token"
    if "top1_agreement" not in v or variant == "fp32":
        return f"{variant} · {speed}"
    tag = " · approximate" if is_approximate(v) else ""
    return f"{variant} · {speed} · same next token as fp32 {v['top1_agreement']:.1%}{tag}"


def model_names(objective: str = "next-token") -> list[str]:
    """The exported models this server offers (all of them, or its deployment's list) with this objective: the
    pages that write, score or probe text left to right list next-token models only; a masked LM (objective
    "mlm", which fills blanks and cannot generate) is offered where its own view is (Learn: encoder vs decoder)."""
    allowed = allowed_models()
    return [m.name for m in catalog.list_exported_models()
            if (allowed is None or m.name in allowed) and m.objective == objective]


def default_model(names: Sequence[str]) -> str | None:
    """The model a page opens on: the committed default when this server offers it, else the first."""
    return DEFAULT_MODEL if DEFAULT_MODEL in names else (names[0] if names else None)


def link_params(key: str) -> dict[str, str]:
    """The URL parameters that open the model `model_key` names (its name, and its weights unless fp32)."""
    directory, _, variant = key.partition(" (")
    params = {"model": Path(directory).name}
    if variant:
        params["weights"] = variant.rstrip(")")
    return params


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
    with st.sidebar:
        wanted = url_choice("model", default_model(names), names)
    name = st.sidebar.selectbox("Model", names, index=names.index(wanted), key="model",
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
    quantized = [v for v in model.card.get("variants", {}) if v == "int8"]
    if not quantized:
        st.query_params.pop("weights", None)        # an earlier checkpoint, or a model with fp32 only
    else:
        options = ["fp32", *quantized]
        with st.sidebar:
            wanted = url_choice("weights", "fp32", options)
        variant = st.sidebar.radio("Weights", options, index=options.index(wanted), key=f"weights_{model.name}",
                                   format_func=lambda v: variant_label(model.card, v),
                                   help="int8: 8-bit weights, smaller and faster; 'same next token' is how often "
                                        "its most likely next token is fp32's, measured on export (the card "
                                        "says on what text). Attention maps always come from fp32.")
        if variant == "fp32":
            st.query_params.pop("weights", None)
        else:
            try:
                model = open_model(str(model.directory), variant)
                st.query_params["weights"] = variant
            except ModelError as e:         # its file damaged or gone: the page goes on with fp32
                st.sidebar.error(f"The {variant} weights cannot be opened ({e}); showing fp32.")
                st.query_params.pop("weights", None)
    card = model.card
    val = f" · val {card['val_loss']:.3f} nats/token" if card.get("val_loss") else ""
    origin = " · imported" if (card.get("source") or {}).get("kind") == "pretrained" else ""
    st.sidebar.caption(f"{card['parameters']['total']:,} parameters · {model.tokenizer.name} tokenizer · "
                       f"context {model.block_size}{val}{origin}")
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


# -- values read from a link: every one is checked, and a bad one is replaced with a note that says so.
# A shared address is input like any other (hostile or just stale): a value out of a widget's range would
# otherwise crash the page with Streamlit's own error.

def url_notice(key: str, raw: str, used) -> None:
    shown = raw if len(raw) <= 40 else raw[:40] + "…"
    st.warning(f"This link's `{key}` value {shown!r} cannot be used here; {used}.", icon="🔗")


def url_text(key: str, default: str, max_chars: int) -> str:
    """Text from the URL, cut to max_chars (with a note) when longer."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    if len(raw) > max_chars:
        url_notice(key, raw, f"it has {len(raw):,} characters and this server takes at most {max_chars:,}, so "
                             f"only the first {max_chars:,} are used")
        return raw[:max_chars]
    return raw


def url_int(key: str, default: int, low: int, high: int) -> int:
    """An integer from the URL, within [low, high]; a malformed one gives the default, an out-of-range one
    the nearest bound (with a note)."""
    return _url_number(key, default, low, high, int, "a whole number", "{:,}")


def url_float(key: str, default: float, low: float, high: float) -> float:
    """A finite number from the URL, within [low, high]; as `url_int`."""
    return _url_number(key, default, low, high, float, "a finite number", "{:g}")


def _url_number(key: str, default, low, high, parse, kind: str, fmt: str):
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        value = parse(raw.strip())
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        url_notice(key, raw, f"it is not {kind}, so {fmt.format(default)} is used")
        return default
    if not low <= value <= high:
        used = min(high, max(low, value))
        url_notice(key, raw, f"it must be between {fmt.format(low)} and {fmt.format(high)}, so {fmt.format(used)} "
                             f"is used")
        return used
    return value


def url_choice(key: str, default: str, options: Sequence[str]) -> str:
    """One of `options` from the URL, or the default (with a note) when the link names another."""
    raw = st.query_params.get(key)
    if raw is None or raw in options:
        return default if raw is None else raw
    url_notice(key, raw, f"it is not one of the choices here, so {default!r} is used")
    return default


def url_choices(key: str, default: Sequence[str], options: Sequence[str], max_items: int, sep: str = ",") -> list[str]:
    """Several of `options` from the URL (comma-separated): unknown ones and any past max_items are left
    out, with a note."""
    raw = st.query_params.get(key)
    if raw is None:
        return list(default)[:max_items]
    wanted = [w for w in raw.split(sep) if w]
    known = list(dict.fromkeys(w for w in wanted if w in options))
    if len(known) < len(wanted):
        url_notice(key, raw, "names that are not choices here are left out")
    if len(known) > max_items:
        url_notice(key, raw, f"this server takes at most {max_items} at once, so the first {max_items} are used")
        known = known[:max_items]
    return known


def knob_slider(container, name: str, key: str, value=None, lo=None, hi=None):
    """A sampler knob's slider, with the range, step and explanation of `core.sampling.KNOBS` (one table for
    validation, the CLI and every page); `value` defaults to the knob's "off" value."""
    knob = KNOBS[name]
    low, high, step = knob.slider
    low, high = low if lo is None else lo, high if hi is None else hi
    value = knob.default if value is None else value
    return container.slider(knob.label, low, high, min(high, max(low, value)), step, help=knob.explain, key=key)


def visible_text(text: str) -> str:
    """Spaces and line breaks made visible, as token viewers show them: for plain-text places (a table's cells,
    a code span), where an HTML entity would be shown as it is written."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def visible(text: str) -> str:
    """`visible_text`, escaped for the places that read HTML (token chips, plotly's labels, markdown)."""
    return html.escape(visible_text(text))


PALETTE = ["#fde68a", "#bbf7d0", "#bfdbfe", "#fbcfe8", "#ddd6fe", "#fed7aa", "#a5f3fc", "#d9f99d"]


def _rgb(colour: str) -> tuple[float, float, float]:
    """A chip colour as sRGB in [0, 1]: '#rrggbb', 'rgb(r, g, b)' or 'hsl(h, s%, l%)', the forms the pages use.
    Chips are opaque on purpose: a translucent one would sit on the theme's background, and its text
    colour could not be chosen here."""
    c = colour.strip().lower()
    if c.startswith("#") and len(c) == 7:
        return tuple(int(c[i:i + 2], 16) / 255 for i in (1, 3, 5))
    nums = [float(v) for v in re.findall(r"[\d.]+", c)]
    if c.startswith("rgb(") and len(nums) == 3:
        return tuple(v / 255 for v in nums)
    if c.startswith("hsl(") and len(nums) == 3:
        return colorsys.hls_to_rgb(nums[0] / 360, nums[2] / 100, nums[1] / 100)
    raise ValueError(f"chip colours are opaque '#rrggbb', 'rgb(...)' or 'hsl(...)'; got {colour!r}")


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on `background` (WCAG relative luminance L): a chip sets its
    own text colour, so it stays readable when the theme's text is light (dark mode). Contrast with black
    is (L + 0.05) / 0.05 and with white 1.05 / (L + 0.05); they meet at L = 0.179 with 4.58, so every
    background gets at least 4.5 (WCAG AA). A softer near-black would leave mid-tones below it."""
    lin = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in _rgb(background)]
    luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "#000000" if luminance > 0.179 else "#ffffff"


def tokens_html(pieces: list[tuple[str, str, str | None]]) -> str:
    """Inline token chips: (text, hover title, opaque background colour or None for the palette's cycle).
    Each chip sets its text colour from its background, so chips read the same in light and dark themes."""
    chips = []
    for i, (text, title, colour) in enumerate(pieces):
        bg = colour or PALETTE[i % len(PALETTE)]
        chips.append(f'<span title="{html.escape(title)}" style="background:{bg};color:{text_colour(bg)};'
                     f'border-radius:3px;padding:1px 2px;margin:1px;display:inline-block;font-family:monospace;'
                     f'white-space:pre">{visible(text)}</span>')
    return '<div style="line-height:2.0">' + "".join(chips) + "</div>"


LAYERS_PER_VIEW, HEADS_PER_VIEW = 4, 8      # Attention's grid larger than this (GPT-2: 12 x 12) is shown a block at a time
CONTEXT_BG = "#e5e7eb"      # the chip of text the model only reads: a prompt, the text before a token


def token_alternatives(container, before: str, chosen: Alternative, title: str,
                       alternatives: Sequence[Alternative], key: str) -> None:
    """One token after the end of the text before it, and the model's likeliest tokens there as a table of
    probabilities with the chosen one marked (added below them when it is not among them)."""
    tail = before if len(before) <= 80 else "…" + before[-80:]
    container.markdown(tokens_html([(tail, "the text before it", CONTEXT_BG),
                                    (chosen.text, title, prob_colour(chosen.prob))]), unsafe_allow_html=True)
    rows = [{"token": visible_text(a.text), "probability": a.prob,
             "": "← chosen" if a.token_id == chosen.token_id else ""} for a in alternatives]
    if all(a.token_id != chosen.token_id for a in alternatives):
        rows.append({"token": visible_text(chosen.text), "probability": chosen.prob, "": "← chosen"})
    container.dataframe(rows, hide_index=True, width="stretch", key=key, column_config={
        "probability": st.column_config.ProgressColumn("probability", format="%.3f", min_value=0.0, max_value=1.0)})


VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]


def heat_png(z: np.ndarray, low: float = 0.0, high: float = 1.0, min_pixels: int = 600) -> str:
    """A matrix as a PNG data URI on plotly's Viridis scale (NaN transparent), each cell a square block of
    pixels so it stays crisp when stretched: a plotly layout image of this draws in a few milliseconds where
    a heatmap trace of many cells takes hundreds, on every click."""
    stops = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in VIRIDIS], np.float64)
    t = np.clip((np.nan_to_num(z, nan=low) - low) / max(high - low, 1e-12), 0, 1) * (len(VIRIDIS) - 1)
    grid = np.arange(len(VIRIDIS))
    rgba = np.empty(z.shape + (4,), np.uint8)
    for c in range(3):
        rgba[..., c] = np.interp(t, grid, stops[:, c]).round()
    rgba[..., 3] = np.where(np.isnan(z), 0, 255)
    k = max(1, -(-min_pixels // max(z.shape)))
    rgba = rgba.repeat(k, axis=0).repeat(k, axis=1)
    buffer = io.BytesIO()
    PIL.Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=False, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def heat_svg(z: np.ndarray, labels: Sequence[str], title: str, cell: int = 16) -> str:
    """A square matrix as inline SVG: its cells as one image (`heat_png`), each row and column named by a
    label, and the colour scale from 0 to 1. For a map redrawn on every click: plotly spends ~300 ms laying
    out a heatmap with a tick label per token; this draws in a few."""
    n = len(labels)
    cell = max(4, min(cell, 720 // max(n, 1)))
    side, pad = n * cell, 7 * min(12, max(len(x) for x in labels) if labels else 1) + 12
    left, top = pad, pad + 24
    font = max(8, min(12, cell - 3))
    parts = [f'<text x="0" y="15" font-size="14" font-weight="600" fill="currentColor">{html.escape(title)}</text>',
             f'<image href="{heat_png(z)}" x="{left}" y="{top}" width="{side}" height="{side}" '
             f'preserveAspectRatio="none"/>']
    for i, label in enumerate(labels):
        text = html.escape(label if len(label) <= 12 else label[:11] + "…")
        c = i * cell + cell / 2
        parts.append(f'<text x="{left - 4}" y="{top + c + font / 3:.1f}" font-size="{font}" text-anchor="end" '
                     f'font-family="monospace" fill="currentColor">{text}</text>')
        parts.append(f'<text x="{left + c + font / 3:.1f}" y="{top - 4}" font-size="{font}" font-family="monospace" '
                     f'fill="currentColor" transform="rotate(-90 {left + c + font / 3:.1f} {top - 4})">{text}</text>')
    bar_x = left + side + 16
    ramp = heat_png(np.linspace(1, 0, 64)[:, None], min_pixels=64)
    parts += [f'<image href="{ramp}" x="{bar_x}" y="{top}" width="12" height="{side}" preserveAspectRatio="none"/>',
              f'<text x="{bar_x + 16}" y="{top + 9}" font-size="11" fill="currentColor">1</text>',
              f'<text x="{bar_x + 16}" y="{top + side}" font-size="11" fill="currentColor">0</text>']
    width, height = bar_x + 36, top + side + 4
    return (f'<svg viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px" role="img" '
            f'aria-label="{html.escape(title)}">{"".join(parts)}</svg>')


def line_svg(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, ylabel: str,
             marker_x: float | None = None, points: bool = False, width: int = 560, height: int = 190) -> str:
    """A small line chart as inline SVG, for a view redrawn on every click: the browser draws it in about a
    millisecond where a plotly chart takes ~100 ms on 2 cores. Axes and text take the theme's colour
    (currentColor), the line a mid blue that reads on light and dark; `marker_x` draws a dashed vertical line."""
    left, right, top, bottom = 46, 10, 26, 34
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(0.0, min(ys)), max(ys)) if ys else (0.0, 1.0)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    px = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)          # noqa: E731
    py = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    parts = [f'<text x="{left}" y="15" font-size="13" font-weight="600" fill="currentColor">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
             f'stroke="currentColor" stroke-opacity=".35"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="currentColor" stroke-opacity=".35"/>']
    for v, anchor in ((y0, height - bottom), (y1, top)):
        parts.append(f'<text x="{left - 5}" y="{anchor + 4:.0f}" font-size="11" text-anchor="end" fill="currentColor" '
                     f'fill-opacity=".7">{v:.3g}</text>')
    for v in (x0, x1):
        parts.append(f'<text x="{px(v):.0f}" y="{height - bottom + 14}" font-size="11" text-anchor="middle" '
                     f'fill="currentColor" fill-opacity=".7">{v:.3g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" font-size="11" text-anchor="middle" '
                 f'fill="currentColor" fill-opacity=".7">{html.escape(xlabel)}</text>')
    parts.append(f'<text x="12" y="{(top + height - bottom) / 2:.0f}" font-size="11" text-anchor="middle" '
                 f'fill="currentColor" fill-opacity=".7" transform="rotate(-90 12 {(top + height - bottom) / 2:.0f})">'
                 f'{html.escape(ylabel)}</text>')
    if marker_x is not None and x0 <= marker_x <= x1:
        parts.append(f'<line x1="{px(marker_x):.1f}" y1="{top}" x2="{px(marker_x):.1f}" y2="{height - bottom}" '
                     f'stroke="currentColor" stroke-dasharray="4 3" stroke-opacity=".6"/>')
    if line:
        parts.append(f'<polyline points="{line}" fill="none" stroke="#3b82f6" stroke-width="2"/>')
    if points:
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="#3b82f6"/>' for x, y in zip(xs, ys)]
    return (f'<svg viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px" role="img" '
            f'aria-label="{html.escape(title)}">{"".join(parts)}</svg>')


def figure(traces: list[dict], xtitle: str | None = None, ytitle: str | None = None, **layout) -> go.Figure:
    """A plotly figure from plain trace and layout dicts: the pages' one way to build a figure. It skips
    plotly's per-property validation (st.plotly_chart validates once more anyway): 3-5x cheaper to build,
    which a page that redraws its charts on every click of every visitor feels. Traces are dicts with a
    "type" ("bar", "heatmap"...); xtitle / ytitle name the axes."""
    for axis, title in (("xaxis", xtitle), ("yaxis", ytitle)):
        if title is not None:
            layout[axis] = {**layout.get(axis, {}), "title": {"text": title}}
    return go.Figure(data=traces, layout=layout, _validate=False)


def weight_colour(w: float) -> str:
    """An opaque blue for a weight in [0, 1] (attention): near-white at 0 to deep blue at 1, lightness
    falling steadily so equal steps look equal, and text colour chosen by `text_colour`."""
    w = min(1.0, max(0.0, w))
    return f"hsl(221, 83%, {int(96 - 66 * w)}%)"


def prob_colour(p: float) -> str:
    """Red (unlikely) to green (likely) for a probability in [0, 1]."""
    p = min(1.0, max(0.0, p))
    return f"hsl({int(120 * p)}, 75%, 80%)"


# -- scaling fits: made by `python -m core.scaling fit` once per set of records and stored beside them (a
# sweep does it when it finishes; the committed sweep's fits are committed), and only read here. When a
# sweep's stored fits are stale or absent, a page shows its runs at once and, locally, core.scaling fits
# them in a child process; nobody waits for a fit, and a hosted server never starts one.

FIT_POLL_S = 2.0        # how often a page waiting for a background fit looks for its file


@functools.lru_cache(maxsize=16)
def _read_fits(path: str, stamp: tuple) -> tuple[scaling.StoredFits | None, str | None]:
    try:
        return scaling.load_fits(path), None
    except scaling.ScalingError as e:
        return None, str(e)


def scaling_fits(path: str | Path) -> tuple[scaling.StoredFits | None, str | None]:
    """(StoredFits, None) for a sweep (a records file or a sweep directory), read again only when its
    records or its fits file change; (None, message) when its records cannot be read. Never fits."""
    p = Path(path)
    return _read_fits(str(p), scaling.fits_stamp(p))


@functools.lru_cache(maxsize=256)
def budget_interval(path: str | Path, digest: str, n_kind: str, log_compute: float,
                    exact: bool) -> tuple[float, float] | None:
    """The bootstrap interval of the loss predicted at a budget (100 allocations, each a small numerical
    minimisation): computed once per sweep's records, N convention, budget and FLOPs rule, not per rerun."""
    stored, _ = scaling_fits(path)
    report = stored.report(n_kind) if stored is not None and stored.digest == digest else None
    if report is None or report.chinchilla is None:
        return None
    fpt = report.flops_per_token if exact else None
    return report.chinchilla.loss_interval(10 ** log_compute, fpt)


def _fits_message(stored: scaling.StoredFits) -> tuple[str, bool]:
    """What to tell a reader whose sweep has no current fits, and whether it is an error; locally this
    starts the background fit unless one runs for these records."""
    if HOSTED:
        return (f"{stored.explain()} This server does not fit sweeps (hosted mode): the fits are made where the "
                f"sweep lives, with `{stored.command}`, and read from the file it stores."), False
    try:
        job = scaling.fit_in_background(stored)
    except OSError as e:
        return f"{stored.explain()} A background fit could not start ({e}); run `{stored.command}`.", True
    failure = job.failure()
    if failure:
        return (f"{stored.explain()} The background fit failed: {failure}. Run `{stored.command}` to see "
                f"why."), True
    return (f"{stored.explain()} Fitting in the background (started {time.time() - job.started:.0f} s ago); "
            f"the fits appear here when they are stored."), False


def fits_notice(stored: scaling.StoredFits) -> None:
    """Say why a sweep has no fits to show yet and what happens next; locally, watch for the background
    fit's file and redraw the page when it appears."""
    if HOSTED:
        st.info(_fits_message(stored)[0], icon="⏸️")
    else:
        _fit_watch(str(stored.sweep), stored.digest)


@st.fragment(run_every=FIT_POLL_S)
def _fit_watch(sweep: str, digest: str) -> None:
    stored, _ = scaling_fits(sweep)
    if stored is None or stored.current or stored.digest != digest:
        st.rerun()      # the fits arrived, or the records changed again: the whole page draws afresh
    message, error = _fits_message(stored)
    (st.error if error else st.info)(message, icon="⏳" if not error else None)


def scaling_report(path: str | Path, n_kind: str = "total") -> tuple[scaling.ScalingReport | None, str | None]:
    """(ScalingReport, None) from a sweep's stored fits when they are current; otherwise (None, what to tell
    the reader), and locally a background fit is started for them. Never fits here, never waits."""
    stored, problem = scaling_fits(path)
    if stored is None:
        return None, problem
    if not stored.records:
        return None, "this sweep has no finished run yet"
    if stored.current:
        return stored.report(n_kind), None
    return None, _fits_message(stored)[0]


def starting_text(model: Model, default: str) -> str:
    """A page's default text for `model`: `default`, or for a model trained on a synthetic task (whose
    vocabulary is that task's symbols) an example of its task."""
    from core.tasks import example_text
    return example_text(model.tokenizer) or default
