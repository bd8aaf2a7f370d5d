"""Post-train: fine-tune a model you have (SFT, a reward model, DPO, PPO, GRPO) while you watch, on data a judge
labels, a JSONL file, or pairs you pick yourself; then put it beside its base.

The job (`core.jobs`, `python -m core.posttrain` in its own process) owns the run: it outlives this tab and a
reload finds it again; others' runs can be watched, not touched. This page asks for a run and draws its log;
the stages, losses and knobs are `core.posttrain`'s, the judges and data formats `core.preferences`'. The A/B
picker and the base-versus-post comparison decode with the torch-free runtime (`core.generate`)."""

import streamlit as st

from core.checks import PlaygroundError
from core.generate import GenerationConfig, complete, sample_n
from core.jobs import (JobError, PostTrainRequest, post_data_kind, post_knobs, post_stages, rl_stages,
                       store_post_data, training_unavailable)
from core.preferences import JUDGES, PreferencePair, make_judge, write_jsonl
from core.runtime import ModelError
from playground.shared import (DEFAULT_MODEL, figure, job_board, limits, model_by_name, model_names, starting_text,
                               url_choice, visible_text, visitor_token)

STAGE_LABELS = {"sft": "SFT: imitate demonstrations", "reward": "Reward model: learn a preference",
                "dpo": "DPO: prefer chosen over rejected, directly", "ppo": "PPO: climb a reward model, on a KL leash",
                "grpo": "GRPO: PPO without a value head, rollouts judged against their group"}
SOURCE_LABELS = {"judge": "a judge labels the base model's own texts", "upload": "upload a JSONL file",
                 "picks": "your A/B picks (below)"}
FORMATS = {"sft": '{"prompt": "ROMEO:", "response": " I am here."}',
           "pairs": '{"prompt": "ROMEO:", "chosen": " Short.", "rejected": " A much longer line than that."}',
           "prompts": '{"prompt": "ROMEO:"}'}

st.title("Post-train")
st.caption("Pretraining teaches a model to continue text; post-training teaches it which continuations to prefer. "
           "Start from a model you have, choose a stage and its data, and watch the preference move it.")
missing = training_unavailable()
if missing:
    st.info(missing)
    st.stop()

board, token, lim = job_board(), visitor_token(), limits()
board.heartbeat(token)
st.session_state.setdefault("post_pairs", [])

with st.expander("Why SFT masks the prompt, what beta does, and reward hacking"):
    st.markdown(
        "- **SFT masks the prompt.** The loss counts only the response's tokens. The prompt is given when the "
        "model is used, never written by it: a loss on it would spend the update teaching the model to write "
        "prompts, and on short responses would drown out what it should learn.\n"
        "- **Beta is the leash to the base model.** DPO's implicit reward is beta × (log π − log π_ref) of a "
        "response: a larger beta asks for the same preference with less movement away from the reference. In PPO "
        "every token pays beta × (log π − log π_ref), so a run climbs the reward while paying for its distance "
        "(KL) from the base. Each beta settles at a different point of the reward-versus-KL frontier: a small "
        "beta buys more reward with more drift.\n"
        "- **Reward hacking at beta 0.** With no leash, PPO climbs whatever the reward model over-scores, which "
        "need not be what the judge meant: the reward rises while the judge's own score stalls or falls, and the "
        "text collapses into repetition (distinct-2 falls). Run beta 0 beside beta 0.1 on the same reward model "
        "to see it.")

# -- 1. base and stage -------------------------------------------------------------------------------------
st.subheader("1. Base model and stage")
names = model_names()
runs = [r for r in board.base_runs(token) if r not in names]    # an exported run is offered as its model
options = [f"model:{n}" for n in names] + [f"run:{n}" for n in runs]
if not options:
    st.warning("No model to start from: train and export one first (Train page).")
    st.stop()
wanted = url_choice("model", DEFAULT_MODEL if DEFAULT_MODEL in names else names[0], names) if names else None
c1, c2 = st.columns([2, 3])
base = c1.selectbox("Base model", options, index=options.index(f"model:{wanted}") if wanted else 0, key="post_base",
                    format_func=lambda o: o.split(":", 1)[1] + (" (your run)" if o.startswith("run:") else ""),
                    help="Exported models, then your own runs that have stopped or finished. DPO, PPO and GRPO keep a "
                         "frozen copy of it as the reference.")
base_model = base.split(":", 1)[1] if base.startswith("model:") else None
if base_model:
    st.query_params["model"] = base_model
stages = list(post_stages())
stage = c2.radio("Stage", stages, index=stages.index(url_choice("stage", "sft", stages)), key="post_stage",
                 format_func=lambda s: STAGE_LABELS.get(s, s), horizontal=True)
rl = stage in rl_stages()
st.query_params["stage"] = stage
kind = post_data_kind(stage)

# -- 2. data --------------------------------------------------------------------------------------------------
st.subheader("2. Data")
sources = ["judge", "upload"] + (["picks"] if kind == "pairs" else [])
source = st.radio("Examples", sources, key=f"post_source_{kind}", format_func=lambda s: SOURCE_LABELS[s],
                  horizontal=True)
data = None
if source == "judge":
    j1, j2 = st.columns([1, 2])
    judge = j1.selectbox("Judge", list(JUDGES), key="post_judge")
    spec = judge
    if judge == "word":
        spec = "word:" + j2.text_input("Word", "love", max_chars=32, key="post_word")
    try:
        made = make_judge(spec)
        data = f"judge:{made.spec}"
        st.caption(f"**{made.spec}**: {made.description}. The base model writes the examples and the judge labels "
                   + {"sft": "them: the best of several samples becomes each demonstration.",
                      "pairs": "them: of two samples the higher-scoring one is chosen."}.get(
                       kind, "its prompts; the judge then scores the policy's answers as it learns."))
    except PlaygroundError as e:
        st.error(str(e))
elif source == "upload":
    st.caption(f"One JSON object per line, e.g. `{FORMATS.get(kind, FORMATS['prompts'])}`")
    up = st.file_uploader("A JSONL file", type=["jsonl", "json", "txt"], key=f"post_upload_{kind}")
    if up is not None:
        stored = st.session_state.setdefault("post_stored", {})
        key = (up.file_id, kind)
        if key not in stored:                       # checked and stored once per file, not on every rerun
            try:
                stored[key] = store_post_data(up.getvalue(), stage, up.name)
            except PlaygroundError as e:
                stored[key] = str(e)
        got = stored[key]
        if isinstance(got, str):
            st.error(got)
        else:
            data = f"stored:{got.id}"
            st.caption(f"{got.examples:,} examples ({got.kind}), checked and kept on this server.")
else:
    n_picks = len(st.session_state["post_pairs"])
    if n_picks < 2:
        st.info(f"{n_picks} pair(s) picked: pick at least 2 below (one to learn from, one held out).")
    else:
        data = "picks"
        st.caption(f"{n_picks} pairs you picked.")


def write_two() -> None:
    """The model writes two continuations of the prompt (two seeds); kept for the visitor to pick from."""
    ab = st.session_state.get("post_ab_state") or {}
    seed = ab.get("next_seed", 0)
    try:
        model = model_by_name(st.session_state["post_ab_model"])
        cfg = GenerationConfig(max_new_tokens=int(st.session_state["post_ab_tokens"]), seed=seed, top_n=0)
        a, b = sample_n(model, st.session_state["post_ab_prompt"], cfg, 2, lim)
        st.session_state["post_ab_state"] = {"prompt": st.session_state["post_ab_prompt"], "a": a.text, "b": b.text,
                                             "next_seed": seed + 2}
    except (PlaygroundError, ModelError) as e:
        st.session_state["post_ab_notice"] = str(e)


def pick(better: str | None) -> None:
    ab = st.session_state.get("post_ab_state")
    if ab and better:
        chosen, rejected = (ab["a"], ab["b"]) if better == "a" else (ab["b"], ab["a"])
        st.session_state["post_pairs"].append(PreferencePair(ab["prompt"], chosen, rejected))
    write_two()                                     # the next two, at once


def use_picks() -> None:
    if st.session_state.get("post_stage") not in ("reward", "dpo"):
        st.session_state["post_stage"] = "dpo"
    st.session_state["post_source_pairs"] = "picks"


with st.expander("A/B: pick the better of two continuations", expanded=source == "picks"):
    if base_model is None:
        st.info("Choose an exported model as the base: it writes the two continuations here.")
    else:
        st.session_state["post_ab_model"] = base_model
        try:
            ab_model = model_by_name(base_model)
            ab_default = starting_text(ab_model, "ROMEO:\n")
        except ModelError as e:
            st.error(f"{base_model} cannot be opened: {e}")
            ab_default = None
        if ab_default is not None:
            a1, a2 = st.columns([3, 1])
            a1.text_area("Prompt", ab_default, max_chars=lim.max_prompt_chars, key="post_ab_prompt", height=68)
            a2.slider("Tokens each", 8, min(200, lim.max_new_tokens), min(48, lim.max_new_tokens), key="post_ab_tokens")
            a2.button("Write two", key="post_ab_write", on_click=write_two)
            if "post_ab_notice" in st.session_state:
                st.warning(st.session_state.pop("post_ab_notice"))
            ab = st.session_state.get("post_ab_state")
            if ab and "a" in ab:
                left, right = st.columns(2)
                left.markdown("**A**")
                left.text(ab["prompt"] + ab["a"])
                right.markdown("**B**")
                right.text(ab["prompt"] + ab["b"])
                same = ab["a"] == ab["b"]
                b1, b2, b3 = st.columns(3)
                b1.button("A is better", key="post_ab_a", on_click=pick, args=("a",), disabled=same)
                b2.button("B is better", key="post_ab_b", on_click=pick, args=("b",), disabled=same)
                b3.button("Skip", key="post_ab_skip", on_click=pick, args=(None,))
                if same:
                    st.caption("The two are the same text: there is nothing to prefer; skip.")
    pairs = st.session_state["post_pairs"]
    st.markdown(f"**{len(pairs)} pair(s) picked** (kept in this tab's session).")
    if pairs:
        st.dataframe([{"prompt": visible_text(p.prompt), "chosen": visible_text(p.chosen), "rejected": visible_text(p.rejected)}
                      for p in pairs], hide_index=True, key="post_ab_table")
        d1, d2, d3 = st.columns(3)
        d1.download_button("Download as JSONL", write_jsonl(pairs), file_name="preferences.jsonl",
                           mime="application/jsonl", key="post_ab_download")
        d2.button("Use them as the data", key="post_ab_use", on_click=use_picks,
                  help="Trains a reward model or DPO on these pairs (DPO unless reward is chosen).")
        d3.button("Clear the picks", key="post_ab_clear", on_click=lambda: st.session_state["post_pairs"].clear())

reward = ""
if rl:
    rewards = board.reward_runs(token)
    if rewards:
        reward = "run:" + st.selectbox("Reward model", rewards, key="post_reward",
                                       help="One of your reward runs (stage reward): it scores each rollout.")
    else:
        st.info(f"{stage.upper()} needs a reward model: start a run with the stage 'Reward model' first; once it "
                f"has finished it appears here.")

# -- 3. knobs -------------------------------------------------------------------------------------------------
st.subheader("3. Knobs")
knobs, cols = [], st.columns(3)
shown = [k for k in post_knobs(stage, lim) if k[0].name != "examples" or source == "judge"]
for i, (knob, default, high, why) in enumerate(shown):
    if knob.name == "lora_alpha" and not dict(knobs).get("lora_rank"):
        continue                                    # alpha scales the adapters; full fine-tuning has none
    col = cols[i % 3]
    start = min(high, max(knob.low, default))
    if knob.integer:
        value = col.number_input(knob.label, int(knob.low), int(high), int(start), key=f"post_{stage}_{knob.name}", help=why)
    else:
        value = col.number_input(knob.label, float(knob.low), float(high), float(start), key=f"post_{stage}_{knob.name}",
                                 help=why, format="%.2e" if knob.name == "learning_rate" else "%.3f",
                                 step=float(knob.low) if knob.name == "learning_rate" else 0.01)
    knobs.append((knob.name, int(value) if knob.integer else float(value)))

views = board.views(token, "posttrain")
taken = {v.name for v in board.views(token)}         # run names are one namespace: training runs too
n = 1
while f"{stage}-{n}" in taken:
    n += 1
r1, r2 = st.columns([3, 1])
name = r1.text_input("Run name (also the exported model's name)", f"{stage}-{n}", max_chars=40,
                     key=f"post_name_{stage}")
if r2.button("Start", type="primary", key="post_start", disabled=data is None or (rl and not reward)):
    try:
        if data == "picks":
            data = "stored:" + store_post_data(write_jsonl(st.session_state["post_pairs"]).encode(), stage,
                                               "your A/B picks").id
        board.start_posttrain(token, PostTrainRequest(name.strip(), stage, base, data, reward, tuple(knobs)))
        st.session_state["post_job"] = name.strip()
        st.rerun()                                  # the list below was read before the start
    except PlaygroundError as e:
        st.error(str(e))

# -- the post-training runs on this server ----------------------------------------------------------------------
if not views:
    st.stop()
st.divider()
st.subheader("Post-training runs on this server")
st.dataframe([{"run": v.name, "stage": v.stage, "state": v.state, "step": f"{v.step:,} / {v.max_steps:,}",
               "base": v.labels.get("base"), "started by": "you" if v.mine else "another visitor"} for v in views],
             hide_index=True, key="post_runs")
run_names = [v.name for v in views]
if st.session_state.get("post_job") not in run_names:     # a new tab or a reload: the visitor's newest run
    st.session_state["post_job"] = run_names[0] if views[0].mine else None
st.selectbox("Watch", run_names, key="post_job", placeholder="choose a run to watch",
             help="Your runs come first. You can watch anyone's run; only its owner can stop, resume or export it.")


def act(what: str, job_name: str) -> None:
    try:
        getattr(board, what)(token, job_name)
    except JobError as e:
        st.session_state["post_notice"] = str(e)


def curve(title: str, ytitle: str, traces: list[dict], key: str) -> None:
    st.plotly_chart(figure(traces, "step", ytitle, height=260, margin=dict(t=30, b=20), title=dict(text=title)),
                    width="stretch", key=key)


def series(records: list[dict], field: str, name: str, **style) -> dict:
    got = [r for r in records if r.get(field) is not None]
    return dict(type="scatter", x=[r["step"] for r in got], y=[r[field] for r in got], name=name, **style)


def draw(v) -> None:
    """The stage's curves from the run's records (drawing only: every number is the run's own)."""
    tag = f"{v.name}_{len(v.metrics)}_{len(v.evals)}"
    train = dict(line=dict(width=1))
    held = dict(mode="lines+markers")
    if v.stage in rl_stages():
        mine = [w for w in board.views(token, "posttrain") if w.stage == v.stage and w.mine and w.name != v.name
                and w.labels.get("reward_model") == v.labels.get("reward_model") and w.evals]
        traces = [dict(type="scatter", x=[e.get("kl") for e in w.evals], y=[e.get("reward") for e in w.evals],
                       name=f"{w.name} (beta {w.config.get('beta')})", mode="lines+markers", opacity=0.45)
                  for w in mine]
        traces.append(dict(type="scatter", x=[e.get("kl") for e in v.evals], y=[e.get("reward") for e in v.evals],
                           text=[f"step {e['step']}" for e in v.evals], name=f"{v.name} (beta {v.config.get('beta')})",
                           mode="lines+markers+text", textposition="top center"))
        st.plotly_chart(figure(traces, "KL to the base (nats per response)", "reward model's score", height=360,
                               margin=dict(t=40, b=20), title=dict(text="Reward vs KL: each evaluation a point; "
                                                                         "another beta moves along the frontier")),
                        width="stretch", key=f"post_frontier_{tag}_{len(mine)}")
        k1, k2 = st.columns(2)
        with k1:
            curve("Judge score", "judge score", [series(v.metrics, "judge_score", "rollouts", **train),
                                                 series(v.evals, "judge_score", "held-out prompts", **held)],
                  f"post_judge_{tag}")
        with k2:
            curve("Distinct-2 (falls as text repeats)", "distinct-2",
                  [series(v.metrics, "distinct_2", "rollouts", **train),
                   series(v.evals, "distinct_2", "held-out prompts", **held)], f"post_distinct_{tag}")
    elif v.stage in ("reward", "dpo"):
        k1, k2, k3 = st.columns(3)
        for col, field, title in ((k1, "loss", "Loss"), (k2, "accuracy", "Accuracy (chosen scored higher)"),
                                  (k3, "margin", "Margin (chosen − rejected)")):
            with col:
                curve(title, field, [series(v.metrics, field, "train batch", **train),
                                     series(v.evals, field, "held out", **held)], f"post_{field}_{tag}")
        if v.chosen_rewards:
            step = v.evals[-1]["step"] if v.evals else 0
            what = "reward model's score" if v.stage == "reward" else "implicit reward beta × (log π − log π_ref)"
            hist = figure([dict(type="histogram", x=v.chosen_rewards, name="chosen", opacity=0.6),
                           dict(type="histogram", x=v.rejected_rewards, name="rejected", opacity=0.6)],
                          what, "held-out pairs", barmode="overlay", height=280, margin=dict(t=40, b=20),
                          title=dict(text=f"Chosen vs rejected on held-out pairs (step {step})"))
            st.plotly_chart(hist, width="stretch", key=f"post_hist_{tag}")
    else:
        curve("SFT loss on the response tokens", "loss (nats/token)",
              [series(v.metrics, "loss", "train batch", **train), series(v.evals, "loss", "held out", **held)],
              f"post_sft_{tag}")


def live() -> None:
    board.heartbeat(token)
    v = board.view(token, st.session_state.get("post_job") or "")
    if v is None:
        return
    if st.session_state.get("post_polling") and not v.active:
        st.rerun()                  # the run has settled: the whole page once more (the comparison), then no polling
    st.subheader(f"Run `{v.name}` ({v.stage}): {v.state}")
    if "post_notice" in st.session_state:
        st.warning(st.session_state.pop("post_notice"))
    if v.message:
        (st.error if v.state == "failed" else st.info)(v.message)
    s = v.started_record
    st.caption(f"Base {v.labels.get('base')} · data {v.labels.get('data')}"
               + (f" · reward model {v.labels['reward_model']}" if v.labels.get("reward_model") else "")
               + f" · beta {v.config.get('beta')} · learning rate {v.config.get('learning_rate'):g}"
               + (f" · {s['examples']:,} examples + {s['held_out']:,} held out · {s['trainable']:,} of "
                  f"{s['parameters']:,} parameters trained" if s else ""))
    if v.state == "starting" and not v.step:
        st.info("Loading the base model" + (" and writing the examples for the judge to label"
                                            if str(v.config.get("data", "")).startswith("judge:") else "") + "…",
                icon="⏳")
    if v.last:
        eta = v.eta_seconds
        st.progress(min(1.0, v.step / v.max_steps), text=f"step {v.step:,} / {v.max_steps:,}"
                    + (f" · ETA {eta:.0f} s" if eta is not None and v.state == "running" else ""))
    b1, b2, b3 = st.columns(3)
    b1.button("Stop", key="post_stop", on_click=act, args=("stop", v.name), disabled=not v.can_stop)
    b2.button("Resume", key="post_resume", on_click=act, args=("resume", v.name), disabled=not v.can_resume)
    b3.button("Export", key="post_export", on_click=act, args=("export", v.name), disabled=not v.can_export,
              help=None if v.exportable else "A reward model writes no text: it scores PPO and GRPO rollouts instead.")
    if not v.mine:
        st.caption("Another visitor started this run: you can watch it, not change it.")
    if v.metrics or v.evals:
        draw(v)
    if v.sample:
        st.markdown(f"**The policy's answers to held-out prompts at step {v.sample['step']}**")
        st.dataframe([{"prompt": visible_text(p), "answer": visible_text(t)} for p, t in zip(v.sample["prompts"],
                                                                                      v.sample["texts"])][:8],
                     hide_index=True, key=f"post_samples_{v.name}_{v.sample['step']}")
    if v.state == "exported":
        st.success(f"`{v.exported_as}` is in the model picker of every page now.")


watched = board.view(token, st.session_state.get("post_job") or "")
# the live view polls only while the run's process is alive: a fragment rerunning every 2 s can swallow a click on a
# widget outside it (the comparison's button, the knobs), and a settled run has nothing new to show
st.session_state["post_polling"] = bool(watched and watched.active)
(st.fragment(run_every=2.0)(live) if st.session_state["post_polling"] else live)()

# -- after export: the base and the post-trained model, same prompts, same seed -----------------------------------
if watched is None or not watched.exported_as:
    st.stop()
st.subheader("Base vs post-trained: the same prompts, the same seed")
base_name = watched.labels.get("base_model")
if not base_name or base_name not in model_names():
    st.info("This run started from a run that is not exported: export that run too to put the two side by side.")
    st.stop()
# the other exported post-trainings of the same base (an SFT, a DPO, a PPO...), to read them side by side
siblings = [w.exported_as for w in board.views(token, "posttrain") if w.exported_as and w.name != watched.name
            and w.labels.get("base_model") == base_name and w.exported_as in model_names()]
prompts = list(dict.fromkeys(watched.sample["prompts"])) if watched.sample else []
p1, p2 = st.columns([3, 1])
chosen = p1.multiselect("Held-out prompts", prompts, default=prompts[:3], max_selections=lim.max_samples,
                        format_func=visible_text, key=f"post_cmp_pick_{watched.name}")
own = p1.text_input("And a prompt of your own", "", max_chars=lim.max_prompt_chars, key="post_cmp_own")
beside = p1.multiselect("Beside them: other post-trained models of the same base", siblings, default=siblings[:3],
                        max_selections=3, key=f"post_cmp_beside_{watched.name}") if siblings else []
seed = p2.number_input("Seed", 0, 2**31 - 1, 0, key="post_cmp_seed")
tokens = p2.number_input("Tokens", 1, lim.max_new_tokens, min(lim.max_new_tokens,
                                                               int(watched.config.get("response_tokens", 32))),
                         key="post_cmp_tokens")
run_prompts = (chosen + ([own] if own else []))[:lim.max_samples]
names_shown = [base_name, watched.exported_as, *beside]
if st.button("Sample them all" if beside else "Sample both", key="post_cmp_go", disabled=not run_prompts):
    try:
        cfg = GenerationConfig(max_new_tokens=int(tokens), seed=int(seed), top_n=0)
        models = [model_by_name(n) for n in names_shown]
        st.session_state["post_cmp"] = {"run": watched.name, "names": names_shown, "rows": [
            (p, [complete(m, p, cfg, lim).text for m in models]) for p in run_prompts]}
    except (PlaygroundError, ModelError) as e:
        st.error(str(e))
result = st.session_state.get("post_cmp")
if result and result["run"] == watched.name:
    judge_spec = str(watched.config.get("data", ""))
    judge = make_judge(judge_spec[len("judge:"):]) if judge_spec.startswith("judge:") else None
    rows = []
    for p, texts in result["rows"]:
        row = {"prompt": visible_text(p)}
        for i, (n, text) in enumerate(zip(result["names"], texts)):
            row[f"base: {n}" if i == 0 else n] = visible_text(text)
        if judge is not None:
            for i, (n, text) in enumerate(zip(result["names"], texts)):
                row[f"judge: {'base' if i == 0 else n}"] = round(judge.score(text), 3)
        rows.append(row)
    st.dataframe(rows, hide_index=True, key=f"post_cmp_table_{watched.name}")
    if judge is not None:
        st.caption(f"judge {judge.spec}: {judge.description}; higher is better.")
