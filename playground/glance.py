"""The whole model at a glance: every part of one forward pass of the visitor's prompt, top to bottom, each
with its live numbers and a link to the page that shows it in detail. Draws `core.glance`; computes nothing."""

import streamlit as st

from core.checks import PlaygroundError
from core.glance import Prediction, glance
from core.sampling import SamplerConfig
from core.tokenizer import TokenizerError
from playground.shared import (LAYERS_PER_VIEW, figure, knob_slider, open_page, prob_colour, starting_text, tokens_html, url_text,
                               visible_text)

model, lim = open_page("The whole model at a glance",
                       "One forward pass of your text, part by part, read at its last token (the one that "
                       "predicts what comes next). Every number is computed now by this model; each part "
                       "links to the page that shows it in detail.", checkpoints=True)
cfg = model.config
NORM = {"layernorm": ("Layer norm", "divides by σ"), "rmsnorm": ("RMS norm", "divides by RMS"),
        "none": ("No norm", "passes x on")}[cfg.norm]

prompt = st.text_area("Text", url_text("text", starting_text(model, "KING:\nWhat news from the"), lim.max_prompt_chars),
                      max_chars=lim.max_prompt_chars, height=68, key="glance_text")
st.query_params["text"] = prompt
with st.expander("Sampler (the last box)"):
    k = st.columns(3)
    sampler = SamplerConfig(temperature=knob_slider(k[0], "temperature", "glance_t"),
                            top_k=knob_slider(k[1], "top_k", "glance_k"), top_p=knob_slider(k[2], "top_p", "glance_p"))
if not prompt:
    st.info("Type some text.")
    st.stop()
try:
    ids = model.tokenizer.encode_prompt(prompt)
except TokenizerError as e:
    st.error(str(e))
    st.stop()
most = min(model.block_size, lim.max_inspect_tokens)
if len(ids) > most:
    st.info(f"The text has {len(ids)} tokens; the last {most} are read.")
    ids = ids[-most:]
try:
    g = glance(model, ids, sampler, lim)
except PlaygroundError as e:            # exported before the inspection graphs, or larger than this server inspects
    st.info(str(e))
    st.stop()

tok = model.tokenizer
last = visible_text(tok.token_text(g.ids[-1]))


def said(p: Prediction, n: int = 3) -> str:
    return ", ".join(f"`{visible_text(tok.token_text(i)) or '∅'}` {q:.2f}" for i, q in zip(p.ids[:n], p.probs[:n]))


def arrow(text: str = "") -> None:
    st.markdown(f"<div style='text-align:center;opacity:.6'>↓ {text}</div>", unsafe_allow_html=True)


def part(title: str, body: str, link: tuple[str, str, dict] | None = None) -> None:
    """One box of the diagram: what it is, its live numbers, and where to see it in detail."""
    with st.container(border=True):
        left, right = st.columns([5, 1.3])
        left.markdown(f"**{title}**  \n{body}")
        if link:
            page, label, params = link
            right.page_link(page, label=label, query_params=params)


text_param = {"text": prompt}
with st.container(border=True):
    left, right = st.columns([5, 1.3])
    left.markdown(f"**Tokens** · {len(g.ids)} of them; the last, `{last}`, is the one read below")
    left.markdown(tokens_html([(tok.token_text(i), f"position {p} · id {i}", None) for p, i in enumerate(g.ids)]),
                  unsafe_allow_html=True)
    right.page_link("playground/tokenizer.py", label="Tokenizer →", query_params=text_param)
arrow()
positions = {"learned": ", plus a learned vector for its position",
             "sinusoidal": ", plus a fixed sinusoidal vector for its position",
             "rope": "; positions enter later, as RoPE rotates each head's queries and keys"}.get(cfg.pos_encoding, "")
part("Embedding", f"Each token id picks a row of a {model.vocab_size:,} × {cfg.n_embd} table{positions}. "
     f"The residual stream starts at size |x| = **{g.embed:.2f}**.",
     ("playground/learn.py", "Learn: positions →", {"section": "positions", "text": prompt}))

for b in g.blocks:
    arrow(f"|x| = {g.stream[2 * b.layer]:.1f}")
    with st.container(border=True):
        st.markdown(f"**Block {b.layer}**")
        c = st.columns([1, 2.4, 1, 1, 1.2, 1])
        c[0].markdown(f"**{NORM[0]}**  \n{NORM[1]} = {b.norm_in:.2f}")
        heads = "  \n".join(f"H{h.head} → `{visible_text(tok.token_text(g.ids[h.looks_at]))}`@{h.looks_at} "
                            f"({h.weight:.2f}, H = {h.entropy:.2f})" for h in b.heads[:8])
        more = f"  \n… {len(b.heads) - 8} more heads" if len(b.heads) > 8 else ""
        c[1].markdown(f"**Attention** · {len(b.heads)} heads; the last token looks most at:  \n{heads}{more}")
        c[1].page_link("playground/attention.py", label="Open its heads →",
                       query_params={"text": prompt, "layer": str(b.layer), "head": "0",
                                     "layers": str(b.layer // LAYERS_PER_VIEW)})
        c[2].markdown(f"**+ add**  \n|attn| = {b.attn_added:.1f}  \n|x| → {b.after_attn:.1f}")
        c[3].markdown(f"**{NORM[0]}**  \n{NORM[1]} = {b.norm_mid:.2f}")
        c[4].markdown(f"**MLP** ({cfg.mlp})  \n{cfg.n_embd} → {cfg.mlp_width} → {cfg.n_embd}")
        c[5].markdown(f"**+ add**  \n|mlp| = {b.mlp_added:.1f}  \n|x| → {b.after_mlp:.1f}")
        st.caption(f"If the model stopped here (logit lens): after attention {said(b.lens_attn)}; after the MLP "
                   f"{said(b.lens_mlp)}")
arrow(f"|x| = {g.stream[-1]:.1f}")
part(f"Final {NORM[0].lower()} → logits",
     f"The stream is scaled ({NORM[1]} {g.norm_out:.2f}) and multiplied by the {cfg.n_embd} × {model.vocab_size:,} "
     f"unembedding: one score per token. The model's next token: {said(g.logits, 5)}.",
     ("playground/learn.py", "Learn: logits →", {"section": "logits", "text": prompt}))
arrow()
stages = [s for s in g.sampler if s.name == "raw" or s.kept != g.sampler[0].kept or s.name == "temperature"]
kept = " → ".join(f"{s.name} {s.kept:,}" for s in stages)
final = g.sampler[-1]
with st.container(border=True):
    left, right = st.columns([5, 1.3])
    left.markdown(f"**Sampler** · tokens still possible: {kept}. The draw is made from:")
    left.markdown(tokens_html([(tok.token_text(i), f"p = {p:.3f}", prob_colour(p))
                               for i, p in zip(final.top.ids, final.top.probs) if p > 0]), unsafe_allow_html=True)
    right.page_link("playground/generate.py", label="Generate →", query_params={"prompt": prompt})

st.subheader("The residual stream")
x = g.points
adds = [0.0] + [v for b in g.blocks for v in (b.attn_added, b.mlp_added)]
st.plotly_chart(figure([dict(type="bar", x=x, y=adds, name="what the part added (|update|)", opacity=0.6),
                        dict(type="scatter", x=x, y=g.stream, mode="lines+markers", name="|x| after it")],
                       xtitle="point", ytitle="size (L2 norm)", height=300, margin=dict(t=30, b=20),
                       legend=dict(orientation="h")), width="stretch", key="glance_stream")
st.caption("Each block reads the stream through a layer norm and adds its attention's and MLP's output back: the "
           "stream only accumulates. The bars are what each part wrote; the line, the stream's size after it.")
