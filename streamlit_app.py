"""LLM Playground: the Streamlit entry point. Wires the pages, grouped as a visitor uses them; holds no logic
of its own."""

import streamlit as st

from playground.shared import keep_jobs_alive
from playground.tour import show_tour

st.set_page_config(page_title="LLM Playground", page_icon="🔬", layout="wide")

SECTIONS = {
    "": [("playground/home.py", "Home", "🏠", None)],
    "Learn": [("playground/learn.py", "Learn", "🎓", "learn"),
              ("playground/tokenizer.py", "Tokenizer", "🔤", "tokenizer"),
              ("playground/glance.py", "Model at a glance", "🧭", "glance")],
    "Inspect": [("playground/generate.py", "Generate", "🎲", "generate"),
                ("playground/compare.py", "Compare", "⚖️", "compare"),
                ("playground/attention.py", "Attention", "🔍", "attention"),
                ("playground/inside.py", "Inside", "🧠", "inside"),
                ("playground/models.py", "Models", "📦", "models")],
    "Train": [("playground/train.py", "Train", "🏋️", "train"),
              ("playground/emergence.py", "Emergence", "✨", "emergence"),
              ("playground/posttrain.py", "Post-train", "🎯", "posttrain"),
              ("playground/scaling.py", "Scaling", "📈", "scaling")],
}
pages = {path: st.Page(path, title=title, icon=icon, url_path=url, default=url is None)
         for group in SECTIONS.values() for path, title, icon, url in group}
keep_jobs_alive()     # a visitor's running training job stays theirs on every page, not only on Train
current = st.navigation({name: [pages[path] for path, *_ in group] for name, group in SECTIONS.items()}, expanded=True)
show_tour(next(path for path, p in pages.items() if p.url_path == current.url_path))
current.run()
