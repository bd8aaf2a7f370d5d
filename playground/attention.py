"""Attention: what every head of every layer looks at, on your text, as generation proceeds."""

import numpy as np
import streamlit as st

from core.checks import PlaygroundError
from core.generate import GenerationConfig, complete
from core.sampling import SamplerConfig
from core.tokenizer import TokenizerError
from playground.shared import (HEADS_PER_VIEW, LAYERS_PER_VIEW, figure, heat_png, heat_svg, open_page, starting_text,
                               tokens_html, url_int, url_text, visible, weight_colour)

model, lim = open_page("Attention",
                       "Row i of a head's map: how much token i draws from each earlier token (rows sum to 1; the "
                       "upper triangle is masked: no token sees the future).", checkpoints=True)




GAP = 0.15         # the space between two maps of the grid, as a share of one map's side


def tile(maps: list, layers: tuple[int, ...], heads: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """The grid's maps as one image (NaN between them): a single heatmap draws in a fraction of the time of
    one subplot per head, which is most of what a click on this page waits for. Returns it and a map's pitch."""
    T = maps[0].shape[-1]
    gap = max(1, round(GAP * T))
    pitch = T + gap
    image = np.full((len(layers) * pitch - gap, len(heads) * pitch - gap), np.nan, np.float32)
    for i, l in enumerate(layers):
        for j, h in enumerate(heads):
            image[i * pitch:i * pitch + T, j * pitch:j * pitch + T] = maps[l][0, h]
    return image, pitch


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
image, pitch = tile(maps, layers, heads)
# Streamlit reports no clicks on heatmaps (streamlit#8760), so the maps carry a lattice of invisible markers:
# a click anywhere on a map lands near one, and the marker says which map it was
lattice = np.linspace(0, T - 1, 3)
marks = [(j * pitch + x, i * pitch + y, k) for k, (i, j) in enumerate((i, j) for i in range(len(layers))
                                                                          for j in range(len(heads)))
         for x in lattice for y in lattice]
mx, my, which = (list(v) for v in zip(*marks))
hidden = dict(marker=dict(opacity=0))
titles = [dict(x=j * pitch + (T - 1) / 2, y=i * pitch - 0.5, text=f"L{l} H{h}", showarrow=False, yanchor="bottom",
               font=dict(size=11)) for i, l in enumerate(layers) for j, h in enumerate(heads)]
H_img, W_img = image.shape
grid = figure([dict(type="scatter", x=mx, y=my, customdata=which, mode="markers", marker=dict(size=60, opacity=0),
                    selected=hidden, unselected=hidden, hoverinfo="none", showlegend=False)],
              images=[dict(source=heat_png(image), xref="x", yref="y", x=-0.5, y=-0.5, sizex=W_img, sizey=H_img,
                           sizing="stretch", layer="below")],
              height=int(150 * len(layers) + 80), margin=dict(t=50, b=10, l=10, r=10), annotations=titles,
              title=dict(text="Layers (rows) and heads (columns): click a map to open it below"),
              xaxis=dict(visible=False, range=[-0.5, W_img - 0.5], constrain="domain"),
              yaxis=dict(visible=False, range=[H_img - 0.5, -0.5], scaleanchor="x"))
picked = st.plotly_chart(grid, width="stretch", key="attn_grid", on_select="rerun", selection_mode="points",
                         config={"displayModeBar": False})
points = picked.get("selection", {}).get("points", []) if picked else []
if points:
    # a click on a map opens that head below. The selection stays in every rerun, so it is applied once per
    # click (the marker clicked, not the map: a second click on the same map after using the selectboxes works)
    point = points[0]
    marker = (point.get("point_index"), point.get("x"), point.get("y"))
    if st.session_state.get("attn_clicked") != marker:
        st.session_state["attn_clicked"] = marker
        st.session_state["attn_layer"], st.session_state["attn_head"] = cells[int(point.get("customdata", 0)) % len(cells)]
else:
    st.session_state.pop("attn_clicked", None)

c1, c2 = st.columns(2)
# the choices live in session state (a click on the grid sets them too); a link's or another model's
# out-of-range value starts over at the link's or 0
for key, n in (("layer", L), ("head", H)):
    if st.session_state.get(f"attn_{key}") not in range(n):
        st.session_state[f"attn_{key}"] = url_int(key, 0, 0, n - 1)
layer = c1.selectbox("Layer", list(range(L)), key="attn_layer")
head = c2.selectbox("Head", list(range(H)), key="attn_head")
st.query_params["layer"], st.query_params["head"] = str(layer), str(head)
# inline SVG, not a plotly heatmap: with a tick label per token plotly spends ~300 ms laying it out on every
# click; the exact weights of a row are in the chips below
st.markdown(heat_svg(maps[layer][0, head], labels, f"Layer {layer}, head {head}"), unsafe_allow_html=True)

st.subheader("The newest token's attention")
pos = 0 if T == 1 else st.slider("Token", 0, T - 1, T - 1, key="attn_pos",   # a slider needs two stops
                                 help="Which token's row to show; the last one is what the model attends from "
                                      "to predict next.")
st.caption(f"From token {labels[pos]}: each head of layer {layer}, darker blue = more attention (scaled to the "
           "head's largest weight in this row).")
for h in range(H):
    row = maps[layer][0, h, pos, : pos + 1]
    pieces = [(model.tokenizer.token_text(ids[i]), f"{row[i]:.3f}",
               weight_colour(float(row[i]) / max(1e-9, float(row.max()))))
              for i in range(pos + 1)]
    st.markdown(f"head {h} (looks most at token {int(np.argmax(row))})" + tokens_html(pieces),
                unsafe_allow_html=True)
