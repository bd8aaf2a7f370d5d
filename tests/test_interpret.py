"""The interpretability instruments (core.interpret) on exported models, against torch references written
here independently of core.model's Intervention: forward hooks that read the residual stream and each
head's output, and that zero, average or patch one head's slice of c_proj's input.

Checked: the lens at the last point is the model's logits (1e-5); ablating nothing and patching clean into
clean change nothing (1e-5); zero and mean ablation and patching equal the hooks (1e-5 / 1e-4); the residual
points and head outputs equal the hooks on our GPT (norms and MLPs of every kind, attention-only blocks
included) and, on a GPT-2 imported from transformers, transformers' own modules and TransformerLens's
run_with_cache when TransformerLens is installed; a hand-built previous-token head scores ~1; every bad
input gets its own message; an older export gains the graphs without model.onnx changing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from core import interpret as I
from core.config import ModelConfig
from core.export import ExportConfig, export_gpt
from core.limits import Limits
from core.model import GPT
from core.runtime import Model
from core.sampling import log_softmax
from core.tokenizer import byte_tokenizer
from tests.conftest import run_without_torch

CONFIGS = {
    "rope-gelu": dict(pos_encoding="rope", n_head=4, n_embd=32),
    # the interpretability toy models' options: no norms, ReLU MLPs or none at all (attention-only blocks)
    "attention-only": dict(pos_encoding="learned", norm="none", mlp="none", n_head=2, n_embd=16),
    "relu-rmsnorm": dict(pos_encoding="sinusoidal", norm="rmsnorm", mlp="relu", n_head=2, n_embd=16, bias=False),
}


def build(kw: dict, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=257, block_size=32, n_layer=2, **kw))
    with torch.no_grad():           # norms and biases away from 1 and 0, heads that matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """name -> (torch GPT, exported Model), built on first use."""
    base, made = tmp_path_factory.mktemp("interp"), {}

    def get(name: str):
        if name not in made:
            model = build(CONFIGS[name])
            export_gpt(model, byte_tokenizer(), base / name, ExportConfig(parity_steps=5))
            made[name] = model, Model(base / name)
        return made[name]
    return get


@pytest.fixture
def tiny(models):
    return models("rope-gelu")


PROMPT = "The cat sat on the mat. The"


# -- torch references, by hooks ----------------------------------------------------------------------

def hooked_run(model: GPT, ids: list[int], edit_z=None, edit_resid=None):
    """Run `model` with forward hooks: returns (logits (T, V), resid points (T, 2L + 1, C), z (T, L, nh, hs)).
    edit_z(layer, z (1, T, nh, hs)) may return a replacement of c_proj's input, per head; edit_resid(layer,
    x (1, T, C)) one of the stream entering block `layer` (layer L: entering ln_f)."""
    L, nh = model.config.n_layer, model.config.n_head
    points, zs, handles = {}, {}, []
    blocks = model.transformer.h

    def enter(l):
        def hook(module, args):
            x = args[0]
            if edit_resid is not None:
                x = edit_resid(l, x.clone())
            points[2 * l] = x
            return (x, *args[1:])
        return hook

    def after_attn(l):
        def hook(module, args, out):
            points[2 * l + 1] = points[2 * l] + out[0]
        return hook

    def heads(l):
        def hook(module, args):
            z = args[0].view(1, -1, nh, model.config.head_dim).clone()
            if edit_z is not None:
                z = edit_z(l, z)
            zs[l] = z
            return (z.reshape(1, z.size(1), -1),)
        return hook
    for l, block in enumerate(blocks):
        handles += [block.register_forward_pre_hook(enter(l)), block.attn.register_forward_hook(after_attn(l)),
                    block.attn.c_proj.register_forward_pre_hook(heads(l))]
    handles.append(model.transformer.ln_f.register_forward_pre_hook(enter(L)))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].numpy()     # the fused attention path, no Intervention
    finally:
        for h in handles:
            h.remove()
    resid = torch.stack([points[i][0] for i in range(2 * L + 1)], dim=1).numpy()
    return logits, resid, torch.stack([zs[l][0] for l in range(L)], dim=1).numpy()


# -- exactness ---------------------------------------------------------------------------------------

def test_the_lens_at_the_last_point_is_the_models_logits(tiny):
    _, m = tiny
    ids = m.tokenizer.encode(PROMPT)
    lens = I.logit_lens(m, ids, top_k=5)
    want = log_softmax(m.logits(ids)[0])                              # (T, V)
    assert lens.points[0] == "embed" and lens.points[-1] == "L1 mlp" and lens.top_ids.shape == (5, len(ids), 5)
    assert np.array_equal(lens.top_ids[-1], np.argsort(-want, axis=-1)[:, :5])
    assert np.abs(np.log(lens.top_probs[-1]) - np.sort(want, axis=-1)[:, ::-1][:, :5]).max() < 1e-5
    assert np.abs(lens.next_logprob[-1, :-1] - want[np.arange(len(ids) - 1), ids[1:]]).max() < 1e-5
    assert np.isnan(lens.next_logprob[:, -1]).all()
    # every logit, through the lens graph's targets
    ins = I.Inspector(m)
    resid, _ = ins.run(ids)
    every = ins.lens(resid[0, :, -1], np.tile(np.arange(m.vocab_size), (len(ids), 1)))
    assert np.abs(every.target_logits - m.logits(ids)[0]).max() < 1e-5


def test_ablating_nothing_and_patching_clean_into_clean_change_nothing(tiny):
    _, m = tiny
    ids = m.tokenizer.encode(PROMPT)
    ins = I.Inspector(m)
    T, L, nh, hs, C = len(ids), ins.n_layer, ins.n_head, ins.head_dim, ins.n_embd
    plain, z = ins.run(ids)
    rng = np.random.default_rng(0)        # mix 1 keeps x whatever the value
    edited, z2 = ins.run(ids, np.ones((2, T, L, nh), np.float32), rng.normal(size=(T, L, nh, hs)) * 10,
                         np.ones((2, T, L + 1), np.float32), rng.normal(size=(T, L + 1, C)) * 10)
    assert np.abs(edited - plain).max() < 1e-5 and np.abs(z2 - z).max() < 1e-5
    nothing = I.ablate(m, ids, heads=[])
    assert abs(nothing.logprob - nothing.baseline) < 1e-5
    a, b = m.tokenizer.encode("e")[0], m.tokenizer.encode("a")[0]
    same = I.patch(m, ids, ids, a, b)
    assert abs(same.clean_diff - same.corrupt_diff) < 1e-5
    assert np.abs(same.heads - same.clean_diff).max() < 1e-5 and np.abs(same.resid - same.clean_diff).max() < 1e-5
    assert np.isnan(same.heads_recovered).all()                     # nothing to recover: said, not divided by 0


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_ablating_a_head_equals_a_torch_hook_that_removes_it(tiny, kind):
    torch_model, m = tiny
    ids = m.tokenizer.encode(PROMPT)
    result = I.ablate_heads(m, ids, kind=kind)
    _, _, clean_z = hooked_run(torch_model, ids)
    assert result.logprob.shape == (2, 4) and np.abs(result.effect).max() > 1e-3     # heads that matter
    for layer, head in [(0, 1), (1, 3)]:
        def remove(l, z):
            if l == layer:
                z[0, :, head] = 0 if kind == "zero" else torch.from_numpy(clean_z[:, l, head].mean(0))
            return z
        logits, _, _ = hooked_run(torch_model, ids, edit_z=remove)
        want = log_softmax(logits[-1])[result.target]
        assert abs(result.logprob[layer, head] - want) < 1e-5, (layer, head)
    assert result.target == int(np.argmax(m.logits(ids)[0, -1]))    # the default target: the model's own guess
    together = I.ablate(m, ids, [(0, 1), (1, 3)], kind=kind)
    assert together.target == result.target and abs(together.baseline - result.baseline) < 1e-6


def test_patching_equals_torch_hooks_that_copy_the_clean_run(tiny):
    torch_model, m = tiny
    clean, corrupt = m.tokenizer.encode("The cat sat on the"), m.tokenizer.encode("The dog sat in the")
    a, b = m.tokenizer.encode("m")[0], m.tokenizer.encode("x")[0]
    result = I.patch(m, clean, corrupt, a, b)
    _, clean_resid, clean_z = hooked_run(torch_model, clean)
    assert result.heads.shape == (2, 4) and result.resid.shape == (3, len(clean))

    def diff(logits):
        return logits[-1, a] - logits[-1, b]
    assert abs(diff(hooked_run(torch_model, clean)[0]) - result.clean_diff) < 1e-4
    assert abs(diff(hooked_run(torch_model, corrupt)[0]) - result.corrupt_diff) < 1e-4

    def head_from_clean(l, z):
        if l == 1:
            z[0, :, 2] = torch.from_numpy(clean_z[:, 1, 2])
        return z
    assert abs(diff(hooked_run(torch_model, corrupt, edit_z=head_from_clean)[0]) - result.heads[1, 2]) < 1e-4
    assert clean[:4] == corrupt[:4] and np.all(result.resid[:, :4] == np.float32(result.corrupt_diff))
    for layer, t in [(0, 3), (0, 5), (1, 4), (2, len(clean) - 1)]:      # 3: before the first difference
        def cell_from_clean(l, x):
            if l == layer:
                x[0, t] = torch.from_numpy(clean_resid[t, 2 * l])
            return x
        got = diff(hooked_run(torch_model, corrupt, edit_resid=cell_from_clean)[0])
        assert abs(got - result.resid[layer, t]) < 1e-4, (layer, t)
    # the last layer's last position carries everything: patching it recovers all of the difference
    assert result.resid_recovered[-1, -1] == pytest.approx(1.0, abs=1e-4)
    assert np.abs(result.resid_recovered[:, 0]).max() < 1.0      # a position the two prompts share matters little


@pytest.mark.parametrize("name", list(CONFIGS))
def test_residual_points_and_head_outputs_equal_torch_hooks(models, name):
    torch_model, m = models(name)
    ids = m.tokenizer.encode(PROMPT)
    logits, resid, z = hooked_run(torch_model, ids)
    ins = I.Inspector(m)
    got_resid, got_z = ins.run(ids)
    assert got_resid.shape == (1, len(ids), 5, torch_model.config.n_embd)
    assert np.abs(got_resid[0] - resid).max() < 1e-5 and np.abs(got_z[0] - z).max() < 1e-5
    assert np.abs(m.logits(ids)[0] - logits).max() < 1e-4
    if CONFIGS[name].get("mlp") == "none":
        assert ins.points == ["embed", "L0 attn", "L0 out", "L1 attn", "L1 out"]
        assert np.abs(got_resid[0, :, 1] - got_resid[0, :, 2]).max() == 0     # no MLP: nothing added after attention


# -- a GPT-2 imported from transformers: its own modules, and TransformerLens when installed -----------

@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from core.pretrained import ImportConfig, import_pretrained
    from tests.test_pretrained import make_checkpoint
    base = tmp_path_factory.mktemp("gpt2")
    directory, hf = make_checkpoint(base / "hf", "gpt2", tie=True)
    import_pretrained(directory, base / "out", ImportConfig())
    return directory, hf, Model(base / "out")


def gpt2_reference(hf, ids: list[int]):
    """transformers' GPT2 with hooks: the stream entering each block, after its attention, leaving it (the
    last entering ln_f) and c_proj's input per head. (T, 2L + 1, C), (T, L, nh, hs)."""
    cfg = hf.config
    points, zs, handles = {}, {}, []
    for l, block in enumerate(hf.transformer.h):
        def enter(module, args, kwargs, l=l):
            points[2 * l] = (args[0] if args else kwargs["hidden_states"])[0]
        def attn_out(module, args, out, l=l):
            points[2 * l + 1] = points[2 * l] + out[0][0]
        def z(module, args, l=l):
            zs[l] = args[0][0].view(-1, cfg.n_head, cfg.n_embd // cfg.n_head)
        handles += [block.register_forward_pre_hook(enter, with_kwargs=True), block.attn.register_forward_hook(attn_out),
                    block.attn.c_proj.register_forward_pre_hook(z)]
    handles.append(hf.transformer.ln_f.register_forward_pre_hook(
        lambda module, args: points.__setitem__(2 * cfg.n_layer, args[0][0])))
    try:
        with torch.no_grad():
            hf(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return (torch.stack([points[i] for i in range(2 * cfg.n_layer + 1)], 1).numpy(),
            torch.stack([zs[l] for l in range(cfg.n_layer)], 1).numpy())


def test_an_imported_gpt2_matches_transformers_modules(gpt2):
    _, hf, m = gpt2
    ids = m.tokenizer.encode("The cat sat on the mat and then the dog")
    resid, z = I.Inspector(m).run(ids)
    want_resid, want_z = gpt2_reference(hf, ids)
    assert np.abs(resid[0] - want_resid).max() < 1e-4 and np.abs(z[0] - want_z).max() < 1e-4


def test_an_imported_gpt2_matches_transformer_lens_run_with_cache(gpt2):
    """TransformerLens (4.x: TransformerBridge, unprocessed weights, as from_pretrained_no_processing) booted
    offline on the same transformers model: its hook_resid_pre/mid/post and hook_z equal our points."""
    bridge = pytest.importorskip("transformer_lens.model_bridge", reason="TransformerLens is not installed")
    directory, hf, m = gpt2
    tl = bridge.TransformerBridge.boot_transformers(str(directory), hf_model=hf, device="cpu")
    ids = m.tokenizer.encode("The cat sat on the mat and then the dog")
    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.tensor([ids]))
    resid, z = I.Inspector(m).run(ids)
    L, nh = m.config.n_layer, m.config.n_head
    for l in range(L):
        for name, point in (("hook_resid_pre", 2 * l), ("hook_resid_mid", 2 * l + 1), ("hook_resid_post", 2 * l + 2)):
            assert np.abs(cache[f"blocks.{l}.{name}"][0].numpy() - resid[0, :, point]).max() < 1e-4, (l, name)
        tl_z = cache[f"blocks.{l}.attn.hook_z"][0].numpy().reshape(len(ids), nh, -1)
        assert np.abs(tl_z - z[0, :, l]).max() < 1e-4, l


# -- head scores -------------------------------------------------------------------------------------

def previous_token_model() -> GPT:
    """One attention-only layer whose only head attends from each position to the one before: positions are
    one-hot (learned table = identity), tokens add nothing, q_t = 10 e_t and k_s = 10 e_(s+1)."""
    cfg = ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=1, n_embd=16, pos_encoding="learned",
                      norm="none", mlp="none", bias=False)
    model = GPT(cfg)
    C = cfg.n_embd
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.copy_(torch.eye(C))
        w = torch.zeros(3 * C, C)
        w[:C] = 10 * torch.eye(C)                                  # q
        w[C:2 * C] = 10 * torch.diag(torch.ones(C - 1), -1)        # k_s = 10 e_(s+1)
        w[2 * C:] = torch.eye(C)                                   # v
        model.transformer.h[0].attn.c_attn.weight.copy_(w)
    return model.eval()


def test_a_hand_built_previous_token_head_scores_one(tmp_path):
    export_gpt(previous_token_model(), byte_tokenizer(), tmp_path / "prev", ExportConfig(parity_steps=5))
    m = Model(tmp_path / "prev")
    scores = I.head_scores(m, m.tokenizer.encode("any text at all"))
    assert scores.previous.shape == (1, 1) and scores.previous[0, 0] > 0.999
    rep = I.repeated_tokens(m, 6, seed=1)
    assert rep[:6] == rep[6:] and len(rep) == 12
    on_repeats = I.head_scores(m, rep)
    assert on_repeats.repeats >= 6 and on_repeats.induction[0, 0] < 0.01 and on_repeats.duplicate[0, 0] < 0.01


def test_head_scores_follow_their_definitions(tiny):
    _, m = tiny
    ids = I.repeated_tokens(m, 8, seed=2)
    scores = I.head_scores(m, ids)
    probs = np.stack([p[0] for p in m.attention(ids).probs])        # (L, nh, T, T)
    assert np.allclose(scores.previous, np.mean([probs[:, :, t, t - 1] for t in range(1, 16)], axis=0))
    assert np.allclose(scores.induction, np.mean([probs[:, :, t, t - 7] for t in range(8, 16)], axis=0), atol=1e-6)
    assert np.allclose(scores.duplicate, np.mean([probs[:, :, t, t - 8] for t in range(8, 16)], axis=0), atol=1e-6)
    none = I.head_scores(m, list(range(10)))                         # no token repeats: said with NaN, not 0
    assert none.repeats == 0 and np.isnan(none.induction).all() and not np.isnan(none.previous).any()


# -- bad input -------------------------------------------------------------------------------------

def test_prompts_of_different_lengths_are_refused_with_the_fix(tiny):
    _, m = tiny
    clean, corrupt = m.tokenizer.encode("The cat sat"), m.tokenizer.encode("A dog sat there")
    with pytest.raises(I.LengthMismatchError, match=r"clean prompt is 11 tokens and the corrupted one 15.*"
                                                    r"left-pad the shorter prompt") as e:
        I.patch(m, clean, corrupt, 1, 2)
    assert (e.value.clean, e.value.corrupt) == (11, 15)
    a, b = I.pad_to_same_length(clean, corrupt, I.pad_token(m))
    assert len(a) == len(b) == 15 and a[-11:] == clean and a[:4] == m.tokenizer.encode("    ")
    assert I.patch(m, a, b, 1, 2).resid.shape == (3, 15)


@pytest.mark.parametrize("call, message", [
    (lambda m, ids: I.ablate(m, ids, [(2, 0)]), r"layer must be an integer in \[0, 1\], got 2"),
    (lambda m, ids: I.ablate(m, ids, [(0, 4)]), r"head must be an integer in \[0, 3\], got 4"),
    (lambda m, ids: I.ablate(m, ids, [(-1, 0)]), r"layer must be an integer in \[0, 1\], got -1"),
    (lambda m, ids: I.ablate_heads(m, ids, target=257), r"target must be an integer in \[0, 256\], got 257"),
    (lambda m, ids: I.ablate_heads(m, ids, position=len(ids)), r"position must be an integer in \[-27, 26\]"),
    (lambda m, ids: I.ablate_heads(m, ids, kind="resample"), "kind must be one of zero, mean; got 'resample'"),
    (lambda m, ids: I.logit_lens(m, ids, top_k=11), r"top_k must be an integer in \[1, 10\], got 11"),
    (lambda m, ids: I.logit_lens(m, [5, 999]), r"token id 999 at position 1 is out of range"),
    (lambda m, ids: I.logit_lens(m, list(range(33))), r"33 tokens; at most 32 \(the model's context\)"),
    (lambda m, ids: I.single_token(m, "ab"), r"the answer 'ab' is 2 tokens \('a' \+ 'b'\)"),
    (lambda m, ids: I.repeated_tokens(m, 17), r"n must be an integer in \[2, 16\], got 17"),
])
def test_bad_input_gets_a_message_that_says_what_to_change(tiny, call, message):
    _, m = tiny
    with pytest.raises(I.InterpretError, match=message):
        call(m, m.tokenizer.encode(PROMPT))


def test_a_model_too_large_for_this_server_is_refused_naming_the_limit(tiny, monkeypatch):
    _, m = tiny
    ids = m.tokenizer.encode(PROMPT)
    n = m.card["parameters"]["total"]
    with pytest.raises(I.TooLargeError, match=rf"has {n:,} parameters; this server inspects models of at most "
                                              rf"1,000 \(Limits.max_inspect_parameters\)"):
        I.logit_lens(m, ids, limits=Limits(max_inspect_parameters=1000))
    hosted = Limits.hosted()          # an imported GPT-2 (124M) is over the hosted limit
    monkeypatch.setitem(m.card, "parameters", {**m.card["parameters"], "total": 124_439_808})
    with pytest.raises(I.TooLargeError, match=rf"124,439,808 parameters.*at most {hosted.max_inspect_parameters:,}"):
        I.ablate_heads(m, ids, limits=hosted)
    monkeypatch.undo()
    with pytest.raises(I.TooLargeError, match=r"27 tokens; at most 8 \(Limits.max_inspect_tokens"):
        I.patch(m, ids, ids, 1, 2, limits=Limits(max_inspect_tokens=8))


def test_a_tiny_memory_budget_only_changes_the_number_of_calls(tiny):
    _, m = tiny
    ids = m.tokenizer.encode(PROMPT)
    a = I.ablate_heads(m, ids, kind="mean")
    b = I.ablate_heads(m, ids, kind="mean", limits=Limits(inspect_batch_mb=0))      # one row per call
    assert np.abs(a.logprob - b.logprob).max() < 1e-5


def test_an_older_export_says_export_again_and_gains_the_graphs(tiny, tmp_path):
    from core.catalog import INSPECT_FILE, INSPECTION_CARD_KEY, LENS_FILE
    from core.export import main as export_main
    _, m = tiny
    old = tmp_path / "old"
    shutil.copytree(m.directory, old)
    card = json.loads((old / "card.json").read_text())
    del card[INSPECTION_CARD_KEY]
    (old / "card.json").write_text(json.dumps(card))
    (old / INSPECT_FILE).unlink()
    (old / LENS_FILE).unlink()
    before = (old / "model.onnx").read_bytes()
    with pytest.raises(I.InspectionMissingError, match=r"old was exported before the inspection graph existed: "
                                                       r"export it again .*--add-inspection exported/old"):
        I.logit_lens(Model(old), [1, 2, 3])
    assert I.head_scores(Model(old), [1, 2, 1, 2]).repeats == 2       # attention.onnx is enough for these
    assert export_main(["--add-inspection", str(old)]) == 0
    assert (old / "model.onnx").read_bytes() == before
    card = json.loads((old / "card.json").read_text())
    assert card[INSPECTION_CARD_KEY]["max_abs_diff"] < 1e-4 and INSPECT_FILE in card["files"]
    ids = m.tokenizer.encode(PROMPT)
    assert np.array_equal(I.logit_lens(Model(old), ids).top_ids, I.logit_lens(m, ids).top_ids)


def test_the_instruments_run_without_torch(tiny):
    _, m = tiny
    res = run_without_torch(f"""
from core.runtime import Model
from core import interpret as I
m = Model({str(m.directory)!r})
ids = m.tokenizer.encode("The cat sat on the mat")
print(I.logit_lens(m, ids).top_ids.shape, I.ablate_heads(m, ids).logprob.shape,
      I.patch(m, ids, ids, 1, 2).resid.shape, I.head_scores(m, ids).previous.shape)
assert "torch" not in sys.modules
""")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "(5, 22, 5) (2, 4) (3, 22) (2, 4)"


def test_the_card_says_the_graphs_exist(tiny):
    _, m = tiny
    entry = m.card["inspection"]
    assert entry["files"] == ["inspect.onnx", "lens.onnx"] and entry["points"] == 5 and entry["lens_top_k"] == 10
    assert entry["max_abs_diff"] < 1e-4 and {"inspect.onnx", "lens.onnx"} <= set(m.card["files"])
    assert dataclasses.is_dataclass(I.LogitLens)
