"""LLM Playground: the Streamlit entry point. Wires the pages; holds no logic of its own."""

import streamlit as st

from playground.shared import keep_jobs_alive

st.set_page_config(page_title="LLM Playground", page_icon="🔬", layout="wide")

pages = [
    st.Page("playground/home.py", title="Home", icon="🏠", default=True),
    st.Page("playground/learn.py", title="Learn", icon="🎓", url_path="learn"),
    st.Page("playground/tokenizer.py", title="Tokenizer", icon="🔤", url_path="tokenizer"),
    st.Page("playground/generate.py", title="Generate", icon="🎲", url_path="generate"),
    st.Page("playground/compare.py", title="Compare", icon="⚖️", url_path="compare"),
    st.Page("playground/attention.py", title="Attention", icon="🔍", url_path="attention"),
    st.Page("playground/inside.py", title="Inside", icon="🧠", url_path="inside"),
    st.Page("playground/models.py", title="Models", icon="📦", url_path="models"),
    st.Page("playground/train.py", title="Train", icon="🏋️", url_path="train"),
    st.Page("playground/emergence.py", title="Emergence", icon="✨", url_path="emergence"),
    st.Page("playground/posttrain.py", title="Post-train", icon="🎯", url_path="posttrain"),
    st.Page("playground/scaling.py", title="Scaling", icon="📈", url_path="scaling"),
]
keep_jobs_alive()     # a visitor's running training job stays theirs on every page, not only on Train
st.navigation(pages).run()
