"""Compare: one prompt and seed through several decoding strategies, side by side, with metrics.

Holds the page: the settings (all in the URL), a column per strategy (its text coloured by each token's
probability under the model, or the error that kept it from running), one token of any text with the
model's alternatives there and a way to continue from it on the Generate page, the metrics table and each
beam search's tree. Results are kept with the inputs that made them and, once the settings change, shown
as the previous settings' results until Run is pressed.

Deliberately not here: running, scoring and measuring the strategies, and laying out the beam tree
(core.compare), beam search (core.generate).
"""

import math
from pathlib import Path

import streamlit as st

from core.checks import PlaygroundError
from core.compare import CUSTOM, PRESETS, Inputs, Strategy, continuation_prompt, run
from core.generate import EARLY_STOPPING, Alternative
from core.sampling import KNOBS, SamplerConfig
from playground.shared import (CONTEXT_BG, figure, knob_slider, link_params, model_key, open_page, prob_colour,
                               starting_text, token_alternatives, tokens_html, url_choice, url_choices, url_int,
                               url_text, visible, visible_text)

EARLY_STOPPING_HELP = {
    "false": "False (Hugging Face's default): stop once no live beam can beat the worst finished one at its "
             "current length",
    "true": "True: stop as soon as `width` hypotheses have finished",
    "never": "never: with a length penalty > 0, keep going while a live beam could still win at the longest "
             "allowed length",
}
ENDED = {"eos": "at end-of-text", "stop": "at a stop string", "length": "at the token limit",
         "context": "at the model's context limit"}
# the beam tree's nodes by kind: mid-tone colours that read on a light and a dark background alike
NODE_STYLE = {
    "prompt": dict(name="prompt", symbol="square", color="#64748b", size=10),
    "extended": dict(name="kept in the beam", symbol="circle", color="#3b82f6", size=7),
    "pruned": dict(name="pruned (dropped from the beam)", symbol="x-thin-open", color="#ef4444", size=9),
    "stopped": dict(name="live when the search stopped", symbol="circle-open", color="#a855f7", size=9),
    "finished": dict(name="finished (score)", symbol="diamond", color="#22c55e", size=12),
}
KIND_HOVER = {"prompt": "the prompt", "extended": "kept in the beam and extended",
              "pruned": "pruned: no continuation of it made the beam at the next step",
              "stopped": "still live when the search stopped: unfinished, so never returned",
              "finished": "finished"}
BEST = "#f59e0b"            # the returned text's path

model, lim = open_page("Compare decoding strategies",
                       "The same prompt, the same seed, the same model: only the decoding differs. Metrics are "
                       "computed the same way for every strategy, under the model's own distribution.")

prompt = st.text_area("Prompt", url_text("prompt", starting_text(model, "ROMEO:\n"), lim.max_prompt_chars), max_chars=lim.max_prompt_chars, key="cmp_prompt")
c1, c2 = st.columns(2)
seed = c1.number_input("Seed", 0, 2**31 - 1, url_int("seed", 0, 0, 2**31 - 1), key="cmp_seed")
max_new = c2.slider("New tokens", 10, min(300, lim.max_new_tokens), min(100, lim.max_new_tokens), key="cmp_new")
wanted = url_choices("strategies", ["greedy", "beam 4", "top-p 0.9", "min-p 0.1"], list(PRESETS), lim.max_strategies)
s1, s2 = st.columns([3, 1])
names = s1.multiselect("Strategies", list(PRESETS), default=wanted,
                       max_selections=lim.max_strategies, key="cmp_strategies")
es_key = s2.selectbox("Beam early stopping", list(EARLY_STOPPING),
                      index=list(EARLY_STOPPING).index(url_choice("early_stopping", "false", list(EARLY_STOPPING))),
                      format_func=lambda k: k.capitalize() if k != "never" else k, key="cmp_es",
                      help="When beam search stops, by Hugging Face's `early_stopping` rule:\n\n"
                           + "\n\n".join(f"- {v}" for v in EARLY_STOPPING_HELP.values()))
early_stopping = EARLY_STOPPING[es_key]
with st.expander("Custom strategy"):
    use_custom = st.checkbox("Include a custom strategy", key="cmp_custom")
    k1, k2, k3, k4 = st.columns(4)
    custom = dict(temperature=knob_slider(k1, "temperature", "cmp_t", 0.8), top_k=knob_slider(k2, "top_k", "cmp_k"),
                  top_p=knob_slider(k3, "top_p", "cmp_p"), min_p=knob_slider(k4, "min_p", "cmp_minp", 0.05))
st.query_params.update({"prompt": prompt, "seed": str(seed), "strategies": ",".join(names),
                        "early_stopping": es_key})
st.caption(f"Beam search follows Hugging Face's rules with `early_stopping={early_stopping!r}`"
           f"{' (its default)' if es_key == 'false' else ''}: {EARLY_STOPPING_HELP[es_key].split(': ', 1)[1]}. "
           f"It returns the best *finished* text.")

strategies = [PRESETS[n] for n in names]
if use_custom:
    strategies.append(Strategy(CUSTOM, SamplerConfig(**custom)))
current = Inputs(model_key(model), prompt, tuple(strategies), int(seed), int(max_new), early_stopping)

if st.button("Run", type="primary", key="cmp_run") or "cmp_result" not in st.session_state:
    st.session_state.setdefault("cmp_result", None)
    try:
        st.session_state["cmp_result"] = run(model, current, lim)
    except PlaygroundError as e:        # e.g. one strategy too many (the custom one counts): the old results stay
        st.warning(str(e))
shown = st.session_state.get("cmp_result")
outcomes = shown.outcomes if shown is not None else []
if shown is not None and shown.inputs != current:
    changed = [what for what, differs in [
        ("the model", shown.inputs.model != current.model), ("the prompt", shown.inputs.prompt != current.prompt),
        ("the strategies", shown.inputs.strategies != current.strategies), ("the seed", shown.inputs.seed != current.seed),
        ("the number of new tokens", shown.inputs.max_new_tokens != current.max_new_tokens),
        ("the early-stopping rule", shown.inputs.early_stopping != current.early_stopping)] if differs]
    st.warning(f"These results are for the previous settings ({', '.join(changed)} changed since): press Run to "
               f"compare with the current ones. They were made by `{Path(shown.inputs.model).name}` from "
               f"the prompt shown in each column.", icon="⏳")

def token_title(s) -> str:
    """A token chip's hover: its probability under the model and the model's top alternatives there."""
    alts = ", ".join(f"{a.text!r} {a.prob:.2f}" for a in s.alternatives[:5])
    return f"p={s.raw_prob:.3f} (log p {s.raw_logprob:.2f}), entropy {s.entropy:.2f} nats; top: {alts}"


per_row = 3
for start in range(0, len(outcomes), per_row):
    cols = st.columns(per_row)
    for col, o in zip(cols, outcomes[start:start + per_row]):
        col.markdown(f"**{o.strategy.name}**")
        if o.error:
            col.error(o.error)
            continue
        pieces = [(shown.inputs.prompt, "prompt", CONTEXT_BG)]
        pieces += [(s.text, token_title(s), prob_colour(s.raw_prob)) for s in o.tokens]
        col.markdown(tokens_html(pieces), unsafe_allow_html=True)
        col.caption(f"{len(o.token_ids)} tokens, ended {ENDED.get(o.finish_reason, o.finish_reason)}")

ran = [o for o in outcomes if not o.error]
if ran:
    st.caption("Colour: each token's probability under the model (red unlikely, green likely), whichever strategy "
               "chose it; hover a token for its alternatives.")
    st.subheader("One token and its alternatives")
    names = [o.strategy.name for o in ran]
    p1, p2 = st.columns([1, 3])
    o = ran[names.index(p1.selectbox("Strategy", names, key="cmp_pick"))]
    # a slider needs two stops; a one-token text has just its token
    i = 0 if len(o.tokens) == 1 else p2.select_slider(
        "Token", options=range(len(o.tokens)), key="cmp_token",
        format_func=lambda k, o=o: f"{k + 1}: {visible_text(o.tokens[k].text)}",   # this o, not a later loop's
        help="Slide through the chosen strategy's tokens, or focus it and use the arrow keys.")
    chosen = o.tokens[i]
    left, right = st.columns([3, 2])
    prompt_there, cut = continuation_prompt(shown.inputs.prompt, o, i, lim.max_prompt_chars)
    token_alternatives(left, prompt_there, Alternative(chosen.token_id, chosen.text, chosen.raw_prob),
                       token_title(chosen), chosen.alternatives, "cmp_alternatives")
    left.caption(f"The model's {len(chosen.alternatives)} likeliest tokens at position {i + 1} of "
                 f"{o.strategy.name}'s text (entropy {chosen.entropy:.2f} nats).")
    sampler = SamplerConfig() if o.strategy.beam_width else o.strategy.sampler     # a beam's sampler is unused
    if right.button("Continue from here in Generate", key="cmp_continue", icon="🎲"):
        params = link_params(shown.inputs.model)        # the model that wrote this text, not the sidebar's now
        params.update({k: str(getattr(sampler, k)) for k, knob in KNOBS.items() if getattr(sampler, k) != knob.default})
        params.update(prompt=prompt_there, seed=str(shown.inputs.seed))
        st.switch_page("playground/generate.py", query_params=params)
    right.caption("The text before this token becomes Generate's prompt: its next-token candidates there are these "
                  "alternatives; force another one to branch. "
                  + ("Beam search has no sampler knobs: Generate opens with its own." if o.strategy.beam_width
                     else f"Generate opens with {o.strategy.name}'s sampler knobs and this seed: where the text "
                          f"tokenizes as it did here, its next draw is this token again."))
    if cut:
        right.caption(f"The text is longer than the {lim.max_prompt_chars:,} characters a prompt may have here: "
                      f"its start is left out.")

    st.subheader("Metrics")
    st.dataframe([{"strategy": o.strategy.name, "tokens": o.metrics.length,
                   "mean logprob": round(o.metrics.mean_logprob, 3), "perplexity": round(o.metrics.perplexity, 2),
                   "distinct-1": round(o.metrics.distinct_1, 3), "distinct-2": round(o.metrics.distinct_2, 3),
                   "distinct-3": round(o.metrics.distinct_3, 3),
                   "repeated 3-grams": round(o.metrics.repeated_3gram_rate, 3),
                   "ms/token": round(o.metrics.ms_per_token, 2)} for o in ran], hide_index=True, key="cmp_metrics")
    st.caption("Low perplexity with high repetition is the degenerate text greedy and beam search are known "
               "for; sampling trades likelihood for diversity. distinct-n: share of n-grams that are unique.")


def node_hover(n) -> str:
    if n.kind == "prompt":
        return "the prompt"
    what = KIND_HOVER[n.kind]
    if n.kind == "finished":
        what += f" {ENDED.get(n.end, n.end)}" + (f", #{n.rank} of the n-best" if n.rank else ", later outscored")
    return (f"token {visible(n.label)} (step {n.step})<br>log p {n.logprob:.3f} (p {math.exp(n.logprob):.3f})"
            f"<br>sum log p {n.sum_logprob:.2f} · score {n.score:.3f}<br>{what}"
            + ("<br><b>on the path of the returned text</b>" if n.best else ""))


for k, o in enumerate(ran):
    if o.tree is None:
        continue
    st.subheader(f"The search tree of {o.strategy.name}")
    nodes, edges = o.tree.nodes, o.tree.edges
    # every edge in one trace (None breaks the line): one trace per edge is slow to draw
    xs, ys, bx, by = [], [], [], []
    for p, c in edges:
        xs += [nodes[p].step, nodes[c].step, None]
        ys += [nodes[p].slot, nodes[c].slot, None]
        if nodes[c].best:
            bx += [nodes[p].step, nodes[c].step, None]
            by += [nodes[p].slot, nodes[c].slot, None]
    traces = [dict(type="scatter", x=xs, y=ys, mode="lines", line=dict(color="rgba(148,163,184,0.6)", width=1),
                   showlegend=False, hoverinfo="skip"),
              dict(type="scatter", x=bx, y=by, mode="lines", line=dict(color=BEST, width=4),
                   name="the returned text", hoverinfo="skip")]
    for kind, style in NODE_STYLE.items():
        group = [n for n in nodes if n.kind == kind]
        if not group:
            continue
        traces.append(dict(
            type="scatter", x=[n.step for n in group], y=[n.slot for n in group], mode="markers+text",
            name=style["name"], text=[visible(n.label) for n in group], textposition="top center",
            textfont=dict(size=10), hovertext=[node_hover(n) for n in group], hoverinfo="text",
            marker=dict(symbol=style["symbol"], color=style["color"], size=style["size"],
                        line=dict(color=[BEST if n.best else style["color"] for n in group],
                                  width=[3 if n.best else 1 for n in group]))))
    done = [n for n in nodes if n.kind == "finished"]
    traces.append(dict(type="scatter", x=[n.step for n in done], y=[n.slot for n in done], mode="text",
                       text=[f"  {n.score:.2f}" + (f" #{n.rank}" if n.rank else "") for n in done],
                       textposition="middle right", textfont=dict(size=10), showlegend=False, hoverinfo="skip"))
    last, rows = max(n.step for n in nodes), max(n.slot for n in nodes) + 1
    st.plotly_chart(figure(traces, height=max(280, 22 * rows + 110), margin=dict(t=30, b=40, l=10, r=10),
                           legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
                           xaxis=dict(title=dict(text="tokens generated"),
                                      range=[-0.7, last + 3 + 0.07 * last]),   # room for the scores
                           yaxis=dict(autorange="reversed", showticklabels=False, showgrid=False, zeroline=False)),
                    width="stretch", key=f"tree_{k}_{o.strategy.name}")
    st.caption("Each step keeps the best-scoring continuations of the live beams; a branch that stops short was "
               "pruned (no continuation of it made the beam). Finished hypotheses are diamonds with their score "
               "(sum log p / length ** length penalty) and rank; the answer is the best finished one, never an "
               "unfinished text, and its path is drawn thick. Hover a node for its token, log-prob and score.")
