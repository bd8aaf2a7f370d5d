"""Attention: what every head of every layer looks at, on your text, as generation proceeds."""

import functools

import numpy as np
import streamlit as st
from plotly.subplots import make_subplots

from core.checks import PlaygroundError
from core.generate import GenerationConfig, complete
from core.sampling import SamplerConfig
from core.tokenizer import TokenizerError
from playground.shared import (figure, open_page, starting_text, tokens_html, url_int, url_text, visible,
                               weight_colour)

model, lim = open_page("Attention",
                       "Row i of a head's map: how much token i draws from each earlier token (rows sum to 1; the "
                       "upper triangle is masked: no token sees the future).", checkpoints=True)


LAYERS_PER_VIEW, HEADS_PER_VIEW = 4, 8      # a grid larger than this (GPT-2 has 12 x 12) is shown a block at a time


@functools.lru_cache(maxsize=32)
def grid_layout(layers: tuple[int, ...], heads: tuple[int, ...]) -> dict:
    """The layout of a layers x heads grid (axes, titles, one colour scale), built once per block."""
    n_layer, n_head = len(layers), len(heads)
    g = make_subplots(rows=n_layer, cols=n_head, horizontal_spacing=0.02, vertical_spacing=0.04,
                      subplot_titles=[f"L{l} H{h}" for l in layers for h in heads])
    g.update_xaxes(showticklabels=False)
    g.update_yaxes(showticklabels=False, autorange="reversed")
    g.update_layout(height=170 * n_layer + 60, coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1),
                    margin=dict(t=40, b=10, l=10, r=10), title="Layers (rows) and heads (columns)")
    layout = g.to_dict()["layout"]
    layout.pop("template", None)        # the default template: sent by st.plotly_chart's theme anyway
    return layout


if "attn_text" not in st.session_state:
    st.session_state["attn_text"] = url_text("text", starting_text(model, "KING:\nWhat news from the"),
                                             lim.max_prompt_chars)


def add_token() -> None:
    """Append the model's greedy next token: watch the newest token's attention as text grows."""
    text = st.session_state["attn_text"]
    try:
        c = complete(model, text, GenerationConfig(max_new_tokens=1, sampler=SamplerConfig(temperature=0),
                                                   top_n=0), lim)
        st.session_state["attn_text"] = text + c.text
    except PlaygroundError as e:
        st.session_state["attn_error"] = str(e)


text = st.text_area("Text", key="attn_text", max_chars=lim.max_prompt_chars)
st.query_params["text"] = text
st.button("Add the next token (greedy)", on_click=add_token)
if "attn_error" in st.session_state:
    st.warning(st.session_state.pop("attn_error"))
try:
    ids = model.tokenizer.encode_prompt(text)
except TokenizerError as e:        # a task model's symbols, or text it cannot read
    st.error(str(e))
    example = starting_text(model, "")
    if example:
        st.button("Use an example of its task", on_click=lambda: st.session_state.update(attn_text=example))
    st.stop()
if not ids:
    st.info("Type some text.")
    st.stop()
shown = min(model.block_size, lim.max_attention_tokens)
if len(ids) > shown:
    why = "the model's context" if shown == model.block_size else "what this page shows at once"
    st.info(f"The text has {len(ids)} tokens; {why} is {shown}, so the last {shown} are shown.")
    ids = ids[-shown:]
maps = model.attention(ids).probs                       # per layer (1, H, T, T)
L, H, T = len(maps), maps[0].shape[1], len(ids)
labels = [f"{i}:{visible(model.tokenizer.token_text(t))}" for i, t in enumerate(ids)]


def blocks(n: int, per: int) -> list[tuple[int, ...]]:
    return [tuple(range(i, min(n, i + per))) for i in range(0, n, per)]


def block_name(b: tuple[int, ...]) -> str:
    return f"{b[0]}-{b[-1]}" if len(b) > 1 else str(b[0])


layer_blocks, head_blocks = blocks(L, LAYERS_PER_VIEW), blocks(H, HEADS_PER_VIEW)
g1, g2 = st.columns(2)
lb = g1.selectbox(f"Layers in the grid (of {L})", range(len(layer_blocks)), format_func=lambda i: block_name(layer_blocks[i]),
                  index=url_int("layers", 0, 0, len(layer_blocks) - 1), key="attn_layers",
                  disabled=len(layer_blocks) == 1)
hb = g2.selectbox(f"Heads in the grid (of {H})", range(len(head_blocks)), format_func=lambda i: block_name(head_blocks[i]),
                  index=url_int("heads", 0, 0, len(head_blocks) - 1), key="attn_heads",
                  disabled=len(head_blocks) == 1)
st.query_params["layers"], st.query_params["heads"] = str(lb), str(hb)
layers, heads = layer_blocks[lb], head_blocks[hb]
cells = [(l, h) for l in layers for h in heads]
# Streamlit reports no clicks on heatmaps (streamlit#8760), so each map carries a lattice of invisible
# markers: a click anywhere on a map lands near one, and the marker's trace says which head it was
lattice = np.linspace(0, T - 1, 6)
lx, ly = np.meshgrid(lattice, lattice)
hidden = dict(marker=dict(opacity=0))
grid = figure([dict(type="heatmap", z=maps[l][0, h], coloraxis="coloraxis", xaxis=f"x{i + 1}", yaxis=f"y{i + 1}")
               for i, (l, h) in enumerate(cells)]
              + [dict(type="scatter", x=lx.ravel(), y=ly.ravel(), mode="markers", xaxis=f"x{i + 1}", yaxis=f"y{i + 1}",
                      marker=dict(size=30, opacity=0), selected=hidden, unselected=hidden, hoverinfo="none",
                      showlegend=False) for i in range(len(cells))], **grid_layout(layers, heads))
picked = st.plotly_chart(grid, width="stretch", key="attn_grid", on_select="rerun", selection_mode="points")
points = picked.get("selection", {}).get("points", []) if picked else []
if points:
    # a click on a map opens that head below; applied once per click, so the selectboxes stay usable after it
    clicked = cells[int(points[0].get("curve_number", len(cells))) % len(cells)]
    if st.session_state.get("attn_clicked") != clicked:
        st.session_state["attn_clicked"] = clicked
        st.session_state["attn_layer"], st.session_state["attn_head"] = clicked
else:
    st.session_state.pop("attn_clicked", None)
st.caption("Click a head's map to open it below.")

c1, c2 = st.columns(2)
# the choices live in session state (a click on the grid sets them too); a link's or another model's
# out-of-range value starts over at the link's or 0
for key, n in (("layer", L), ("head", H)):
    if st.session_state.get(f"attn_{key}") not in range(n):
        st.session_state[f"attn_{key}"] = url_int(key, 0, 0, n - 1)
layer = c1.selectbox("Layer", list(range(L)), key="attn_layer")
head = c2.selectbox("Head", list(range(H)), key="attn_head")
st.query_params["layer"], st.query_params["head"] = str(layer), str(head)
big = figure([dict(type="heatmap", z=maps[layer][0, head], x=labels, y=labels, colorscale="Viridis", zmin=0, zmax=1)],
             yaxis=dict(autorange="reversed"), height=max(400, 14 * T + 150), margin=dict(t=40, b=10),
             title=dict(text=f"Layer {layer}, head {head}"))
st.plotly_chart(big, width="stretch", key="attn_big")

st.subheader("The newest token's attention")
pos = st.slider("Token", 0, T - 1, T - 1, key="attn_pos",
                help="Which token's row to show; the last one is what the model attends from to predict next.")
st.caption(f"From token {labels[pos]}: each head of layer {layer}, darker blue = more attention (scaled to the "
           "head's largest weight in this row).")
for h in range(H):
    row = maps[layer][0, h, pos, : pos + 1]
    pieces = [(model.tokenizer.token_text(ids[i]), f"{row[i]:.3f}",
               weight_colour(float(row[i]) / max(1e-9, float(row.max()))))
              for i in range(pos + 1)]
    st.markdown(f"head {h} (looks most at token {int(np.argmax(row))})" + tokens_html(pieces),
                unsafe_allow_html=True)
