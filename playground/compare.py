"""Compare: one prompt and seed through several decoding strategies, side by side, with metrics."""

import plotly.graph_objects as go
import streamlit as st

from core.compare import PRESETS, Strategy, compare
from core.runtime import ModelError
from core.sampling import SamplerConfig
from playground.shared import open_page, url_value, visible

model, lim = open_page("Compare decoding strategies",
                       "The same prompt, the same seed, the same model: only the decoding differs. Metrics are "
                       "computed the same way for every strategy, under the model's own distribution.")

prompt = st.text_area("Prompt", url_value("prompt", "ROMEO:\n"), max_chars=lim.max_prompt_chars, key="cmp_prompt")
c1, c2 = st.columns(2)
seed = c1.number_input("Seed", 0, 2**31 - 1, url_value("seed", 0, int), key="cmp_seed")
max_new = c2.slider("New tokens", 10, min(300, lim.max_new_tokens), min(100, lim.max_new_tokens), key="cmp_new")
wanted = url_value("strategies", "greedy,beam 4,top-p 0.9,min-p 0.1").split(",")
names = st.multiselect("Strategies", list(PRESETS), default=[w for w in wanted if w in PRESETS],
                       max_selections=lim.max_strategies, key="cmp_strategies")
with st.expander("Custom strategy"):
    use_custom = st.checkbox("Include a custom strategy", key="cmp_custom")
    k1, k2, k3, k4 = st.columns(4)
    custom = dict(temperature=k1.slider("temperature", 0.0, 2.0, 0.8, 0.05, key="cmp_t"),
                  top_k=k2.slider("top-k", 0, 200, 0, key="cmp_k"),
                  top_p=k3.slider("top-p", 0.01, 1.0, 1.0, 0.01, key="cmp_p"),
                  min_p=k4.slider("min-p", 0.0, 1.0, 0.05, 0.01, key="cmp_minp"))
st.query_params.update({"prompt": prompt, "seed": str(seed), "strategies": ",".join(names)})

strategies = [PRESETS[n] for n in names]
if use_custom:
    strategies.append(Strategy("custom", SamplerConfig(**custom)))

if st.button("Run", type="primary", key="cmp_run") or "cmp_result" not in st.session_state:
    try:
        st.session_state["cmp_result"] = compare(model, prompt, strategies, max_new, int(seed), lim)
    except (ValueError, ModelError) as e:
        st.session_state["cmp_result"] = None
        st.warning(str(e))
outcomes = st.session_state.get("cmp_result") or []

per_row = 3
for start in range(0, len(outcomes), per_row):
    cols = st.columns(per_row)
    for col, o in zip(cols, outcomes[start:start + per_row]):
        col.markdown(f"**{o.strategy.name}**")
        col.text(prompt + o.text)

if outcomes:
    st.subheader("Metrics")
    st.dataframe([{"strategy": o.strategy.name, "tokens": o.metrics.length,
                   "mean logprob": round(o.metrics.mean_logprob, 3), "perplexity": round(o.metrics.perplexity, 2),
                   "distinct-1": round(o.metrics.distinct_1, 3), "distinct-2": round(o.metrics.distinct_2, 3),
                   "distinct-3": round(o.metrics.distinct_3, 3),
                   "repeated 3-grams": round(o.metrics.repeated_3gram_rate, 3),
                   "ms/token": round(o.metrics.ms_per_token, 2)} for o in outcomes], hide_index=True)
    st.caption("Low perplexity with high repetition is the degenerate text greedy and beam search are known "
               "for; sampling trades likelihood for diversity. distinct-n: share of n-grams that are unique.")

for o in outcomes:
    if not o.beam_steps:
        continue
    st.subheader(f"The search tree of {o.strategy.name}")
    fig = go.Figure()
    shown = o.beam_steps[:40]
    for s, step in enumerate(shown):
        for rank, beam in enumerate(step.beams):
            if s > 0 and beam.parent is not None:
                fig.add_trace(go.Scatter(x=[s - 1, s], y=[beam.parent, rank], mode="lines",
                                         line=dict(color="#94a3b8", width=1), showlegend=False, hoverinfo="skip"))
    for s, step in enumerate(shown):
        fig.add_trace(go.Scatter(
            x=[s] * len(step.beams), y=list(range(len(step.beams))), mode="markers+text",
            text=[visible(model.tokenizer.decode([b.tokens[-1]])) for b in step.beams], textposition="top center",
            hovertext=[f"score {b.score:.3f}, logprob {b.sum_logprob:.2f}" + (" (finished)" if b.finished else "")
                       for b in step.beams],
            marker=dict(size=8, color=["#16a34a" if b.finished else "#2563eb" for b in step.beams]),
            showlegend=False))
    fig.update_yaxes(autorange="reversed", title="beam (best first)")
    fig.update_layout(height=320, xaxis_title="step", margin=dict(t=20, b=20))
    st.plotly_chart(fig, width="stretch", key=f"tree_{o.strategy.name}")
