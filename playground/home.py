"""Home: the front door. What this is in two lines, three ways in (learn, try a prompt, train), the model that
is ready to use, and the guided tour. What is on this machine and the terminal commands come last.
Imports no torch."""

import streamlit as st

from core.catalog import list_exported_models, list_runs
from playground.shared import default_model, model_names
from playground.tour import STEPS, start_tour

st.title("LLM Playground")
st.markdown("See how a language model works by using one: how text becomes tokens, how each next token is "
            "chosen, what attention looks at.  \nThen train your own, fine-tune it, and measure how loss scales.")

names = model_names()
models = {m.name: m for m in list_exported_models()}
ready = default_model(names)
if ready:
    m = models[ready]
    val = f", validation loss {m.val_loss:.2f}" if m.val_loss else ""
    size = f"a {m.parameters:,}-parameter model" if m.parameters else "a model"
    st.success(f"Ready to use: **{ready}**, {size} with a {m.tokenizer} tokenizer{val}. Every page starts on it; "
               f"pick another in the sidebar.", icon="✅")
else:
    st.info("No exported model yet in `exported/`. Train one (the Train page, or the terminal commands below); "
            "every page opens once a model is exported.")

prompt = st.text_area("Your prompt (the tour and *Try a prompt* use it)", "ROMEO:\nWhat light is this", key="home_prompt",
                      max_chars=200, height=68)
DOORS = [  # title, what is behind it, links (page, label, the URL parameter that carries the prompt)
    ("🎓 Learn how an LLM works", "Short sections with your text and this model's own numbers: tokens, "
     "embeddings, attention, logits, the loss, scaling, post-training, encoder vs decoder.",
     [("playground/learn.py", "Start learning →", "text"), ("playground/glance.py", "The whole model at a glance →", "text")]),
    ("🎲 Try a prompt", "Step through generation one token at a time, turn the sampler's knobs, force a different "
     "token and branch; compare decoding strategies; look at attention.",
     [("playground/generate.py", "Generate step by step →", "prompt"),
      ("playground/compare.py", "Compare strategies →", "prompt")]),
    ("🏋️ Train your own", "Train a small model on Shakespeare or your own text in minutes, watch the loss fall and "
     "the samples improve, export it, then fine-tune it with preferences.",
     [("playground/train.py", "Train a model →", None), ("playground/posttrain.py", "Post-train one →", None)]),
]
for column, (title, text, links) in zip(st.columns(len(DOORS)), DOORS):
    with column.container(border=True, height="stretch"):
        st.markdown(f"#### {title}")
        st.markdown(text)
        for page, label, param in links:
            st.page_link(page, label=label, query_params={param: prompt} if param else None)

with st.container(border=True):
    left, right = st.columns([4, 1])
    left.markdown(f"**New here? Take the guided tour.** {len(STEPS)} steps through the real pages with your "
                  f"prompt: tokens, the whole model, attention, sampling, decoding, training. Each step points "
                  f"at the control it talks about.")
    right.button("Start the tour", type="primary", on_click=start_tour, args=("home_prompt",), key="tour_start",
                 disabled=not ready)

with st.expander("What is on this machine, and the terminal commands"):
    runs = list_runs()
    left, right = st.columns(2)
    with left:
        st.markdown("**Exported models** (`exported/`)")
        if models:
            st.dataframe([{"model": m.name, "parameters": m.parameters, "tokenizer": m.tokenizer,
                           "val loss": m.val_loss} for m in models.values()], hide_index=True)
        else:
            st.info("No exported model yet in `exported/`. Train one, then export it: "
                    "`python -m core.export runs/NAME exported/NAME`.")
    with right:
        st.markdown("**Training runs** (`runs/`)")
        if runs:
            st.dataframe([{"run": r.name, "steps": r.step, "val loss": r.val_loss,
                           "bits/byte": r.val_bits_per_byte} for r in runs], hide_index=True)
        else:
            st.info("No training run in `runs/` yet.")
    st.markdown("The same loop from a terminal: train the byte-level model on tiny shakespeare, export it, generate.")
    st.code("python -m core.train --out-dir runs/shakespeare-byte\n"
            "python -m core.export runs/shakespeare-byte exported/shakespeare-byte\n"
            "python -m core.generate exported/shakespeare-byte --prompt 'ROMEO:'", language="bash")
