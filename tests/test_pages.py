"""AppTest of every page on the real default model (exported/shakespeare-char)."""

import math
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import tiktoken
from streamlit.testing.v1 import AppTest

from playground import shared
from tests.conftest import run_without_torch

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
PAGES = ["playground/home.py", "playground/learn.py", "playground/tokenizer.py", "playground/generate.py",
         "playground/compare.py", "playground/scaling.py",
         "playground/attention.py", "playground/inside.py", "playground/models.py"]


@pytest.fixture(autouse=True)
def offline_tiktoken(monkeypatch):
    """OpenAI encodings fetch files on first use; in tests they are simply unavailable."""
    def offline(name):
        raise ConnectionError("offline in tests")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)


def page(path: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    at.switch_page(path)
    return at.run()


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label.startswith(label))


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders(path):
    at = page(path)
    assert not at.exception, at.exception
    assert at.title


def test_generate_steps_forces_goes_back_and_shares(monkeypatch):
    at = page("playground/generate.py")
    for _ in range(3):
        button(at, "Sample one").click().run()
    assert not at.exception
    state = at.session_state["trace"]["state"]
    main = state["branches"][0]
    assert len(main["tokens"]) == 3 and state["cursor"] == 3
    candidate = next(b for b in at.button if b.key == "cand_3")
    candidate.click().run()                                          # force the 4th most likely token
    state = at.session_state["trace"]["state"]
    assert state["cursor"] == 4 and state["branches"][0]["forced"] == [3]
    button(at, "Back").click().run()
    assert at.session_state["trace"]["state"]["cursor"] == 3
    button(at, "Greedy one").click().run()                           # a different choice: a new branch
    state = at.session_state["trace"]["state"]
    assert len(state["branches"]) in (1, 2) and state["cursor"] == 4
    shared_link = dict(at.query_params)
    assert "t" in shared_link and shared_link["model"] == "shakespeare-char"

    # a fresh visitor opening the link sees the same text and continues identically
    fresh = page("playground/generate.py", shared_link)
    assert not fresh.exception
    html = [m.value for m in fresh.markdown if "span" in m.value]
    assert html and html[0] == [m.value for m in at.markdown if "span" in m.value][0]
    button(fresh, "Sample one").click().run()
    button(at, "Sample one").click().run()
    assert fresh.session_state["trace"]["state"] == at.session_state["trace"]["state"]


def test_generate_shows_the_next_tokens_logit_lens_ending_in_the_models_own_prediction():
    at = page("playground/generate.py")
    button(at, "Greedy one").click().run()
    at.toggle(key="gen_lens").set_value(True).run()
    assert not at.exception
    rows = at.dataframe[0].value
    from playground.shared import model_by_name
    L = model_by_name("shakespeare-char").n_layer          # 2 points a block, + the embedding
    assert len(rows) == 2 * L + 1 and rows["after"].iloc[0] == "embed"
    # the last point is the model's own distribution: its top token is what greedy takes next (no penalties
    # are on by default)
    before = len(at.session_state["trace"]["state"]["branches"][0]["tokens"])
    button(at, "Greedy one").click().run()
    taken = at.session_state["trace"]["state"]["branches"][0]["tokens"][before]
    from playground.shared import visible
    assert rows["#1"].iloc[-1].split("  ")[0] == visible(model_by_name("shakespeare-char").tokenizer.token_text(taken))


def test_generate_in_hosted_mode_stops_at_the_limit(monkeypatch):
    monkeypatch.setattr(shared, "HOSTED", True)
    at = page("playground/generate.py")
    at.number_input(key="run_n").set_value(100).run()
    for _ in range(3):
        button(at, "Run").click().run()
    assert len(at.session_state["trace"]["state"]["branches"][0]["tokens"]) == 256
    button(at, "Sample one").click().run()
    assert any("stops at 256 generated tokens" in w.value for w in at.warning)


def test_generate_rejects_a_damaged_link():
    at = page("playground/generate.py", {"t": "garbage!!", "prompt": "ROMEO:\n"})
    assert not at.exception
    assert any("damaged" in w.value for w in at.warning)


def stage_view(at: AppTest) -> str:
    return next(m.value for m in at.markdown if "tokens possible" in m.value)


def test_generate_stage_view_draws_each_stage_that_is_on_and_collapses_the_rest():
    at = page("playground/generate.py")
    view = stage_view(at)
    assert "Every stage is off" in view and "1 · " not in view and "line-through" not in view
    at = page("playground/generate.py", {"temperature": "0.7", "top_k": "5", "prompt": "ROMEO:\n"})
    assert not at.exception
    view = stage_view(at)
    assert "1 · Temperature" in view and "2 · Top-k" in view and "3 · " not in view
    assert "257 → 5 tokens" in view and "line-through" in view          # top-k struck out what it removed
    assert "Off (their knobs leave the distribution as it is): Repetition penalty" in view and "XTC." in view
    at.slider(key="knob_dry_multiplier").set_value(0.8).run()        # the new knobs are sidebar sliders too
    assert at.query_params["dry_multiplier"] == "0.8" and "· DRY" in stage_view(at)


def test_generate_reorders_the_stages_and_a_bad_order_link_falls_back_with_a_note():
    at = page("playground/generate.py", {"temperature": "3.0", "min_p": "0.3", "prompt": "ROMEO:\n"})
    assert stage_view(at).index("1 · Temperature") < stage_view(at).index("2 · Min-p")
    at.multiselect(key="stage_order").unselect("temperature").run()   # out of the list: to the end
    order = at.session_state["stage_order"]
    assert order[-1] == "temperature" and len(order) == 10
    assert at.query_params["order"].endswith(",xtc,temperature")
    assert stage_view(at).index("1 · Min-p") < stage_view(at).index("2 · Temperature")
    shared_link = dict(at.query_params)
    fresh = page("playground/generate.py", shared_link)
    assert fresh.session_state["stage_order"] == order and not fresh.warning
    button(at, "Default order").click().run()
    assert "order" not in at.query_params

    for bad in ("temperature,temperature", "top_k,<b>x</b>", "x" * 5000):
        at = page("playground/generate.py", {"order": bad, "dry_breakers": "nope", "dry_multiplier": "0.5"})
        assert not at.exception
        notes = " ".join(w.value for w in at.warning)
        assert "so the default order is used" in notes and "DRY uses its default breakers" in notes
        assert "order" not in at.query_params and "dry_breakers" not in at.query_params


def table_with(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_compare_runs_the_strategies_with_metrics():
    at = page("playground/compare.py")
    assert not at.exception
    table = table_with(at, "strategy")
    assert list(table["strategy"]) == ["greedy", "beam 4", "top-p 0.9", "min-p 0.1"]
    assert (table["perplexity"] > 1).all() and (table["tokens"] > 0).all()


def test_compare_colours_its_texts_and_continues_from_a_token_in_generate():
    at = page("playground/compare.py")
    outcomes = at.session_state["cmp_result"].outcomes
    # every text as chips, like Generate's: the prompt, then each token coloured by its probability under the
    # model, its hover naming the model's alternatives there
    chips = [m.value for m in at.markdown if 'title="prompt"' in m.value]
    assert len(chips) == len(outcomes) == 4
    for html, o in zip(chips, outcomes):
        assert html.count("<span") == 1 + len(o.token_ids)
        assert shared.prob_colour(o.tokens[0].raw_prob) in html and "; top: " in html

    # one token of top-p's text: the model's alternatives there, the chosen one marked
    at.selectbox(key="cmp_pick").set_value("top-p 0.9").run()
    at.select_slider(key="cmp_token").set_value(5).run()
    assert not at.exception
    o, chosen = outcomes[2], outcomes[2].tokens[5]
    alts = table_with(at, "probability")
    assert list(alts["probability"]) == sorted(alts["probability"], reverse=True) and alts["probability"].sum() <= 1
    mark = alts[alts[""] == "← chosen"]
    assert len(mark) == 1 and mark["token"].iloc[0] == shared.visible_text(chosen.text)
    assert mark["probability"].iloc[0] == pytest.approx(chosen.raw_prob)

    # continue there in Generate: the text before the token is the prompt, with top-p's knob and the seed, so
    # Generate's next token is the one top-p drew (randomness is per position)
    button(at, "Continue from here in Generate").click().run()
    assert not at.exception
    assert at.text_area(key="prompt").value == "ROMEO:\n" + o.text_before(5)
    assert at.query_params["top_p"] == "0.9" and at.query_params["seed"] == "0"
    assert at.query_params["model"] == "shakespeare-char"
    button(at, "Sample one").click().run()
    assert at.session_state["trace"]["state"]["branches"][0]["tokens"] == [chosen.token_id]


def test_compare_continues_a_beam_from_its_answer_and_keeps_the_prompt_within_the_limit(monkeypatch):
    from core.limits import Limits
    monkeypatch.setattr(shared, "limits", lambda: Limits(max_prompt_chars=20))
    at = page("playground/compare.py", {"strategies": "beam 4", "prompt": "ROMEO:\n"})
    o = at.session_state["cmp_result"].outcomes[0]
    at.select_slider(key="cmp_token").set_value(30).run()
    assert any("its start is left out" in c.value for c in at.caption)
    button(at, "Continue from here in Generate").click().run()
    assert not at.exception
    assert at.text_area(key="prompt").value == ("ROMEO:\n" + o.text_before(30))[-20:]
    assert not [w for w in at.warning if "`prompt`" in w.value]       # cut here, not refused by Generate
    assert not {k for k in at.query_params if k in ("temperature", "top_p", "top_k")}  # beams have no knobs


def test_compare_limits_strategies_in_hosted_mode(monkeypatch):
    monkeypatch.setattr(shared, "HOSTED", True)
    at = page("playground/compare.py", {"strategies": "greedy"})
    at.multiselect(key="cmp_strategies").set_value(list(__import__("core.compare", fromlist=["PRESETS"]).PRESETS)[:6])
    at.checkbox(key="cmp_custom").check()
    button(at, "Run").click().run()
    assert any("at most 6 strategies" in w.value for w in at.warning)


def test_attention_grows_the_text_one_token_at_a_time():
    at = page("playground/attention.py")
    before = at.text_area(key="attn_text").value
    button(at, "Add the next token").click().run()
    assert not at.exception
    after = at.text_area(key="attn_text").value
    assert after.startswith(before) and len(after) == len(before) + 1      # one byte token
    assert len([m for m in at.markdown if m.value.startswith("head ")]) == 4     # a row per head
    big = [m.value for m in at.markdown if m.value.startswith("<svg")]
    assert len(big) == 1 and 'aria-label="Layer 0, head 0"' in big[0]            # the chosen head, large
    assert big[0].count("<text") >= 2 * len(before)                              # every token labels a row and a column


def test_inside_shows_every_instrument_and_offers_the_fix_for_unequal_prompts():
    at = page("playground/inside.py")
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "log-probability" in text and "Logit difference" in text
    assert not at.warning
    at.text_area(key="inside_corrupt").set_value("PARIS: I am here.\nJULIET: O Pari").run()
    unequal = [w.value for w in at.warning if "the clean prompt is" in w.value]
    assert unequal and "Left-pad the shorter prompt" in unequal[0]
    at.checkbox(key="inside_pad").check().run()
    assert not at.exception and not [w for w in at.warning if "the clean prompt is" in w.value]
    at.radio(key="inside_kind").set_value("mean").run()
    at.text_input(key="inside_target").set_value("ab").run()
    assert any("is 2 tokens" in w.value for w in at.warning)
    at.radio(key="inside_on").set_value("the prompt").run()
    assert not at.exception


def test_inside_names_the_limit_for_a_model_too_large_here(monkeypatch):
    from core.limits import Limits
    monkeypatch.setattr(shared, "limits", lambda: Limits(max_inspect_parameters=1000))
    at = page("playground/inside.py")
    assert not at.exception
    refusals = [w.value for w in at.warning if "Limits.max_inspect_parameters" in w.value]
    assert len(refusals) == 3 and "at most 1,000" in refusals[0]      # lens, ablation, patching; scores still run


def test_inside_says_export_again_for_an_older_export(monkeypatch, tmp_path):
    import json
    import shutil
    from core import catalog
    old = tmp_path / "shakespeare-char"
    shutil.copytree(catalog.EXPORTED_DIR / "shakespeare-char", old)
    card = json.loads((old / "card.json").read_text())
    del card["inspection"]
    (old / "card.json").write_text(json.dumps(card))
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path)
    at = page("playground/inside.py")
    assert not at.exception
    assert any("exported before the inspection graph existed: export it again" in w.value for w in at.warning)


def test_models_page_scores_text():
    at = page("playground/models.py", {"score": "To be, or not to be"})
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["perplexity"]) > 1 and "nats/token" in metrics["mean loss"]
    at.text_area(key="score_text").set_value("x").run()
    assert any("at least 2 tokens" in i.value for i in at.info)


def test_models_page_shows_a_tokens_alternatives_and_continues_from_it_in_generate():
    at = page("playground/models.py", {"score": "To be, or not to be"})
    s = at.session_state["score_result"][1]
    top_ranked = next(j for j in range(1, len(s.tokens)) if s.ranks[j - 1] <= 10)
    for j, before in ((7, "To be, "), (top_ranked, "To be, or not to be"[:top_ranked])):
        at.select_slider(key="score_token").set_value(j).run()
        assert not at.exception
        # the model's 10 likeliest tokens there, from the scoring pass; the text's own token marked (below them
        # when it is not among them) with its rank among all tokens
        alts = table_with(at, "probability")
        assert list(alts["probability"][:10]) == pytest.approx([math.exp(lp) for lp in s.top_logprobs[j - 1]])
        mark = alts[alts[""] == "← chosen"]
        assert len(mark) == 1 and mark["token"].iloc[0] == shared.visible_text("To be, or not to be"[j])
        assert mark["probability"].iloc[0] == pytest.approx(math.exp(s.logprobs[j - 1]))
        assert mark.index[0] == (s.ranks[j - 1] - 1 if s.ranks[j - 1] <= 10 else 10)
        assert any(f"is #{s.ranks[j - 1]} of all 257" in c.value for c in at.caption)
        # the link opens Generate with the text before the token as its prompt, on the same model
        link = next(e.proto for e in at.get("page_link") if e.proto.label == "Continue from here in Generate")
        query = dict(parse_qsl(link.query_string))
        assert link.page == "generate" and query == {"model": "shakespeare-char", "prompt": before}
    generate = page("playground/generate.py", query)
    assert not generate.exception and generate.text_area(key="prompt").value == before


def word_replay(at: AppTest):
    """The "Replay BPE merges on a word" table (the one with a `tokens` column)."""
    return next(d.value for d in at.dataframe if "tokens" in d.value.columns)


def test_tokenizer_page_compares_and_replays_merges():
    at = page("playground/tokenizer.py")
    assert not at.exception
    counts = [m.value for m in at.metric if m.label == "tokens"]
    assert len(counts) == 4 and counts[0] != counts[1]                    # the char and BPE models differ
    assert "cl100k_base (OpenAI)" in at.multiselect(key="tok_pick").value  # from the installed package, offline
    replay = word_replay(at)
    assert replay["tokens"].iloc[0] == len(" thousand") and replay["tokens"].iloc[-1] < len(" thousand")
    at.multiselect(key="tok_pick").set_value(["gpt2 (OpenAI)"]).run()     # no package ships GPT-2's files
    assert any("Not available here" in i.value for i in at.info)


def test_tokenizer_page_shows_copyable_ids_in_chunks():
    import json
    from core.tokenizer import openai_tokenizer
    text = "The quick brown fox jumps over the lazy dog. " * 40               # 400 cl100k tokens
    at = page("playground/tokenizer.py", {"text": text})
    at.multiselect(key="tok_pick").set_value(["cl100k_base (OpenAI)"]).run()
    at.number_input(key="tok_chunk").set_value(150).run()
    assert not at.exception
    ids = openai_tokenizer("cl100k_base").encode(text)
    lists = [json.loads(c.value) for c in at.code if c.value.startswith("[")]
    assert lists[:3] == [ids[:150], ids[150:300], ids[300:]] and lists[3] == ids   # per chunk, then all at once
    assert any(c.value.startswith("tokens 150–299") for c in at.caption)
    assert at.expander[0].label.startswith(f"All {len(ids)} ids")


def test_tokenizer_page_shows_one_token_and_the_merges_that_built_it():
    from core.tokenizer import openai_tokenizer
    text = "a thousand pieces"
    at = page("playground/tokenizer.py", {"text": text})
    at.multiselect(key="tok_pick").set_value(["byte (256 bytes)", "cl100k_base (OpenAI)"]).run()
    at.selectbox(key="tok_detail_tok").set_value("cl100k_base (OpenAI)").run()
    at.selectbox(key="tok_detail_pos").set_value(1).run()                  # " thousand"
    assert not at.exception
    tid = openai_tokenizer("cl100k_base").encode(text)[1]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["id"] == str(tid) and metrics["bytes"] == "9"
    detail = next(c.value for c in at.code if c.value.startswith("hex"))
    assert " thousand".encode().hex(" ") in detail and "·thousand" in detail
    merges = next(d.value for d in at.dataframe if "merge" in d.value.columns)
    assert merges["parts"].iloc[0] == " | ".join("·thousand") and merges["parts"].iloc[-1] == "·thousand"
    assert merges["rank"].iloc[-1] == str(tid) and int(metrics["merges"]) == len(merges) - 1 == 8
    chips = " ".join(m.value for m in at.markdown)
    assert "background:#1e3a8a" in chips                                    # the chosen token, marked
    at.selectbox(key="tok_detail_tok").set_value("byte (256 bytes)").run()
    assert not at.exception and any("has no merges" in c.value for c in at.caption)


def test_clearing_streamlit_caches_keeps_shared_models():
    import streamlit as st
    model = shared.model_by_name("shakespeare-char")
    st.cache_resource.clear()
    st.cache_data.clear()
    assert shared.model_by_name("shakespeare-char") is model


@pytest.mark.slow
def test_pages_run_without_torch():
    res = run_without_torch(f"""
import tiktoken
def offline(name):
    raise ConnectionError("offline")
tiktoken.get_encoding = offline
from streamlit.testing.v1 import AppTest
for path in {PAGES!r}:
    at = AppTest.from_file({APP!r}, default_timeout=60).run()
    at.switch_page(path)
    at.run()
    assert not at.exception, (path, at.exception)
assert "torch" not in sys.modules
print("ok")
""")
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_merge_replay_shows_split_characters_as_their_bytes():
    """A CJK character is three UTF-8 bytes: before the merges join them, the replay shows `\\xe4`-style
    bytes, as the token view does, never U+FFFD."""
    at = page("playground/tokenizer.py")
    at.text_area(key="tok_text").set_value("中文").run()
    at.multiselect(key="tok_pick").set_value(["shakespeare-bpe (model)"]).run()
    at.text_input(key="merge_word").set_value("中").run()
    replay = word_replay(at)
    assert "\\xe4" in replay["parts"].iloc[0] and not any("\ufffd" in p for p in replay["parts"])
    chips = " ".join(m.value for m in at.markdown)
    assert "\\xe4" in chips and "\ufffd" not in chips


@pytest.mark.parametrize("path, key", [("playground/generate.py", "prompt"), ("playground/compare.py", "prompt"),
                                       ("playground/tokenizer.py", "text"), ("playground/models.py", "score")])
def test_a_linked_text_over_the_hosted_limit_is_cut_with_a_note(path, key, monkeypatch):
    monkeypatch.setattr(shared, "HOSTED", True)
    at = page(path, {key: "x" * 5000})
    assert not at.exception
    notes = [w.value for w in at.warning if "this server takes at most 2,000" in w.value]
    assert notes and f"`{key}`" in notes[0]
    assert all(len(t.value) <= 2000 for t in at.text_area)


def test_a_deployment_can_offer_a_fixed_list_of_models(monkeypatch):
    monkeypatch.setenv("LLM_PLAYGROUND_MODELS", "shakespeare-bpe")
    at = page("playground/generate.py", {"model": "shakespeare-char"})      # a link to a model not offered
    assert not at.exception
    assert list(at.selectbox(key="model").options) == ["shakespeare-bpe"]
    assert any("`model`" in w.value for w in at.sidebar.warning)


def test_generate_s_loom_branches_from_an_earlier_token_and_keeps_both_paths():
    at = page("playground/generate.py")
    button(at, "Run").click().run()                                  # Run 10
    main = list(at.session_state["trace"]["state"]["branches"][0]["tokens"])
    assert len(main) == 10 and not at.exception
    at.slider(key="loom_pos_10").set_value(3).run()                  # the third generated token
    alternative = next(b for b in at.button if b.key and b.key.startswith("loom_alt_") and "✓" not in b.label)
    alternative.click().run()
    assert not at.exception, at.exception
    state = at.session_state["trace"]["state"]
    names = [b["name"] for b in state["branches"]]
    assert names == ["main", "b1"] and state["current"] == "b1" and state["cursor"] == 3
    b1 = state["branches"][1]
    assert b1["tokens"][:2] == main[:2] and b1["tokens"][2] != main[2] and b1["parent"] == "main"
    assert state["branches"][0]["tokens"] == main                   # the old path is kept
    assert any("The loom" in m.value for m in at.markdown)


def test_attention_and_the_glance_take_a_one_token_text():
    for path in ("playground/attention.py", "playground/glance.py"):
        at = page(path, {"text": "K"})
        assert not at.exception, (path, at.exception)
