"""Compare: one prompt and seed through several decoding strategies, side by side, with metrics.

Holds the page: the settings (all in the URL), a column per strategy (its text, or the error that kept it
from running), the metrics table and each beam search's tree. Results are kept with the inputs that made
them and, once the settings change, shown as the previous settings' results until Run is pressed.

Deliberately not here: running and measuring the strategies (core.compare), beam search (core.generate).
"""

from pathlib import Path

import streamlit as st

from core.checks import PlaygroundError
from core.compare import CUSTOM, PRESETS, Inputs, Strategy, run
from core.generate import EARLY_STOPPING
from core.sampling import SamplerConfig
from playground.shared import (figure, knob_slider, model_key, open_page, starting_text, url_choice, url_choices,
                             url_int, url_text, visible)

EARLY_STOPPING_HELP = {
    "false": "False (Hugging Face's default): stop once no live beam can beat the worst finished one at its "
             "current length",
    "true": "True: stop as soon as `width` hypotheses have finished",
    "never": "never: with a length penalty > 0, keep going while a live beam could still win at the longest "
             "allowed length",
}
ENDED = {"eos": "at end-of-text", "stop": "at a stop string", "length": "at the token limit",
         "context": "at the model's context limit"}

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

per_row = 3
for start in range(0, len(outcomes), per_row):
    cols = st.columns(per_row)
    for col, o in zip(cols, outcomes[start:start + per_row]):
        col.markdown(f"**{o.strategy.name}**")
        if o.error:
            col.error(o.error)
            continue
        col.text(shown.inputs.prompt + o.text)
        col.caption(f"{len(o.token_ids)} tokens, ended {ENDED.get(o.finish_reason, o.finish_reason)}")

ran = [o for o in outcomes if not o.error]
if ran:
    st.subheader("Metrics")
    st.dataframe([{"strategy": o.strategy.name, "tokens": o.metrics.length,
                   "mean logprob": round(o.metrics.mean_logprob, 3), "perplexity": round(o.metrics.perplexity, 2),
                   "distinct-1": round(o.metrics.distinct_1, 3), "distinct-2": round(o.metrics.distinct_2, 3),
                   "distinct-3": round(o.metrics.distinct_3, 3),
                   "repeated 3-grams": round(o.metrics.repeated_3gram_rate, 3),
                   "ms/token": round(o.metrics.ms_per_token, 2)} for o in ran], hide_index=True)
    st.caption("Low perplexity with high repetition is the degenerate text greedy and beam search are known "
               "for; sampling trades likelihood for diversity. distinct-n: share of n-grams that are unique.")

for i, o in enumerate(ran):
    if not o.beam_steps:
        continue
    st.subheader(f"The search tree of {o.strategy.name}")
    steps = o.beam_steps[:40]
    # every parent-child edge in one trace (None breaks the line): one trace per edge is slow to draw
    xs, ys = [], []
    for s, step in enumerate(steps[1:], start=1):
        for rank, beam in enumerate(step.beams):
            xs += [s - 1, s, None]
            ys += [beam.parent, rank, None]
    traces = [dict(type="scatter", x=xs, y=ys, mode="lines", line=dict(color="#94a3b8", width=1),
                   showlegend=False, hoverinfo="skip")]
    for s, step in enumerate(steps):
        traces.append(dict(
            type="scatter", x=[s] * len(step.beams), y=list(range(len(step.beams))), mode="markers+text",
            text=[visible(label) for label in o.beam_labels[s]], textposition="top center",
            hovertext=[f"score {b.score:.3f}, logprob {b.sum_logprob:.2f}"
                       + (f" (finished {ENDED.get(b.end, '')})" if b.finished else "") for b in step.beams],
            marker=dict(size=8, color=["#16a34a" if b.finished else "#2563eb" for b in step.beams]),
            showlegend=False))
    st.plotly_chart(figure(traces, height=320, margin=dict(t=20, b=20), xaxis=dict(title=dict(text="step")),
                           yaxis=dict(autorange="reversed", title=dict(text="beam (best first)"))),
                    width="stretch", key=f"tree_{i}_{o.strategy.name}")
    st.caption("Blue: live beams, best first; green: hypotheses that finished at this step (at end-of-text, or "
               "cut at the limit). The answer is the best-scoring finished one, never an unfinished text.")
