"""Inside the model: the logit lens, head ablation, activation patching, head scores and (for a mixture of
experts) the router's choices on your prompt.

Holds the page: a prompt (in the URL), and a tab per instrument with its figure and a sentence or two on
what it shows. Results are kept per model, prompt and settings in a process-wide cache (a rerun of the
page, or another visitor asking the same, costs nothing).

Deliberately not here: the instruments themselves (core.interpret, core.moe: onnxruntime only).
"""

from __future__ import annotations

import functools

import numpy as np
import streamlit as st

from core import interpret as I
from core import moe as M
from core.checks import PlaygroundError
from core.tokenizer import TokenizerError
from playground.shared import figure, open_page, starting_text, url_int, url_text, visible, visible_text

model, lim = open_page("Inside the model",
                       "Instruments from interpretability research, run on this model's own weights: what each "
                       "layer would predict, which heads matter, and where a change in the prompt makes its way "
                       "to the answer.", checkpoints=True)

LENS_COLUMNS = 32       # positions the lens grid shows at once (the last ones)
# one colour per expert, dark enough for white labels (Tableau 10, its yellow and pink swapped for darker ones)
EXPERT_COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#7f7f7f"]


@functools.lru_cache(maxsize=64)
def lens_of(m, ids: tuple, limits) -> I.LogitLens:
    return I.logit_lens(m, list(ids), 5, limits)


@functools.lru_cache(maxsize=64)
def ablation_of(m, ids: tuple, kind: str, target: int | None, limits) -> I.HeadAblation:
    return I.ablate_heads(m, list(ids), target, -1, kind, limits)


@functools.lru_cache(maxsize=32)
def patching_of(m, clean: tuple, corrupt: tuple, answer: int, wrong: int, limits) -> I.Patching:
    return I.patch(m, list(clean), list(corrupt), answer, wrong, limits)


@functools.lru_cache(maxsize=64)
def scores_of(m, ids: tuple, limits) -> I.HeadScores:
    return I.head_scores(m, list(ids), limits)


@functools.lru_cache(maxsize=64)
def routing_of(m, ids: tuple) -> M.TokenRouting:
    return M.route(m, list(ids))


def label(token: int) -> str:
    return visible(model.tokenizer.token_text(token))


def heatmap(z, x, y, title: str, key: str, **trace) -> None:
    fig = figure([dict(type="heatmap", z=z, x=x, y=y, **trace)], yaxis=dict(autorange="reversed", type="category"),
                 xaxis=dict(type="category"), title=dict(text=title), height=max(260, 28 * len(y) + 140),
                 margin=dict(t=50, b=10))
    st.plotly_chart(fig, width="stretch", key=key)


text = st.text_area("Prompt", url_text("text", starting_text(model, "ROMEO:\nBut soft, what light through yonder "
                                                           "window breaks"), lim.max_prompt_chars),
                    max_chars=lim.max_prompt_chars, key="inside_text")
st.query_params["text"] = text
try:
    all_ids = model.tokenizer.encode_prompt(text)
except TokenizerError as e:        # a task model's symbols, or text it cannot read
    st.error(str(e))
    st.stop()
if not all_ids:
    st.info("Type some text.")
    st.stop()
most = min(model.block_size, lim.max_inspect_tokens)
ids = all_ids[-most:]
if len(all_ids) > most:
    st.info(f"The prompt has {len(all_ids)} tokens; these instruments take at most {most} here, so the last {most} "
            f"are used.")
tokens = [f"{i}:{label(t)}" for i, t in enumerate(ids)]
L, H = model.n_layer, model.n_head
layers, heads = [f"L{l}" for l in range(L)], [f"H{h}" for h in range(H)]

try:
    I.Inspector(model, lim)
    blocked = None
except I.InterpretError as e:          # exported before the graphs existed, or too large for this server
    blocked = str(e)

t_lens, t_ablate, t_patch, t_scores, t_experts = st.tabs(["Logit lens", "Head ablation", "Activation patching",
                                                          "Head scores", "Experts"])

with t_lens:
    st.caption("Each row reads the residual stream at one point (after the embeddings, after each layer's attention "
               "and after its MLP) through the final norm and the unembedding, as if the model stopped there: the "
               "cell shows the token it would predict next, coloured by its probability. The last row is the "
               "model's actual prediction.")
    if blocked:
        st.warning(blocked)
    else:
        lens = lens_of(model, tuple(ids), lim)
        cols = slice(max(0, len(ids) - LENS_COLUMNS), len(ids))
        top = lens.top_ids[:, cols, 0]
        words = [[label(t) for t in row] for row in top]
        hover = [[" · ".join(f"{label(t)} {p:.2f}" for t, p in zip(lens.top_ids[r, c], lens.top_probs[r, c]))
                  for c in range(cols.start, cols.stop)] for r in range(len(lens.points))]
        heatmap(lens.top_probs[:, cols, 0], tokens[cols], lens.points, "Top next token per point (colour: its probability)",
                "inside_lens", text=words, texttemplate="%{text}", customdata=hover,
                hovertemplate="%{y} at %{x}<br>%{customdata}<extra></extra>", colorscale="Blues", zmin=0, zmax=1)
        if len(ids) > LENS_COLUMNS:
            st.caption(f"The last {LENS_COLUMNS} positions of {len(ids)}.")

with t_ablate:
    st.caption("Each head is removed in turn (its output set to zero, or to its average over this prompt's "
               "positions) and the model runs again: the map shows how much the log-probability of the predicted "
               "next token changes. Blue: the head was helping that prediction; red: it was working against it.")
    if blocked:
        st.warning(blocked)
    else:
        a1, a2 = st.columns(2)
        kind = a1.radio("Remove a head by", I.ABLATIONS, horizontal=True, key="inside_kind",
                        format_func=lambda k: {"zero": "zeroing it", "mean": "its mean output"}[k])
        target_text = a2.text_input("Target token (empty: the model's own prediction)", "", key="inside_target")
        try:
            target = I.single_token(model, target_text, "target") if target_text else None
            ab = ablation_of(model, tuple(ids), kind, target, lim)
            st.markdown(f"Target `{visible_text(model.tokenizer.token_text(ab.target))}` after the prompt: log-probability {ab.baseline:.3f} with every "
                        f"head in place.")
            worst = np.unravel_index(np.argmin(ab.effect), ab.effect.shape)
            span = max(1e-6, float(np.abs(ab.effect).max()))
            heatmap(ab.effect, heads, layers, "Change of the target's log-probability when a head is removed",
                    "inside_ablation", colorscale="RdBu", zmid=0, zmin=-span, zmax=span,
                    hovertemplate="%{y} %{x}: %{z:.4f}<extra></extra>")
            st.caption(f"The head that helps most: layer {worst[0]}, head {worst[1]} "
                       f"({ab.effect[worst]:+.3f} nats without it).")
        except I.InterpretError as e:
            st.warning(str(e))

with t_patch:
    st.caption("Activation patching: run a corrupted prompt, but copy one piece of the clean prompt's computation "
               "into it (one head's output, or the residual stream at one layer and position), and measure how much "
               "of the clean answer comes back: the logit difference between the clean and the corrupted answer, "
               "as a fraction (0: nothing, 1: all of it).")
    if blocked:
        st.warning(blocked)
    else:
        p1, p2 = st.columns(2)
        clean_text = p1.text_area("Clean prompt", url_text("clean", "ROMEO: I am here.\nJULIET: O Rom", lim.max_prompt_chars),
                                  max_chars=lim.max_prompt_chars, height=90, key="inside_clean")
        corrupt_text = p2.text_area("Corrupted prompt", url_text("corrupt", "PARIS: I am here.\nJULIET: O Par",
                                                                 lim.max_prompt_chars),
                                    max_chars=lim.max_prompt_chars, height=90, key="inside_corrupt")
        st.query_params["clean"], st.query_params["corrupt"] = clean_text, corrupt_text
        q1, q2, q3 = st.columns(3)
        answer_text = q1.text_input("Answer (empty: the clean run's prediction)", "", key="inside_answer")
        wrong_text = q2.text_input("Other answer (empty: the corrupted run's)", "", key="inside_wrong")
        pad = q3.checkbox("Left-pad the shorter prompt with spaces", key="inside_pad",
                          help="Patching pairs position t of one run with position t of the other, so the two prompts "
                               "need the same number of tokens.")
        try:
            clean = model.tokenizer.encode_prompt(clean_text)
            corrupt = model.tokenizer.encode_prompt(corrupt_text)
            if not clean or not corrupt:
                raise I.InterpretError("type a clean and a corrupted prompt")
            if pad:
                clean, corrupt = I.pad_to_same_length(clean, corrupt, I.pad_token(model))
            answer = I.single_token(model, answer_text) if answer_text else int(np.argmax(model.logits(clean)[0, -1]))
            wrong = (I.single_token(model, wrong_text, "other answer") if wrong_text
                     else int(np.argmax(model.logits(corrupt)[0, -1])))
            with st.spinner(f"Patching: {L * H + (L + 1) * len(corrupt)} runs of the corrupted prompt at most"):
                pt = patching_of(model, tuple(clean), tuple(corrupt), answer, wrong, lim)
            st.markdown(f"Logit difference `{visible_text(model.tokenizer.token_text(answer))}` − `{visible_text(model.tokenizer.token_text(wrong))}` at the last position: clean "
                        f"{pt.clean_diff:.3f}, corrupted {pt.corrupt_diff:.3f}.")
            if np.isnan(pt.heads_recovered).all():
                st.info("The two prompts give the same logit difference: there is nothing to recover. Choose answers "
                        "that the two prompts favour differently.")
            else:
                heatmap(pt.heads_recovered, heads, layers, "Recovered by patching each head's output (every position)",
                        "inside_patch_heads", colorscale="RdBu", zmid=0, hovertemplate="%{y} %{x}: %{z:.3f}<extra></extra>")
                heatmap(pt.resid_recovered, [f"{i}:{label(t)}" for i, t in enumerate(corrupt)],
                        [f"into L{l}" if l < L else "into the final norm" for l in range(L + 1)],
                        "Recovered by patching the residual stream entering each layer, per position",
                        "inside_patch_resid", colorscale="RdBu", zmid=0,
                        hovertemplate="%{y}, %{x}: %{z:.3f}<extra></extra>")
        except I.LengthMismatchError as e:
            st.warning(f"{e}.\n\nTick **Left-pad the shorter prompt with spaces** to do that here.")
        except PlaygroundError as e:        # also the model's own refusals (a prompt past its context)
            st.warning(str(e))

with t_scores:
    st.caption("How much each head attends in three well-known ways: to the previous token; to earlier copies of "
               "the current token (duplicate); to the token that came after an earlier copy of the current one "
               "(induction, which lets a model continue a pattern it has seen). Induction shows best on a random "
               "sequence repeated twice.")
    on = st.radio("Score on", ["a repeated random sequence", "the prompt"], horizontal=True, key="inside_on")
    try:
        if on == "the prompt":
            scored = ids
        else:
            n = st.slider("Random tokens (repeated once)", 2, max(2, most // 2),
                          url_int("repeat", min(20, max(2, most // 2)), 2, max(2, most // 2)), key="inside_repeat")
            st.query_params["repeat"] = str(n)
            scored = I.repeated_tokens(model, n, seed=0)
        sc = scores_of(model, tuple(scored), lim)
        cols = st.columns(3)
        for col, (name, values) in zip(cols, [("previous token", sc.previous), ("duplicate token", sc.duplicate),
                                              ("induction", sc.induction)]):
            with col:
                heatmap(values, heads, layers, name.capitalize(), f"inside_score_{name}", colorscale="Viridis",
                        zmin=0, zmax=1, hovertemplate="%{y} %{x}: %{z:.3f}<extra></extra>")
        if sc.repeats == 0:
            st.info("No token of this text occurs twice: duplicate and induction scores need repeats.")
    except I.InterpretError as e:
        st.warning(str(e))

with t_experts:
    st.caption("A mixture of experts replaces each block's MLP by several MLPs (the experts) and a router that sends "
               "each token to the k it scores highest, their outputs weighted by the router's probabilities: the "
               "parameters grow with the number of experts, a token's compute only with k. A load-balancing loss "
               "keeps the router from sending everything to a few of them.")
    try:
        rt = routing_of(model, tuple(ids))
    except M.NotAMixture as e:
        st.info(f"{str(e)[0].upper()}{str(e)[1:]}, such as **shakespeare-moe** in the model picker.")
    else:
        E, k = rt.n_experts, rt.experts.shape[-1]
        st.markdown(f"{E} experts per block and each token goes to {k} of them: "
                    f"{model.card['parameters']['active']:,} of the model's {model.card['parameters']['total']:,} "
                    f"parameters work on any one token.")
        cols = slice(max(0, len(ids) - LENS_COLUMNS), len(ids))
        first = rt.experts[cols, :, 0].T                                     # (L, T): each token's first choice
        hover = [[" · ".join(f"E{e} {w:.2f}" for e, w in zip(rt.experts[t, l], rt.weights[t, l]))
                  for t in range(cols.start, cols.stop)] for l in range(L)]
        heatmap(first, tokens[cols], layers, "The expert each token goes to first, per layer (hover: every chosen "
                "expert and its weight)", "inside_experts", text=[[f"E{e}" for e in row] for row in first],
                texttemplate="%{text}", customdata=hover, hovertemplate="%{y} at %{x}<br>%{customdata}<extra></extra>",
                colorscale=[[i / max(1, E - 1), EXPERT_COLOURS[i % len(EXPERT_COLOURS)]] for i in range(E)],
                zmin=0, zmax=max(1, E - 1), showscale=False, textfont=dict(color="white"))
        if len(ids) > LENS_COLUMNS:
            st.caption(f"The last {LENS_COLUMNS} positions of {len(ids)}.")
        shares = M.expert_shares(rt.experts, E)
        fig = figure([dict(type="bar", name=f"L{l}", x=[f"E{e}" for e in range(E)], y=shares[l]) for l in range(L)],
                     "expert", "share", barmode="group", height=260,
                     margin=dict(t=30, b=10), title=dict(text=f"Each expert's share of the prompt (balanced: {1 / E:.2f})"))
        st.plotly_chart(fig, width="stretch", key="inside_expert_shares")
        report = M.read_report(model.directory)
        if report:
            runs = report["models"]
            st.markdown(f"**Trained against a dense model** with the same active parameters, so the same FLOPs per "
                        f"token, on the same data for the same {report['steps']} steps of {report['batch']} "
                        f"sequences, from the same seed (`bench/moe_vs_dense.py`; the last point is the exact loss "
                        f"over the whole validation split):")
            curves = {n: [c for c in r["curve"] if c["step"] > 0] for n, r in runs.items()}   # step 0: ln V, off scale
            fig = figure([dict(type="scatter", mode="lines+markers", name=f"{n} ({r['parameters']['total']:,} "
                               f"parameters, {r['parameters']['active']:,} active)",
                               line=dict(dash="dash") if not r["model_config"].get("n_experts") else {},
                               x=[c["step"] for c in curves[n]], y=[c["val_loss"] for c in curves[n]])
                          for n, r in runs.items()], "step", "val loss (nats/token)", height=300,
                         margin=dict(t=10, b=10), legend=dict(orientation="h", y=1.15))
            st.plotly_chart(fig, width="stretch", key="inside_moe_curve")
            st.caption("Which tokens the trained router sends where, over the validation text: per expert, the "
                       "tokens it receives most as a first choice, with the share of that token's occurrences.")
            routing = report["routing"]
            rows = [{"expert": f"E{e}"} | {f"layer {l}": f"[{routing['shares'][l][e]:.0%} of tokens]  " + "  ".join(
                        f"{visible(t['token'])} {t['share']:.0%}" for t in layer[e][:6])
                        for l, layer in enumerate(routing["top_tokens"])}
                    for e in range(len(routing["top_tokens"][0]))]
            st.dataframe(rows, hide_index=True, width="stretch")
