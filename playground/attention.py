"""Attention: what every head of every layer looks at, on your text, as generation proceeds."""

import functools

import numpy as np
import streamlit as st
from plotly.subplots import make_subplots

from core.checks import PlaygroundError
from core.generate import GenerationConfig, complete
from core.sampling import SamplerConfig
from playground.shared import figure, open_page, tokens_html, url_int, url_text, visible

model, lim = open_page("Attention",
                       "Row i of a head's map: how much token i draws from each earlier token (rows sum to 1; the "
                       "upper triangle is masked: no token sees the future).", checkpoints=True)


@functools.lru_cache(maxsize=8)
def grid_layout(n_layer: int, n_head: int) -> dict:
    """The layout of the layers x heads grid (axes, titles, one colour scale), built once per shape."""
    g = make_subplots(rows=n_layer, cols=n_head, horizontal_spacing=0.02, vertical_spacing=0.04,
                      subplot_titles=[f"L{l} H{h}" for l in range(n_layer) for h in range(n_head)])
    g.update_xaxes(showticklabels=False)
    g.update_yaxes(showticklabels=False, autorange="reversed")
    g.update_layout(height=170 * n_layer + 60, coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1),
                    margin=dict(t=40, b=10, l=10, r=10), title="Every layer (rows) and head (columns)")
    layout = g.to_dict()["layout"]
    layout.pop("template", None)        # the default template: sent by st.plotly_chart's theme anyway
    return layout


if "attn_text" not in st.session_state:
    st.session_state["attn_text"] = url_text("text", "KING:\nWhat news from the", lim.max_prompt_chars)


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
ids = model.tokenizer.encode(text)
if not ids:
    st.info("Type some text.")
    st.stop()
if len(ids) > model.block_size:
    st.info(f"The text has {len(ids)} tokens; the model's context is {model.block_size}, so the last "
            f"{model.block_size} are shown.")
    ids = ids[-model.block_size:]
maps = model.attention(ids).probs                       # per layer (1, H, T, T)
L, H, T = len(maps), maps[0].shape[1], len(ids)
labels = [f"{i}:{visible(model.tokenizer.decode([t]))}" for i, t in enumerate(ids)]

grid = figure([dict(type="heatmap", z=maps[l][0, h], coloraxis="coloraxis", xaxis=f"x{l * H + h + 1}",
                    yaxis=f"y{l * H + h + 1}") for l in range(L) for h in range(H)], **grid_layout(L, H))
st.plotly_chart(grid, width="stretch", key="attn_grid")

c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", list(range(L)), index=url_int("layer", 0, 0, L - 1), key="attn_layer")
head = c2.selectbox("Head", list(range(H)), index=url_int("head", 0, 0, H - 1), key="attn_head")
st.query_params["layer"], st.query_params["head"] = str(layer), str(head)
big = figure([dict(type="heatmap", z=maps[layer][0, head], x=labels, y=labels, colorscale="Viridis", zmin=0, zmax=1)],
             yaxis=dict(autorange="reversed"), height=max(400, 14 * T + 150), margin=dict(t=40, b=10),
             title=dict(text=f"Layer {layer}, head {head}"))
st.plotly_chart(big, width="stretch", key="attn_big")

st.subheader("The newest token's attention")
pos = st.slider("Token", 0, T - 1, T - 1, key="attn_pos",
                help="Which token's row to show; the last one is what the model attends from to predict next.")
st.caption(f"From token {labels[pos]}: each head of layer {layer}, darker = more attention.")
for h in range(H):
    row = maps[layer][0, h, pos, : pos + 1]
    pieces = [(model.tokenizer.decode([ids[i]]), f"{row[i]:.3f}",
               f"rgba(37, 99, 235, {0.1 + 0.9 * float(row[i]) / max(1e-9, float(row.max())):.2f})")
              for i in range(pos + 1)]
    st.markdown(f"head {h} (looks most at token {int(np.argmax(row))})" + tokens_html(pieces),
                unsafe_allow_html=True)
