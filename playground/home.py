"""Home page: what the playground is, what is on this machine, and how to start. Imports no torch."""

import streamlit as st

from core.catalog import list_exported_models, list_runs

st.title("LLM Playground")
st.markdown(
    "Train a small decoder-only language model, export it to ONNX, and look inside it: how text "
    "becomes tokens, how each next token is chosen, what the attention heads look at, and how loss "
    "scales with parameters, data and compute."
)

models = list_exported_models()
runs = list_runs()
left, right = st.columns(2)
with left:
    st.subheader("Exported models")
    if models:
        st.dataframe([{"model": m.name, "parameters": m.parameters, "tokenizer": m.tokenizer,
                       "val loss": m.val_loss} for m in models], hide_index=True)
    else:
        st.info("No exported model yet in `exported/`. Train one with the command on the right, then "
                "export it: `python -m core.export runs/NAME exported/NAME`.")
with right:
    st.subheader("Training runs")
    if runs:
        st.dataframe([{"run": r.name, "steps": r.step, "val loss": r.val_loss,
                       "bits/byte": r.val_bits_per_byte} for r in runs], hide_index=True)
    else:
        st.info("No training run in `runs/` yet.")
    st.markdown("Train the byte-level model on tiny shakespeare from a terminal, export it, generate:")
    st.code("python -m core.train --out-dir runs/shakespeare-byte\n"
            "python -m core.export runs/shakespeare-byte exported/shakespeare-byte\n"
            "python -m core.generate exported/shakespeare-byte --prompt 'ROMEO:'", language="bash")
