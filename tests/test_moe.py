"""Mixture of experts as an MLP option: routing, the load-balancing loss, counts, training, export.

Peers: a hand-written numpy router and Switch loss on the router's own inputs (a forward hook), transformers'
MixtralSparseMoeBlock and load_balancing_loss_func with copied weights, and the dense MLP for E = k = 1."""

import math

import numpy as np
import pytest
import torch

from core.checks import ConfigError
from core.config import ModelConfig, count_parameters, flops_per_token
from core.model import GPT, MoE, Routing, balance_loss


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16, n_experts=4, moe_top_k=2)
    return ModelConfig(**{**base, **kw})


def moe_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(tiny(**kw)).eval()
    with torch.no_grad():           # a router far from uniform, so the choices are not near-ties
        for block in model.transformer.h:
            block.mlp.router.weight.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("k, normalize", [(1, True), (2, True), (3, True), (2, False), (1, False)])
def test_topk_picks_the_largest_and_weights_follow_the_convention(k, normalize):
    model = moe_model(moe_top_k=k, moe_normalize=normalize)
    out = model(torch.randint(0, 61, (3, 16)))
    probs, ids, w = out.router_probs, out.expert_ids, out.expert_weights
    assert ids.shape == (3, 16, 2, k) and probs.shape == (3, 16, 2, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 16, 2))
    # the k chosen are the k largest probabilities, most probable first
    want = probs.argsort(dim=-1, descending=True)[..., :k]
    assert torch.equal(ids, want)
    chosen = probs.gather(-1, ids)
    if normalize:     # Mixtral: renormalised over the chosen experts, so they sum to one per token
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 16, 2))
        torch.testing.assert_close(w, chosen / chosen.sum(-1, keepdim=True))
    else:             # Switch: the raw probabilities
        torch.testing.assert_close(w, chosen)


def test_balance_loss_matches_a_hand_numpy_switch_loss():
    model = moe_model(seed=3, n_experts=5, moe_top_k=2)
    inputs = []
    hooks = [b.mlp.router.register_forward_hook(lambda m, a, o: inputs.append(a[0].detach().numpy().copy()))
             for b in model.transformer.h]
    idx = torch.randint(0, 61, (4, 16))
    out = model(idx, idx)
    for h in hooks:
        h.remove()
    losses = []
    for x, block in zip(inputs, model.transformer.h):
        logits = x.astype(np.float64) @ block.mlp.router.weight.detach().numpy().T.astype(np.float64)   # (N, E)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        top = np.argsort(-p, axis=1)[:, :2]
        f = np.bincount(top.ravel(), minlength=5) / top.size        # share of the N * k assignments
        losses.append(5 * float(np.sum(f * p.mean(0))))
    assert out.aux_loss.item() == pytest.approx(np.mean(losses), rel=1e-5)
    assert out.aux_loss.item() != pytest.approx(1.0, abs=1e-3)      # this routing is not balanced


def test_balance_loss_is_one_when_routing_is_uniform_and_e_when_collapsed():
    model = moe_model()
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.router.weight.zero_()         # every expert equally probable for every token
    idx = torch.randint(0, 61, (2, 16))
    assert model(idx, idx).aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    N, E = 10, 4
    collapsed = torch.zeros(N, E)
    collapsed[:, 2] = 1.0
    assert balance_loss(Routing(collapsed, torch.full((N, 1), 2), torch.ones(N, 1)), E).item() == pytest.approx(E)
    # balanced assignments under uniform probabilities: the minimum Switch aims at
    ids = torch.arange(N * 2).view(N, 2) % E
    assert balance_loss(Routing(torch.full((N, E), 1 / E), ids, torch.full((N, 2), 0.5)), E).item() == \
        pytest.approx(1.0)


def test_one_expert_top_one_equals_the_dense_mlp_with_the_same_weights():
    for mlp in ("gelu", "swiglu"):
        torch.manual_seed(0)
        dense = GPT(tiny(n_experts=0, mlp=mlp)).eval()
        moe = GPT(tiny(n_experts=1, moe_top_k=1, mlp=mlp)).eval()
        state = {k.replace(".mlp.", ".mlp.experts.0."): v for k, v in dense.state_dict().items()}
        missing, unexpected = moe.load_state_dict(state, strict=False)
        assert all(k.endswith("mlp.router.weight") for k in missing) and not unexpected
        idx = torch.randint(0, 61, (2, 16))
        torch.testing.assert_close(moe(idx).logits, dense(idx).logits, atol=0, rtol=0)


def test_gradient_reaches_the_router_from_the_loss_and_from_the_balance_loss():
    model = moe_model().train()
    idx = torch.randint(0, 61, (2, 16))
    out = model(idx, idx)
    router = model.transformer.h[0].mlp.router.weight
    (g_loss,) = torch.autograd.grad(out.loss, router, retain_graph=True)
    (g_aux,) = torch.autograd.grad(out.aux_loss, router)
    assert g_loss.abs().sum() > 0 and g_aux.abs().sum() > 0
    # every expert that got a token gets a gradient; the weighted sum carries it
    out = model(idx, idx)
    out.loss.backward()
    used = set(out.expert_ids[:, :, 0].unique().tolist())
    for e, expert in enumerate(model.transformer.h[0].mlp.experts):
        assert (expert.c_fc.weight.grad is not None and expert.c_fc.weight.grad.abs().sum() > 0) == (e in used)


def test_matches_transformers_mixtral_block_and_its_balance_loss():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func
    E, k, C, H = 6, 2, 16, 24
    torch.manual_seed(1)
    ours = MoE(tiny(n_embd=C, n_experts=E, moe_top_k=k, mlp="swiglu", mlp_hidden=H, bias=False)).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, 0, 0.5)
    hf = MixtralSparseMoeBlock(MixtralConfig(hidden_size=C, intermediate_size=H, num_local_experts=E,
                                             num_experts_per_tok=k, hidden_act="silu")).eval()
    with torch.no_grad():
        hf.gate.weight.copy_(ours.router.weight)
        hf.experts.gate_up_proj.copy_(torch.stack([e.c_fc.weight for e in ours.experts]))   # gate then up
        hf.experts.down_proj.copy_(torch.stack([e.c_proj.weight for e in ours.experts]))
    x = torch.randn(3, 7, C)
    with torch.no_grad():
        y, route = ours(x)
        torch.testing.assert_close(y, hf(x), atol=1e-5, rtol=1e-5)
        router_logits, _, hf_ids = hf.gate(x)
        assert torch.equal(route.experts, hf_ids)
        # transformers counts each of the k assignments as a token (its f sums to k): k times Switch's
        hf_aux = load_balancing_loss_func((router_logits,), E, k)
        assert balance_loss(route, E).item() == pytest.approx(hf_aux.item() / k, rel=1e-5)


@pytest.mark.parametrize("mlp, k, bias, tie", [("gelu", 2, True, True), ("swiglu", 1, False, False),
                                               ("relu", 3, True, False)])
def test_counts_total_and_active_match_the_tensors(mlp, k, bias, tie):
    cfg = tiny(mlp=mlp, moe_top_k=k, bias=bias, tie_embeddings=tie)
    model = GPT(cfg)
    c = count_parameters(cfg)
    assert c["total"] == sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for p in model.transformer.h[0].mlp.experts[0].parameters())
    assert c["total"] - c["active"] == cfg.n_layer * (cfg.n_experts - k) * expert
    assert c["active"] - c["active_non_embedding"] == c["embedding"]
    # FLOPs at the active parameters: a dense model with the same active matrices costs the same, plus the router
    dense = count_parameters(tiny(mlp=mlp, n_experts=0, bias=bias, tie_embeddings=tie))
    assert c["active_non_embedding"] == dense["non_embedding"] + (k - 1) * cfg.n_layer * expert + \
        cfg.n_layer * cfg.n_embd * cfg.n_experts
    head = model.lm_head.weight.numel()
    assert flops_per_token(cfg, training=False) == 2 * (c["active_non_embedding"] + head) + 4 * 2 * 16 * 16
    assert count_parameters(tiny(n_experts=0))["active"] == count_parameters(tiny(n_experts=0))["total"]


@pytest.mark.parametrize("kw, message", [
    (dict(moe_top_k=5), r"moe_top_k \(5\) must be at most n_experts \(4\)"),
    (dict(moe_top_k=0), "moe_top_k"),
    (dict(n_experts=-1), "n_experts"),
    (dict(mlp="none"), "mlp is 'none'"),
    (dict(moe_aux_coef=-0.1), "moe_aux_coef"),
    (dict(moe_normalize="yes"), "moe_normalize"),
])
def test_bad_moe_options(kw, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**kw)


def test_old_configs_load_dense_and_the_options_are_flags():
    from core.cli import field_help
    from core.train import parse_args
    cfg = ModelConfig()
    old = {k: v for k, v in cfg.to_dict().items() if not k.startswith(("n_experts", "moe_"))}
    assert ModelConfig.from_dict(old) == cfg and cfg.n_experts == 0 and cfg.active_experts == 1
    assert not any(isinstance(b.mlp, MoE) for b in GPT(ModelConfig(n_layer=1)).transformer.h)
    helps = field_help(ModelConfig)
    for name in ("n_experts", "moe_top_k", "moe_aux_coef", "moe_normalize"):
        assert len(helps.get(name, "")) > 20, name
    _, mc, _ = parse_args(["--n-experts", "8", "--moe-top-k", "1", "--moe-aux-coef", "0.02", "--no-moe-normalize"])
    assert (mc.n_experts, mc.moe_top_k, mc.moe_aux_coef, mc.moe_normalize) == (8, 1, 0.02, False)


def test_the_trainer_adds_the_balance_loss_and_reports_it_apart(tmp_path, corpus_file, data_dir):
    from core.train import TrainConfig, TrainStep, train
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), corpus=str(corpus_file), data_dir=str(data_dir), batch_size=4,
                      max_steps=4, eval_interval=4, eval_iters=2, threads=1, eval_at_start=False)
    steps = [r for r in train(cfg, tiny(vocab_size=257, moe_aux_coef=0.5)) if isinstance(r, TrainStep)]
    assert len(steps) == 4 and all(0.99 < s.aux_loss <= 4 for s in steps)
    assert all(s.loss < 2 * math.log(257) for s in steps)
    off = [r for r in train(TrainConfig(**{**cfg.to_dict(), "out_dir": str(tmp_path / "off")}),
                            tiny(vocab_size=257, moe_aux_coef=0.0)) if isinstance(r, TrainStep)]
    # the same first batch and weights: the reported loss is the cross-entropy alone, the same with or without
    # the balance term; the term's gradient then moves the weights differently
    assert steps[0].loss == off[0].loss and steps[0].aux_loss == off[0].aux_loss
    assert steps[2].loss != off[2].loss
    dense = [r for r in train(TrainConfig(**{**cfg.to_dict(), "out_dir": str(tmp_path / "dense")}),
                              tiny(vocab_size=257, n_experts=0)) if isinstance(r, TrainStep)]
    assert all(s.aux_loss is None for s in dense)


@pytest.mark.slow
def test_export_keeps_parity_and_returns_the_routing(tmp_path):
    from core.export import ExportConfig, export_gpt
    from core.runtime import Model
    from core.tokenizer import byte_tokenizer
    torch.manual_seed(0)
    model = moe_model(vocab_size=257, block_size=40, n_embd=32, mlp="swiglu", bias=False)
    card = export_gpt(model, byte_tokenizer(), tmp_path / "m", ExportConfig(parity_steps=20))
    assert card["parity"]["max_abs_logit_diff"] < 1e-4 and card["parity"]["attention_max_abs_diff"] < 1e-4
    assert card["parameters"]["active"] < card["parameters"]["total"]
    m = Model(tmp_path / "m")
    ids = np.random.default_rng(0).integers(0, 257, (2, 36))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids))
    logits, cache = m.step(ids[:, :9])
    rest, _ = m.step(ids[:, 9:], cache)
    assert np.abs(np.concatenate([logits, rest], 1) - ref.logits.numpy()).max() < 1e-4
    maps = m.attention(ids)
    assert np.array_equal(maps.routing["experts"], ref.expert_ids.numpy())
    assert np.abs(maps.routing["expert_weights"] - ref.expert_weights.numpy()).max() < 1e-5


def test_inside_shows_the_committed_mixtures_routing_and_its_comparison():
    from tests.test_pages import page
    at = page("playground/inside.py", {"model": "shakespeare-moe", "text": "ROMEO: What light"})
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "experts per block" in text and "Trained against a dense model" in text
    assert at.dataframe and "layer 0" in at.dataframe[0].value.columns
    dense = page("playground/inside.py")                # a dense model: the tab says where to look
    assert not dense.exception
    assert any("one dense MLP per block" in i.value and "shakespeare-moe" in i.value for i in dense.info)


def test_route_reads_the_exported_routing_without_torch():
    from core import catalog
    from tests.conftest import run_without_torch
    code = (f"from core.runtime import Model\nfrom core import moe\nm = Model({str(catalog.EXPORTED_DIR / 'shakespeare-moe')!r})\n"
            "r = moe.route(m, m.tokenizer.encode_prompt('To be, or not'))\n"
            "s = moe.expert_shares(r.experts, r.n_experts)\n"
            "assert r.experts.shape[:2] == (13, m.n_layer) and abs(s.sum(1) - 1).max() < 1e-9\n"
            "assert abs(r.probs.sum(-1) - 1).max() < 1e-5\nprint('ok')")
    assert run_without_torch(code).stdout.strip().endswith("ok")


@pytest.mark.parametrize("path", ["playground/glance.py", "playground/generate.py", "playground/attention.py",
                                  "playground/models.py", "playground/compare.py"])
def test_every_model_page_opens_the_committed_mixture(path):
    from tests.test_pages import page
    at = page(path, {"model": "shakespeare-moe"})
    assert not at.exception, at.exception
