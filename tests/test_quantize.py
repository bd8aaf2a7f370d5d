"""int8 variants that agree: core.quantize on the committed default model, measured again by the runtime
(an independent path: core.runtime's own sessions and cache), the agreement gate, and what the pages show."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import catalog, quantize
from core.generate import GenerationConfig, decode
from core.quantize import QuantizeConfig, QuantizeError, quantize_model
from core.runtime import Model
from core.sampling import SamplerConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "exported" / "shakespeare-char"


@pytest.fixture
def model_copy(tmp_path):
    directory = tmp_path / "exported" / "shakespeare-char"
    shutil.copytree(DEFAULT, directory)
    return directory


def sampled_text_ids(model: Model, n: int, seed: int) -> list[int]:
    """Text the fp32 model writes (temperature 1), other than the text quantize measured on."""
    ids = []
    while len(ids) < n:
        cfg = GenerationConfig(model.block_size - 1, SamplerConfig(temperature=1.0), seed=seed + len(ids),
                               stop_at_eos=False)
        ids += [s.token_id for s in decode(model, "\n", cfg)]
    return ids[:n]


def agreement(fp32: Model, other: Model, ids: list[int]) -> float:
    T = fp32.block_size
    same = [fp32.logits(ids[i:i + T]).argmax(-1) == other.logits(ids[i:i + T]).argmax(-1)
            for i in range(0, len(ids) - 1, T)]
    return float(np.concatenate([s.ravel() for s in same]).mean())


def test_the_trained_default_model_gets_an_int8_that_agrees_on_99_percent(model_copy):
    report = quantize_model(model_copy, QuantizeConfig(positions=2048))
    assert report["top1_agreement"] >= 0.99 and not report["approximate"]
    assert report["agreement_positions"] == 2048 and "sampled" in report["agreement_text"]
    assert report["recipe"] in [r.name for r in quantize.RECIPES]
    card = json.loads((model_copy / catalog.CARD_FILE).read_text())
    assert card["variants"]["int8"] == report
    assert card["variants"]["fp32"]["decode_ms_median"] == report["fp32_decode_ms_median"] > 0   # one run's pair
    assert report["bytes"] < card["variants"]["fp32"]["bytes"] / 2
    # measured again through the runtime, on other text (dynamic int8, replaced here, agreed on 92 %)
    fp32, int8 = Model(model_copy), Model(model_copy, variant="int8")
    assert agreement(fp32, int8, sampled_text_ids(fp32, 1024, seed=7)) >= 0.98


def test_the_two_speeds_are_timed_in_turns_after_a_warm_up_round(monkeypatch):
    """The picker compares fp32's and int8's ms/token: they are measured in alternating rounds, and the first
    round (cold caches, first-run allocations) is not counted."""
    calls = []

    def run_cached(graph, ids, n_prompt):
        calls.append(graph)
        warm = len(calls) <= 2
        return None, [100.0 if warm else {"fp32": 0.002, "int8": 0.001}[graph]] * (ids.shape[1] - n_prompt)
    monkeypatch.setattr(quantize, "run_cached", run_cached)
    fp32_ms, int8_ms = quantize._decode_ms(["fp32", "int8"], [np.zeros((1, 50), np.int64)], rounds=2)
    assert calls == ["fp32", "int8"] * 2
    assert (fp32_ms, int8_ms) == (2.0, 1.0)


def test_a_variant_that_does_not_agree_is_not_written_unless_asked_for_and_then_labelled(model_copy, monkeypatch):
    monkeypatch.setattr(quantize, "RECIPES", quantize.RECIPES[:1])        # one recipe: the bar is out of reach
    before = {p.name: p.read_bytes() for p in model_copy.iterdir() if p.is_file()}
    strict = QuantizeConfig(min_agreement=1.0, positions=512)
    with pytest.raises(QuantizeError, match=r"no int8 recipe agrees with fp32 on 100% of next tokens .* "
                                            r"nothing was written.*--approximate"):
        quantize_model(model_copy, strict)
    assert {p.name: p.read_bytes() for p in model_copy.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in model_copy.iterdir() if p.is_dir()) == ["tokenizer"]    # no work left behind
    report = quantize_model(model_copy, QuantizeConfig(min_agreement=1.0, positions=512, approximate=True))
    assert report["approximate"] and report["top1_agreement"] < 1.0
    assert json.loads((model_copy / catalog.CARD_FILE).read_text())["variants"]["int8"]["approximate"]


def test_held_out_text_and_bad_input(model_copy, tmp_path, capsys):
    text = tmp_path / "held-out.txt"
    text.write_text("GARDENER:\nThe rain came late this year, and the roses waited for it.\n" * 40)
    assert quantize.main([str(model_copy), "--text", str(text), "--positions", "512"]) == 0
    assert "positions of held-out.txt" in capsys.readouterr().out
    card = json.loads((model_copy / catalog.CARD_FILE).read_text())
    assert card["variants"]["int8"]["agreement_text"] == "held-out.txt"      # the card names no machine's folders
    with pytest.raises(QuantizeError, match="token ids must lie in"):
        quantize_model(model_copy, text_ids=[1, 2, 10_000])
    assert quantize.main([str(tmp_path), "--positions", "512"]) == 1
    assert "not an exported model directory" in capsys.readouterr().err
    with pytest.raises(Exception, match="min_agreement"):
        QuantizeConfig(min_agreement=1.5)


def test_the_picker_offers_int8_with_its_agreement_and_a_link_chooses_it(model_copy, monkeypatch):
    quantize_model(model_copy, QuantizeConfig(positions=512))
    monkeypatch.setattr(catalog, "EXPORTED_DIR", model_copy.parent)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.query_params["weights"] = "int8"
    at.run()
    at.switch_page("playground/generate.py")
    at.run()
    assert not at.exception, at.exception
    radio = at.sidebar.radio(key="weights_shakespeare-char")
    assert radio.value == "int8" and any("same next token as fp32" in o for o in radio.options)
    next(b for b in at.button if b.label == "Sample one").click().run()       # a step runs on the int8 graph
    assert not at.exception, at.exception
    assert "1 token generated" in " ".join(m.value for m in at.caption)
    at.switch_page("playground/models.py")
    at.run()
    assert not at.exception, at.exception
    table = next(df.value for df in at.dataframe if "how" in df.value.columns)
    assert table["how"].str.startswith("8-bit weights").any() and table["same next token as fp32"].min() >= 0.99
    assert not table["variant"].str.contains("approximate").any()


def open_generate(weights: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.query_params["weights"] = weights
    at.run()
    at.switch_page("playground/generate.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_bad_link_an_old_variant_and_a_damaged_file_each_say_so(model_copy, monkeypatch):
    monkeypatch.setattr(catalog, "EXPORTED_DIR", model_copy.parent)
    at = open_generate("int4")                      # a stale or hostile link: fp32, with a note
    assert at.sidebar.radio(key="weights_shakespeare-char").value == "fp32"
    assert any("`weights` value 'int4' cannot be used" in w.value for w in at.warning)
    # a card from before the agreement bar (dynamic int8, ~92 %): offered, labelled approximate
    card = json.loads((model_copy / catalog.CARD_FILE).read_text())
    card["variants"]["int8"] = {"file": "model.int8.onnx", "bytes": 1, "top1_agreement": 1.0,
                                "decode_ms_median": 0.2, "max_logit_diff_vs_torch": 0.16}
    (model_copy / catalog.CARD_FILE).write_text(json.dumps(card))
    shared_open_model_cache_clear()
    at = open_generate("int8")
    assert "approximate" in at.sidebar.radio(key="weights_shakespeare-char").options[1]
    # the variant's file damaged: the page goes on with fp32 and says why
    (model_copy / "model.int8.onnx").write_bytes(b"not a graph")
    shared_open_model_cache_clear()
    at = open_generate("int8")
    assert any("int8 weights cannot be opened" in e.value for e in at.sidebar.error)
    next(b for b in at.button if b.label == "Sample one").click().run()
    assert not at.exception, at.exception


def shared_open_model_cache_clear():
    from playground import shared
    shared.open_model.cache_clear()
