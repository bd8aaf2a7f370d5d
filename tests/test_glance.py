"""The whole model at a glance (core.glance, playground/glance.py) and the front door (Home, the guided tour).

core.glance's numbers are checked against torch hooks on our GPT (tests/test_interpret.py's `hooked_run`, written
independently of core.model's Intervention): the stream's size at every point, what each attention and MLP
added, what each norm divides by (read back from the torch norm module's own output), the model's top
tokens; for a model without norms the scale is 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.glance import glance
from core.sampling import SamplerConfig, softmax
from playground.tour import STEPS
from tests import test_interpret
from tests.test_interpret import CONFIGS, PROMPT, hooked_run
from tests.test_pages import page

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
models = test_interpret.models          # the fixture: torch GPTs beside their exports, built on first use


def divisor(norm_module, x: torch.Tensor) -> float:
    """What a torch norm divides x by, read from its own output: (x - mean) * w / (norm(x) - b) for
    LayerNorm, x * w / norm(x) for RMSNorm (eps included, hence the tolerance)."""
    with torch.no_grad():
        y = norm_module(x[None, None])[0, 0]
        w = norm_module.weight
        b = getattr(norm_module, "bias", None)
        centred = x - x.mean() if isinstance(norm_module, torch.nn.LayerNorm) else x
        num, den = centred * w, y - (b if b is not None else 0)
        i = int(torch.argmax(den.abs()))
        return float(num[i] / den[i])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_glance_equals_torch_hooks(models, name):
    torch_model, m = models(name)
    ids = m.tokenizer.encode(PROMPT)
    logits, resid, _ = hooked_run(torch_model, ids)
    g = glance(m, ids, SamplerConfig(top_k=5))
    last = resid[-1]                                                  # (2L + 1, C) at the last position
    assert np.allclose(g.stream, np.linalg.norm(last, axis=-1), rtol=1e-4)
    assert g.embed == pytest.approx(float(np.linalg.norm(last[0])), rel=1e-4)
    blocks = torch_model.transformer.h
    for b, block in zip(g.blocks, blocks):
        l = b.layer
        assert b.attn_added == pytest.approx(float(np.linalg.norm(last[2 * l + 1] - last[2 * l])), rel=1e-3, abs=1e-5)
        assert b.mlp_added == pytest.approx(float(np.linalg.norm(last[2 * l + 2] - last[2 * l + 1])), rel=1e-3, abs=1e-5)
        assert b.after_mlp == pytest.approx(float(np.linalg.norm(last[2 * l + 2])), rel=1e-4)
        if torch_model.config.norm == "none":
            assert b.norm_in == b.norm_mid == 1.0
        else:
            assert b.norm_in == pytest.approx(divisor(block.ln_1, torch.tensor(last[2 * l])), rel=1e-2)
            if torch_model.config.mlp != "none":
                assert b.norm_mid == pytest.approx(divisor(block.ln_2, torch.tensor(last[2 * l + 1])), rel=1e-2)
        assert len(b.heads) == torch_model.config.n_head
        assert all(0 <= h.looks_at < len(ids) and 0 < h.weight <= 1 for h in b.heads)
    want = np.argsort(softmax(logits[-1]))[::-1][:5]
    assert g.logits.ids == [int(i) for i in want]
    assert g.blocks[-1].lens_mlp.ids[0] == g.logits.ids[0]            # the lens at the last point is the model
    assert [s.name for s in g.sampler][0] == "raw" and g.sampler[-1].kept == 5


def test_the_glance_page_draws_every_block_of_the_default_model_with_links():
    from playground.shared import model_by_name
    layers = model_by_name("shakespeare-char").n_layer
    at = page("playground/glance.py", {"text": "KING:\nWhat news"})
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    assert all(f"**Block {l}**" in text for l in range(layers)) and f"**Block {layers}**" not in text
    assert "Sampler" in text and "Embedding" in text


def test_the_glance_page_says_why_when_a_model_has_no_inspection_graphs(tmp_path, monkeypatch):
    import json
    import shutil
    from core import catalog
    target = tmp_path / "exported" / "old"
    shutil.copytree(ROOT / "exported" / "shakespeare-char", target, ignore=shutil.ignore_patterns("checkpoints"))
    card = json.loads((target / "card.json").read_text())
    card.pop("inspection", None)
    (target / "card.json").write_text(json.dumps(card))
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path / "exported")
    at = page("playground/glance.py", {"model": "old"})
    assert not at.exception, at.exception
    assert any("inspection" in i.value for i in at.info), [i.value for i in at.info]


def test_home_starts_the_tour_on_its_first_page_with_the_visitors_prompt():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    at.text_area(key="home_prompt").set_value("JULIET:\nO Romeo").run()
    at.button(key="tour_start").click().run()
    assert not at.exception, at.exception
    assert at.session_state["tour_step"] == 0
    assert at.text_area(key="tok_text").value == "JULIET:\nO Romeo"         # the tokenizer page, with the prompt
    for step in range(1, len(STEPS)):
        at.button(key="tour_next").click().run()
        assert not at.exception, (step, at.exception)
        assert at.session_state["tour_step"] == step
    at.button(key="tour_next").click().run()                              # Finish
    assert "tour_step" not in at.session_state and not at.exception


def test_a_stale_tour_step_is_dropped_not_a_crash():
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["tour_step"] = 99
    at.run()
    assert not at.exception and "tour_step" not in at.session_state
