import itertools
import math

import pytest
import torch

from core.config import NORMS, POS_ENCODINGS, ModelConfig, count_parameters, flops_per_token
from core.model import GPT, CacheBuffers, sinusoidal_table

VARIANTS = list(itertools.product(POS_ENCODINGS, NORMS))


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("pos, norm", VARIANTS)
def test_explicit_attention_equals_fast_path(pos, norm):
    torch.manual_seed(0)
    model = GPT(tiny(pos_encoding=pos, norm=norm)).eval()
    idx = torch.randint(0, 61, (3, 16))
    fast = model(idx)
    explicit = model(idx, return_attention=True)
    torch.testing.assert_close(explicit.logits, fast.logits, atol=1e-5, rtol=1e-5)
    assert len(explicit.attentions) == 2
    probs = explicit.attentions[0]
    assert probs.shape == (3, 2, 16, 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 16))
    assert torch.all(probs.triu(1) == 0)      # causal: nothing from the future


@pytest.mark.parametrize("pos, norm", VARIANTS)
def test_kv_cache_equals_full_recomputation(pos, norm):
    torch.manual_seed(0)
    model = GPT(tiny(pos_encoding=pos, norm=norm)).eval()
    idx = torch.randint(0, 61, (2, 14))
    full = model(idx).logits
    out = model(idx[:, :5], use_cache=True)
    logits = [out.logits]
    for t in range(5, 14):
        out = model(idx[:, t:t + 1], past=out.present, use_cache=True)
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-5, rtol=1e-5)
    # several new tokens over a cache (chunked prefill), fast and explicit paths
    first = model(idx[:, :6], use_cache=True)
    for explicit in (False, True):
        rest = model(idx[:, 6:], past=first.present, use_cache=True, return_attention=explicit)
        torch.testing.assert_close(rest.logits, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_attention_with_cache_sees_all_past_keys():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 61, (1, 8))
    first = model(idx[:, :5], use_cache=True)
    step = model(idx[:, 5:6], past=first.present, return_attention=True)
    assert step.attentions[0].shape == (1, 2, 1, 6)
    assert torch.all(step.attentions[0] > 0)


@pytest.mark.parametrize("pos, norm", VARIANTS)
@pytest.mark.parametrize("tie, bias", [(True, True), (False, False)])
def test_parameter_counts_match_the_tensors(pos, norm, tie, bias):
    cfg = tiny(pos_encoding=pos, norm=norm, tie_embeddings=tie, bias=bias)
    model = GPT(cfg)
    counts = model.count_parameters()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == counts["embedding"] + counts["non_embedding"]


def test_nanogpt_shape_counts():
    # nanoGPT reports 0.80M for its 4x4x128 char model (65 chars, its count excludes wpe)
    cfg = ModelConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    c = count_parameters(cfg)
    # per block: 12 C^2 weights + 13 C biases and norm parameters; then the final norm
    assert c["non_embedding"] == 4 * (12 * 128 ** 2 + 13 * 128) + 2 * 128
    assert round((c["total"] - 64 * 128) / 1e6, 2) == 0.80


def test_flops_per_token_is_6n_plus_attention():
    cfg = ModelConfig(vocab_size=257, block_size=64, n_layer=4, n_head=4, n_embd=128)
    n = count_parameters(cfg)["non_embedding"] + 257 * 128
    assert flops_per_token(cfg) == 6 * n + 12 * 4 * 64 * 128
    assert flops_per_token(cfg, training=False) * 3 == flops_per_token(cfg)
    assert flops_per_token(cfg, seq_len=128) > flops_per_token(cfg)


@pytest.mark.parametrize("pos", POS_ENCODINGS)
def test_each_positional_encoding_trains(pos):
    torch.manual_seed(0)
    model = GPT(tiny(pos_encoding=pos))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # a periodic sequence: predictable only by position within the period or from context
    seq = torch.tensor([[i % 7 for i in range(17)]] * 4)
    first = None
    for _ in range(60):
        loss = model(seq[:, :-1], seq[:, 1:]).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5 and loss.item() < 0.5


def test_tied_head_shares_the_embedding():
    model = GPT(tiny())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert GPT(tiny(tie_embeddings=False)).lm_head.weight is not GPT(tiny()).transformer.wte.weight


def test_sinusoidal_table_values():
    t = sinusoidal_table(4, 6)
    assert t[0, 0] == 0 and t[0, 1] == 1
    assert math.isclose(t[3, 2].item(), math.sin(3 / 10000 ** (2 / 6)), rel_tol=1e-5)


def test_context_longer_than_block_size_is_refused():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="cannot attend over 17 positions.*block_size\\) is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    first = model(torch.zeros(1, 16, dtype=torch.long), use_cache=True)
    with pytest.raises(ValueError, match="17 positions"):
        model(torch.zeros(1, 1, dtype=torch.long), past=first.present)


@pytest.mark.parametrize("kw, message", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(pos_encoding="alibi"), "pos_encoding"),
    (dict(norm="batchnorm"), "norm"),
    (dict(n_layer=0), "n_layer"),
    (dict(n_embd=12, n_head=4, pos_encoding="rope"), "even head size"),
    (dict(dropout=1.0), "dropout"),
    (dict(vocab_size=2.5), "vocab_size"),
])
def test_bad_model_config(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)


def test_generate_is_seeded_and_slides_past_the_context():
    torch.manual_seed(0)
    model = GPT(tiny())
    start = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(start, 40, generator=torch.Generator().manual_seed(1))
    b = model.generate(start, 40, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, 41) and torch.equal(a, b)
    greedy = model.generate(start, 5, temperature=0)
    full = start
    for _ in range(5):
        nxt = model(full[:, -16:]).logits[:, -1].argmax(-1, keepdim=True)
        full = torch.cat([full, nxt], 1)
    assert torch.equal(greedy, full)


# -- the options pretrained checkpoints need (GPT-2's tanh GELU, LLaMA's SwiGLU, GQA, RoPE base, eps, biases)

OPTIONS = [
    dict(mlp="gelu_tanh"),
    dict(mlp="swiglu", mlp_hidden=24, bias=False, norm="rmsnorm", pos_encoding="rope"),
    dict(n_head=4, n_kv_head=2, pos_encoding="rope", rope_theta=5e5),
    dict(n_head=4, n_kv_head=1, pos_encoding="learned", mlp="swiglu"),
    dict(bias=False, qkv_bias=True, norm="rmsnorm", norm_eps=1e-6, pos_encoding="rope", n_head=4, n_kv_head=2),
    dict(bias=True, qkv_bias=False, mlp_hidden=40, tie_embeddings=False, pos_encoding="sinusoidal"),
    dict(n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=20, bias=False, qkv_bias=True, norm="rmsnorm",
         norm_eps=1e-6, pos_encoding="rope", rope_theta=1e6, tie_embeddings=False),   # Qwen2's shape
]


def randomized(model: GPT) -> GPT:
    """Norm weights and biases away from 1 and 0, so that a misplaced one would show in the logits."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.mark.parametrize("kw", OPTIONS)
def test_every_option_keeps_explicit_fused_and_cached_paths_equal(kw):
    torch.manual_seed(0)
    cfg = tiny(**kw)
    model = randomized(GPT(cfg))
    idx = torch.randint(0, 61, (2, 16))
    fast = model(idx).logits
    explicit = model(idx, return_attention=True)
    torch.testing.assert_close(explicit.logits, fast, atol=1e-5, rtol=1e-5)
    for part in explicit.attention_parts:
        assert part["probs"].shape == (2, cfg.n_head, 16, 16)
        assert part["k"].shape == part["v"].shape == (2, cfg.n_head, 16, cfg.head_dim)   # one per query head
    out = model(idx[:, :5], use_cache=True)
    assert out.present[0][0].shape == (2, cfg.kv_heads, 5, cfg.head_dim)   # the cache keeps n_kv heads
    logits = [out.logits]
    for t in range(5, 16):
        out = model(idx[:, t:t + 1], past=out.present, use_cache=True, return_attention=t % 2 == 0)
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, 1), fast, atol=1e-5, rtol=1e-5)
    # the exported decode graph's path: preallocated buffers written at their length (prefill, one
    # token, a chunk), as onnxruntime's GroupQueryAttention does
    buffers = CacheBuffers([(torch.zeros(2, cfg.kv_heads, 16, cfg.head_dim),) * 2 for _ in range(cfg.n_layer)],
                           torch.tensor(0))
    logits = []
    for start, end in ((0, 5), (5, 6), (6, 11), (11, 16)):
        out = model(idx[:, start:end], past=buffers, use_cache=True)
        logits.append(out.logits)
        buffers = CacheBuffers(out.present, torch.tensor(end))
    torch.testing.assert_close(torch.cat(logits, 1), fast, atol=1e-5, rtol=1e-5)


def test_grouped_query_attention_shares_keys_within_a_group():
    torch.manual_seed(0)
    model = randomized(GPT(tiny(n_head=4, n_kv_head=2)))
    parts = model(torch.randint(0, 61, (1, 9)), return_attention=True).attention_parts[0]
    assert torch.equal(parts["k"][:, 0], parts["k"][:, 1]) and torch.equal(parts["v"][:, 2], parts["v"][:, 3])
    assert not torch.equal(parts["k"][:, 1], parts["k"][:, 2])
    assert model.transformer.h[0].attn.c_attn.weight.shape == ((4 + 2 * 2) * 4, 16)   # 4 q, 2 k, 2 v heads of 4


def test_rope_theta_changes_the_rotation_and_the_mlp_kinds_differ():
    torch.manual_seed(0)
    base = GPT(tiny(pos_encoding="rope"))
    other = GPT(tiny(pos_encoding="rope", rope_theta=5e5))
    assert torch.equal(base.rope_cos[:, 0], other.rope_cos[:, 0])          # the fastest pair turns the same
    assert not torch.allclose(base.rope_cos[:, -1], other.rope_cos[:, -1])   # slower pairs turn slower
    x = torch.linspace(-3, 3, 7)
    tanh_gelu = GPT(tiny(mlp="gelu_tanh")).transformer.h[0].mlp.act
    want = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))   # GPT-2's gelu_new
    torch.testing.assert_close(tanh_gelu(x), want, atol=1e-6, rtol=1e-6)
    assert GPT(tiny(norm="rmsnorm", norm_eps=1e-6)).transformer.ln_f.eps == 1e-6
    assert GPT(tiny(norm_eps=1e-6)).transformer.ln_f.eps == 1e-6


COUNT_COMBOS = list(itertools.product(
    ("learned", "rope"), NORMS, ("gelu", "swiglu"), (0, 24), (0, 1, 2), (True, False), (None, True, False),
    (True, False)))


@pytest.mark.parametrize("pos, norm, mlp, hidden, kv, bias, qkv_bias, tie", COUNT_COMBOS)
def test_counts_and_flops_follow_every_option(pos, norm, mlp, hidden, kv, bias, qkv_bias, tie):
    cfg = tiny(pos_encoding=pos, norm=norm, mlp=mlp, mlp_hidden=hidden, n_head=4, n_kv_head=kv, bias=bias,
               qkv_bias=qkv_bias, tie_embeddings=tie)
    model = GPT(cfg)
    counts = count_parameters(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    tables = {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"}
    assert counts["non_embedding"] == sum(p.numel() for n, p in model.named_parameters() if n not in tables)
    # forward FLOPs: 2 per weight that multiplies (the non-embedding tensors and the head, tied or not) plus
    # attention's q.k and p.v over the context, which grouped-query attention does not shrink
    head = model.lm_head.weight.numel()
    assert flops_per_token(cfg, training=False) == 2 * (counts["non_embedding"] + head) + 4 * 2 * 16 * 16
    assert flops_per_token(cfg) == 3 * flops_per_token(cfg, training=False)


def test_new_options_default_to_todays_model():
    cfg = ModelConfig()
    assert (cfg.mlp, cfg.mlp_width, cfg.kv_heads, cfg.rope_theta, cfg.norm_eps, cfg.has_qkv_bias) == \
        ("gelu", 4 * cfg.n_embd, cfg.n_head, 10000.0, 1e-5, True)
    old_card = {k: v for k, v in cfg.to_dict().items()
                if k not in ("mlp", "mlp_hidden", "n_kv_head", "rope_theta", "norm_eps", "qkv_bias")}
    assert ModelConfig.from_dict(old_card) == cfg        # cards written before these options still open


def test_new_options_are_training_flags_with_their_why():
    from core.cli import field_help
    from core.train import parse_args
    helps = field_help(ModelConfig)
    for name in ("mlp", "mlp_hidden", "n_kv_head", "rope_theta", "norm_eps", "qkv_bias"):
        assert len(helps.get(name, "")) > 20, name
    _, mc, _ = parse_args(["--n-head", "4", "--n-kv-head", "2", "--mlp", "swiglu", "--mlp-hidden", "300",
                           "--rope-theta", "500000", "--norm-eps", "1e-6", "--no-bias", "--qkv-bias"])
    assert (mc.n_kv_head, mc.mlp, mc.mlp_hidden, mc.rope_theta, mc.norm_eps, mc.bias, mc.qkv_bias) == \
        (2, "swiglu", 300, 5e5, 1e-6, False, True)


@pytest.mark.parametrize("kw, message", [
    (dict(n_head=4, n_kv_head=3), "divisible by n_kv_head"),
    (dict(n_head=2, n_kv_head=4), r"n_kv_head must be an integer in \[0, 2\]"),
    (dict(mlp="tanh"), "mlp must be one of gelu, gelu_tanh, swiglu, relu, none"),
    (dict(mlp_hidden=-1), "mlp_hidden"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(qkv_bias="yes"), "qkv_bias"),
])
def test_bad_new_options(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)
