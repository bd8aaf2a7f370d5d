import itertools
import math

import pytest
import torch

from core.config import NORMS, POS_ENCODINGS, ModelConfig, count_parameters, flops_per_token
from core.model import GPT, sinusoidal_table

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
