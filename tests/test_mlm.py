"""The encoder-only masked LM beside the GPT: BERT's masking, bidirectional attention, the loss on masked
positions only, the [MASK] token, training, export parity and the runtime's fill_mask."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.checkpoint import load_model
from core.checks import ConfigError
from core.config import ModelConfig, TrainConfig
from core.export import ExportConfig, ExportError, export_model
from core.mlm import fill_blanks, mask_tokens, unmask_left_to_right
from core.model import GPT
from core.runtime import Model, ModelError
from core.tasks import IGNORE
from core.tokenizer import MASK, byte_tokenizer, load_tokenizer, train_bpe, with_mask_token
from core.train import EvalResult, train

ROOT = Path(__file__).resolve().parent.parent
MLM = ModelConfig(block_size=24, n_layer=2, n_head=2, n_embd=16, attention="bidirectional", objective="mlm")


# -- masking -------------------------------------------------------------------------------------------
def test_masking_follows_berts_recipe_over_many_positions():
    rng = np.random.default_rng(0)
    tok = with_mask_token(byte_tokenizer())
    ordinary = np.arange(256)
    x = rng.integers(0, 256, (200, 500))
    x[:, ::7] = tok.eot_id                                   # special tokens sprinkled in: never chosen
    inputs, targets = mask_tokens(x, np.random.default_rng(1), tok.mask_id, ordinary, 0.15)
    chosen = targets != IGNORE
    eligible = x != tok.eot_id
    assert not (chosen & ~eligible).any()
    assert (inputs[~eligible] == tok.eot_id).all()
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.005          # ~86k eligible: sd 0.0012
    assert (targets[chosen] == x[chosen]).all() and (inputs[~chosen] == x[~chosen]).all()
    masked = (inputs == tok.mask_id)[chosen].mean()
    kept = (inputs == x)[chosen].mean()
    other = ((inputs != x) & (inputs != tok.mask_id))[chosen].mean()
    # a random replacement draws the original token 1 time in 256: it then counts as kept
    assert abs(masked - 0.8) < 0.01 and abs(kept - (0.1 + 0.1 / 256)) < 0.008 and abs(other - 0.1 * 255 / 256) < 0.008
    assert not np.isin(inputs[chosen & (inputs != tok.mask_id)], [tok.eot_id, tok.mask_id]).any()
    # seeded: the same rng state gives the same masks, another seed others
    again = mask_tokens(x, np.random.default_rng(1), tok.mask_id, ordinary, 0.15)
    other_seed = mask_tokens(x, np.random.default_rng(2), tok.mask_id, ordinary, 0.15)
    assert (again[0] == inputs).all() and (again[1] == targets).all()
    assert (other_seed[1] != targets).any()


def test_every_row_has_a_target_even_when_the_draw_chose_none():
    x = np.tile(np.arange(3), (500, 1))
    _, targets = mask_tokens(x, np.random.default_rng(0), 300, np.arange(256), rate=0.01)
    assert ((targets != IGNORE).sum(1) >= 1).all()


# -- config --------------------------------------------------------------------------------------------
def test_masked_lm_needs_bidirectional_attention_and_old_configs_load_as_before():
    with pytest.raises(ConfigError, match="bidirectional"):
        ModelConfig(objective="mlm")
    with pytest.raises(ConfigError, match="copy"):
        ModelConfig(attention="bidirectional")
    with pytest.raises(ConfigError, match="attention"):
        ModelConfig(attention="sideways")
    old = {"vocab_size": 257, "block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128}   # a card before the fields
    mc = ModelConfig.from_dict(old)
    assert (mc.attention, mc.objective) == ("causal", "next-token")
    with pytest.raises(ConfigError, match="mask_rate"):
        TrainConfig(mask_rate=0.0)
    m = Model(ROOT / "exported" / "shakespeare-char")          # a committed card without the fields
    assert m.config.attention == "causal" and not m.masked
    with pytest.raises(ModelError, match="masked LM"):
        m.fill_mask("To be [MASK]")


# -- tokenizer -----------------------------------------------------------------------------------------
def test_the_mask_token_is_one_more_special_id_and_round_trips(tmp_path):
    for base in (byte_tokenizer(), train_bpe(["the cat sat on the mat " * 40], 264)):
        tok = with_mask_token(base)
        assert tok.n_vocab == base.n_vocab + 1 and tok.mask_id == base.n_vocab
        assert tok.mask_id in tok.special_ids and base.mask_id is None
        assert tok.encode("the [MASK] sat") == base.encode("the [MASK] sat")       # typed as text: text
        ids = tok.encode_masked("the [MASK] sat[MASK]")
        assert ids.count(tok.mask_id) == 2 and tok.decode(ids) == "the [MASK] sat[MASK]"
        saved = load_tokenizer(tok.save(tmp_path / base.kind))
        assert saved.n_vocab == tok.n_vocab and saved.mask_id == tok.mask_id
        assert saved.encode_masked("a [MASK] b") == tok.encode_masked("a [MASK] b")
        assert MASK in saved.decode([saved.mask_id])


# -- the model -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("explicit", [False, True])
def test_bidirectional_attention_sees_later_tokens_and_causal_does_not(explicit):
    ids = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 8] = (ids[0, 8] + 1) % 200
    for attention, objective in (("causal", "next-token"), ("bidirectional", "mlm")):
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(MLM, vocab_size=258, attention=attention, objective=objective)).eval()
        with torch.no_grad():
            a = model(ids, return_attention=explicit).logits
            b = model(changed, return_attention=explicit).logits
        early = (a[0, :8] - b[0, :8]).abs().max().item()
        if attention == "causal":
            assert early == 0.0
        else:
            assert early > 1e-4
        if explicit:
            probs = model(ids, return_attention=True).attentions[0][0, 0].detach()      # (T, T)
            upper = probs.triu(1).sum().item()
            assert (upper == 0.0) if attention == "causal" else upper > 0.5
    with pytest.raises(ValueError, match="no KV cache"):
        model(ids, use_cache=True)


def test_the_loss_is_the_mean_over_masked_positions_only():
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(MLM, vocab_size=258)).eval()
    x = np.random.default_rng(3).integers(0, 256, (3, 20))
    inputs, targets = mask_tokens(x, np.random.default_rng(4), 257, np.arange(256))
    with torch.no_grad():
        out = model(torch.from_numpy(inputs), torch.from_numpy(targets))
    # by hand: -log p(original) at each masked position, averaged over those positions alone
    logp = F.log_softmax(out.logits.double(), -1)
    terms = [-logp[b, t, targets[b, t]].item() for b in range(3) for t in range(20) if targets[b, t] != IGNORE]
    assert len(terms) < 0.5 * targets.size
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # and BERT's own convention (labels -100 ignored by nn.CrossEntropyLoss, as BertForMaskedLM computes it)
    labels = torch.from_numpy(np.where(targets == IGNORE, -100, targets))
    bert = torch.nn.CrossEntropyLoss()(out.logits.view(-1, 258), labels.view(-1))
    assert out.loss.item() == pytest.approx(bert.item(), rel=1e-6)


# -- reading a masked LM -------------------------------------------------------------------------------
def test_fill_blanks_and_left_to_right_unmasking_on_hand_made_logits():
    V, mask = 6, 5
    logits = np.zeros((4, V))
    logits[1] = [0, 3, 1, 0, 0, 9]                   # [MASK] itself is never a guess
    blanks = fill_blanks(logits, [0, mask, 2, 3], mask, k=2)
    assert [b.position for b in blanks] == [1] and blanks[0].ids == [1, 2]
    p = np.exp([3, 1]) / (np.exp([0, 3, 1, 0, 0]).sum())
    assert np.allclose(blanks[0].probs, p)
    seen = []

    def logits_of(seq):
        seen.append(list(seq))
        out = np.zeros((len(seq), V))
        out[:, len(seq) % 4] = 1.0
        return out
    written = unmask_left_to_right(logits_of, [0, 1], mask, 3, block_size=4)
    assert seen[0] == [0, 1, mask] and seen[1] == [0, 1, 3, mask] and seen[2] == [1, 3, 0, mask]
    assert written == [3, 0, 0]


# -- training, export, runtime -------------------------------------------------------------------------
def _mlm_run(run_dir, corpus_file, data_dir, steps=30, **kw):
    cfg = TrainConfig(out_dir=str(run_dir), corpus=str(corpus_file), data_dir=str(data_dir), batch_size=4,
                      max_steps=steps, eval_interval=steps, eval_iters=2, learning_rate=3e-3, threads=1, **kw)
    return list(train(cfg, MLM))


@pytest.fixture(scope="module")
def mlm_export(tmp_path_factory, corpus_file, data_dir):
    base = tmp_path_factory.mktemp("mlm")
    _mlm_run(base / "run", corpus_file, data_dir, steps=40)
    card = export_model(base / "run", base / "tiny-mlm")
    return base / "run", base / "tiny-mlm", card


def test_a_masked_lm_trains_exports_with_parity_and_fills_blanks(mlm_export):
    run, out, card = mlm_export
    assert card["model_config"]["objective"] == "mlm" and card["model_config"]["attention"] == "bidirectional"
    assert card["io"]["kv_cache"] == "none" and card["io"]["inputs"] == ["input_ids"]
    assert card["parity"]["max_abs_logit_diff"] <= 1e-4 and card["parity"]["attention_max_abs_diff"] <= 1e-4
    assert "not comparable" in card["loss_note"] and card["tokenizer"]["n_vocab"] == 258
    m = Model(out)
    assert m.masked and m.tokenizer.mask_id == 257
    torch_model, _ = load_model(run)
    text = "The cat [MASK]at on the [MASK]at."
    ids = m.tokenizer.encode_masked(text)
    with torch.no_grad():
        ref = torch_model(torch.tensor([ids])).logits.numpy()
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4
    maps = m.attention(ids)
    assert np.abs(maps.logits - ref).max() <= 1e-4
    assert np.triu(maps.probs[0][0, 0], 1).sum() > 0.5                   # not causal: later tokens seen
    filled = m.fill_mask(text, k=3)
    assert filled.ids == ids and [b.position for b in filled.blanks] == [i for i, t in enumerate(ids) if t == 257]
    for b in filled.blanks:
        row = torch.from_numpy(ref[0, b.position]).double()
        row[257] = -float("inf")
        p = torch.softmax(row, -1).numpy()
        assert b.ids == list(np.argsort(-p, kind="stable")[:3]) and np.allclose(b.probs, p[b.ids], atol=1e-5)
    for call in (lambda: m.step([1, 2]), lambda: m.score("hello there"), lambda: m.empty_cache()):
        with pytest.raises(ModelError, match="shakespeare-char"):
            call()
    with pytest.raises(ModelError, match=r"\[MASK\]"):
        m.fill_mask("no blank here")
    with pytest.raises(ExportError, match="fp32"):
        export_model(run, out.parent / "int8", ExportConfig(int8=True))


def test_the_validation_loss_masks_the_same_tokens_at_every_evaluation(tmp_path, corpus_file, data_dir):
    """With a learning rate too small to move the weights, two evaluations give the same loss: the masks are
    fixed (a fresh random mask each time would move it by a few hundredths)."""
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), corpus=str(corpus_file), data_dir=str(data_dir), batch_size=4,
                      max_steps=2, eval_interval=1, eval_iters=4, learning_rate=1e-12, min_lr=0.0, threads=1)
    recs = [r for r in train(cfg, MLM) if isinstance(r, EvalResult)]
    assert len(recs) == 3
    assert max(r.val_loss for r in recs) - min(r.val_loss for r in recs) < 1e-5
    assert json.loads((tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text())["mask_token"] == MASK


def test_what_a_masked_lm_run_refuses(tmp_path, corpus_file, data_dir):
    with pytest.raises(ConfigError, match="task"):
        list(train(TrainConfig(out_dir=str(tmp_path / "a"), task="induction"), MLM))
    with pytest.raises(ConfigError, match="sample_interval"):
        list(train(TrainConfig(out_dir=str(tmp_path / "b"), corpus=str(corpus_file), data_dir=str(data_dir),
                               sample_interval=10), MLM))


# -- the pages -----------------------------------------------------------------------------------------
def _app(path: str, query: dict):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    at.switch_page(path)
    return at.run()


def test_the_learn_section_puts_the_encoder_beside_the_decoder():
    from core import encdec
    text = "KING HENRY:\nMy lord, the king is dead."
    at = _app("playground/learn.py", {"section": "encoder", "text": text})
    assert not at.exception, at.exception
    assert at.header[0].value == "Encoder vs decoder" and at.latex
    at.selectbox(key="encdec_pos").set_value(22).run()
    assert not at.exception, at.exception
    gpt, mlm = Model(ROOT / "exported" / "shakespeare-char"), Model(ROOT / "exported" / "shakespeare-char-mlm")
    r = encdec.side_by_side(gpt, mlm, text, 22)
    assert r.gpt_future < 1e-6 and r.mlm_future > 0.1
    codes = [c.value.strip() for c in at.code]          # st.code trims the text's edges
    assert gpt.tokenizer.decode(r.gpt_writes).strip() in codes and mlm.tokenizer.decode(r.mlm_writes).strip() in codes
    shown = " ".join(m.value for m in at.markdown)
    assert "from both sides:** `h`" in shown            # the MLM reads "king" around the blank
    assert "not comparable" in " ".join(c.value for c in at.caption).lower()


def test_pages_that_generate_do_not_offer_a_masked_lm():
    at = _app("playground/generate.py", {"model": "shakespeare-char-mlm"})
    assert not at.exception, at.exception
    picker = at.sidebar.selectbox(key="model")
    assert "shakespeare-char-mlm" not in picker.options and picker.value == "shakespeare-char"


def test_the_cli_names_the_objective_and_the_committed_masked_lm_fills_blanks():
    from core.train import parse_args
    cfg, mc, _ = parse_args(["--objective", "mlm", "--attention", "bidirectional", "--mask-rate", "0.2"])
    assert (mc.objective, mc.attention, cfg.mask_rate) == ("mlm", "bidirectional", 0.2)
    with pytest.raises(ConfigError, match="bidirectional"):
        parse_args(["--objective", "mlm"])
    m = Model(ROOT / "exported" / "shakespeare-char-mlm")
    assert "--objective mlm --attention bidirectional" in m.card["training"]["command"]
    assert m.card["model_config"]["objective"] == "mlm" and "not comparable" in m.card["loss_note"]
    blank = m.fill_mask("To be, or not to b[MASK], that is the question.", k=3).blanks[0]
    assert m.tokenizer.decode([blank.ids[0]]) == "e" and blank.probs[0] > 0.3


def test_the_first_blank_is_a_letter_near_the_middle_with_both_sides():
    from core import encdec
    assert encdec.default_blank(list("ab, cd")) == 4          # the middle (3) is a space: the nearest letter
    assert encdec.default_blank(list("a,b")) == 1              # a letter needs a token on each side
    assert encdec.default_blank(list(", .")) == 1              # no letter at all: the middle
    assert encdec.default_blank([" the", " king", " is"]) == 1


def test_what_a_masked_lm_cannot_be_is_refused_with_what_to_do():
    """Post-training, int8 and reading weights back from the export each need a next-token graph."""
    from core.checks import PlaygroundError
    from core.posttrain import load_base
    from core.export import load_exported
    from core.quantize import quantize_model
    mlm = str(ROOT / "exported" / "shakespeare-char-mlm")
    for call, words in ((lambda: load_base(mlm), "next-token (GPT) model"),
                        (lambda: load_exported(mlm), "checkpoint"),
                        (lambda: quantize_model(mlm), "fp32")):
        with pytest.raises(PlaygroundError, match="masked LM|fp32") as e:
            call()
        assert words in str(e.value)


def test_the_trainers_help_prints(tmp_path):
    """Config comments become argparse help, where % is a format code ("15 % of positions")."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "core.train", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "--mask-rate" in done.stdout and "80 % by [MASK]" in " ".join(done.stdout.split())
