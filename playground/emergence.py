"""Emergence: cause a capability to appear (induction heads, grokking) with one click, beside a control in
which it does not, and watch the jump in the progress measures.

The runs are ordinary training jobs (`core.jobs`): trained in their own process, exported when they finish
(their milestone checkpoints go with them: the Attention page's scrubber then shows the heads before and
after the jump). Presets, signals and where the jump happened come from `core.emergence`."""

import streamlit as st

from core.emergence import PRESETS, find_emergence, preset_runs
from core.jobs import JobError, training_unavailable
from playground import progress
from playground.shared import job_board, visitor_token

st.title("Emergence")
st.caption("Some capabilities do not grow smoothly: they appear at once, after a long plateau. Cause two of "
           "them here, on models small enough to train in minutes, each beside a control that lacks what it "
           "needs.")
missing = training_unavailable()
if missing:
    st.info(missing)
    st.stop()

board, token = job_board(), visitor_token()
board.heartbeat(token)

keys = list(PRESETS)
key = st.radio("Preset", keys, format_func=lambda k: PRESETS[k].title, horizontal=True, key="emergence_preset")
preset = PRESETS[key]
st.markdown(preset.what)
if preset.caveat:
    st.warning(preset.caveat, icon="⚠️")
st.caption("Papers: " + " · ".join(preset.papers))
run, control = preset.runs
st.caption(f"Run: {run.label}; control: {control.label}. {run.train.max_steps:,} steps, evaluated every "
           f"{run.train.eval_interval} (each evaluation also logs the progress measures).")

views = board.views(token)
taken = {v.name for v in views}
n = 1
while f"{key}-{n}" in taken:
    n += 1
c1, c2, c3 = st.columns([2, 1, 1])
name = c1.text_input("Run name", value=f"{key}-{n}", max_chars=32, key=f"emergence_name_{key}",
                     help="The run and its exported model are called this; the control adds '-control'.")
with_control = c2.checkbox("With its control", value=board.limits.max_running >= 2, key="emergence_control",
                           help=f"This server trains {board.limits.max_running} run(s) at once.")
if c3.button("Start", type="primary", key="emergence_start"):
    try:
        board.start_runs(token, preset_runs(key, name.strip(), with_control))
        st.session_state["emergence_watch"] = name.strip()
        st.rerun()                      # the list below was read before the start
    except JobError as e:
        st.error(str(e))

# -- the preset's runs on this server -------------------------------------------------------------------
mine = [v for v in views if v.task == run.train.task and not v.name.endswith("-control")]
if not mine:
    st.stop()
names = [v.name for v in mine]
if st.session_state.get("emergence_watch") not in names:
    st.session_state["emergence_watch"] = names[0]
st.selectbox("Watch", names, key="emergence_watch")


@st.fragment(run_every=2.0)
def live() -> None:
    board.heartbeat(token)
    watched = st.session_state.get("emergence_watch", "")
    main = board.view(token, watched)
    if main is None:
        return
    ctrl = board.view(token, f"{watched}-control")
    pairs = [(run.label, main)] + ([(control.label, ctrl)] if ctrl is not None else [])
    cols = st.columns(len(pairs))
    found = {}
    for col, (label, v) in zip(cols, pairs):
        e = found[v.name] = find_emergence(preset, v.measures)
        with col:
            st.markdown(f"**{label}** · `{v.name}` · {v.state}" + (f" ({v.phase})" if v.state == "running" else "")
                        + f" · step {v.step:,} / {v.max_steps:,}")
            if v.message:
                (st.error if v.state == "failed" else st.caption)(v.message)
            if e.step is not None:
                what = (f"{preset.signal.label} fell from {e.before:+.2f} to {e.after:+.2f} nats between steps "
                        f"{e.start_step:,} and {e.step:,}" if preset.signal.change else
                        f"{preset.signal.label} reached {preset.signal.level:.2f} at step {e.step:,}")
                more = "".join(f"; {lvl:.2f} at step {s:,}" for lvl, s in e.marks.items() if s is not None)
                st.success(f"Jump: {what}{more}.")
            elif v.measures:
                st.info(f"No jump in the {preset.signal.label} yet.")
            if v.can_stop:
                st.button("Stop", key=f"emergence_stop_{v.name}", on_click=lambda n=v.name: board.stop(token, n))
    runs = {label: v.measures for label, v in pairs}
    marker = found[main.name].step
    progress.measure_curve(runs, preset.signal.measure, preset.signal.label
                           + (" (nats: late-position loss minus early)" if preset.signal.change else ""),
                           marker, key="emergence")
    if preset.signal.measure == "val_accuracy":
        progress.measure_curve({f"{label}, train": v.measures for label, v in pairs}, "train_accuracy",
                               "train accuracy (memorisation comes first)", marker, key="emergence")
        progress.measure_curve(runs, "weight_norm", "total weight norm (weight decay shrinks the memoriser)",
                               marker, key="emergence")
    else:
        progress.measure_curve(runs, "val_accuracy", "next-token accuracy", marker, key="emergence")
    if main.measures:
        last = main.measures[-1]
        st.markdown(f"**Heads of `{main.name}` at step {last['step']:,}**: previous-token (attends one back), "
                    "induction (attends to the token after the earlier copy of the current one), duplicate "
                    "(attends to the earlier copy itself), each on repeated random tokens.")
        progress.head_scores(last, key=main.name)
        progress.fourier(last, key=main.name)
    if main.exported_as:
        st.success(f"`{main.exported_as}` is exported with its milestone checkpoints: open it on the Attention "
                   "page and move the checkpoint slider across the jump to see the heads form.")
        st.page_link("playground/attention.py", label="Attention", icon="🔍")


live()
