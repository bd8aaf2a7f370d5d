"""Generate: step through generation one token at a time and see every stage of the sampler."""

import time

import streamlit as st

from core.checks import PlaygroundError
from core.generate import GenerationConfig
from core.sampling import KNOBS, SamplerConfig, entropy_by_temperature
from core.trace import Trace
from playground.shared import (figure, knob_slider, model_key, open_page, prob_colour, starting_text, tokens_html,
                             url_float, url_int, url_text, visible, visible_text)

model, lim = open_page("Generate, step by step",
                       "Each step: the model scores every token, the sampler stages reshape those scores, one token "
                       "is drawn. Click a candidate to force it; go back and choose differently to branch.", checkpoints=True)

with st.sidebar:
    st.subheader("Sampler")
    values = {}
    for key, knob in KNOBS.items():
        lo, hi, _ = knob.slider
        start = (url_int if knob.integer else url_float)(key, knob.default, lo, hi)
        values[key] = knob_slider(st, key, f"knob_{key}", start)
        if values[key] != knob.default:
            st.query_params[key] = str(values[key])
        elif key in st.query_params:
            del st.query_params[key]
    seed = st.number_input("Seed", 0, 2**31 - 1, url_int("seed", 0, 0, 2**31 - 1), help="Same seed, same choices: a "
                           "shared link replays exactly.", key="seed")
    st.query_params["seed"] = str(seed)

sampler = SamplerConfig(**values)
config = GenerationConfig(max_new_tokens=lim.max_new_tokens, sampler=sampler, seed=int(seed), top_n=10)
prompt = st.text_area("Prompt", url_text("prompt", starting_text(model, "ROMEO:\n"), lim.max_prompt_chars), max_chars=lim.max_prompt_chars, key="prompt")
st.query_params["prompt"] = prompt
path = model_key(model)


def current_trace() -> Trace | None:
    """The visitor's live trace (its KV cache and records kept in the session, so a click costs one decode
    step), or one restored from the session's saved state or a shared link, or a new one."""
    live = st.session_state.get("trace_live")
    if live is not None and live.source is model and live.prompt == prompt:
        live.config = config
        return live
    saved = st.session_state.get("trace")
    trace = None
    if saved and saved["model"] == path and saved["state"]["prompt"] == prompt:
        trace = Trace.from_dict(model, saved["state"], lim)
    elif "t" in st.query_params and not saved:
        try:
            trace = Trace.from_url(model, st.query_params["t"], lim)
        except PlaygroundError as e:
            st.warning(str(e))
        if trace is not None and trace.prompt != prompt:
            trace = None
    if trace is None:
        if not prompt:
            return None
        trace = Trace(model, prompt, config, lim)
    trace.config = config
    st.session_state["trace_live"] = trace
    return trace


def save(trace: Trace) -> None:
    st.session_state["trace_live"] = trace
    st.session_state["trace"] = {"model": path, "state": trace.to_dict()}
    st.query_params["t"] = trace.to_url()


def act(action: str, arg=None) -> None:
    """Button callbacks: one move on the live trace, then saved (runs before the page reruns)."""
    st.session_state["click_started"] = time.perf_counter()
    trace = current_trace()
    if trace is None:
        return
    if action in ("sample", "greedy", "run") and len(trace.tokens) >= lim.max_new_tokens:
        st.session_state["notice"] = f"This demo stops at {lim.max_new_tokens} generated tokens; go back or reset."
        return
    try:
        if action == "sample":
            trace.step()
        elif action == "greedy":
            trace.step(greedy=True)
        elif action == "run":
            trace.run(min(int(arg), lim.max_new_tokens - len(trace.tokens)))
        elif action == "back":
            trace.back()
        elif action == "forward":
            trace.forward()
        elif action == "force":
            trace.force(int(arg))
        elif action == "switch":
            trace.switch(st.session_state["branch"])
        elif action == "reset":
            trace = Trace(model, prompt, config, lim)
    except PlaygroundError as e:
        st.session_state["notice"] = str(e)
    save(trace)


if not prompt:
    st.info("Type a prompt to start.")
    st.stop()


def lens_view(ids: list[int]) -> None:
    """The next token's logit lens (core.interpret): each residual point's top tokens at the last position."""
    from core import interpret
    most = min(model.block_size, lim.max_inspect_tokens)
    try:
        lens = interpret.logit_lens(model, ids[-most:], 5, lim)
    except PlaygroundError as e:          # exported before the inspection graphs, or too large here
        st.info(str(e))
        return
    rows = [{"after": point, **{f"#{k + 1}": f"{visible_text(model.tokenizer.token_text(int(t)))}  {p:.2f}"
                               for k, (t, p) in enumerate(zip(lens.top_ids[i, -1], lens.top_probs[i, -1]))}}
            for i, point in enumerate(lens.points)]
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption("The last row is the model's own prediction (before the sampler); the rows above it stop early.")


@st.fragment
def stepper() -> None:
    trace = current_trace()
    if "notice" in st.session_state:
        st.warning(st.session_state.pop("notice"))
    b = st.columns([1, 1, 1.3, 0.8, 1, 1, 1])
    b[0].button("Sample one", on_click=act, args=("sample",), help="Draw the next token from the final distribution.")
    b[1].button("Greedy one", on_click=act, args=("greedy",), help="Take the most likely token after the penalties.")
    n = b[3].number_input("N", 1, 100, 10, label_visibility="collapsed", key="run_n")
    b[2].button(f"Run {n}", on_click=act, args=("run", n))
    b[4].button("Back", on_click=act, args=("back",), disabled=trace.cursor == 0)
    b[5].button("Forward", on_click=act, args=("forward",), disabled=trace.cursor >= len(trace.branch.tokens))
    b[6].button("Reset", on_click=act, args=("reset",))

    steps, view = trace.view()
    pieces = [(trace.prompt, "prompt", "#e5e7eb")]
    for s in steps:
        alts = ", ".join(f"{a.text!r} {a.prob:.2f}" for a in s.alternatives[:5])
        mark = " (forced)" if s.forced else ""
        pieces.append((s.text, f"id {s.token_id}{mark}: p={s.raw_prob:.3f}, entropy {s.entropy:.2f} nats; "
                               f"top: {alts}", prob_colour(s.raw_prob)))
    st.markdown(tokens_html(pieces), unsafe_allow_html=True)
    st.caption(f"{len(steps)} token{'' if len(steps) == 1 else 's'} generated · branch `{trace.current}` · colour: probability under the "
               f"model (red unlikely, green likely); hover a token for its alternatives")
    if len(trace.branches) > 1:
        names = list(trace.branches)
        st.session_state["branch"] = trace.current
        st.selectbox("Branch", names, key="branch", on_change=act, args=("switch",),
                     help="Each different choice made where the text already continued keeps the old path.")

    final = view.final
    top = final.probs.argsort()[::-1][:10]
    st.subheader("Next token candidates")
    cols = st.columns(5)
    for i, t in enumerate(top):
        if final.probs[t] <= 0:
            break
        label = f"{visible(model.tokenizer.token_text(int(t)))}  {final.probs[t]:.3f}"
        cols[i % 5].button(label, key=f"cand_{i}", on_click=act, args=("force", int(t)),
                           help=f"token id {int(t)}: click to take it next")

    raw = view.stages[0]
    labels_ids = raw.probs.argsort()[::-1][:15]
    labels = [f"{visible(model.tokenizer.token_text(int(t))) or '∅'} " for t in labels_ids]
    rows = [f"{s.name} ({s.kept} kept)" for s in view.stages]
    z = [s.probs[labels_ids] for s in view.stages]
    heat = figure([dict(type="heatmap", z=z, x=labels, y=rows, colorscale="Blues", zmin=0, zmax=1,
                        text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                        hovertemplate="%{y}<br>token %{x}: p = %{z:.4f}<extra></extra>")],
                  height=60 + 34 * len(rows), margin=dict(t=40, b=20, l=10, r=10), yaxis=dict(autorange="reversed"),
                  title=dict(text="The sampler, stage by stage: each row is the distribution after that stage "
                                  "(top 15 tokens of the raw one)"))
    st.plotly_chart(heat, width="stretch", key="stages_chart")
    bars = figure([dict(type="bar", x=labels, y=z[0], name="raw (the model)"),
                   dict(type="bar", x=labels, y=z[-1], name="final (sampled from)")],
                  barmode="group", height=260, margin=dict(t=30, b=20), title=dict(text="Raw vs final"))
    st.plotly_chart(bars, width="stretch", key="raw_final_chart")

    if st.toggle("Logit lens of the next token", key="gen_lens",
                 help="What the residual stream would predict if the model stopped after each layer's attention "
                      "or MLP (the final norm and unembedding applied early): the answer forming layer by layer."):
        lens_view(trace.ids)

    left, right = st.columns(2)
    if steps:
        ent = figure([dict(type="scatter", y=[s.entropy for s in steps], mode="lines+markers",
                           text=[s.text for s in steps])],
                     title=dict(text="Entropy of the model's distribution at each step (nats)"), height=300,
                     xaxis=dict(title=dict(text="step")), yaxis=dict(title=dict(text="entropy")),
                     margin=dict(t=40, b=20))
        left.plotly_chart(ent, width="stretch", key="entropy_chart")
    temps = [0.05 * i for i in range(1, 61)]
    curve = entropy_by_temperature(raw.logits, temps)
    marks = ([dict(type="line", x0=sampler.temperature, x1=sampler.temperature, yref="paper", y0=0, y1=1,
                   line=dict(dash="dash"))] if sampler.temperature > 0 else [])
    tfig = figure([dict(type="scatter", x=temps, y=curve, mode="lines")], shapes=marks,
                  title=dict(text="Temperature vs entropy of the next-token distribution"), height=300,
                  xaxis=dict(title=dict(text="temperature")), yaxis=dict(title=dict(text="entropy (nats)")),
                  margin=dict(t=40, b=20))
    right.plotly_chart(tfig, width="stretch", key="temperature_chart")
    started = st.session_state.pop("click_started", None)
    server = f" · server time for this step: {1000 * (time.perf_counter() - started):.1f} ms" if started else ""
    st.caption("Share this exact state: copy the page's address (prompt, model, knobs, seed and the steps "
               f"taken are in it){server}.")


stepper()
