"""Train: train a small model on a corpus while you watch, then find it in every other page.

The job (`core.jobs`) owns the run: it trains in its own process, is exported when it finishes, and
outlives this tab; a reload (or another tab of the same browser) finds it again. This page asks for a
run and watches it; others' runs are listed too, to watch, not to touch."""

import time
from pathlib import Path

import streamlit as st

from core.config import count_parameters
from core.data import CorpusError, read_text_file
from core.jobs import (ARCHITECTURES, POSITIONS, PRESETS, RANGES, TOKENIZERS, JobError, TrainingRequest,
                       store_upload, training_unavailable)
from core.tokenizer import TokenizerError, byte_tokenizer, train_bpe
from playground import progress
from playground.shared import HOSTED, figure, job_board, model_names, visitor_token

st.title("Train a model")
missing = training_unavailable()
if missing:
    st.info(missing)
    st.stop()

board, token = job_board(), visitor_token()
limits = board.limits
board.heartbeat(token)

# -- 1. corpus --------------------------------------------------------------------------------------
st.subheader("1. Corpus")
sources = ["tiny shakespeare (downloaded once, checksum-verified)", "upload a .txt file"]
if not HOSTED:
    sources.append("a local file")
source = st.radio("Text to learn from", sources, key="train_source")
corpus_arg, corpus_text = None, None
if source.startswith("tiny"):
    corpus_arg = "tinyshakespeare"
else:
    def corpus_once(key, read) -> None:
        """The chosen text, read, checked and hashed once per file (not on every rerun of this page)."""
        global corpus_arg, corpus_text
        try:
            cached = st.session_state.get("train_corpus")
            if cached is None or cached[0] != key:
                where, corpus = read()
                cached = st.session_state["train_corpus"] = (key, str(where), corpus)
            _, corpus_arg, corpus = cached
            corpus_text = corpus.text
            st.caption(f"{corpus.n_bytes:,} bytes, sha256 {corpus.sha256[:12]}…")
        except CorpusError as e:
            st.error(str(e))

    if source.startswith("upload"):
        up = st.file_uploader("A UTF-8 .txt file", type=["txt", "md"], key="train_upload")
        if up is not None:
            corpus_once(("upload", up.file_id), lambda: store_upload(up.getvalue(), up.name))
    else:
        local = st.text_input("Path to a UTF-8 text file", key="train_path")
        if local:
            stat = Path(local).stat() if Path(local).is_file() else None
            corpus_once(("local", local, stat and stat.st_mtime_ns, stat and stat.st_size),
                        lambda: (local, read_text_file(local)))

# -- 2. tokenizer -----------------------------------------------------------------------------------
st.subheader("2. Tokenizer")
tok_kind = st.radio("Tokenizer", TOKENIZERS, key="train_tok", horizontal=True,
                    format_func={"byte": "byte (256 symbols)", "bpe": "BPE trained on this corpus"}.get)
vocab = TrainingRequest.bpe_vocab_size
if tok_kind == "bpe":
    vocab = st.slider("BPE vocabulary size", *RANGES["bpe_vocab_size"], vocab, key="train_vocab",
                      help="More tokens: shorter sequences (more text per context) but a bigger embedding.")
    if corpus_text and st.button("Measure its compression on this corpus", key="train_measure"):
        try:
            sample = corpus_text[:300_000]
            st.caption(f"{train_bpe([sample], vocab).bytes_per_token(sample):.2f} bytes per token with "
                       f"BPE-{vocab}, vs {byte_tokenizer().bytes_per_token(sample):.2f} with bytes")
        except TokenizerError as e:
            st.error(str(e))

# -- 3. model and schedule --------------------------------------------------------------------------
st.subheader("3. Model and schedule")
preset = st.selectbox("Size", list(PRESETS), index=1, key="train_preset", format_func=lambda k: PRESETS[k][0])
architecture = st.radio("Architecture", list(ARCHITECTURES), key="train_arch",
                        format_func=lambda k: ARCHITECTURES[k][0],
                        help="The same blocks and trainer. Learn's 'Encoder vs decoder' puts a masked LM beside a "
                             "GPT; Inside's Experts tab shows where a mixture of experts sends each token.")
c1, c2, c3 = st.columns(3)
steps = c1.number_input("Steps", RANGES["steps"][0], limits.max_steps,
                        min(1000, limits.max_steps), 10, key="train_steps")
eval_every = c2.number_input("Evaluate every", *RANGES["eval_every"], 100, 5, key="train_eval",
                             help="Also how often a checkpoint is saved: a stop loses at most this many steps.")
sample_every = c3.number_input("Sample every", *RANGES["sample_every"], 200, 10, key="train_sample")
with st.expander("Advanced"):
    a1, a2, a3, a4 = st.columns(4)
    lr = a1.number_input("Learning rate", *RANGES["learning_rate"], 2e-3, format="%.4f", key="train_lr")
    batch = a2.number_input("Batch size", *RANGES["batch_size"], 12, key="train_batch")
    block = a3.number_input("Context (tokens)", *RANGES["block_size"], PRESETS[preset][4], key="train_block")
    pos = a4.selectbox("Positions", POSITIONS, key="train_pos")
    dropout = a1.slider("Dropout", *RANGES["dropout"], 0.0, 0.05, key="train_dropout")
name = st.text_input("Run name (also the exported model's name)", "my-model", key="train_name")
request = TrainingRequest(name=name, corpus=corpus_arg or "", tokenizer=tok_kind, bpe_vocab_size=int(vocab),
                          preset=preset, steps=int(steps), eval_every=int(eval_every), sample_every=int(sample_every),
                          learning_rate=float(lr), batch_size=int(batch), block_size=int(block), pos_encoding=pos,
                          dropout=float(dropout), architecture=architecture)
try:
    plan = board.plan(request) if corpus_arg else None
except JobError as e:
    plan = None
    st.error(str(e))
if plan is not None:
    est = plan.estimate
    active = count_parameters(plan.model)["active"]
    size = f"{plan.parameters:,} parameters" + (f" ({active:,} active per token)" if active < plan.parameters else "")
    st.caption(f"{size} · {plan.tokens:,} training tokens · about {est.seconds / 60:.1f} "
               f"minutes here ({est.eval_seconds / max(est.seconds, 1e-9):.0%} of it evaluating), at "
               f"{est.flops_per_s / 1e9:.0f} GFLOP/s {est.basis}")
if st.button("Start training", type="primary", key="train_start", disabled=plan is None):
    try:
        board.start(token, request)
        st.session_state["train_job"] = request.name
    except JobError as e:
        st.error(str(e))

# -- the runs on this server ------------------------------------------------------------------------
views = board.views(token, "train")
if views:
    st.divider()
    st.subheader("Runs on this server")
    st.dataframe([{"run": v.name, "state": v.state if v.state != "running" else v.phase,
                   "step": f"{v.step:,} / {v.max_steps:,}",
                   "val loss": round(v.evals[-1]["val_loss"], 4) if v.evals else None,
                   "started by": "you" if v.mine else "another visitor"} for v in views], hide_index=True)
    names = [v.name for v in views]
    if st.session_state.get("train_job") not in names:      # a new tab or a reload: the visitor's newest run
        st.session_state["train_job"] = names[0] if views[0].mine else None
    st.selectbox("Watch", names, key="train_job", placeholder="choose a run to watch",
                 help="Your runs come first. You can watch anyone's run; only its owner can stop or export it.")


def act(what: str, job_name: str) -> None:
    try:
        getattr(board, what)(token, job_name)
    except JobError as e:
        st.session_state["train_notice"] = str(e)


@st.fragment(run_every=1.0)
def live() -> None:
    board.heartbeat(token)
    job = board.view(token, st.session_state.get("train_job", ""))
    if job is None:
        return
    st.subheader(f"Run `{job.name}`: {job.state}")
    if "train_notice" in st.session_state:
        st.warning(st.session_state.pop("train_notice"))
    if job.message:
        (st.error if job.state == "failed" else st.info)(job.message)
    if job.state in ("starting", "running") and job.phase != "training":
        st.info(f"{job.phase}… ({time.time() - job.started:.0f} s since the start)", icon="⏳")
    if job.last:
        eta = job.eta_seconds
        st.progress(min(1.0, job.step / job.max_steps),
                    text=f"step {job.step:,} / {job.max_steps:,} · {job.last['tokens_per_s']:,.0f} tokens/s"
                         + (f" · ETA {eta:.0f} s" if eta is not None and job.state == "running" else ""))
    b1, b2, b3 = st.columns(3)
    b1.button("Stop", key="train_stop", on_click=act, args=("stop", job.name), disabled=not job.can_stop)
    b2.button("Resume", key="train_resume", on_click=act, args=("resume", job.name), disabled=not job.can_resume)
    b3.button("Export now", key="train_export", on_click=act, args=("export", job.name), disabled=not job.can_export)
    if not job.mine:
        st.caption("Another visitor started this run: you can watch it, not change it.")
    if job.steps or job.evals:
        curve = figure([dict(type="scatter", x=job.steps, y=job.losses, name="train (batch)", line=dict(width=1)),
                        dict(type="scatter", x=[e["step"] for e in job.evals], y=[e["val_loss"] for e in job.evals],
                             name="val", mode="lines+markers")],
                       height=320, margin=dict(t=20, b=20), xaxis=dict(title=dict(text="step")),
                       yaxis=dict(title=dict(text="loss (nats/token)")))
        st.plotly_chart(curve, width="stretch", key=f"train_curve_{len(job.steps)}_{len(job.evals)}")
    if job.evals:
        e = job.evals[-1]
        st.caption(f"val loss {e['val_loss']:.3f} nats/token · perplexity {e['val_perplexity']:.2f} · "
                   f"{e['val_bits_per_byte']:.3f} bits per byte (step {e['step']}; that evaluation took "
                   f"{e.get('seconds', 0):.1f} s)")
    if job.measures:
        m = job.measures[-1]
        with st.expander(f"Progress measures (step {m['step']:,}): accuracy {m['val_accuracy']:.3f}, ICL score "
                         f"{m['icl_score']:+.2f} nats", expanded=bool(job.task)):
            st.caption("In-context learning: the loss late in a context minus early in it (negative: the context "
                       "helps). Head scores on repeated random tokens: 1 is a head that does only that.")
            c1, c2 = st.columns(2)
            with c1:
                progress.measure_curve({job.name: job.measures}, "icl_score", "ICL score (nats)", key="train")
            with c2:
                progress.measure_curve({job.name: job.measures}, "val_accuracy", "held-out next-token accuracy",
                                       key="train")
            progress.head_scores(m, key="train")
            progress.fourier(m, key="train")
    if job.threads:
        st.caption(f"torch threads: {job.threads['threads']}, chosen by measuring the first steps (ms per step: "
                   + ", ".join(f"{n} thread(s) {ms:.1f}" for n, ms in job.threads["ms_per_step"].items()) + ")")
    if job.sample:
        st.markdown(f"**Sample at step {job.sample['step']}**")
        st.text(job.sample["text"])
    if job.state == "exported":
        if job.name in model_names("mlm"):
            st.success(f"`{job.name}` is a masked LM: it fills blanks and does not write, so Learn's 'Encoder vs "
                       f"decoder' section offers it, beside a GPT that reads the same tokens.")
        else:
            st.success(f"`{job.name}` is in the model picker of every page now.")


live()
