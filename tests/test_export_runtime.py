"""Export to ONNX and the torch-free runtime: parity, shapes, bad input, damaged and hostile files."""

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from core.checkpoint import load_model
from core.model import GPT
from core.export import ExportConfig, ExportError, export_model, print_card
from core.generate import GenerationConfig, decode
from core.generate import main as generate_main
from core.config import NORMS, POS_ENCODINGS, ModelConfig
from core.runtime import ContextLimitError, Model, ModelError
from core.sampling import SamplerConfig, log_softmax
from core.train import TrainConfig, train
from tests.conftest import cached_logits, run_without_torch

ROOT = Path(__file__).resolve().parent.parent
SMALL = ModelConfig(block_size=24, n_layer=2, n_head=2, n_embd=16)


def stream(m, prompt, n, temperature=1.0, seed=0):
    cfg = GenerationConfig(max_new_tokens=n, sampler=SamplerConfig(temperature=temperature), seed=seed,
                           stop_at_eos=False)
    return decode(m, prompt, cfg)


def make_run(run_dir, corpus_file, data_dir, model_cfg=SMALL, steps=30, **kw):
    cfg = TrainConfig(out_dir=str(run_dir), corpus=str(corpus_file), data_dir=str(data_dir), batch_size=4,
                      max_steps=steps, eval_interval=steps, eval_iters=2, learning_rate=3e-3, threads=1, **kw)
    list(train(cfg, model_cfg))
    return run_dir


@pytest.fixture(scope="session")
def exported(tmp_path_factory, corpus_file, data_dir) -> Path:
    base = tmp_path_factory.mktemp("exp")
    run = make_run(base / "run", corpus_file, data_dir, dataclasses.replace(SMALL, pos_encoding="rope"), steps=60)
    out = base / "tiny-rope"
    export_model(run, out, ExportConfig(int8=True, int8_approximate=True, fp16=True))   # kept at any agreement
    return out


@pytest.mark.slow
@pytest.mark.parametrize("pos, norm", [(p, n) for p in POS_ENCODINGS for n in NORMS])
def test_export_parity_for_every_encoding_and_norm(tmp_path, corpus_file, data_dir, pos, norm):
    run = make_run(tmp_path / "run", corpus_file, data_dir,
                   dataclasses.replace(SMALL, pos_encoding=pos, norm=norm, bias=norm == "layernorm"), steps=5)
    card = export_model(run, tmp_path / "out", ExportConfig(parity_steps=15))
    assert card["parity"]["max_abs_logit_diff"] < 1e-4 and card["parity"]["cached_steps"] == 15
    assert card["parity"]["attention_max_abs_diff"] < 1e-5
    # the runtime, on a fresh prompt: prefill + cached steps == torch recomputation
    torch_model, _ = load_model(run)
    m = Model(tmp_path / "out")
    ids = np.random.default_rng(0).integers(0, m.vocab_size, (1, 20))
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(cached_logits(m, ids, prefill=7) - ref).max() < 1e-4


@pytest.mark.slow
def test_a_llama_shaped_run_trains_exports_and_runs(tmp_path, corpus_file, data_dir):
    """The options pretrained checkpoints need are the trainer's too: SwiGLU, grouped-query attention, a RoPE
    base, q/k/v biases only, RMSNorm's epsilon, an untied head; trained, checkpointed, exported, run."""
    mc = dataclasses.replace(SMALL, n_embd=32, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=40, pos_encoding="rope",
                             rope_theta=5e5, norm="rmsnorm", norm_eps=1e-6, bias=False, qkv_bias=True,
                             tie_embeddings=False)
    run = make_run(tmp_path / "run", corpus_file, data_dir, mc, steps=5)
    card = export_model(run, tmp_path / "out", ExportConfig(parity_steps=15, int8=True, int8_approximate=True))
    assert card["parity"]["max_abs_logit_diff"] < 1e-4 and card["model_config"]["n_kv_head"] == 2
    assert card["variants"]["int8"]["bytes"] < card["variants"]["fp32"]["bytes"]
    assert card["io"]["past_shape"] == ["batch", "n_kv_head", "capacity", "head_dim"]
    m = Model(tmp_path / "out")
    assert m.empty_cache(3).arrays[0].shape == (3, 2, 0, 8)
    torch_model, _ = load_model(run)
    ids = np.random.default_rng(0).integers(0, m.vocab_size, (2, 20))
    logits, cache = m.step(ids[:, :6])
    rest, cache = m.step(ids[:, 6:], cache)
    assert cache.length == 20 and cache.arrays[0].shape[:2] == (2, 2) and cache.arrays[0].shape[2] >= 20
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(np.concatenate([logits, rest], 1) - ref).max() < 1e-4
    with torch.no_grad():
        ref_parts = torch_model(torch.from_numpy(ids[:1]), return_attention=True).attention_parts
    maps = m.attention(ids[:1])
    assert np.abs(maps.parts[1]["k"] - ref_parts[1]["k"].numpy()).max() < 1e-5   # per query head, as the pages read


def test_dynamic_batch_and_past_lengths(exported):
    m = Model(exported)
    torch_model, _ = load_model(exported.parent / "run")
    ids = np.random.default_rng(1).integers(0, m.vocab_size, (3, 12))
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(ids)).logits.numpy()
    full, _ = m.step(ids)                         # batch 3, past 0
    assert np.abs(full - ref).max() < 1e-4
    first, cache = m.step(ids[:, :5])             # then past 5, several new tokens at once
    rest, cache = m.step(ids[:, 5:], cache)
    assert cache.length == 12 and cache.batch == 3
    assert np.abs(rest - ref[:, 5:]).max() < 1e-4
    one, _ = m.step(ids[:1])                      # batch 1
    assert np.abs(one - ref[:1]).max() < 1e-4


def test_attention_equals_the_torch_explicit_path(exported):
    m = Model(exported)
    torch_model, _ = load_model(exported.parent / "run")
    ids = m.tokenizer.encode("The cat sat on the mat.")
    maps = m.attention(ids)
    with torch.no_grad():
        ref = torch_model(torch.tensor([ids]), return_attention=True).attentions
    assert len(maps.probs) == len(ref) == 2
    for got, want in zip(maps.probs, ref):
        assert got.shape == (1, 2, len(ids), len(ids))
        assert np.abs(got - want.numpy()).max() < 1e-5


def test_card_records_what_the_model_is(exported):
    card = json.loads((exported / "card.json").read_text())
    assert card["model_config"]["pos_encoding"] == "rope" and card["tokenizer"]["name"] == "byte"
    assert card["parameters"]["total"] > 0 and card["val_loss"] > 0 and card["val_bits_per_byte"] > 0
    assert len(card["training"]["corpus_sha256"]) == 64 and card["training"]["step"] == 60
    per_step = card["training"]["step_curve"]            # the steps' own losses, 60 <= STEP_CURVE_POINTS
    assert [p["step"] for p in per_step] == list(range(1, 61)) and all(p["loss"] > 0 for p in per_step)
    assert set(card["variants"]) == {"fp32", "int8", "fp16"}
    assert card["variants"]["int8"]["bytes"] < card["variants"]["fp32"]["bytes"]
    assert card["variants"]["fp16"]["top1_agreement"] > 0.9
    meta = onnx.load(str(exported / "model.onnx"), load_external_data=False).metadata_props
    props = {p.key: p.value for p in meta}
    assert json.loads(props["llm_playground.model_config"]) == card["model_config"]
    assert (exported / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_variants_run(exported, variant):
    m = Model(exported, variant=variant)
    fp32 = Model(exported)
    ids = fp32.tokenizer.encode("The big dog ran")
    a, b = m.next_logits(ids)[0], fp32.next_logits(ids)[0]
    assert a.shape == b.shape and np.abs(a - b).max() < 0.5


def test_bad_ids_and_lengths_get_clear_messages(exported):
    m = Model(exported)
    with pytest.raises(ModelError, match=r"token id 999 at position 1 is out of range .*0\.\.256"):
        m.step([5, 999])
    with pytest.raises(ModelError, match="token id -1"):
        m.step([-1])
    with pytest.raises(ModelError, match="input is empty"):
        m.step([])
    with pytest.raises(ModelError, match="must be integers"):
        m.step([1.5, 2.0])
    with pytest.raises(ContextLimitError, match=r"25 positions exceed the context of 24 tokens"):
        m.step(list(range(25)))
    _, cache = m.step(list(range(20)))
    with pytest.raises(ContextLimitError, match=r"20 cached \+ 5 new"):
        m.step(list(range(5)), cache)
    with pytest.raises(ModelError, match="batch of 2 does not match"):
        m.step([[1], [2]], cache)
    with pytest.raises(ModelError, match="unknown variant"):
        Model(exported, variant="int4")


def test_score_matches_the_logits(exported):
    m = Model(exported)
    text = "The cat sat."
    s = m.score(text)
    lp = log_softmax(m.logits(s.tokens)[0])
    want = [lp[t, s.tokens[t + 1]] for t in range(len(s.tokens) - 1)]
    assert np.allclose(s.logprobs, want) and s.windows == 1
    assert s.perplexity == pytest.approx(math.exp(s.mean_nll))
    assert s.bits_per_byte == pytest.approx(-sum(want) / math.log(2) / (len(text) - 1))
    long = m.score("The dog ran over the garden. " * 5)        # 145 bytes > context 24
    assert long.windows > 1 and len(long.logprobs) == len(long.tokens) - 1
    with pytest.raises(ModelError, match="at least 2 tokens"):
        m.score("x")


def numpy_log_softmax(x) -> np.ndarray:
    """Log-probabilities written here, independently of core.sampling."""
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_score_gives_ranks_and_alternatives_from_its_own_pass_in_bounded_rows(exported, monkeypatch):
    import core.runtime as runtime
    m = Model(exported)
    B, stride, top = m.block_size, m.block_size // 2, 7
    text = "The dog ran over the garden, and the cat sat. " * 3         # 141 bytes > context 24
    real_lsm, real_logits, rows, calls = runtime.log_softmax, m.logits, [], []
    monkeypatch.setattr(runtime, "SCORE_ROWS", 5)
    monkeypatch.setattr(runtime, "log_softmax", lambda x: rows.append(x.shape[0]) or real_lsm(x))
    monkeypatch.setattr(m, "logits", lambda ids: calls.append(len(ids)) or real_logits(ids))
    s = m.score(text, top=top)
    monkeypatch.undo()
    # one model call per window, no second run for the alternatives; log-probs never a whole window's rows at once
    assert len(calls) == s.windows > 2 and max(rows) <= 5
    assert s.top_ids.shape == s.top_logprobs.shape == (len(s.tokens) - 1, top) and len(s.ranks) == len(s.logprobs)
    windows = {}
    for j, p in enumerate(range(1, len(s.tokens))):
        # token p is scored in the first window that holds it after the start's, at least half a context in
        start = 0 if p < B else -(-(p - B + 1) // stride) * stride
        assert p - start >= min(p, B - stride)
        if start not in windows:
            windows[start] = numpy_log_softmax(m.logits(s.tokens[start:start + B])[0])
        lp = windows[start][p - start - 1]
        token = s.tokens[p]
        assert s.logprobs[j] == pytest.approx(lp[token], abs=1e-9)
        assert s.ranks[j] == 1 + int((lp > lp[token]).sum())
        want = np.argsort(-lp, kind="stable")[:top]
        assert list(s.top_ids[j]) == list(want) and np.allclose(s.top_logprobs[j], lp[want], atol=1e-9)
        if s.ranks[j] <= top:
            assert s.top_ids[j][s.ranks[j] - 1] == token
    assert s.logprobs == m.score(text).logprobs            # top changes nothing else
    assert s.text_before(len(s.tokens)) == text and s.text_before(4) == text[:4]
    # no top: no alternatives; more than the vocabulary: all of it, in order
    assert m.score(text).top_ids.shape == (len(s.tokens) - 1, 0)
    full = m.score("The cat sat.", top=10**6)
    assert full.top_ids.shape[1] == m.vocab_size and (np.diff(full.top_logprobs, axis=1) <= 0).all()
    assert (np.sort(full.top_ids, axis=1) == np.arange(m.vocab_size)).all()


def test_generation_is_seeded_and_slides_past_the_context(exported):
    m = Model(exported)
    a = [s.token_id for s in stream(m, "The", 60, seed=3)]
    b = [s.token_id for s in stream(m, "The", 60, seed=3)]
    assert a == b and len(a) == 60
    steps = list(stream(m, "The", 60, temperature=0))
    assert any(s.window_slid for s in steps)            # 3 + 60 tokens > 24 context
    # greedy: each token is the argmax of the model's logits given what came before
    ids = m.tokenizer.encode("The")
    for s in steps[:10]:
        assert s.token_id == int(np.argmax(m.logits(ids[-24:])[0, -1]))
        ids.append(s.token_id)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer in \[1, 1024\], got 0"):
        next(stream(m, "x", 0))


def test_generate_cli(exported, capsys):
    assert generate_main([str(exported), "--prompt", "The", "--max-new-tokens", "20", "--seed", "1"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("The") and "20 tokens" in out.err
    assert generate_main([str(exported), "--prompt", "The", "--top-p", "0"]) == 1
    out = capsys.readouterr()
    assert "top_p must be a finite number in (0, 1], got 0.0" in out.err and out.out == ""


def copy_model(exported, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(exported, dst)
    return dst


def test_truncated_or_corrupt_model_files_are_refused(exported, tmp_path):
    d = copy_model(exported, tmp_path)
    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="damaged or truncated"):
        Model(d)
    (d / "model.onnx").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError, match="damaged or truncated|not a readable ONNX"):
        Model(d)
    (d / "card.json").write_text("{not json")
    with pytest.raises(ModelError, match="card.json is damaged"):
        Model(d)
    (d / "card.json").unlink()
    with pytest.raises(ModelError, match="not an exported model directory"):
        Model(d)
    d2 = copy_model(exported, tmp_path / "b")
    (d2 / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="not a saved tokenizer"):
        Model(d2)


def test_a_graph_pointing_outside_its_directory_is_refused(exported, tmp_path):
    d = copy_model(exported, tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 4096)
    proto = onnx.load(str(d / "model.onnx"))
    init = proto.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    (d / "model.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match=r"refers to external data \('\.\./\.\./secret\.bin'\)"):
        Model(d)


def test_a_symlink_out_of_the_model_directory_is_refused(exported, tmp_path):
    d = copy_model(exported, tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(d / "model.onnx", outside)
    (d / "model.onnx").unlink()
    os.symlink(outside, d / "model.onnx")
    with pytest.raises(ModelError, match="points outside"):
        Model(d)


@pytest.mark.slow
def test_export_refuses_a_non_empty_target_and_a_failed_parity_leaves_nothing(exported, tmp_path):
    run = exported.parent / "run"
    with pytest.raises(ExportError, match="not empty"):
        export_model(run, exported)
    with pytest.raises(ExportError, match="parity check failed.*not kept"):
        export_model(run, tmp_path / "strict", ExportConfig(parity_tolerance=0.0, parity_steps=3))
    assert not (tmp_path / "strict").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".strict")]


def test_runtime_and_generation_run_without_torch(exported):
    res = run_without_torch(f"""
from core.runtime import Model
from core.generate import GenerationConfig, decode
from core.sampling import SamplerConfig
m = Model({str(exported)!r})
print("".join(s.text for s in decode(m, "The", GenerationConfig(10, SamplerConfig(temperature=0)))))
print(m.score("The cat sat.").perplexity > 1, len(m.attention([1, 2, 3]).probs))
assert "torch" not in sys.modules
""")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "True 2"


def test_one_model_shared_by_many_threads_keeps_callers_apart(exported):
    from concurrent.futures import ThreadPoolExecutor
    m = Model(exported)
    prompts = ["The cat", "A dog ran", "Then the bird", "Slowly", "The red house", "Under the mat"]

    def greedy(prompt):
        return [s.token_id for s in stream(m, prompt, 30, temperature=0)]
    alone = [greedy(p) for p in prompts]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(greedy, prompts * 3))
    assert together == alone * 3


def test_cache_is_a_value_that_can_fork(exported):
    m = Model(exported)
    _, cache = m.step(m.tokenizer.encode("The cat"))
    a, _ = m.step([5], cache)
    b, _ = m.step([9], cache)            # a second branch from the same cache
    a2, _ = m.step([5], cache)
    assert np.array_equal(a, a2) and not np.array_equal(a, b)


def test_kept_logits_stay_as_returned_while_the_step_reuses_its_bound_arrays(exported):
    """A decode step writes its ids, length and logits into arrays bound once: what a caller kept from
    earlier steps must not change, and every step (one token, a chunk, one token again, a batch) must
    equal a whole-sequence pass."""
    m = Model(exported)
    ids = np.random.default_rng(4).integers(0, m.vocab_size, (1, 24))
    ref = m.logits(ids)[0]
    kept, snapshots = [], []
    logits, cache = m.step(ids[:, :6])
    for t in range(6, 24):
        width = 3 if t in (10, 11, 12) else 1       # a chunk in the middle rebinds the ids, then back to one
        if t in (11, 12):
            continue
        logits, cache = m.step(ids[:, t:t + width], cache)
        kept.append((t, width, logits))
        snapshots.append(logits.copy())
    for (t, width, logits), snap in zip(kept, snapshots):
        assert np.array_equal(logits, snap), f"the logits of position {t} changed after later steps"
        assert np.abs(logits[0] - ref[t:t + width]).max() < 1e-4, t
    assert len({id(k[2]) for k in kept}) == len(kept)
    two = np.concatenate([ids, ids[:, ::-1]])
    ref2 = m.logits(two)
    _, c2 = m.step(two[:, :8])
    for t in range(8, 12):
        step_logits, c2 = m.step(two[:, t:t + 1], c2)
        assert np.abs(step_logits[:, 0] - ref2[:, t]).max() < 1e-4, t


@pytest.mark.parametrize("kw", [
    dict(n_embd=64, n_head=4, n_kv_head=2, pos_encoding="rope", mlp="gelu_tanh"),   # head_dim 16: the operator rotates
    dict(n_embd=32, n_head=4, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=True),
    dict(n_embd=32, n_head=2, pos_encoding="learned", tie_embeddings=False),
])
def test_the_fused_decode_graph_matches_torch_for_every_shape(tmp_path, kw):
    """The "shared" graph maps attention, GELU and the Linears onto onnxruntime's fused operators
    (GroupQueryAttention with or without its own rotary, Gelu/FastGelu, Gemm): with biases and norms away
    from 0 and 1, its prefill, cached steps and a chunk after them equal torch's recomputation."""
    from core.export import export_gpt
    from core.tokenizer import byte_tokenizer
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**dict(vocab_size=257, block_size=40, n_layer=2), **kw}))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    card = export_gpt(model, byte_tokenizer(), tmp_path / "m", ExportConfig(parity_steps=20))
    assert card["parity"]["max_abs_logit_diff"] < 1e-4 and card["io"]["kv_cache"] == "shared"
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m" / "model.onnx")).graph.node}
    assert {"GroupQueryAttention", "Gemm"} <= ops and "Erf" not in ops and "Softmax" not in ops
    m = Model(tmp_path / "m")
    ids = np.random.default_rng(0).integers(0, 257, (2, 36))
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(cached_logits(m, ids, prefill=5) - ref).max() < 1e-4
    _, cache = m.step(ids[:, :30])
    chunk, _ = m.step(ids[:, 30:], cache)
    assert np.abs(chunk - ref[:, 30:]).max() < 1e-4


@pytest.mark.parametrize("layout", ["shared", "concat"])
def test_forked_caches_keep_their_branches_in_either_layout(exported, tmp_path, monkeypatch, layout):
    """Shared buffers are written in place, so a fork must copy: branches that interleave, a kept beam
    stepped again, and buffers that grow (capacity 4 -> 8 -> 16 -> 24) all match torch recomputing
    every branch from scratch."""
    import core.runtime
    monkeypatch.setattr(core.runtime, "MIN_CAPACITY", 4)
    d = exported
    if layout == "concat":
        d = tmp_path / "concat"
        card = export_model(exported.parent / "run", d, ExportConfig(kv_cache="concat", parity_steps=10))
        assert card["io"]["kv_cache"] == "concat" and "past_length" not in card["io"]["inputs"]
    m = Model(d)
    torch_model, _ = load_model(exported.parent / "run")
    rng = np.random.default_rng(3)
    stem, x, y = (rng.integers(0, m.vocab_size, n).tolist() for n in (3, 9, 12))

    def truth(ids):
        with torch.no_grad():
            return torch_model(torch.tensor([ids])).logits[0, -1].numpy()
    _, root = m.step([stem])
    caches, ids = {"x": root, "y": root}, {"x": list(stem), "y": list(stem)}
    for i in range(12):                  # the two branches step in turn from the same root
        for name, seq in (("x", x), ("y", y)):
            if i >= len(seq):
                continue
            logits, caches[name] = m.step([[seq[i]]], caches[name])
            ids[name].append(seq[i])
            assert np.abs(logits[0, -1] - truth(ids[name])).max() < 1e-4, (name, i)
    again, _ = m.step([[7]], root)       # the root, stepped once more after both branches grew from it
    assert np.abs(again[0, -1] - truth(stem + [7])).max() < 1e-4
    chunk, _ = m.step([x[:4]], caches["y"])    # several tokens at once onto a branch
    assert np.abs(chunk[0, -1] - truth(ids["y"] + x[:4])).max() < 1e-4
    rows = caches["x"].select([0, 0])    # beam search's reordering: a copy per row
    both, _ = m.step([[1], [2]], rows)
    assert np.abs(both[1, -1] - truth(ids["x"] + [2])).max() < 1e-4


def test_a_linear_decode_writes_one_buffer_in_place(exported):
    m = Model(exported)
    assert m.graph.shared
    _, first = m.step([[1, 2, 3]])
    cache = first
    for t in range(5):
        _, cache = m.step([[t]], cache)
    assert cache.arrays[0] is first.arrays[0]          # no copy of the cache along the way
    _, fork = m.step([[9]], first)                     # but a step from an older cache copies
    assert fork.arrays[0] is not first.arrays[0] and fork.length == 4


def test_a_head_size_the_fused_attention_cannot_take_exports_the_concat_layout(tmp_path):
    from core.export import export_gpt
    from core.tokenizer import byte_tokenizer
    said = []
    model = GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=4, n_embd=48))   # head_dim 12
    card = export_gpt(model, byte_tokenizer(), tmp_path / "m", ExportConfig(parity_steps=5), say=said.append)
    assert card["io"]["kv_cache"] == "concat" and card["io"]["inputs"][1] == "past_key_values.0.key"
    assert any("head dimension divisible by 8" in line and "12" in line for line in said)
    assert not Model(tmp_path / "m").graph.shared


def test_an_unknown_cache_layout_is_refused(exported, tmp_path):
    with pytest.raises(ExportError, match="unknown KV-cache layout 'paged'; choose one of shared, concat"):
        export_model(exported.parent / "run", tmp_path / "x", ExportConfig(kv_cache="paged"))
    assert not (tmp_path / "x").exists()


# -- external data: allowed only as plain files inside the model directory

def externalized(exported, tmp_path) -> Path:
    """A copy of the model whose weights live in model.onnx.data, as a large export writes them."""
    d = copy_model(exported, tmp_path)
    proto = onnx.load(str(d / "model.onnx"))
    onnx.save_model(proto, str(d / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data")
    return d


def set_location(d: Path, location: str) -> None:
    proto = onnx.load(str(d / "model.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    (d / "model.onnx").write_bytes(proto.SerializeToString())


def test_external_data_inside_the_model_directory_is_read(exported, tmp_path):
    d = externalized(exported, tmp_path)
    assert (d / "model.onnx.data").stat().st_size > 10_000
    ids = Model(exported).tokenizer.encode("The cat sat")
    assert np.array_equal(Model(d).logits(ids), Model(exported).logits(ids))
    a, b = Model(d).weights("transformer.h.0.ln_1.weight"), Model(exported).weights("transformer.h.0.ln_1.weight")
    assert a and np.array_equal(a["transformer.h.0.ln_1.weight"], b["transformer.h.0.ln_1.weight"])


@pytest.mark.parametrize("how, message", [
    ("absolute", "not a plain name inside the model directory"),
    ("parent", "not a plain name inside the model directory"),
    ("symlink", "leads outside the model directory"),
    ("missing", "missing or not a file"),
    ("truncated", r"past the end of that file \(100 bytes\)"),
])
def test_external_data_anywhere_else_is_refused(exported, tmp_path, how, message):
    d = externalized(exported, tmp_path)
    outside = tmp_path / "outside.data"
    shutil.copy(d / "model.onnx.data", outside)
    if how == "absolute":
        set_location(d, str(outside))
    elif how == "parent":
        set_location(d, "sub/../../outside.data")
    elif how == "symlink":
        (d / "model.onnx.data").unlink()
        os.symlink(outside, d / "model.onnx.data")
    elif how == "missing":
        (d / "model.onnx.data").unlink()
    else:
        (d / "model.onnx.data").write_bytes((d / "model.onnx.data").read_bytes()[:100])
    with pytest.raises(ModelError, match=rf"model.onnx refers to external data .*{message}.*refused"):
        Model(d)


def test_card_and_graph_must_agree_and_the_tokenizer_must_fit(exported, tmp_path):
    d = copy_model(exported, tmp_path)
    card = json.loads((d / "card.json").read_text())
    (d / "card.json").write_text(json.dumps({**card, "model_config": {**card["model_config"], "vocab_size": 200}}))
    with pytest.raises(ModelError, match="the tokenizer has 257 ids, more than the model's 200"):
        Model(d)
    (d / "card.json").write_text(json.dumps({**card, "model_config": {**card["model_config"], "n_kv_head": 1}}))
    with pytest.raises(ModelError, match=r"keeps a cache of shape \['batch', 2, 'capacity', 8\], but its card says "
                                         r"\[batch, 1, past, 8\]"):
        Model(d)
    m = Model(exported)
    _, cache = m.step([1, 2, 3])
    bad = dataclasses.replace(cache, arrays=tuple(a[:, :1] for a in cache.arrays))
    with pytest.raises(ModelError, match=r"the cache does not fit this model: it needs 4 arrays of shape "
                                         r"\(1, 2, 3, 8\)"):
        m.step([4], bad)


@pytest.mark.slow
def test_a_large_export_streams_its_weights_and_shares_them_with_the_attention_graph(exported, tmp_path):
    from core.export import export_gpt
    torch_model, _ = load_model(exported.parent / "run")
    m0 = Model(exported)
    card = export_gpt(torch_model, m0.tokenizer, tmp_path / "ext", ExportConfig(external_data_mb=0, int8=True,
                                                                                      int8_approximate=True))
    files = card["files"]
    assert "model.onnx.data" in files and "model.int8.onnx.data" in files
    assert "attention.onnx.data" not in files          # every attention weight is read from model.onnx.data
    assert "inspect.onnx.data" not in files and "lens.onnx.data" not in files      # so are the inspection graphs'
    assert card["variants"]["fp32"]["bytes"] == files["model.onnx"] + files["model.onnx.data"]
    assert card["export"]["peak_rss_mb"] > 0 and card["parity"]["max_abs_logit_diff"] < 1e-4
    m = Model(tmp_path / "ext")
    ids = m.tokenizer.encode("The dog ran over.")
    assert np.abs(m.logits(ids) - m0.logits(ids)).max() < 1e-5
    assert np.abs(m.attention(ids).probs[1] - m0.attention(ids).probs[1]).max() < 1e-5
    from core.interpret import Inspector
    assert np.abs(Inspector(m).run(ids)[0] - Inspector(m0).run(ids)[0]).max() < 1e-5
    assert Model(tmp_path / "ext", variant="int8").logits(ids).shape == m.logits(ids).shape


def test_an_int8_that_does_not_agree_is_not_kept_and_the_card_says_why(exported, tmp_path, monkeypatch):
    from core import export
    from core.quantize import QuantizeError

    def refuse(directory, cfg, say):
        raise QuantizeError("no int8 recipe agrees with fp32 on 99% of next tokens (the best on 97.0%)")
    monkeypatch.setattr(export, "quantize_model", refuse)
    card = export_model(exported.parent / "run", tmp_path / "out", ExportConfig(int8=True, parity_steps=5))
    assert set(card["variants"]) == {"fp32"} and "97.0%" in card["variants_not_kept"]["int8"]
    assert json.loads((tmp_path / "out" / "card.json").read_text()) == card
    assert not (tmp_path / "out" / "model.int8.onnx").exists()
    with pytest.raises(ModelError, match="has no model.int8.onnx"):
        Model(tmp_path / "out", variant="int8").step([1])


def test_the_step_curve_averages_long_runs_into_at_most_its_points():
    from core.export import STEP_CURVE_POINTS, step_curve
    records = [{"type": "TrainStep", "step": i, "loss": float(i % 2)} for i in range(1, 1001)]
    records += [{"type": "EvalResult", "step": 1000}, {"type": "TrainStep", "step": 1001, "loss": float("nan")}]
    curve = step_curve(records, last_step=1000)
    assert len(curve) == STEP_CURVE_POINTS and curve[-1] == {"step": 1000, "loss": 0.5}
    assert step_curve(records, last_step=0) == []


def test_the_cli_summary_prints_every_variant_of_a_card(capsys):
    """An int8 variant has an agreement, not a logit distance: the summary prints each by what it has."""
    card = json.loads((ROOT / "exported" / "shakespeare-char" / "card.json").read_text())
    print_card("exported/shakespeare-char", card)
    out = capsys.readouterr().out
    assert "fp32: model.onnx" in out and "max logit diff" in out
    assert "int8: model.int8.onnx" in out and "top-1 agreement" in out
