"""The Learn page's "Encoder vs decoder" section: a masked LM (BERT's kind) beside the GPT on the user's text: the
two attention maps, fill in the blank vs continue, the loss each reaches, and the MLM asked to write left to
right. Draws only: the numbers come from `core.encdec` (and `core.mlm`)."""

from __future__ import annotations

import itertools

import streamlit as st

from core import encdec
from core.runtime import Model, ModelError
from playground.shared import heat_svg, model_by_name, model_names, visible

MLM_OBJECTIVE = "mlm"


def _guesses(model: Model, blank) -> str:
    if not blank.ids:
        return "(no guess: nothing to its left)"
    return " · ".join(f"`{visible(model.tokenizer.token_text(i))}` {p:.0%}" for i, p in zip(blank.ids, blank.probs))


def show(model: Model, prompt: str) -> None:
    """The section, with `model` (the sidebar's next-token model) as the GPT when it reads the text as the MLM does."""
    st.header("Encoder vs decoder")
    st.markdown(
        "The same transformer blocks make two kinds of model. A **decoder** (GPT) has a **causal mask**: position t "
        "reads positions 0..t only, and it is trained to predict the **next** token, so it can write left to right "
        "with a KV cache. An **encoder** (BERT, Devlin et al. 2019) has **bidirectional** attention: every position "
        "reads the whole text, and it is trained as a **masked LM**: 15 % of the tokens are chosen, 80 % of those "
        "replaced by `[MASK]`, 10 % by a random token, 10 % left as they are, and it predicts the originals there. "
        "It can use the future, so it fills blanks well; it was never trained to continue a text, so it cannot write.")
    mlms = model_names(MLM_OBJECTIVE)
    if not mlms:
        st.info("No masked LM is exported here. Train one: `python -m core.train --objective mlm --attention "
                "bidirectional ...`, then `python -m core.export RUN exported/NAME`.")
        return
    c = st.columns(2)
    mlm_name = c[0].selectbox("Masked LM (encoder)", mlms, key="encdec_mlm")
    try:
        mlm = model_by_name(mlm_name)
    except ModelError as e:
        st.error(f"{mlm_name} cannot be opened: {e}")
        return
    others = (model_by_name(n) for n in model_names() if n != model.name)     # opened only until one matches
    gpt = encdec.partner(mlm, itertools.chain([model], others))
    if gpt is None:
        st.info(f"No next-token model here reads text with {mlm.name}'s tokenizer ({mlm.tokenizer.name}); the "
                f"two must see the same tokens to be compared.")
        return
    c[1].markdown(f"**Decoder (GPT):** {gpt.name}" + ("" if gpt is model else
                  f"  \n(the sidebar's {model.name} reads text into other tokens)"))
    ids = encdec.window(gpt, mlm, prompt)
    if len(ids) < 2:
        st.info("Type at least two characters: the blank needs a neighbour.")
        return
    labels = [f"{i}:{visible(gpt.tokenizer.token_text(t))}" for i, t in enumerate(ids)]
    c = st.columns(4)
    position = c[0].selectbox("Blank (hide this token)", list(range(len(ids))),
                              index=encdec.default_blank([gpt.tokenizer.token_text(t) for t in ids]),
                              format_func=lambda i: labels[i], key="encdec_pos")
    layer = c[1].selectbox("Layer", list(range(min(gpt.n_layer, mlm.n_layer))), key="encdec_layer")
    head = c[2].selectbox("Head", list(range(min(gpt.n_head, mlm.n_head))), key="encdec_head")
    ahead = c[3].number_input("Blanks ahead when the MLM writes", 0, 8, 0, key="encdec_ahead",
                              help="How many more [MASK]s follow the one it fills: room on the right it can "
                                   "attend to (they are empty).")
    try:
        r = encdec.side_by_side(gpt, mlm, prompt, position, layer, head, blanks_ahead=int(ahead))
    except ModelError as e:
        st.error(str(e))
        return

    st.subheader("1. Attention: causal vs bidirectional")
    left, right = st.columns(2)
    left.markdown(heat_svg(r.gpt_attention, labels, f"GPT {gpt.name}: layer {layer}, head {head}"),
                  unsafe_allow_html=True)
    right.markdown(heat_svg(r.mlm_attention, labels, f"MLM {mlm.name}: layer {layer}, head {head}"),
                   unsafe_allow_html=True)
    st.caption(f"Row t is what position t reads. The GPT's upper triangle is empty: the mask sets the future's "
               f"scores to −∞ (mean weight on later positions: {r.gpt_future:.3f}). The MLM's rows spread over "
               f"both sides (mean weight on later positions: {r.mlm_future:.2f}).")

    st.subheader("2. Fill in the blank vs continue")
    hidden = visible(gpt.tokenizer.token_text(ids[position]))
    shown = "".join(visible(gpt.tokenizer.token_text(t)) if i != position else "[MASK]" for i, t in enumerate(ids))
    st.markdown(f"The text with token {position} hidden (it was `{hidden}`):")
    st.code(shown, language=None)
    st.markdown(f"- **MLM, from both sides:** {_guesses(mlm, r.mlm_blank)}\n"
                f"- **GPT, from the left only** (its next-token guess after token {position - 1}): "
                f"{_guesses(gpt, r.gpt_blank)}")

    st.subheader("3. The loss each reaches")
    st.latex(r"\mathcal{L}_{\text{GPT}} = -\frac{1}{T}\sum_{t} \log p(x_t \mid x_{<t}) \qquad "
             r"\mathcal{L}_{\text{MLM}} = -\frac{1}{|M|}\sum_{t \in M} \log p(x_t \mid \tilde{x})")
    st.caption("M: the chosen 15 % of positions; x̃: the text with them masked (80/10/10). The MLM's loss counts "
               "only those positions: elsewhere its target is ignored.")
    gl, ml = gpt.card.get("val_loss"), mlm.card.get("val_loss")
    rows = [{"model": f"GPT {gpt.name}", "objective": "next token, from the left",
             "val loss (card, nats)": None if gl is None else round(gl, 4), "on your text (nats)": round(r.gpt_loss, 4)},
            {"model": f"MLM {mlm.name}", "objective": "masked token, from both sides",
             "val loss (card, nats)": None if ml is None else round(ml, 4),
             "on your text (nats)": round(r.mlm_loss, 4)}]
    st.dataframe(rows, hide_index=True)
    st.caption(f"Not comparable: the two numbers score different tasks. The GPT's is nats per token, each predicted "
               f"from the left alone; the MLM's is nats per masked token ({r.mlm_masked} of {len(ids)} on your text, "
               f"a fixed seeded mask), each predicted with both sides in view, which is easier, so its loss is lower "
               f"at the same size and data. A lower MLM loss does not make it the better language model, and it "
               f"gives no probability of a whole text.")

    st.subheader("4. Why the MLM cannot write left to right: try it")
    st.markdown("Ask each model for 40 more tokens, greedily. The GPT predicts the next token, as it was trained. "
                "The MLM appends a `[MASK]`, fills it with its likeliest token, and repeats: a blank with nothing to "
                "its right, which it never saw in training (its blanks always had text on both sides).")
    a, b = st.columns(2)
    a.markdown(f"**GPT {gpt.name}**")
    a.code(gpt.tokenizer.decode(r.gpt_writes), language=None)
    b.markdown(f"**MLM {mlm.name}**, unmasking one blank at a time")
    b.code(mlm.tokenizer.decode(r.mlm_writes), language=None)
    st.caption("The MLM soon repeats itself: each token is a best guess for one blank, with no model of how a text "
               "goes on. Blanks ahead give it empty positions to its right; they do not give it a future to read. "
               "Masked models generate only with other machinery (iterative refinement such as Mask-Predict, "
               "Ghazvininejad et al. 2019, or masked diffusion); a GPT's factorisation p(x) = Π p(x_t | x_<t) is "
               "what makes left-to-right sampling exact.")

