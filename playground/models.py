"""Models: each exported model's card, its training curve, and how well it predicts your text."""

import math

import streamlit as st

from core.runtime import ModelError
from playground.shared import figure, open_page, prob_colour, tokens_html, url_text

model, lim = open_page(None)
card = model.card
cfg = model.config
st.title(f"Model: {model.name}")

c = st.columns(4)
c[0].metric("parameters", f"{card['parameters']['total']:,}",
            help=f"{card['parameters']['non_embedding']:,} outside the embeddings (Kaplan's N)")
c[1].metric("val loss", f"{card['val_loss']:.3f}" if card.get("val_loss") else "n/a", help="nats per token")
c[2].metric("bits per byte", f"{card['val_bits_per_byte']:.3f}" if card.get("val_bits_per_byte") else "n/a",
            help="comparable across tokenizers: the loss spread over the bytes of the text")
c[3].metric("context", f"{cfg.block_size} tokens")

left, right = st.columns(2)
with left:
    st.subheader("Architecture")
    st.dataframe([{"setting": k, "value": str(v)} for k, v in cfg.to_dict().items()], hide_index=True)
    st.caption(f"Tokenizer `{card['tokenizer']['name']}` ({card['tokenizer']['kind']}, "
               f"{card['tokenizer']['n_vocab']:,} ids) · {card['flops_per_token'] / 1e6:.2f} MFLOP per training token")
with right:
    st.subheader("Training")
    training = card.get("training", {})
    curve = training.get("curve") or []
    if curve:
        steps = [p["step"] for p in curve]
        fig = figure([dict(type="scatter", x=steps, y=[p["train_loss"] for p in curve], name="train"),
                      dict(type="scatter", x=steps, y=[p["val_loss"] for p in curve], name="val")],
                     xtitle="step", ytitle="loss (nats/token)", height=300, margin=dict(t=20, b=20))
        st.plotly_chart(fig, width="stretch", key="curve")
    st.caption(f"{training.get('step', '?')} steps, {training.get('tokens_seen') or 0:,} tokens · corpus sha256 "
               f"`{(training.get('corpus_sha256') or '?')[:16]}…`")
    if training.get("command"):
        st.code(training["command"], language="bash")

st.subheader("Export checks")
st.caption(f"onnxruntime vs torch: max |logit difference| {card['parity']['max_abs_logit_diff']:.1e} over a "
           f"{card['parity']['prefill_tokens']}-token prefill and {card['parity']['cached_steps']} cached steps.")
st.dataframe([{"variant": name, "file": v["file"], "MB": round(v["bytes"] / 1e6, 2),
               "max logit diff": f"{v['max_logit_diff_vs_torch']:.1e}",
               "top-1 agreement": v.get("top1_agreement", 1.0), "ms per decode step": round(v["decode_ms_median"], 3)}
              for name, v in card["variants"].items()], hide_index=True)

st.subheader("Score a text")
text = st.text_area("Text", url_text("score", "The night is long, and the morning will come.", lim.max_prompt_chars),
                    max_chars=lim.max_prompt_chars, key="score_text")
st.query_params["score"] = text
try:
    s = model.score(text)
except ModelError as e:
    st.info(str(e))
    st.stop()
m = st.columns(3)
m[0].metric("perplexity", f"{s.perplexity:.2f}", help="exp(mean loss): the model is as unsure as a fair die "
            "with this many sides, on average")
m[1].metric("mean loss", f"{s.mean_nll:.3f} nats/token")
m[2].metric("bits per byte", f"{s.bits_per_byte:.3f}")
pieces = [(model.tokenizer.decode([s.tokens[0]]), "first token: context only", "#e5e7eb")]
pieces += [(model.tokenizer.decode([t]), f"log p = {lp:.2f} (p = {math.exp(lp):.3f})", prob_colour(math.exp(lp)))
           for t, lp in zip(s.tokens[1:], s.logprobs)]
st.markdown(tokens_html(pieces), unsafe_allow_html=True)
st.caption("Each token coloured by the probability the model gave it, from red (surprising) to green (expected).")
