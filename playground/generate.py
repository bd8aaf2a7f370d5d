"""Generate: step through generation one token at a time and see every stage of the sampler."""

import html
import math
import time

import streamlit as st

from core.checks import ConfigError, PlaygroundError
from core.compare import ALTERNATIVES
from core.generate import GenerationConfig
from core.sampling import (DEFAULT_ORDER, DRY_BREAKERS, KNOBS, STAGE_LABELS, STAGES, SamplerConfig, StageDelta,
                           breaker_ids, complete_order, entropy_by_temperature, format_breakers, parse_breakers,
                           parse_order, stage_deltas)
from core.trace import Trace, loom_file, read_loom
from playground.shared import (CONTEXT_BG, knob_slider, model_key, open_page, prob_colour, starting_text, text_colour,
                               line_svg, tokens_html, url_float, url_int, url_notice, url_text, visible, visible_text)

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
    default_breakers = format_breakers(DRY_BREAKERS)
    breakers_text = st.text_input("DRY sequence breakers", url_text("dry_breakers", default_breakers, 400), max_chars=400,
                                  key="dry_breakers", disabled=values["dry_multiplier"] == 0,
                                  help="Quoted strings, comma-separated (text-generation-webui's form): a repeated run "
                                       "never reaches across one, and nothing is penalised right after one.")
    try:
        breakers = parse_breakers(breakers_text)
    except ConfigError as e:
        st.warning(f"{e}. DRY uses its default breakers.")
        breakers = DRY_BREAKERS
    if breakers == DRY_BREAKERS:
        st.query_params.pop("dry_breakers", None)
    else:
        st.query_params["dry_breakers"] = format_breakers(breakers)
    breaker_tokens, unknown = breaker_ids(model.tokenizer.encode, breakers)
    if unknown and values["dry_multiplier"] > 0:
        st.caption(f"Not in this model's vocabulary, so no breaker here: {', '.join(map(repr, unknown))}.")

    if "stage_order" not in st.session_state:
        raw_order = st.query_params.get("order")
        try:
            st.session_state["stage_order"] = list(DEFAULT_ORDER if raw_order is None else parse_order(raw_order))
        except ConfigError:
            url_notice("order", raw_order, "it does not name the sampler's stages once each, so the default order "
                                           "is used")
            st.session_state["stage_order"] = list(DEFAULT_ORDER)

    def complete_stage_order() -> None:
        """A stage taken out of the list goes to the end: every stage always runs, in the order shown."""
        st.session_state["stage_order"] = list(complete_order(st.session_state["stage_order"]))

    def default_stage_order() -> None:
        st.session_state["stage_order"] = list(DEFAULT_ORDER)

    st.multiselect("Stage order", STAGES, key="stage_order", format_func=STAGE_LABELS.get,
                   on_change=complete_stage_order,
                   help="The stages run left to right. Remove a stage to move it to the end; to move it forward, "
                        "remove the ones that should come after it too, in the order they should follow.")
    order = complete_order(st.session_state["stage_order"])
    if order == DEFAULT_ORDER:
        st.query_params.pop("order", None)
    else:
        st.query_params["order"] = ",".join(order)
        st.button("Default order", on_click=default_stage_order, key="order_reset")
    st.caption("Order matters when a stage reshapes what a later one measures: temperature before top-p, min-p, "
               "typical-p or XTC changes the probabilities they cut by (a flatter distribution keeps more tokens), "
               "while top-k and top-nσ keep the same tokens at any temperature. Penalties and DRY subtract from the "
               "logits: before temperature the subtraction is divided by it, after it not. A cut after another cut "
               "measures the renormalised remainder.")
    seed = st.number_input("Seed", 0, 2**31 - 1, url_int("seed", 0, 0, 2**31 - 1), help="Same seed, same choices: a "
                           "shared link replays exactly.", key="seed")
    st.query_params["seed"] = str(seed)

sampler = SamplerConfig(**values, dry_breaker_ids=breaker_tokens, order=order)
config = GenerationConfig(max_new_tokens=lim.max_new_tokens, sampler=sampler, seed=int(seed), top_n=ALTERNATIVES)
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


def load_loom() -> None:
    """Upload callback: a saved loom replaces the trace (checked like a shared link), its prompt the prompt's;
    a refused file leaves the current trace as it was and says why."""
    upload = st.session_state.get("loom_upload")
    if upload is None:
        return
    try:
        trace = read_loom(model, upload.getvalue(), model.name, lim, upload.name)
    except PlaygroundError as e:
        st.session_state["notice"] = str(e)
        return
    # the loom's prompt, knobs, order and seed become the page's (the sidebar and the prompt are outside this
    # fragment, so the stepper asks for a whole-page rerun before it draws); DRY's breakers stay the sidebar's
    sampler = trace.config.sampler
    for key in KNOBS:
        st.session_state[f"knob_{key}"] = getattr(sampler, key)
    st.session_state["stage_order"] = list(sampler.order)
    st.session_state["seed"] = trace.config.seed
    st.session_state["prompt"] = trace.prompt
    st.session_state["loom_loaded"] = True
    save(trace)


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
        elif action == "continue":
            trace.continue_with(*arg)
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


def chip(text: str, p: float, title: str, removed: bool = False, trend: str = "") -> str:
    """A token as a chip: kept ones filled by probability on a log scale (1e-3 pale to 1 dark, so 0.01 and 0.25
    look different), with their own text colour so they read in light and dark themes; removed ones struck and
    grey, unfilled."""
    shown = f"{p:.2f}" if p >= 0.1 else f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"
    label = f"{visible(text) or '∅'} <small>{shown}</small>{trend}"
    style = "border-radius:4px;padding:1px 5px;margin:2px;display:inline-block;font-family:monospace;white-space:pre;"
    if removed:
        style += "color:#8b8b8b;text-decoration:line-through;border:1px dashed rgba(139,139,139,.6)"
    else:
        t = min(1.0, max(0.0, (math.log10(max(p, 1e-12)) + 3) / 3))
        fill = f"hsl(214, 85%, {93 - 58 * t:.0f}%)"
        style += f"background:{fill};color:{text_colour(fill)};border:1px solid {fill}"
    return f'<span title="{html.escape(title)}" style="{style}">{label}</span>'


def setting_text(stage: str, cfg: SamplerConfig) -> str:
    knobs = [k for k in KNOBS.values() if k.stage == stage]
    if len(knobs) == 1:
        return f"{getattr(cfg, knobs[0].name):g}"
    return ", ".join(f"{k.label.removeprefix(STAGE_LABELS[stage]).strip().lower()} {getattr(cfg, k.name):g}"
                     for k in knobs)


def stage_view(deltas: list[StageDelta], raw_probs, cfg: SamplerConfig) -> str:
    """One row for the model's distribution, one per stage that is on (what it kept, removed and moved, and its
    top tokens before it: kept vs removed), and a line naming the stages that are off."""
    muted = "opacity:.7;font-size:.85em"
    row = ("display:flex;gap:.8rem;align-items:center;padding:.35rem 0;"
           "border-top:1px solid rgba(128,128,128,.25)")
    text = model.tokenizer.token_text

    top = deltas[0].top                 # the first stage's "before" is the model's own distribution
    chips = "".join(chip(text(int(t)), raw_probs[t], f"id {int(t)}: p = {raw_probs[t]:.4f}") for t in top)
    rows = [f'<div style="{row}"><div style="flex:0 0 15rem"><b>Model</b><br><span style="{muted}">'
            f'{int((raw_probs > 0).sum()):,} tokens possible</span></div><div>{chips}</div></div>']
    on = [d for d in deltas if d.on]
    for i, d in enumerate(on, 1):
        head = (f'<b>{i} · {STAGE_LABELS[d.name]}</b> <span style="{muted}">{setting_text(d.name, cfg)}</span>'
                f'<br><span style="{muted}">')
        if not d.changed:
            why = " (a coin flip, and two or more tokens must reach the threshold)" if d.name == "xtc" else ""
            rows.append(f'<div style="{row}"><div>{head}on; changed nothing at this step{why}</span></div></div>')
            continue
        stats = [f"{d.kept_before:,} → {d.kept:,} token{'' if d.kept == 1 else 's'}"]
        if d.removed.size:
            stats.append(f"cut {d.mass_removed:.2f} of the mass")
        if abs(d.moved - d.mass_removed) > 5e-3:        # a pure cut moves exactly what it cut: said once
            stats.append(f"moved {d.moved:.2f}")
        chips = []
        for t, before, after in zip(d.top, d.before, d.after):
            if after == 0:
                chips.append(chip(text(int(t)), before, f"id {int(t)}: p = {before:.4f} before; removed", removed=True))
            else:
                # an arrow only where the stage moved a token visibly: a quarter or more, and half a percent
                ratio, visible_move = after / before, abs(after - before) >= 0.005
                trend = " ↑" if visible_move and ratio > 1.25 else " ↓" if visible_move and ratio < 0.8 else ""
                chips.append(chip(text(int(t)), after, f"id {int(t)}: p {before:.4f} → {after:.4f}", trend=trend))
        more = d.removed.size - int((d.after == 0).sum())
        tail = f' <span style="{muted}">+ {more:,} more removed</span>' if more > 0 else ""
        rows.append(f'<div style="{row}"><div style="flex:0 0 15rem">{head}{" · ".join(stats)}</span></div>'
                    f'<div>{"".join(chips)}{tail}</div></div>')
    off = [STAGE_LABELS[d.name] for d in deltas if not d.on]
    note = (f"Off (their knobs leave the distribution as it is): {', '.join(off)}." if on else
            "Every stage is off: the token is drawn from the model's own distribution.")
    rows.append(f'<div style="{row};{muted}">{note}</div>')
    return "<div>" + "".join(rows) + "</div>"


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


def loom(trace: Trace, steps: list) -> None:
    """Any generated token up close (its alternatives under the model, and a fork that takes another one
    there), the tree of branches this makes, and the whole tree saved to or loaded from a file."""
    with st.expander(f"Click a token: its alternatives, and branch from it · {len(trace.branches)} "
                     f"branch{'es' if len(trace.branches) > 1 else ''}", expanded=len(trace.branches) > 1):
        if steps:
            i = len(steps) - 1              # a slider needs two positions to choose from
            if len(steps) > 1:
                i = st.slider("Token", 1, len(steps), len(steps), key=f"loom_pos_{len(steps)}",
                              help="Which generated token to look at (1 is the first after the prompt).") - 1
            chosen = steps[i]
            st.markdown(f"Token {i + 1} is `{visible_text(chosen.text)}` (id {chosen.token_id}), p = {chosen.raw_prob:.3f} "
                        f"under the model{' (forced)' if chosen.forced else ''}. Continue from here with another:")
            cols = st.columns(5)
            for k, a in enumerate(chosen.alternatives):
                taken = a.token_id == chosen.token_id
                cols[k % 5].button(f"{visible(a.text) or '∅'}  {a.prob:.3f}{' ✓' if taken else ''}",
                                   key=f"loom_alt_{k}", on_click=act, args=("continue", (i, a.token_id)),
                                   type="primary" if taken else "secondary", disabled=taken,
                                   help="the token taken here" if taken else
                                        f"id {a.token_id}: go back to token {i + 1} and take this one instead "
                                        f"(a new branch keeps the current text)")
        else:
            st.caption("Generate a few tokens first.")
        if len(trace.branches) > 1:
            lines = []
            for n in trace.tree():
                where = "" if n.parent is None else f"from `{n.parent}` at token {n.fork_at + 1}: "
                text = visible_text(n.added)
                text = text if len(text) <= 60 else text[:60] + "…"
                mark = "**" if n.name == trace.current else ""
                lines.append(f"{'  ' * n.depth}- {mark}`{n.name}`{mark} {where}“{text}”")
            st.markdown("The loom (each branch under the one it left):\n\n" + "\n".join(lines))
            st.session_state["branch"] = trace.current
            st.selectbox("Branch", list(trace.branches), key="branch", on_change=act, args=("switch",),
                         help="Each different choice made where the text already continued keeps the old path.")
        left, right = st.columns(2)
        left.download_button("Save the loom (JSON)", loom_file(trace, model.name), file_name="loom.json", mime="application/json",
                             on_click="ignore", key="loom_save")
        right.file_uploader("Load a saved loom", type=["json"], key="loom_upload", on_change=load_loom)


@st.fragment
def stepper() -> None:
    if st.session_state.pop("loom_loaded", False):
        st.rerun(scope="app")               # a loaded loom changed the prompt and the knobs outside this fragment
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
    pieces = [(trace.prompt, "prompt", CONTEXT_BG)]
    for s in steps:
        alts = ", ".join(f"{a.text!r} {a.prob:.2f}" for a in s.alternatives[:5])
        mark = " (forced)" if s.forced else ""
        pieces.append((s.text, f"id {s.token_id}{mark}: p={s.raw_prob:.3f}, entropy {s.entropy:.2f} nats; "
                               f"top: {alts}", prob_colour(s.raw_prob)))
    st.markdown(tokens_html(pieces), unsafe_allow_html=True)
    st.caption(f"{len(steps)} token{'' if len(steps) == 1 else 's'} generated · branch `{trace.current}` · colour: probability under the "
               f"model (red unlikely, green likely); hover a token for its alternatives")
    loom(trace, steps)

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
    st.subheader("What each stage did")
    st.markdown(stage_view(stage_deltas(view, sampler), raw.probs, sampler), unsafe_allow_html=True)
    st.caption("Each row: the most likely tokens *before* that stage. Filled: kept, with the probability after it "
               "(colour on a log scale, pale 0.001 to dark 1; ↑ ↓ where the stage moved it by a quarter or more); "
               "struck grey: removed, with the probability it had. *Cut*: the mass the removed tokens held; "
               "*moved*: how much probability changed hands (half the summed |after − before|).")
    if st.toggle("Logit lens of the next token", key="gen_lens",
                 help="What the residual stream would predict if the model stopped after each layer's attention "
                      "or MLP (the final norm and unembedding applied early): the answer forming layer by layer."):
        lens_view(trace.ids)

    # inline SVG, not plotly: these two are redrawn on every click, and each plotly chart cost ~110 ms of it
    left, right = st.columns(2)
    if steps:
        left.markdown(line_svg(list(range(1, len(steps) + 1)), [s.entropy for s in steps],
                               "Entropy of the model's distribution at each step", "step", "nats", points=True),
                      unsafe_allow_html=True)
    temps = [0.05 * i for i in range(1, 61)]
    curve = entropy_by_temperature(raw.logits, temps)
    right.markdown(line_svg(temps, list(curve), "Temperature vs entropy of the next token", "temperature", "nats",
                            marker_x=sampler.temperature if sampler.temperature > 0 else None),
                   unsafe_allow_html=True)
    started = st.session_state.pop("click_started", None)
    server = f" · server time for this step: {1000 * (time.perf_counter() - started):.1f} ms" if started else ""
    st.caption("Share this exact state: copy the page's address (prompt, model, knobs, seed and the steps "
               f"taken are in it){server}.")


stepper()
