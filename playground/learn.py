"""Learn: how a decoder-only language model works, each formula shown with the numbers of the model in
front of you. Short sections along one path; each has a knob to try and links to the page that
goes deeper. The numbers come from `core` (explain, runtime, sampling, generate, scaling, tokenizer)."""

import math

import numpy as np
import streamlit as st

from core import catalog, explain, scaling
from core.checks import PlaygroundError
from core.generate import GenerationConfig, beam_search, complete
from core.runtime import ModelError
from core.sampling import SamplerConfig, entropy, entropy_by_temperature, run_pipeline, softmax
from core.tokenizer import TokenizerError, char_frequencies, readable
from playground import encoder_section
from playground.shared import (figure, knob_slider, model_by_name, model_names, open_page, scaling_report,
                             starting_text, tokens_html, url_choice, url_text, visible, visible_text)

SECTIONS = {
    "tokens": "1 · Tokenization",
    "positions": "2 · Embeddings and positions",
    "attention": "3 · Attention, computed",
    "logits": "4 · From logits to a token",
    "loss": "5 · The training objective",
    "scaling": "6 · Scaling",
    "post": "7 · After pre-training",
    "encoder": "8 · Encoder vs decoder",
    "glossary": "Glossary",
}

# Our own words (no corpus text is committed): enough repeated pieces for merges to find.
TRADEOFF_TEXT = ("The model reads the text one token at a time. The tokenizer decides what a token is: a byte, "
                 "a piece of a word, or a whole word. The more often a pair of pieces appears together, the "
                 "sooner the tokenizer merges them into one token. The training text decides which pieces are "
                 "common, so a tokenizer trained on one kind of text cuts another kind of text into more "
                 "pieces. The larger the vocabulary, the shorter the text, and the larger the table of "
                 "embeddings the model has to learn.")

model, lim = open_page(None)
cfg = model.config
st.title("Learn: how this model works")
st.caption(f"Every number below is computed now, by **{model.name}** ({model.card['parameters']['total']:,} "
           f"parameters, {cfg.n_layer} layers × {cfg.n_head} heads, width {cfg.n_embd}, "
           f"{cfg.pos_encoding} positions). Pick another model in the sidebar and the numbers change.")
keys = list(SECTIONS)
section = st.radio("Section", keys, index=keys.index(url_choice("section", "tokens", keys)), horizontal=True,
                   format_func=SECTIONS.get, key="section", label_visibility="collapsed")
st.query_params["section"] = section
prompt = st.text_area("Your text (every section uses it)", url_text("text", starting_text(model, "The king said to his friend:\nWhat"),
                                                                       min(lim.max_prompt_chars, 400)),
                      height=68, max_chars=min(lim.max_prompt_chars, 400), key="learn_text")
st.query_params["text"] = prompt
if not prompt:
    st.info("Type a few words: every section works on your text.")
    st.stop()
try:
    ids = model.tokenizer.encode_prompt(prompt)[-model.block_size:]
except TokenizerError as e:        # a task model's symbols, or text it cannot read
    st.error(str(e))
    st.stop()
labels = [f"{i}:{visible(model.tokenizer.token_text(t))}" for i, t in enumerate(ids)]


def vector(v, n=8) -> str:
    """A vector, rounded, its first n entries (the rest elided)."""
    v = np.asarray(v, dtype=float)
    head = ", ".join(f"{x:+.2f}" for x in v[:n])
    return f"[{head}{', …' if v.size > n else ''}]  ({v.size} numbers)"


# ---------------------------------------------------------------------------------------------------
if section == "tokens":
    st.header("Tokenization: text becomes ids")
    st.markdown("A model reads integers. A **byte** tokenizer maps each UTF-8 byte to one of 256 ids: every "
                "text is representable, but sequences are long. **Byte-pair encoding** (Sennrich et al. 2016; "
                "GPT-2's byte-level form, Radford et al. 2019) starts from bytes and repeatedly merges the most "
                "frequent adjacent pair into a new token, so common pieces of the training text become single "
                "tokens. A tokenizer applies its merges in the order it learned them.")
    freq = char_frequencies(prompt, top=20)
    fig = figure([dict(type="bar", x=[visible(c) for c, _ in freq], y=[n for _, n in freq])], ytitle="count",
                 height=220, margin=dict(t=10, b=10))
    st.markdown("Character counts in your text: a few characters carry most of it, which is why merging "
                "frequent pairs shortens text so much.")
    st.plotly_chart(fig, width="stretch", key="learn_freq")
    pieces = model.tokenizer.split_pieces(prompt)
    if model.tokenizer.has_merges and pieces:
        longest = max(pieces, key=lambda p: len(p.encode("utf-8")))
        piece = st.selectbox("Try this: replay the merges of one piece", pieces,
                             index=pieces.index(longest), key="learn_piece", format_func=visible)
        steps = model.tokenizer.replay_merges(piece)
        for i, parts in enumerate(steps):
            st.markdown(f"step {i}: " + tokens_html([(readable(p), f"{len(p)} bytes", None)
                                                     for p in parts]), unsafe_allow_html=True)
    else:
        st.info(f"{model.name} uses a byte tokenizer: no merges to replay. Pick a BPE model in the sidebar "
                f"(e.g. shakespeare-bpe) to watch merges happen.")
    st.subheader("Vocabulary size against sequence length")
    st.markdown("More merges make the text shorter (fewer positions to attend over, more text per context "
                "window) and the embedding table bigger (vocab × width parameters). Trained now, on your text:")
    corpus = st.text_area("Text to train tokenizers on (a paragraph or more)", TRADEOFF_TEXT, height=120,
                          max_chars=min(lim.max_prompt_chars, 20_000), key="learn_vocab_text")
    sizes = st.multiselect("Try this: vocabulary sizes", [256, 280, 320, 400, 500, 700, 1000],
                           default=[256, 280, 320, 400, 500], key="learn_vocab")
    try:
        points = explain.vocabulary_tradeoff(corpus, sizes, cfg.n_embd)
        st.dataframe([{"vocabulary": p.vocab_size, "tokens": p.tokens,
                       "bytes per token": None if p.not_reached else round(p.bytes_per_token, 2),
                       "embedding parameters": p.embedding_parameters} for p in points], hide_index=True)
        missed = [p for p in points if p.not_reached]
        if missed:
            st.info(f"Not reached on this text: {', '.join(str(p.vocab_size - 1) for p in missed)} ({missed[0].not_reached}). "
                    f"Give a longer text to train larger vocabularies.")
    except TokenizerError as e:
        st.info(str(e))
    st.page_link("playground/tokenizer.py", label="Go deeper: the Tokenizer page", icon="🔤")

# ---------------------------------------------------------------------------------------------------
elif section == "positions":
    st.header("Embeddings and positions")
    st.markdown("Each token id picks a row of the embedding table $W_E$ (vocab × d): the token's vector. "
                "Attention itself is blind to order, so position enters in one of three ways:")
    st.latex(r"\text{learned: } x_t = W_E[\text{id}_t] + W_P[t] \qquad "
             r"\text{sinusoidal: } PE_{t,2i} = \sin\!\big(t / 10000^{2i/d}\big),\ "
             r"PE_{t,2i+1} = \cos\!\big(t / 10000^{2i/d}\big)")
    st.latex(r"\text{RoPE: } (q_i, q_{i+d_h/2}) \mapsto \text{rotate}\big(t\,\theta_i\big),\ "
             r"\theta_i = b^{-2i/d_h} \ \Rightarrow\ q_t\cdot k_s \text{ depends on } t-s")
    st.caption("Vaswani et al. 2017 (sinusoidal), Radford et al. 2019 (GPT-2, learned), Su et al. 2021 (RoPE).")
    views = explain.positional_views(model)
    base = (f" with base b = {views.rope_theta:g}" + (" (the original 10,000)" if views.rope_theta == 10000 else
                                                     " (raised from the original 10,000 for longer contexts)")
            if views.used == "rope" else "")
    shown = (f"; the first {views.positions} of its {model.block_size} positions are drawn"
             if views.positions < model.block_size else "")
    st.markdown(f"**{model.name} uses {views.used} positions**{base}. All three at its sizes{shown}:")
    cols = st.columns(3)
    st.caption("Each map: positions down, dimensions (RoPE: frequency pairs, angles mod 2π) across.")
    panels = [("sinusoidal", "sinusoidal", views.sinusoidal),
              ("rope", "RoPE angles", np.mod(views.rope, 2 * math.pi)),
              ("learned", "learned table", views.learned)]
    for col, (kind, title, z) in zip(cols, panels):
        if z is None:
            col.info(f"No learned position table: this model was trained with {views.used} positions.")
            continue
        fig = figure([dict(type="heatmap", z=z, colorscale="RdBu")], ytitle="position", yaxis=dict(autorange="reversed"),
                     height=300, margin=dict(t=30, b=10),
                     title=dict(text=title + (" (this model)" if kind == views.used else "")))
        col.plotly_chart(fig, width="stretch", key=f"learn_pos_{kind}")
    fig = figure([dict(type="heatmap", z=views.similarity, colorscale="Viridis")], yaxis=dict(autorange="reversed"),
                 height=320, margin=dict(t=30, b=10), title=dict(text="How alike two positions look to this model"))
    st.plotly_chart(fig, width="stretch", key="learn_pos_sim")
    st.subheader("Token embedding neighbours")
    choice = st.selectbox("Try this: a token of your text", list(range(len(ids))), format_func=lambda i: labels[i],
                          key="learn_neighbour_token")
    try:
        near = explain.embedding_neighbours(model, ids[choice], k=10)
        st.markdown(f"Tokens whose vectors point most nearly the same way as **{visible(labels[choice])}** "
                    "(cosine similarity): tokens used alike end up alike.")
        st.markdown(tokens_html([(t, f"cos {s:.2f}", None) for _, t, s in near]), unsafe_allow_html=True)
    except ModelError as e:
        st.info(str(e))

# ---------------------------------------------------------------------------------------------------
elif section == "attention":
    st.header("Attention, computed")
    st.latex(r"\mathrm{Attention}(Q,K,V) = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_k}} + M\Big)V,"
             r"\qquad M_{ts} = \begin{cases}0 & s \le t\\ -\infty & s > t\end{cases}")
    st.caption("Vaswani et al. 2017. Each head has its own Q, K, V projections; the heads' outputs are "
               "concatenated and projected by W_O back to the residual stream.")
    c = st.columns(3)
    layer = c[0].selectbox("Layer", list(range(model.n_layer)), key="learn_layer")
    head = c[1].selectbox("Head", list(range(model.n_head)), key="learn_head")
    position = c[2].selectbox("Query token", list(range(len(ids))), index=len(ids) - 1,
                              format_func=lambda i: labels[i], key="learn_pos")
    try:
        w = explain.attention_walkthrough(model, ids, layer, head, position)
    except ModelError as e:
        st.info(str(e))
        st.stop()
    T = len(w.tokens)
    kv = model.config.kv_heads
    if kv < model.n_head:
        st.info(f"**Grouped-query attention**: {model.name}'s {model.n_head} query heads share {kv} key/value "
                f"heads ({model.n_head // kv} query heads each), so head {head} reads the keys and values of "
                f"key/value head {w.kv_head}. The KV cache keeps only those {kv} per layer, "
                f"[batch, {kv}, past, {model.head_dim}] instead of [batch, {model.n_head}, past, {model.head_dim}]: "
                f"{model.n_head // kv}x less memory per cached token (Ainslie et al. 2023).")
    st.markdown(f"**1. The query** of token {labels[position]} in head {head} of layer {layer} "
                f"(d_k = {w.q.size}):  \n`q = {vector(w.q)}`")
    st.markdown("**2. Every token's key**, first rows:  \n" + "  \n".join(
        f"`k[{labels[j]}] = {vector(w.k[j], 6)}`" for j in range(min(T, 4))))
    table = [{"token": labels[j], "q·k": round(float(w.scores[j]), 3), "÷√d_k": round(float(w.scaled[j]), 3),
              "masked": "−∞ (future)" if not w.allowed[j] else round(float(w.masked[j]), 3),
              "softmax": round(float(w.probs[j]), 4)} for j in range(T)]
    st.markdown(f"**3. Scores, scaling by 1/√{w.q.size} = {w.scale:.3f}, the causal mask, softmax:**")
    st.dataframe(table, hide_index=True)
    fig = figure([dict(type="bar", x=labels, y=w.probs, name="softmax (this page)"),
                  dict(type="scatter", x=labels, y=w.graph_row, mode="markers", name="Attention page's row",
                       marker=dict(symbol="x", size=10, color="#dc2626"))],
                 ytitle="attention weight", height=260, margin=dict(t=10, b=10))
    st.plotly_chart(fig, width="stretch", key="learn_attn_row")
    diff = float(np.abs(w.probs - w.graph_row).max())
    st.caption(f"The row above is row {position} of the heatmap on the Attention page (layer {layer}, head {head}); "
               f"largest difference between this step-by-step softmax and the model's own: {diff:.1e}.")
    st.markdown(f"**4. Weighted sum of values**: Σ_j softmax_j · v_j =  \n`{vector(w.head_output)}`  \n"
                f"(the model's own head output: `{vector(w.graph_head_output)}`)")
    st.markdown(f"**5. All {model.n_head} heads side by side** (concat, d = {w.heads.size}):  \n`{vector(w.heads)}`  \n"
                f"**then W_O** projects them into what attention adds to the residual stream:  \n`{vector(w.projected)}`")
    st.page_link("playground/attention.py", label="Go deeper: every head's map on the Attention page", icon="🔍")

# ---------------------------------------------------------------------------------------------------
elif section == "logits":
    st.header("From logits to a token")
    st.latex(r"p_i = \mathrm{softmax}(z/T)_i = \frac{e^{z_i/T}}{\sum_j e^{z_j/T}},\qquad "
             r"H(p) = -\sum_i p_i \ln p_i")
    st.markdown("The last layer gives one score (logit) per vocabulary entry. Softmax turns scores into "
                "probabilities; temperature T divides the logits first: T < 1 sharpens, T > 1 flattens, and "
                "T → 0 is greedy (always the most likely token).")
    logits, _ = model.next_logits(ids)
    t = knob_slider(st, "temperature", "learn_temp", lo=0.05, hi=2.0)
    k = knob_slider(st, "top_k", "learn_topk", hi=50)
    result = run_pipeline(logits, SamplerConfig(temperature=t, top_k=k), history=ids)
    probs = result.final.probs
    top = np.argsort(-probs)[:12]
    names = [visible(model.tokenizer.token_text(int(i))) for i in top]
    fig = figure([dict(type="bar", x=names, y=softmax(logits)[top], name="softmax(z), T = 1"),
                  dict(type="bar", x=names, y=probs[top], name=f"after T = {t}" + (f", top-k {k}" if k else ""))],
                 ytitle="probability", height=300, margin=dict(t=10, b=10), barmode="group")
    st.plotly_chart(fig, width="stretch", key="learn_probs")
    temps = np.linspace(0.1, 2.0, 40)
    ent = entropy_by_temperature(logits, temps)
    fig = figure([dict(type="scatter", x=temps, y=ent, mode="lines")], xtitle="temperature", ytitle="entropy (nats)",
                 shapes=[dict(type="line", x0=t, x1=t, yref="paper", y0=0, y1=1, line=dict(dash="dot"))],
                 height=240, margin=dict(t=10, b=10))
    st.plotly_chart(fig, width="stretch", key="learn_entropy")
    st.caption(f"Entropy now {entropy(np.log(np.maximum(probs, 1e-300))):.3f} nats (at most ln V = "
               f"{math.log(model.vocab_size):.3f} for a uniform guess); {result.final.kept} tokens still possible.")
    st.subheader("Greedy, sampling and beam search on your text")
    try:
        greedy = complete(model, ids, GenerationConfig(max_new_tokens=40, sampler=SamplerConfig(temperature=0), top_n=0), lim)
        sampled = complete(model, ids, GenerationConfig(max_new_tokens=40, sampler=SamplerConfig(temperature=t, top_k=k),
                                                        seed=0, top_n=0), lim)
        beam = [e for e in beam_search(model, ids, width=4, max_new_tokens=40, limits=lim)][-1]
        st.dataframe([
            {"strategy": "greedy (T → 0)", "text": greedy.text, "log p": round(greedy.total_logprob, 2)},
            {"strategy": f"sampling (T = {t}, seed 0)", "text": sampled.text, "log p": round(sampled.total_logprob, 2)},
            {"strategy": "beam search (width 4)", "text": beam.texts[0], "log p": round(beam.hypotheses[0].sum_logprob, 2)},
        ], hide_index=True)
        st.caption("Beam search keeps the 4 best partial texts by total log-probability; it usually finds a more "
                   "likely text than greedy, and a blander one than sampling.")
    except PlaygroundError as e:
        st.info(str(e))
    st.markdown("Samplers people tune today go further. **Top-nσ** (Tang et al. 2024) keeps the tokens whose logit "
                "is within n standard deviations of the best one, a cut that temperature cannot widen. **XTC** "
                "(exclude top choices) sometimes removes every very likely token but the least likely of them, to "
                "steer away from the most predictable continuation. **DRY** (don't repeat yourself) penalises the "
                "token that would continue a run of text already written, more steeply the longer the run. The "
                "order of the stages matters: temperature before top-p or min-p changes which tokens they keep.")
    st.page_link("playground/generate.py", label="Go deeper: every sampler stage, step by step, on the Generate page",
                 icon="🎲")

# ---------------------------------------------------------------------------------------------------
elif section == "loss":
    st.header("The training objective")
    st.latex(r"\mathcal{L} = -\frac{1}{N}\sum_{t=1}^{N} \ln p_\theta(x_t \mid x_{<t}),\qquad "
             r"\mathrm{PPL} = e^{\mathcal{L}},\qquad "
             r"\mathrm{bits/byte} = \frac{\mathcal{L}}{\ln 2}\cdot\frac{\text{tokens}}{\text{bytes}}")
    st.markdown("Training makes the model assign high probability to each next token of the training text: "
                "the loss is the mean of −ln p(correct token). Perplexity is the number of equally likely "
                "choices that would be as uncertain. Bits per byte divides out the tokenizer, so models with "
                "different vocabularies can be compared.")
    try:
        s = model.score(prompt)
    except ModelError as e:
        st.info(str(e))
        st.stop()
    rows = [{"token": visible_text(model.tokenizer.token_text(tok)), "p(correct)": round(math.exp(lp), 4),
             "−ln p": round(-lp, 3)} for tok, lp in zip(s.tokens[1:], s.logprobs)]
    st.dataframe(rows, hide_index=True, height=260)
    m = st.columns(3)
    m[0].metric("loss (mean −ln p)", f"{s.mean_nll:.3f} nats")
    m[1].metric("perplexity = e^loss", f"{s.perplexity:.2f}")
    m[2].metric("bits per byte", f"{s.bits_per_byte:.3f}")
    st.subheader("Try this: the same text under another tokenizer")
    others = [n for n in model_names() if n != model.name]
    if others:
        other = model_by_name(st.selectbox("Compare with", others, key="learn_other"))
        try:
            o = other.score(prompt)
            st.dataframe([{"model": mm.name, "tokens": len(sc.tokens), "loss per token": round(sc.mean_nll, 3),
                           "perplexity": round(sc.perplexity, 2), "bits per byte": round(sc.bits_per_byte, 3)}
                          for mm, sc in ((model, s), (other, o))], hide_index=True)
            st.caption("Loss per token is not comparable across tokenizers (a BPE token carries more text than a "
                       "byte); bits per byte is.")
        except ModelError as e:
            st.info(str(e))
    st.page_link("playground/models.py", label="Go deeper: the model card and its training curve", icon="📦")

# ---------------------------------------------------------------------------------------------------
elif section == "scaling":
    st.header("Scaling")
    st.latex(r"L(N) = E + \frac{A}{N^{\alpha}},\qquad L(N, D) = E + \frac{A}{N^{\alpha}} + \frac{B}{D^{\beta}},"
             r"\qquad C \approx 6ND")
    st.markdown("Loss falls as a power law in parameters N, training tokens D and compute C (Kaplan et al. 2020). "
                "For a fixed compute budget, Hoffmann et al. 2022 (Chinchilla) found parameters and tokens "
                "should grow together, about **20 tokens per parameter**: many earlier models were too big "
                "for their data.")
    sweeps = catalog.list_sweeps()
    if sweeps:
        report, problem = scaling_report(sweeps[0].path)     # stored fits only: this page never fits
        if report and report.chinchilla:
            law = report.chinchilla
            st.markdown(f"Fitted on the project's own sweep ({len(report.records)} runs on tiny shakespeare): "
                        f"`{law.describe()}`, so N_opt ∝ C^{law.a:.2f}.")
            log_c = st.slider("Try this: a compute budget (log10 FLOPs)", 10.0, 20.0, 13.0, 0.5, key="learn_budget")
            a = scaling.allocate(law, 10 ** log_c)
            st.markdown(f"At {10 ** log_c:.1g} FLOPs this fit says: **N ≈ {a.n:,.0f}** parameters, "
                        f"**D ≈ {a.d:,.0f}** tokens ({a.tokens_per_parameter:.0f} per parameter), loss ≈ {a.loss:.3f}. "
                        f"This model has {model.card['parameters']['total']:,} parameters and saw "
                        f"{model.card['training'].get('tokens_seen') or 0:,} tokens.")
            non_emb, _ = scaling_report(sweeps[0].path, "non_embedding")
            rows = {r.key: r for r in scaling.tokens_per_parameter({"total": report, "non_embedding": non_emb},
                                                                   budgets=(10 ** log_c,), exact=False)}
            mine = [rows.get(f"sweep:{law.method}:{k}") for k in ("total", "non_embedding")]
            hoffmann, nanochat = rows["hoffmann2022"], [r for k, r in rows.items() if k.startswith("reported:")][1:]
            counted = (f"all-parameter fit says {mine[0].low:.0f} tokens per parameter" +
                       (f" and its non-embedding fit {mine[1].low:.0f} (two separate fits of the same runs, whose "
                        f"exponents' intervals are wide enough that they need not agree)" if mine[1] else ""))
            st.markdown(f"**What the 20 depends on.** The ratio divides D by N, so what counts as N moves it "
                        f"(embeddings are a large share of a small model's parameters). At this budget the sweep's "
                        f"{counted}. nanochat's log reports "
                        f"{' / '.join(f'{r.low:g}-{r.high:g}' for r in nanochat)} tokens per parameter on one sweep, "
                        f"counting all parameters / non-embedding / transformer-only; and Hoffmann et al.'s own "
                        f"approach-3 constants give {hoffmann.low:.0f} to {hoffmann.high:.0f} across 1e18-1e24 "
                        f"FLOPs rather than 20, an inconsistency Besiroglu et al. (2024) corrected by refitting.")
        elif problem or report:
            st.info(problem or "; ".join(report.problems.values()))
            if problem:
                st.button("Look again", key="learn_scaling_refresh",
                          help="Reads the stored fits again (a background fit stores them when it is done).")
    st.page_link("playground/scaling.py", label="Go deeper: fits, IsoFLOP curves and the frontier on the Scaling page",
                 icon="📈")

# ---------------------------------------------------------------------------------------------------
elif section == "post":
    st.header("After pre-training: demonstrations, preferences, rewards")
    post = model.card.get("posttraining") or {}
    st.markdown("A pre-trained model continues text. Post-training makes it answer the way people prefer: first "
                "**supervised fine-tuning** on demonstrations, then **preferences**, through a reward model and RL "
                "(RLHF) or directly (DPO). Below, your text is the prompt; write two responses and say which is "
                "better. Every number is this model's.")
    left, right = st.columns(2)
    chosen = left.text_area("Chosen response (the better one)", "\nShort lines.\nLike these.\n", height=80,
                            max_chars=400, key="learn_chosen")
    rejected = right.text_area("Rejected response", " and so it went on and on in one long line without a stop",
                               height=80, max_chars=400, key="learn_rejected")
    names = [n for n in model_names() if n != model.name]
    base = (post.get("base") or {}).get("name")
    options = ["(none)"] + names
    ref_name = st.selectbox("Reference model (DPO's frozen copy; for a post-trained model, the one it started from)",
                            options, index=options.index(base) if base in options else 0, key="learn_ref")
    beta = st.slider("β", 0.01, 1.0, float(post.get("beta") or 0.1), 0.01, key="learn_beta",
                     help="How far the policy may move from the reference: the strength of the KL term.")
    try:
        walk = explain.preference_walkthrough(model, None if ref_name == "(none)" else model_by_name(ref_name),
                                              prompt, chosen, rejected, beta)
    except (ModelError, TokenizerError) as e:
        st.info(str(e))
        st.stop()
    st.subheader("1. Supervised fine-tuning: the loss on the response only")
    st.latex(r"\mathcal{L}_\text{SFT} = -\frac{1}{|y|}\sum_{t \in y} \ln \pi_\theta(y_t \mid x, y_{<t})")
    st.markdown(f"The prompt x is given, not generated, so its tokens are masked out of the loss: training on them "
                f"would teach the model to write prompts. On your chosen response: **{walk.sft_loss:.3f} nats** per token "
                f"over {walk.chosen.tokens} response tokens, against {walk.chosen.whole_loss:.3f} over prompt and "
                f"response together (what pre-training counts).")
    st.subheader("2. A reward model: Bradley-Terry")
    st.latex(r"P(y^+ \succ y^-) = \sigma\big(r(x, y^+) - r(x, y^-)\big),\qquad "
             r"\mathcal{L}_\text{RM} = -\ln \sigma\big(r(x, y^+) - r(x, y^-)\big)")
    st.markdown("A reward model is the language model's trunk with one number on top, trained on pairs people "
                "ranked; only the difference of two rewards matters.")
    st.subheader("3. RLHF and DPO: reward, but stay close to the reference")
    st.latex(r"\max_\pi\; \mathbb{E}\big[r(x, y)\big] - \beta\, \mathrm{KL}\big(\pi \,\|\, \pi_\text{ref}\big)"
             r"\qquad \mathcal{L}_\text{DPO} = -\ln \sigma\Big(\beta \ln \frac{\pi(y^+)}{\pi_\text{ref}(y^+)}"
             r" - \beta \ln \frac{\pi(y^-)}{\pi_\text{ref}(y^-)}\Big)")
    st.markdown("Without the KL term (β = 0) a policy finds texts the reward model over-scores and drifts into "
                "nonsense: **reward hacking**. DPO solves the same objective without a reward model: "
                "β·ln π/π_ref *is* an implicit reward, and the Bradley-Terry loss is applied to it.")
    rows = [{"": "log π(y | x), this model", "chosen": round(walk.chosen.logprob, 3),
             "rejected": round(walk.rejected.logprob, 3)}]
    if walk.ref_chosen is not None:
        rows += [{"": f"log π_ref(y | x), {ref_name}", "chosen": round(walk.ref_chosen.logprob, 3),
                  "rejected": round(walk.ref_rejected.logprob, 3)},
                 {"": "implicit reward β·(log π − log π_ref)", "chosen": round(walk.reward_chosen, 4),
                  "rejected": round(walk.reward_rejected, 4)}]
    st.dataframe(rows, hide_index=True)
    if walk.ref_chosen is not None:
        m = st.columns(2)
        m[0].metric("P(chosen ≻ rejected) = σ(r⁺ − r⁻)", f"{walk.preference:.3f}")
        m[1].metric("DPO loss on this pair", f"{walk.dpo_loss:.4f}",
                    help="ln 2 = 0.693 when this model and the reference agree: DPO starts there.")
    else:
        st.caption("Pick a reference model to see DPO's implicit rewards and loss.")
    last = post.get("last_eval") or {}
    if "reward" in last and "kl" in last:
        st.markdown(f"This model was trained by **{post.get('stage', '').upper()}** at β = {post.get('beta')}: at its last "
                    f"evaluation its reward was {last['reward']:.3f} and its KL to the reference {last['kl']:.2f} nats, "
                    f"so the objective r − β·KL was {last['reward'] - post.get('beta', 0) * last['kl']:.3f}.")
    st.page_link("playground/posttrain.py", label="Go deeper: train SFT, a reward model, DPO and PPO on the Post-train page",
                  icon="🎯")

# ---------------------------------------------------------------------------------------------------
elif section == "encoder":
    encoder_section.show(model, prompt)

# ---------------------------------------------------------------------------------------------------
else:
    st.header("Glossary")
    GLOSSARY = {
        "token": "The unit a model reads and writes: an integer id standing for a byte or a merged piece of text.",
        "embedding": "The vector a token id is turned into (a row of W_E); similar uses give similar vectors.",
        "residual stream": "The running vector per position that every layer reads from and adds to.",
        "attention head": "One softmax(QKᵀ/√d_k + M)V: decides, per position, which earlier positions to read.",
        "causal mask": "−∞ on scores of future positions, so a token only sees the past (what makes it a decoder).",
        "KV cache": "Keys and values of past positions kept between steps, so generating a token costs one position.",
        "bidirectional attention": "No causal mask: every position reads the whole text (an encoder, BERT); no KV cache.",
        "masked LM": "BERT's objective: hide 15 % of the tokens (80 % [MASK], 10 % random, 10 % kept), predict them from both sides.",
        "logits": "The unnormalized score per vocabulary entry; softmax turns them into probabilities.",
        "temperature": "Divides logits before softmax: lower is sharper, higher is flatter, 0 is greedy.",
        "top-k / top-p": "Keep only the k most likely tokens / the smallest set holding probability p, then renormalize.",
        "beam search": "Keep the w most likely partial texts at each step instead of one.",
        "cross-entropy loss": "Mean −ln p(correct next token), in nats per token.",
        "perplexity": "e^loss: as uncertain as a fair choice among this many tokens.",
        "bits per byte": "Loss in bits spread over the bytes of the text; comparable across tokenizers.",
        "BPE": "Byte-pair encoding: merge the most frequent adjacent pair, repeatedly, to build a vocabulary.",
        "RoPE": "Rotary position embedding: rotates q and k by position so their dot product depends on distance.",
        "scaling law": "A power law relating loss to parameters, data or compute.",
        "compute-optimal": "The N and D with the lowest loss for a fixed compute budget C ≈ 6ND.",
        "FLOPs": "Floating-point operations; training costs about 6 per parameter per token.",
        "SFT": "Supervised fine-tuning: more training on (prompt, response) demonstrations, the loss on the response only.",
        "reward model": "A model that scores a response; trained on ranked pairs with the Bradley-Terry loss.",
        "RLHF": "Reinforcement learning from human feedback: maximise reward − β·KL to the reference (PPO).",
        "DPO": "Direct preference optimisation: the RLHF objective reached with a classification loss on pairs.",
        "LoRA": "Low-rank adapters: train W + (α/r)·BA with B = 0 at first, a small share of the parameters.",
        "reward hacking": "A policy exploiting the reward model's mistakes, which the KL penalty holds back.",
    }
    st.dataframe([{"term": k, "meaning": v} for k, v in GLOSSARY.items()], hide_index=True)
    st.caption("Sources: Vaswani et al. 2017 (attention), Radford et al. 2019 (GPT-2), Sennrich et al. 2016 (BPE), "
               "Su et al. 2021 (RoPE), Holtzman et al. 2020 (top-p), Kaplan et al. 2020 and Hoffmann et al. 2022 "
               "(scaling), Ouyang et al. 2022 (RLHF), Rafailov et al. 2023 (DPO), Hu et al. 2021 (LoRA).")
