"""Learn mode: every section renders on the default model, and its numbers are the model's own (the
attention walk-through's row is the Attention page's heatmap row; the positional formulas are the
model's tables)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core import explain, positions
from core.model import rope_tables, sinusoidal_table
from core.runtime import Model, ModelError
from core.tokenizer import TokenizerError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "exported" / "shakespeare-char"
SECTIONS = ["tokens", "positions", "attention", "logits", "loss", "scaling", "post", "encoder", "glossary"]
TEXT = "KING:\nWhat news from the"


@pytest.fixture(scope="module")
def model():
    return Model(DEFAULT)


def learn(query: dict) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("playground/learn.py")
    return at.run()


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_renders_on_the_default_model(section):
    at = learn({"section": section})
    assert not at.exception, at.exception
    assert at.header and at.header[0].value
    if section not in ("glossary",):
        assert at.latex or section == "tokens"      # formulas shown with st.latex


def test_the_walkthrough_row_is_the_attention_pages_row(model):
    ids = model.tokenizer.encode(TEXT)
    heatmap = model.attention(ids).probs                  # what the Attention page draws
    for layer, head, pos in ((0, 0, 0), (1, 2, 7), (model.n_layer - 1, model.n_head - 1, len(ids) - 1)):
        w = explain.attention_walkthrough(model, TEXT, layer, head, pos)
        row = heatmap[layer][0, head, pos]
        assert np.abs(w.probs - row).max() < 1e-5 and np.array_equal(w.graph_row, row)
        assert np.all(w.probs[pos + 1:] == 0) and abs(w.probs.sum() - 1) < 1e-9
        assert np.abs(w.head_output - w.graph_head_output).max() < 1e-5
        assert w.scaled == pytest.approx(w.scores * w.scale)


def test_the_attention_section_shows_the_same_row_it_computes():
    at = learn({"section": "attention", "text": TEXT})
    at.selectbox(key="learn_layer").set_value(2).run()
    at.selectbox(key="learn_head").set_value(3).run()
    assert not at.exception
    caption = next(c.value for c in at.caption if "largest difference" in c.value)
    assert float(caption.rsplit(" ", 1)[1].rstrip(".")) < 1e-5
    table = at.dataframe[0].value
    assert abs(table["softmax"].sum() - 1) < 1e-3 and "−∞ (future)" not in table["masked"].iloc[-1:].tolist()


def test_positional_formulas_are_the_models_own_tables(model):
    assert torch.equal(sinusoidal_table(64, 32), torch.from_numpy(positions.sinusoidal_table(64, 32)))
    cos, sin = rope_tables(64, 16)
    assert torch.equal(cos, torch.from_numpy(positions.rope_angles(64, 16)).cos())
    views = explain.positional_views(model)
    assert views.used == "rope" and views.learned is None
    # RoPE's similarity depends on the distance only: constant along every diagonal
    sim = views.similarity
    assert np.allclose(np.diag(sim, 5), sim[5, 0], atol=1e-5) and np.allclose(np.diag(sim), 1.0, atol=1e-5)


def test_embedding_neighbours_and_their_messages(model):
    e = model.tokenizer.encode("e")[0]
    near = explain.embedding_neighbours(model, e, k=5)
    assert len(near) == 5 and e not in [i for i, _, _ in near]
    assert near == sorted(near, key=lambda t: -t[2])
    with pytest.raises(ModelError, match="outside the vocabulary"):
        explain.embedding_neighbours(model, 10**6)


def test_walkthrough_refuses_bad_requests_with_messages(model):
    for args, match in (((TEXT, 9, 0, 0), "layer"), ((TEXT, 0, -1, 0), "head"), ((TEXT, 0, 0, 999), "position"),
                        (("", 0, 0, 0), "empty"), (("x" * 500, 0, 0, 0), "context")):
        with pytest.raises(ModelError, match=match):
            explain.attention_walkthrough(model, *args)


def test_vocabulary_tradeoff_shortens_text_as_the_vocabulary_grows():
    text = "the cat sat on the mat and then the dog ran over the mat. " * 20
    points = explain.vocabulary_tradeoff(text, [256, 262, 270])
    assert [p.vocab_size for p in points] == [257, 263, 271]
    assert points[0].tokens > points[1].tokens > points[2].tokens
    assert points[0].embedding_parameters < points[2].embedding_parameters
    with pytest.raises(TokenizerError, match="200 bytes"):
        explain.vocabulary_tradeoff("short", [256])


def test_a_vocabulary_size_the_text_cannot_reach_is_listed_with_the_reason():
    text = "abab cdcd " * 30
    points = explain.vocabulary_tradeoff(text, [256, 258, 5000, 6000])
    assert [p.vocab_size for p in points] == [257, 259, 5001, 6001]
    assert [bool(p.not_reached) for p in points] == [False, False, True, True]
    assert "only supports" in points[2].not_reached and points[2].tokens is None


def test_an_old_export_without_attention_parts_gets_a_message(tmp_path, model, monkeypatch):
    from core.runtime import AttentionMaps
    monkeypatch.setattr(Model, "attention", lambda self, ids: AttentionMaps(np.zeros(1), [np.zeros(1)] * 4, []))
    with pytest.raises(ModelError, match="export it again"):
        explain.attention_walkthrough(model, TEXT, 0, 0, 0)


def test_the_post_training_section_shows_this_models_numbers_and_refuses_a_foreign_reference(model):
    at = learn({"section": "post", "text": TEXT})
    assert not at.exception, at.exception
    walk = explain.preference_walkthrough(model, None, TEXT, at.text_area(key="learn_chosen").value,
                                          at.text_area(key="learn_rejected").value, 0.1)
    shown = " ".join(m.value for m in at.markdown)
    assert f"{walk.sft_loss:.3f} nats" in shown and f"{walk.chosen.whole_loss:.3f}" in shown
    assert walk.sft_loss == pytest.approx(-walk.chosen.logprob / walk.chosen.tokens)
    at.selectbox(key="learn_ref").set_value("shakespeare-bpe").run()
    assert not at.exception, at.exception
    assert any("reads another tokenizer" in i.value for i in at.info)
    # the same model as its own reference: DPO starts at ln 2 with both implicit rewards 0
    same = explain.preference_walkthrough(model, model, TEXT, " and", " or", 0.1)
    assert same.reward_chosen == 0 and same.preference == pytest.approx(0.5) and same.dpo_loss == pytest.approx(np.log(2))
