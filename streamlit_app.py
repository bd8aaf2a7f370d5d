"""LLM Playground: the Streamlit entry point. Wires the pages; holds no logic of its own."""

import streamlit as st

st.set_page_config(page_title="LLM Playground", page_icon="🔬", layout="wide")

pages = [
    st.Page("playground/home.py", title="Home", icon="🏠", default=True),
]
st.navigation(pages).run()
