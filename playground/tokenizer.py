"""Tokenizer: how text becomes tokens, under several tokenizers side by side, one token up close (its bytes
and the merges that built it), and why BPE exists."""

import functools

import streamlit as st

from core.runtime import ModelError
from core.tokenizer import (OPENAI_ENCODINGS, TokenizerError, byte_tokenizer, char_frequencies, offline_encodings,
                            openai_tokenizer, readable, token_build)
from playground.shared import (figure, limits, model_by_name, model_names, tokens_html, url_text, visible,
                               visible_text)

# The chosen token's chip: a deep blue none of the palette's pastel chips has (tokens_html picks its text colour).
CHOSEN = "#1e3a8a"

st.title("Tokenizer")
st.caption("A model never sees characters: it sees token ids. Compare how tokenizers cut the same text.")
lim = limits()
text = st.text_area("Text", url_text("text", "KING:\nThe tokenizer cuts this sentence into pieces, emoji too. 😀", lim.max_prompt_chars),
                    max_chars=lim.max_prompt_chars, key="tok_text")
st.query_params["text"] = text


@functools.lru_cache(maxsize=8)   # a process cache: a visitor cannot clear it for everyone
def openai_available(name: str) -> str | None:
    """None when the encoding loads here, else the reason (cached: without a package's file it may try the network)."""
    try:
        openai_tokenizer(name)
        return None
    except TokenizerError as e:
        return str(e)


def tokenizer_choices() -> dict:
    choices = {"byte (256 bytes)": lambda: byte_tokenizer()}
    for name in model_names():
        choices[f"{name} (model)"] = (lambda n=name: model_by_name(n).tokenizer)
    offline = offline_encodings()
    # the encodings whose files are installed first: they load with no network
    for enc in offline + [e for e in OPENAI_ENCODINGS if e not in offline]:
        choices[f"{enc} (OpenAI)"] = (lambda e=enc: openai_tokenizer(e))
    return choices


def readable_bytes(raw: bytes) -> str:
    """A token's bytes as a table cell or a code line shows them: UTF-8 where it decodes, spaces made visible."""
    return visible_text(readable(raw))


choices = tokenizer_choices()
default = [k for k in choices if "(model)" in k][:2] + ["byte (256 bytes)", "cl100k_base (OpenAI)"]
c1, c2 = st.columns([4, 1])
picked = c1.multiselect(
    "Tokenizers", list(choices), default=[d for d in default if d in choices], max_selections=4, key="tok_pick",
    help=f"Each model's own tokenizer, bytes, and OpenAI's encodings: {', '.join(offline_encodings()) or 'none'} "
         f"load here from an installed package; the others need tiktoken's download once. GPT-2's own encoding comes "
         f"with an imported GPT-2 (python -m core.pretrained), listed as a model.")
chunk = int(c2.number_input("Tokens per chunk", min_value=10, max_value=1000, value=200, step=10, key="tok_chunk",
                            help="A long text is shown in chunks of this many tokens, each with its chips and ids."))
if not picked:
    st.info("Pick at least one tokenizer.")

cols = st.columns(max(1, len(picked)))
loaded, spans_of, views = {}, {}, {}
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
        try:
            spans = tok.spans(text)
        except TokenizerError as e:         # a task's symbols: text outside them has no tokens
            st.info(str(e))
            continue
        if not spans:
            st.caption("(no tokens)")
            continue
        spans_of[name] = spans
        st.metric("tokens", len(spans), help="Fewer tokens for the same text: more text fits in the context.")
        st.caption(f"{len(text.encode('utf-8')) / max(1, len(spans)):.2f} bytes per token · vocabulary "
                   f"{tok.n_vocab:,}")
        # the chips are drawn once the token chosen below is known, so that it is marked in them
        views[name] = st.container()

st.divider()
st.subheader("One token, up close")
if spans_of:
    c1, c2 = st.columns([1, 2])
    which = c1.selectbox("Tokenizer", list(spans_of), key="tok_detail_tok")
    those = spans_of[which]
    longest = max(range(len(those)), key=lambda i: len(those[i].raw))   # opens on a token with merges to show
    pos = c2.selectbox("Token (type to search)", range(len(those)), index=longest, key="tok_detail_pos",
                       format_func=lambda i, sp=those: f"#{i} · {readable_bytes(sp[i].raw)} · id {sp[i].id}")
    s = those[pos]
    m1, m2, m3 = st.columns(3)
    m1.metric("id", s.id)
    m2.metric("bytes", len(s.raw))
    st.code(f"hex        {s.raw.hex(' ')}\n"
            f"printable  {readable_bytes(s.raw)}\n"
            f"bytes      {s.raw!r}\n"
            f"characters {s.char_start}–{s.char_end} of the text", language=None)
    if s.is_partial:
        st.caption("These bytes are part of a character split across tokens: on their own they are not UTF-8, so "
                   "the bytes that do not decode are shown as \\xNN.")
    try:
        build = token_build(loaded[which], text, pos)
    except TokenizerError as e:
        build = None
        st.info(str(e))
    if build is not None:
        m3.metric("merges", len(build.merges), help="How many BPE merges joined this token's starting symbols.")
        if build.how == "none":
            st.caption(f"{which} has no merges: each token is one {'byte' if loaded[which].kind == 'byte' else 'symbol'}.")
        elif build.how == "special":
            st.caption("A special token: it is matched whole, never built by merges.")
        elif build.how == "symbol":
            st.caption(f"A starting symbol of piece '{visible_text(build.piece)}' on its own: no merge built it.")
        elif build.how == "whole":
            st.caption(f"Piece '{visible_text(build.piece)}' is taken whole (an added token, or a word the "
                       f"vocabulary holds, which this tokenizer takes without merging), not built pair by pair.")
        else:
            rows = [{"step": 0, "merge": "start", "rank": "",
                     "parts": " | ".join(readable_bytes(p) for p in build.parts[0])}]
            rows += [{"step": k, "merge": f"{readable_bytes(m.left)} + {readable_bytes(m.right)} → "
                                          f"{readable_bytes(m.result)}",
                      "rank": str(m.rank), "parts": " | ".join(readable_bytes(p) for p in parts)}
                     for k, (m, parts) in enumerate(zip(build.merges, build.parts[1:]), 1)]
            st.dataframe(rows, hide_index=True)
            st.caption(f"Built by {len(build.merges)} merges inside the piece '{visible_text(build.piece)}' (the split "
                       f"pattern's pieces are never merged across): start from {len(build.parts[0])} symbols; each "
                       f"step joins the adjacent pair learned earliest (the lowest rank) until this token is whole. "
                       f"Replayed with the tokenizer's own rules and checked against its encoding.")
elif picked:
    st.caption("Type some text to look at its tokens one by one.")

chosen = (which, pos) if spans_of else None
for name, view in views.items():
    spans = spans_of[name]
    with view:
        for start in range(0, len(spans), chunk):
            part = spans[start:start + chunk]
            if len(spans) > chunk:
                st.caption(f"tokens {start}–{start + len(part) - 1} · characters {part[0].char_start}–"
                           f"{part[-1].char_end}")
            pieces = [(readable(s.raw),
                       f"#{s.index} · id {s.id} · bytes {s.raw.hex(' ')} · chars {s.char_start}-{s.char_end}"
                       + (" · part of a character split across tokens" if s.is_partial else ""),
                       CHOSEN if chosen == (name, s.index) else None)
                      for s in part]
            st.markdown(tokens_html(pieces), unsafe_allow_html=True)
            # a code block: Streamlit's copy button copies the ids as a list
            st.code(str([s.id for s in part]), language=None, wrap_lines=True)
        if len(spans) > chunk:
            with st.expander(f"All {len(spans):,} ids as one list"):
                st.code(str([s.id for s in spans]), language=None, wrap_lines=True)

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
