"""Models: each exported model's card, its training curve, how well it predicts your text (any token of it with the
model's alternatives there, its rank, and a way to continue from it on the Generate page, as on Compare), and
(locally) importing a pretrained checkpoint as a new model: the board's import job does the work; this page only
asks and watches."""

import math
import time

import streamlit as st

from core.jobs import JobError
from core.quantize import QuantizeConfig, is_approximate
from core.compare import ALTERNATIVES
from core.generate import Alternative, prompt_tail
from core.runtime import ModelError
from playground.shared import (CONTEXT_BG, figure, job_board, link_params, model_key, open_page, prob_colour,
                               token_alternatives, tokens_html, url_text, visible_text, visitor_token)

model, lim = open_page(None)
board, token = job_board(), visitor_token()


def start_import() -> None:
    try:
        board.import_model(token, st.session_state["import_source"], st.session_state["import_name"],
                           st.session_state["import_int8"])
    except JobError as e:
        st.session_state["import_notice"] = str(e)


@st.fragment(run_every=2.0)
def imports() -> None:
    """The visitor's imports as they go (the board's supervisor owns them; this only watches)."""
    for v in board.import_views(token):
        if v.state == "importing":
            st.info(f"Importing `{v.source}` as `{v.name}` ({time.time() - v.started:.0f} s): {v.progress}", icon="⏳")
        elif v.state == "imported":
            st.success(f"`{v.name}`: {v.message}.")
            seen = st.session_state.setdefault("imports_shown", set())
            if v.name not in seen:      # once: the whole page reruns, so the picker lists the new model
                seen.add(v.name)
                st.rerun()
        else:
            st.error(f"`{v.name}` was not imported: {v.message}")


if board.limits.allow_imports:
    with st.expander("Import a pretrained model (GPT-2, Llama, Qwen2 families)"):
        st.caption("A checkpoint folder with `config.json`, `*.safetensors` and its tokenizer files, or a Hugging Face "
                   "repo id already in this machine's cache (`gpt2`, `distilgpt2`, `HuggingFaceTB/SmolLM2-135M`, "
                   "`Qwen/Qwen2.5-0.5B`...). The weights are mapped into the playground's own GPT, checked against "
                   "torch and exported to ONNX; nothing is downloaded while you wait here.")
        f1, f2 = st.columns([3, 2])
        f1.text_input("Checkpoint folder or repo id", key="import_source")
        f2.text_input("Name in the picker", key="import_name")
        st.checkbox(f"Also an int8 variant (smaller and faster; kept only if its next token is fp32's at "
                    f"{QuantizeConfig.min_agreement:.0%} of positions or more)", key="import_int8")
        st.button("Import", on_click=start_import, key="import_start",
                  disabled=not (st.session_state.get("import_source") and st.session_state.get("import_name")))
        if "import_notice" in st.session_state:
            st.error(st.session_state.pop("import_notice"))
        imports()

card = model.card
cfg = model.config
st.title(f"Model: {model.name}")

c = st.columns(4)
c[0].metric("parameters", f"{card['parameters']['total']:,}",
            help=f"{card['parameters']['non_embedding']:,} outside the embeddings (Kaplan's N)")
c[1].metric("val loss", f"{card['val_loss']:.3f}" if card.get("val_loss") else "n/a", help="nats per token")
c[2].metric("bits per byte", f"{card['val_bits_per_byte']:.3f}" if card.get("val_bits_per_byte") else "n/a",
            help="comparable across tokenizers: the loss spread over the bytes of the text")
c[3].metric("context", f"{cfg.block_size} tokens")

left, right = st.columns(2)
with left:
    st.subheader("Architecture")
    st.dataframe([{"setting": k, "value": str(v)} for k, v in cfg.to_dict().items()], hide_index=True)
    st.caption(f"Tokenizer `{card['tokenizer']['name']}` ({card['tokenizer']['kind']}, "
               f"{card['tokenizer']['n_vocab']:,} ids) · {card['flops_per_token'] / 1e6:.2f} MFLOP per training token")
source = card.get("source") or {}
with right:
    if source.get("kind") == "pretrained":
        st.subheader("Imported")
        st.markdown(f"`{source.get('checkpoint')}`: a {source.get('model_type')} checkpoint "
                    f"({source.get('architecture')}), weights read from {len(source.get('files', {}))} safetensors "
                    f"file(s) stored as {', '.join(source.get('stored_dtypes', []))}, run here in float32.")
        if source.get("command"):
            st.code(source["command"], language="bash")
        export = card.get("export") or {}
        if export:
            st.caption(f"Imported and exported in {export.get('seconds', 0):.0f} s, peak memory "
                       f"{export.get('peak_rss_mb', 0):,.0f} MB.")
    elif card.get("posttraining"):
        post = card["posttraining"]
        base = post.get("base") or {}
        st.subheader("Post-trained")
        lora = post.get("lora")
        st.markdown(f"**{str(post.get('stage', '?')).upper()}** from `{base.get('name') or base.get('kind', '?')}`"
                    f" for {post.get('step', '?')} steps on {post.get('examples', '?')} examples "
                    f"({post.get('held_out', '?')} held out) · data `{post.get('judge') or 'a JSONL file'}`"
                    f" · beta {post.get('beta')}" + (f" · LoRA rank {lora['rank']}" if lora else " · every weight"))
        last = post.get("last_eval") or {}
        if last:
            st.caption("Last evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()
                                                      if isinstance(v, (int, float))))
        st.caption("Its curves and samples are on the Post-train page, beside its base.")
    else:
        st.subheader("Training")
        training = card.get("training") or {}
        curve, per_step = training.get("curve") or [], training.get("step_curve") or []
        if curve or per_step:
            steps = [p["step"] for p in curve]
            train = (dict(type="scatter", x=[p["step"] for p in per_step], y=[p["loss"] for p in per_step],
                          name="train (steps' own loss)", mode="lines") if per_step else
                     dict(type="scatter", x=steps, y=[p["train_loss"] for p in curve], name="train"))
            fig = figure([train, dict(type="scatter", x=steps, y=[p["val_loss"] for p in curve], name="val",
                                      mode="lines+markers")],
                         xtitle="step", ytitle="loss (nats/token)", height=300, margin=dict(t=20, b=20))
            st.plotly_chart(fig, width="stretch", key="curve")
        st.caption(f"{training.get('step', '?')} steps, {training.get('tokens_seen') or 0:,} tokens · corpus sha256 "
                   f"`{(training.get('corpus_sha256') or '?')[:16]}…`")
        if training.get("command"):
            st.code(training["command"], language="bash")

st.subheader("Export checks")
st.caption(f"onnxruntime vs torch: max |logit difference| {card['parity']['max_abs_logit_diff']:.1e} over a "
           f"{card['parity']['prefill_tokens']}-token prefill and {card['parity']['cached_steps']} cached steps.")
st.dataframe([{"variant": name + (" (approximate)" if name == "int8" and is_approximate(v) else ""), "file": v["file"],
               "MB": round(v["bytes"] / 1e6, 2), "how": v.get("recipe", "as trained" if name == "fp32" else ""),
               "max logit diff vs torch": (f"{v['max_logit_diff_vs_torch']:.1e}"
                                           if "max_logit_diff_vs_torch" in v else ""),
               "same next token as fp32": v.get("top1_agreement", 1.0),
               "measured on": (f"{v['agreement_positions']} positions of {v['agreement_text']}"
                               if "agreement_positions" in v else ""),
               "ms per decode step": round(v["decode_ms_median"], 3)}
              for name, v in card["variants"].items()], hide_index=True)
for name, why in (card.get("variants_not_kept") or {}).items():
    st.caption(f"No {name} variant was kept: {why}")

st.subheader("Score a text")
if model.variant != "fp32":
    st.caption(f"Scored with the {model.variant} weights chosen in the sidebar.")
text = st.text_area("Text", url_text("score", "The night is long, and the morning will come.", lim.max_prompt_chars),
                    max_chars=lim.max_prompt_chars, key="score_text")
st.query_params["score"] = text
kept = st.session_state.get("score_result")
if kept is None or kept[0] != (model_key(model), text):
    # scored once per model and text: picking a token below reruns the page, not the model
    try:
        kept = st.session_state["score_result"] = ((model_key(model), text), model.score(text, top=ALTERNATIVES))
    except ModelError as e:
        st.info(str(e))
        st.stop()
s = kept[1]
m = st.columns(3)
m[0].metric("perplexity", f"{s.perplexity:.2f}", help="exp(mean loss): the model is as unsure as a fair die "
            "with this many sides, on average")
m[1].metric("mean loss", f"{s.mean_nll:.3f} nats/token")
m[2].metric("bits per byte", f"{s.bits_per_byte:.3f}")
texts = [model.tokenizer.token_text(t) for t in s.tokens]


def title(j: int) -> str:
    """Scored token j's hover: its log-prob, probability and rank there."""
    lp = s.logprobs[j - 1]
    return f"log p = {lp:.2f} (p = {math.exp(lp):.3f}), #{s.ranks[j - 1]:,} of {model.vocab_size:,}"


pieces = [(texts[0], "first token: context only", CONTEXT_BG)]
pieces += [(texts[j], title(j), prob_colour(math.exp(s.logprobs[j - 1]))) for j in range(1, len(s.tokens))]
st.markdown(tokens_html(pieces), unsafe_allow_html=True)
st.caption("Each token coloured by the probability the model gave it, from red (surprising) to green (expected); "
           "hover one for its rank among all tokens.")

st.markdown("**One token and its alternatives**")
# token 0 is only context; a slider needs two stops, so a text of two tokens has just its second
j = 1 if len(s.tokens) == 2 else st.select_slider(
    "Token", options=range(1, len(s.tokens)), key="score_token",
    format_func=lambda k: f"{k + 1}: {visible_text(texts[k])}",
    help="Slide through the text's tokens, or focus it and use the arrow keys.")
row = j - 1
left, right = st.columns([3, 2])
before = s.text_before(j)
alternatives = [Alternative(int(t), model.tokenizer.token_text(int(t)), math.exp(lp))
                for t, lp in zip(s.top_ids[row], s.top_logprobs[row])]
token_alternatives(left, before, Alternative(s.tokens[j], texts[j], math.exp(s.logprobs[row])), title(j),
                   alternatives, "score_alternatives")
left.caption(f"The model's {len(alternatives)} likeliest tokens at position {j + 1} of the text; the text's own "
             f"token there is #{s.ranks[row]:,} of all {model.vocab_size:,}.")
prompt_there, cut = prompt_tail(before, lim.max_prompt_chars)
right.page_link("playground/generate.py", label="Continue from here in Generate", icon="🎲",
                query_params={**link_params(model_key(model)), "prompt": prompt_there}, disabled=not prompt_there)
right.caption("The text before this token becomes Generate's prompt: its next-token candidates there are these "
              "alternatives; force another one to branch."
              if prompt_there else "No text comes before this token (only the tokenizer's start token): nothing "
                                   "to continue from.")
if cut:
    right.caption(f"The text is longer than the {lim.max_prompt_chars:,} characters a prompt may have here: its "
                  f"start is left out.")
