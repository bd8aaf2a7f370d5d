"""Tokenizer: how text becomes tokens, under several tokenizers side by side, and why BPE exists."""

import functools

import streamlit as st

from core.runtime import ModelError
from core.tokenizer import (OPENAI_ENCODINGS, TokenizerError, byte_tokenizer, char_frequencies, openai_tokenizer,
                            readable)
from playground.shared import (figure, limits, model_by_name, model_names, tokens_html, url_text, visible,
                               visible_text)

st.title("Tokenizer")
st.caption("A model never sees characters: it sees token ids. Compare how tokenizers cut the same text.")
lim = limits()
text = st.text_area("Text", url_text("text", "KING:\nThe tokenizer cuts this sentence into pieces, emoji too. 😀", lim.max_prompt_chars),
                    max_chars=lim.max_prompt_chars, key="tok_text")
st.query_params["text"] = text


@functools.lru_cache(maxsize=8)   # a process cache: a visitor cannot clear it for everyone
def openai_available(name: str) -> str | None:
    """None when tiktoken can load the encoding here, else the reason (cached: it may try the network)."""
    try:
        openai_tokenizer(name)
        return None
    except TokenizerError as e:
        return str(e)


def tokenizer_choices() -> dict:
    choices = {"byte (256 bytes)": lambda: byte_tokenizer()}
    for name in model_names():
        choices[f"{name} (model)"] = (lambda n=name: model_by_name(n).tokenizer)
    for enc in OPENAI_ENCODINGS:
        choices[f"{enc} (OpenAI)"] = (lambda e=enc: openai_tokenizer(e))
    return choices


choices = tokenizer_choices()
default = [k for k in choices if "(model)" in k][:2] + ["byte (256 bytes)", "cl100k_base (OpenAI)"]
picked = st.multiselect("Tokenizers", list(choices), default=[d for d in default if d in choices],
                        max_selections=4, key="tok_pick")
if not picked:
    st.info("Pick at least one tokenizer.")
cols = st.columns(max(1, len(picked)))
loaded = {}
for col, name in zip(cols, picked):
    with col:
        st.markdown(f"**{name}**")
        if "(OpenAI)" in name:
            reason = openai_available(name.split(" ")[0])
            if reason:
                st.info(f"Not available here: {reason}")
                continue
        try:
            tok = choices[name]()
        except (TokenizerError, ModelError) as e:
            st.info(str(e))
            continue
        loaded[name] = tok
        if not text:
            st.caption("(no text)")
            continue
        spans = tok.spans(text)
        pieces = [(readable(s.raw),
                   f"id {s.id} · bytes {s.raw!r} · chars {s.char_start}-{s.char_end}"
                   + (" · part of a character split across tokens" if s.is_partial else ""), None)
                  for s in spans]
        st.metric("tokens", len(spans), help="Fewer tokens for the same text: more text fits in the context.")
        st.caption(f"{len(text.encode('utf-8')) / max(1, len(spans)):.2f} bytes per token · vocabulary "
                   f"{tok.n_vocab:,}")
        st.markdown(tokens_html(pieces), unsafe_allow_html=True)

st.divider()
st.subheader("Replay BPE merges on a word")
bpe_names = [n for n, t in loaded.items() if t.has_merges]
if bpe_names:
    c1, c2 = st.columns([1, 2])
    which = c1.selectbox("Tokenizer", bpe_names, key="merge_tok")
    word = c2.text_input("Word (one pre-tokenization piece, e.g. ' thousand')", " thousand", key="merge_word")
    tok = loaded[which]
    pieces = tok.split_pieces(word) if word else []
    if word and len(pieces) > 1:
        st.caption(f"The split pattern cuts this into {len(pieces)} pieces; merges never cross them: "
                   + " | ".join(visible(p) for p in pieces) + ". Replaying the first.")
    if pieces:
        steps = tok.replay_merges(pieces[0])
        rows = [{"step": i, "parts": " | ".join(visible_text(readable(p)) for p in parts),
                 "tokens": len(parts)} for i, parts in enumerate(steps)]
        st.dataframe(rows, hide_index=True)
        st.caption("Start from single bytes; at each step merge the adjacent pair that was learned earliest "
                   "(lowest rank); stop when no adjacent pair is in the vocabulary.")
else:
    st.caption("Pick a BPE tokenizer (a model's or OpenAI's) above to replay its merges.")

st.subheader("Why BPE: character frequencies")
if text:
    freq = char_frequencies(text, 40)
    fig = figure([dict(type="bar", x=[visible(c) for c, _ in freq], y=[n for _, n in freq])], height=300,
                 margin=dict(t=30, b=20), title=dict(text="Most common characters in the text"))
    st.plotly_chart(fig, width="stretch", key="freq_chart")
    st.caption("A few characters make up most of any text, and some pairs of them recur constantly: BPE "
               "gives the most frequent pairs their own token, so common words cost one token instead of many.")
