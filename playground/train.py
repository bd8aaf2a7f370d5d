"""Train: train a small model on a corpus while you watch, then find it in every other page."""

import uuid
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core import catalog
from core.data import CorpusError, corpus_from_upload, data_dir, read_text_file
from core.files import write_atomic
from core.jobs import JobError
from core.tokenizer import MIN_BPE_VOCAB, TokenizerError, byte_tokenizer, train_bpe
from playground.shared import HOSTED, job_board, job_limits

st.title("Train a model")
try:
    from core.model import ModelConfig, count_parameters, flops_per_token
except ImportError:
    st.info("Training needs torch, which this deployment does not install (it serves exported models "
            "only). Run the playground locally with `requirements.txt` to train.")
    st.stop()

board, limits = job_board(), job_limits()
owner = st.session_state.setdefault("owner", uuid.uuid4().hex)
board.heartbeat(owner)

PRESETS = {   # name: (n_layer, n_head, n_embd, block_size)
    "tiny: 2 layers, 64 wide": (2, 2, 64, 64),
    "small: 4 layers, 128 wide (nanoGPT's CPU recipe)": (4, 4, 128, 64),
    "medium: 6 layers, 192 wide": (6, 6, 192, 128),
    "large: 6 layers, 384 wide": (6, 6, 384, 256),
}
# measured on this project's reference machine (2 vCPUs): ~80 GFLOP/s of training work
SUSTAINED_FLOPS = 80e9

st.subheader("1. Corpus")
sources = ["tiny shakespeare (downloaded once, checksum-verified)", "upload a .txt file"]
if not HOSTED:
    sources.append("a local file")
source = st.radio("Text to learn from", sources, key="train_source")
corpus_arg, corpus_text = None, None
if source.startswith("tiny"):
    corpus_arg = "tinyshakespeare"
elif source.startswith("upload"):
    up = st.file_uploader("A UTF-8 .txt file", type=["txt", "md"], key="train_upload")
    if up is not None:
        try:
            corpus = corpus_from_upload(up.getvalue(), up.name)
            path = data_dir() / "uploads" / f"{corpus.sha256[:16]}.txt"
            if not path.exists():
                write_atomic(path, up.getvalue())
            corpus_arg, corpus_text = str(path), corpus.text
            st.caption(f"{corpus.n_bytes:,} bytes, sha256 {corpus.sha256[:12]}…")
        except CorpusError as e:
            st.error(str(e))
else:
    local = st.text_input("Path to a UTF-8 text file", key="train_path")
    if local:
        try:
            corpus = read_text_file(local)
            corpus_arg, corpus_text = str(Path(local).resolve()), corpus.text
            st.caption(f"{corpus.n_bytes:,} bytes, sha256 {corpus.sha256[:12]}…")
        except CorpusError as e:
            st.error(str(e))

st.subheader("2. Tokenizer")
tok_kind = st.radio("Tokenizer", ["byte (256 symbols)", "BPE trained on this corpus"], key="train_tok",
                    horizontal=True)
vocab = 1024
if tok_kind.startswith("BPE"):
    vocab = st.slider("BPE vocabulary size", MIN_BPE_VOCAB, 8192, 1024, key="train_vocab",
                      help="More tokens: shorter sequences (more text per context) but a bigger embedding.")
    if corpus_text and st.button("Measure its compression on this corpus", key="train_measure"):
        try:
            sample = corpus_text[:300_000]
            bpe = train_bpe([sample], vocab)
            st.caption(f"{bpe.bytes_per_token(sample):.2f} bytes per token with BPE-{vocab}, vs "
                       f"{byte_tokenizer().bytes_per_token(sample):.2f} with bytes")
        except TokenizerError as e:
            st.error(str(e))

st.subheader("3. Model and schedule")
preset = st.selectbox("Size", list(PRESETS), index=1, key="train_preset")
n_layer, n_head, n_embd, block = PRESETS[preset]
c1, c2, c3 = st.columns(3)
steps = c1.number_input("Steps", 10, limits.max_steps, min(1000, limits.max_steps), 10, key="train_steps")
eval_every = c2.number_input("Evaluate every", 5, 1000, 100, 5, key="train_eval")
sample_every = c3.number_input("Sample every", 0, 5000, 200, 10, key="train_sample")
with st.expander("Advanced"):
    a1, a2, a3, a4 = st.columns(4)
    lr = a1.number_input("Learning rate", 1e-5, 1e-1, 2e-3, format="%.4f", key="train_lr")
    batch = a2.number_input("Batch size", 1, 64, 12, key="train_batch")
    block = a3.number_input("Context (tokens)", 8, 512, block, key="train_block")
    pos = a4.selectbox("Positions", ["rope", "learned", "sinusoidal"], key="train_pos")
    dropout = a1.slider("Dropout", 0.0, 0.5, 0.0, 0.05, key="train_dropout")
vocab_size = 257 if tok_kind.startswith("byte") else vocab + 1
try:
    mcfg = ModelConfig(vocab_size=vocab_size, block_size=int(block), n_layer=n_layer, n_head=n_head,
                       n_embd=n_embd, pos_encoding=pos, dropout=float(dropout))
except ValueError as e:
    st.error(str(e))
    st.stop()
params = count_parameters(mcfg)["total"]
total_flops = flops_per_token(mcfg) * int(steps) * int(batch) * int(block)
st.caption(f"{params:,} parameters · {int(steps) * int(batch) * int(block):,} training tokens · about "
           f"{total_flops / SUSTAINED_FLOPS / 60:.1f} minutes on a 2-core machine like this project's reference")
name = st.text_input("Run name (also the exported model's name)", "my-model", key="train_name")

args = ["--corpus", corpus_arg or "", "--tokenizer", "byte" if tok_kind.startswith("byte") else "bpe",
        "--bpe-vocab-size", str(vocab), "--n-layer", str(n_layer), "--n-head", str(n_head),
        "--n-embd", str(n_embd), "--block-size", str(int(block)), "--pos-encoding", pos,
        "--dropout", str(float(dropout)), "--max-steps", str(int(steps)), "--learning-rate", str(float(lr)),
        "--min-lr", str(float(lr) / 10), "--warmup-steps", str(min(100, int(steps) // 10)),
        "--batch-size", str(int(batch)), "--eval-interval", str(int(eval_every)), "--eval-iters", "20",
        "--sample-interval", str(int(sample_every)), "--checkpoint-interval", str(int(eval_every)),
        "--milestones", "4", "--keep-checkpoints", "2",
        "--threads", "1" if HOSTED else "2"]
if st.button("Start training", type="primary", key="train_start", disabled=corpus_arg is None):
    try:
        board.start(owner, name, args, params, int(steps))
        st.session_state["train_job"] = name
    except JobError as e:
        st.error(str(e))


def act(what: str, job_name: str) -> None:
    try:
        getattr(board, what)(owner, job_name)
    except JobError as e:
        st.session_state["train_notice"] = str(e)


@st.fragment(run_every=1.0)
def live() -> None:
    board.heartbeat(owner)
    job = board.get(st.session_state.get("train_job", ""))
    if job is None:
        return
    state = job.poll(limits)
    if state == "finished" and job.export_dir is None:
        try:
            job.export(Path(catalog.EXPORTED_DIR))     # on finish the model is exported automatically
        except JobError as e:
            job.message = str(e)
        state = job.state
    st.subheader(f"Run `{job.name}`: {state}")
    if "train_notice" in st.session_state:
        st.warning(st.session_state.pop("train_notice"))
    if job.message:
        (st.error if state == "failed" else st.info)(job.message)
    records = job.records()
    train_steps = [r for r in records if r["type"] == "TrainStep"]
    evals = [r for r in records if r["type"] == "EvalResult"]
    samples = [r for r in records if r["type"] == "Sample"]
    done = train_steps[-1]["step"] if train_steps else 0
    if train_steps:
        last = train_steps[-1]
        eta = (job.max_steps - done) * (last["elapsed"] / max(1, done))
        st.progress(min(1.0, done / job.max_steps),
                    text=f"step {done:,} / {job.max_steps:,} · {last['tokens_per_s']:,.0f} tokens/s · "
                         f"ETA {eta:.0f} s")
    b1, b2, b3 = st.columns(3)
    b1.button("Stop", key="train_stop", on_click=act, args=("stop", job.name), disabled=state != "running")
    b2.button("Resume", key="train_resume", on_click=act, args=("resume", job.name),
              disabled=state not in ("stopped", "failed"))
    b3.button("Export now", key="train_export", on_click=act, args=("export", job.name),
              disabled=state not in ("stopped",) or job.export_dir is not None)
    if train_steps or evals:
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=[r["step"] for r in train_steps], y=[r["loss"] for r in train_steps],
                                 name="train (batch)", line=dict(width=1)))
        fig.add_trace(go.Scatter(x=[r["step"] for r in evals], y=[r["val_loss"] for r in evals],
                                 name="val", mode="lines+markers"))
        fig.update_layout(height=320, xaxis_title="step", yaxis_title="loss (nats/token)",
                          margin=dict(t=20, b=20))
        st.plotly_chart(fig, width="stretch", key=f"train_curve_{len(records)}")
        if evals:
            e = evals[-1]
            st.caption(f"val loss {e['val_loss']:.3f} nats/token · perplexity {e['val_perplexity']:.2f} · "
                       f"{e['val_bits_per_byte']:.3f} bits per byte (step {e['step']})")
    if samples:
        st.markdown(f"**Sample at step {samples[-1]['step']}**")
        st.text(samples[-1]["text"])
    if state == "exported":
        st.success(f"`{job.name}` is in the model picker of every page now.")


live()
