"""The guided tour: a short path through the real pages with the visitor's own prompt, each step pointing at
the live widget it talks about (outlined on the page), in the spirit of Transformer Explainer's walk-through.

Holds the steps (`STEPS`: page, the widget's key, what to look at and try) and `show_tour`, which the entry
point calls on every page: while a tour runs, the sidebar shows the step with Back / Next / End, and Next
opens the next step's page with the prompt in its link. The pages know nothing of the tour: a step names a
widget by the key the page already gives it (Streamlit marks its container `st-key-KEY`), and a missing
widget only means nothing is outlined.
"""

from dataclasses import dataclass

import streamlit as st

PROMPT_KEY = "tour_prompt"          # session state: the visitor's prompt, carried into every step's page
STEP_KEY = "tour_step"              # session state: the step shown, absent when no tour runs


@dataclass(frozen=True)
class Step:
    page: str           # the page file, as st.navigation knows it
    widget: str         # the key of the widget to outline ("" for none)
    title: str
    text: str
    prompt_param: str   # the page's URL parameter for the text ("" for none)


STEPS = [
    Step("playground/tokenizer.py", "tok_text", "1 · Text becomes tokens",
         "Your prompt, cut into the pieces the model reads. Each chip is one token, a number in its vocabulary; "
         "hover one for its id. Compare how the tokenizers cut the same words.", "text"),
    Step("playground/glance.py", "glance_stream", "2 · The whole model, one pass",
         "Each token becomes a vector, and every block reads that residual stream through a norm and adds its "
         "attention's and MLP's output back. The chart shows the stream growing part by part; the boxes above "
         "it are the live numbers of each part, and each links to its detailed view.", "text"),
    Step("playground/attention.py", "attn_grid", "3 · What attention looks at",
         "One small map per head: row i is how much token i draws from each earlier token (the future is "
         "masked). Click a map to open that head below, and find one that looks at the previous token.", "text"),
    Step("playground/generate.py", "knob_temperature", "4 · Choosing the next token",
         "The model scores every token; the sampler reshapes those scores and draws one. Press *Sample one* a "
         "few times, then move the temperature outlined in the sidebar and watch the candidates change.",
         "prompt"),
    Step("playground/compare.py", "cmp_strategies", "5 · Decoding strategies side by side",
         "The same prompt and seed through greedy, beam search and sampling: press *Run* and compare the texts "
         "and their metrics.", "prompt"),
    Step("playground/train.py", "train_preset", "6 · Train your own",
         "Pick a size and start a run: the loss falls live, samples improve, and the model you export appears in "
         "every page's model picker.", ""),
]


def start_tour(prompt_key: str) -> None:
    """Begin at the first step with the prompt in the widget `prompt_key` (a button callback on Home: read when
    the button is pressed, so text typed just before the click counts)."""
    st.session_state[PROMPT_KEY] = st.session_state.get(prompt_key, "")
    _go(0)


def _go(step: int | None) -> None:
    if step is None or not 0 <= step < len(STEPS):
        st.session_state.pop(STEP_KEY, None)
    else:
        st.session_state[STEP_KEY] = step
    st.session_state["tour_moved"] = True


def show_tour(current_page: str) -> None:
    """While a tour runs: the step in the sidebar, its widget outlined, and a move to its page when Back or
    Next was pressed (or when the step's page is not the one shown)."""
    step = st.session_state.get(STEP_KEY)
    if step is None:
        return
    if not 0 <= step < len(STEPS):          # a stale state from an older tour
        st.session_state.pop(STEP_KEY, None)
        return
    s = STEPS[step]
    if st.session_state.pop("tour_moved", False) and s.page != current_page:
        prompt = st.session_state.get(PROMPT_KEY, "")
        st.switch_page(s.page, query_params={s.prompt_param: prompt} if s.prompt_param and prompt else None)
    with st.sidebar.container(border=True, key="tour_box"):
        st.markdown(f"**Tour · {s.title}**")
        st.markdown(s.text)
        b = st.columns(3)
        b[0].button("Back", on_click=_go, args=(step - 1 if step else None,), key="tour_back", disabled=step == 0)
        b[1].button("Next" if step + 1 < len(STEPS) else "Finish", on_click=_go,
                    args=(step + 1 if step + 1 < len(STEPS) else None,), key="tour_next", type="primary")
        b[2].button("End", on_click=_go, args=(None,), key="tour_end")
        if s.page != current_page:
            st.caption("This step belongs to another page: press Next or Back to go on, or End.")
    if s.widget and s.page == current_page:
        # outline the widget the step talks about (its container carries the class st-key-KEY)
        st.html(f"<style>.st-key-{s.widget} {{ outline: 3px solid #f59e0b; outline-offset: 4px; "
                f"border-radius: 6px; }}</style>")
