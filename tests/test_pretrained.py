"""Importing Hugging Face checkpoints (core.pretrained): GPT-2, LLaMA (grouped-query attention, a RoPE base
of 5e5) and Qwen2 (q/k/v biases, a padded embedding), each built here by transformers' own classes from a
small seeded config and saved with `save_pretrained`, with a tokenizer trained by `tokenizers` beside it.
No download: transformers is the reference, never a source of weights.

Checked: our torch GPT's logits equal transformers' (1e-4); after import + export, the onnxruntime path
(core.runtime.Model) matches transformers' fp32 logits over a prefill and 50 cached steps (1e-4) and 100
greedy tokens equal `generate(do_sample=False)`; sharded checkpoints; tied and untied heads; and every
kind of bad input refused with its own message and nothing left where a picker would list it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core import catalog
from core.checks import PlaygroundError
from core.config import ModelConfig
from core.pretrained import (ImportConfig, PretrainedError, config_from_hf, import_pretrained, load_weights,
                             read_hf_config, resolve_source)
from core.pretrained import main as pretrained_main
from tests.conftest import cached_logits, make_text
# the peer, a pinned test requirement: its absence is a failure, never a skip
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

EOT = "<|endoftext|>"
CONTEXT = 128
TOLERANCE = 1e-4


def save_tokenizer(directory: Path, eot_last: bool) -> int:
    """A byte-level BPE trained on generated text, saved as a transformers fast tokenizer; its ids (301)."""
    from tokenizers import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer()
    specials = [] if eot_last else [EOT]          # GPT-2 puts <|endoftext|> last, SmolLM2 first
    tok.train_from_iterator([make_text(6000)], vocab_size=300 + len(specials), min_frequency=2,
                            special_tokens=specials, show_progress=False)
    if eot_last:
        tok.add_special_tokens([EOT])
    PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, eos_token=EOT, bos_token=EOT).save_pretrained(directory)
    return tok.get_vocab_size()


def make_hf(family: str, n_vocab: int, tie: bool, **kw):
    """A transformers model of `family` from a small seeded config (`kw` overrides it)."""
    torch.manual_seed({"gpt2": 1, "llama": 2, "qwen2": 3}[family])
    if family == "gpt2":
        cls, config = GPT2LMHeadModel, GPT2Config
        base = dict(n_layer=2, n_embd=32, n_head=4, n_positions=CONTEXT, bos_token_id=n_vocab - 1,
                    eos_token_id=n_vocab - 1)
    else:
        cls, config = (LlamaForCausalLM, LlamaConfig) if family == "llama" else (Qwen2ForCausalLM, Qwen2Config)
        theta = 5e5 if family == "llama" else 1e6
        base = dict(hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=CONTEXT, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": theta}, bos_token_id=0, eos_token_id=0)
    model = cls(config(**{**base, "vocab_size": n_vocab, "tie_word_embeddings": tie, "initializer_range": 0.2, **kw}))
    with torch.no_grad():       # norms and biases away from 1 and 0: a misplaced one must show in the logits
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def make_checkpoint(directory: Path, family: str, tie: bool, pad: int = 0, shard: str | None = None,
                    kw: dict | None = None):
    """A checkpoint directory as Hugging Face writes it; returns (directory, the transformers model)."""
    n_vocab = save_tokenizer(directory, eot_last=family == "gpt2")
    model = make_hf(family, n_vocab + pad, tie, **(kw or {}))
    extra = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, safe_serialization=True, **extra)
    return directory, model


CHECKPOINTS = {   # name: (family, tied head, embedding rows past the tokenizer's ids, shard size, config)
    "gpt2": ("gpt2", True, 0, None),
    "gpt2-untied": ("gpt2", False, 0, None),
    "gpt2-exact-gelu": ("gpt2", True, 0, None, dict(activation_function="gelu", n_inner=80, layer_norm_epsilon=1e-3)),
    "llama-gqa": ("llama", False, 0, None),
    "llama-tied-sharded": ("llama", True, 0, "40KB"),
    "llama-biases": ("llama", False, 0, None, dict(attention_bias=True, mlp_bias=True, num_key_value_heads=4)),
    "qwen2-padded": ("qwen2", True, 11, None),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("hf")
    return {name: make_checkpoint(base / name, *spec) for name, spec in CHECKPOINTS.items()}


def ours(directory: Path):
    hf = read_hf_config(directory)
    return load_weights(directory, config_from_hf(hf), hf)[0]


# ---------------------------------------------------------------------------------------------------
# The model, in torch

@pytest.mark.parametrize("name", CHECKPOINTS)
def test_torch_logits_equal_transformers(checkpoints, name):
    directory, hf = checkpoints[name]
    model = ours(directory)
    ids = torch.randint(0, hf.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids).logits
        explicit = model(ids, return_attention=True).logits
    assert want.std() > 0.5                   # logits large enough for 1e-4 to mean something
    assert (got - want).abs().max() < TOLERANCE and (explicit - want).abs().max() < TOLERANCE


def test_configs_map_every_family_option(checkpoints):
    cfg = {name: config_from_hf(read_hf_config(d)) for name, (d, _) in checkpoints.items()}
    g, ll, q = cfg["gpt2"], cfg["llama-gqa"], cfg["qwen2-padded"]
    assert (g.mlp, g.pos_encoding, g.norm, g.norm_eps, g.bias, g.tie_embeddings, g.block_size) == \
        ("gelu_tanh", "learned", "layernorm", 1e-5, True, True, CONTEXT)
    assert not cfg["gpt2-untied"].tie_embeddings and cfg["llama-tied-sharded"].tie_embeddings
    assert (ll.mlp, ll.mlp_hidden, ll.n_kv_head, ll.rope_theta, ll.norm, ll.norm_eps, ll.bias, ll.has_qkv_bias) == \
        ("swiglu", 56, 2, 5e5, "rmsnorm", 1e-6, False, False)
    assert (q.bias, q.qkv_bias, q.rope_theta, q.vocab_size) == (False, True, 1e6, 301 + 11)
    e, b = cfg["gpt2-exact-gelu"], cfg["llama-biases"]
    assert (e.mlp, e.mlp_hidden, e.norm_eps) == ("gelu", 80, 1e-3)
    assert (b.bias, b.has_qkv_bias, b.n_kv_head) == (True, True, 4)
    assert config_from_hf(read_hf_config(checkpoints["gpt2"][0]), block_size=32).block_size == 32


def test_a_sharded_checkpoint_reads_through_its_index(checkpoints):
    directory = checkpoints["llama-tied-sharded"][0]
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (directory / "model.safetensors").exists()


def test_older_config_layouts_are_read(checkpoints):
    # config.json from before transformers 5 keeps rope_theta at the top level
    hf = read_hf_config(checkpoints["llama-gqa"][0])
    old = {k: v for k, v in hf.items() if k != "rope_parameters"} | {"rope_theta": 250000.0, "rope_scaling": None}
    assert config_from_hf(old).rope_theta == 250000.0


# ---------------------------------------------------------------------------------------------------
# Import + export + runtime, end to end

@pytest.fixture(scope="module")
def imported(checkpoints, tmp_path_factory) -> dict:
    exported = tmp_path_factory.mktemp("exported")
    cards = {}
    for name in ("gpt2", "llama-gqa", "qwen2-padded"):
        cards[name] = import_pretrained(checkpoints[name][0], exported / name, ImportConfig(int8=name == "gpt2"))
    return exported, cards


@pytest.fixture(params=["gpt2", "llama-gqa", "qwen2-padded"])
def opened(request, checkpoints, imported):
    """One imported family as the runtime opens it, with transformers' model of it and the import's card."""
    from core.runtime import Model
    exported, cards = imported
    return Model(exported / request.param), checkpoints[request.param][1], cards[request.param]


@pytest.mark.slow
def test_runtime_matches_transformers_over_prefill_and_cached_steps(opened):
    m, hf, card = opened
    assert card["parity"]["max_abs_logit_diff"] < TOLERANCE and card["parity"]["cached_steps"] == 50
    n_vocab = m.tokenizer.n_vocab
    assert m.vocab_size == n_vocab <= m.config.vocab_size
    ids = np.random.default_rng(1).integers(0, n_vocab, (1, 58))
    cache = m.step(ids[:, :8])[1]
    shape = cache.arrays[0].shape
    assert cache.length == 8 and (shape[1], shape[3]) == (m.config.kv_heads, m.head_dim) and shape[2] >= 8
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    got = cached_logits(m, ids, prefill=8)
    assert got.shape == (1, 58, n_vocab)                # a padded embedding's rows are never served
    assert np.abs(got - want[..., :n_vocab]).max() < TOLERANCE


@pytest.mark.slow
def test_greedy_tokens_equal_transformers_generate(opened):
    from core.generate import GenerationConfig, decode
    from core.sampling import SamplerConfig
    m, hf, _ = opened
    prompt = "The cat sat on the mat"
    ids = m.tokenizer.encode(prompt)
    steps = list(decode(m, prompt, GenerationConfig(100, SamplerConfig(temperature=0), stop_at_eos=False)))
    mine = [s.token_id for s in steps]
    assert not any(s.window_slid for s in steps) and all(t < m.tokenizer.n_vocab for t in mine)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=100, eos_token_id=None, pad_token_id=0)
    assert mine == out[0, len(ids):].tolist()


@pytest.mark.slow
def test_imported_models_appear_in_the_picker_with_a_card(imported, checkpoints):
    exported, cards = imported
    listed = {s.name: s for s in catalog.list_exported_models(exported)}
    assert set(listed) == {"gpt2", "llama-gqa", "qwen2-padded"}
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]
    card = cards["gpt2"]
    assert card["source"]["kind"] == "pretrained" and card["source"]["model_type"] == "gpt2"
    assert set(card["source"]["files"]) == {"model.safetensors"}
    assert len(card["source"]["files"]["model.safetensors"]) == 64          # its sha256
    assert card["export"]["peak_rss_mb"] > 0 and card["export"]["seconds"] > 0
    assert card["variants"]["fp32"]["max_logit_diff_vs_torch"] < TOLERANCE
    # int8: kept when it agrees with fp32 (a random model's flat logits may not), and the card says which
    int8 = card["variants"].get("int8")
    assert (int8 is not None and int8["top1_agreement"] >= 0.99) != ("int8" in card.get("variants_not_kept", {}))
    for v in card["variants"].values():
        assert v["bytes"] > 0 and v["decode_ms_median"] > 0
    assert card["parameters"]["total"] == sum(p.numel() for p in ours(checkpoints["gpt2"][0]).parameters())
    assert cards["qwen2-padded"]["tokenizer"]["n_vocab"] == 301 < cards["qwen2-padded"]["model_config"]["vocab_size"]


@pytest.mark.slow
def test_pages_explain_an_imported_model(imported):
    from core import explain
    from core.runtime import Model, ModelError
    exported, _ = imported
    m = Model(exported / "llama-gqa")
    views = explain.positional_views(m)
    assert views.used == "rope" and views.rope_theta == 5e5 and views.rope.shape == (CONTEXT, m.head_dim // 2)
    walk = explain.attention_walkthrough(m, "The cat sat on the mat", 1, 3, 4)
    assert walk.kv_head == 1 and np.allclose(walk.probs, walk.graph_row, atol=1e-5)
    q = Model(exported / "qwen2-padded")
    assert all(i < q.tokenizer.n_vocab for i, _, _ in explain.embedding_neighbours(q, 5, k=20))
    with pytest.raises(ModelError, match="out of range"):
        q.step([q.tokenizer.n_vocab])         # a padded row is not an id


@pytest.mark.slow
def test_cli_imports_and_reports_memory(checkpoints, tmp_path, capsys):
    assert pretrained_main([str(checkpoints["gpt2-untied"][0]), str(tmp_path / "m"), "--block-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "peak memory" in out and "fp32: model.onnx" in out
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["model_config"]["block_size"] == 32 and not card["model_config"]["tie_embeddings"]
    assert card["source"]["command"].startswith("python -m core.pretrained")


# ---------------------------------------------------------------------------------------------------
# Bad input: each refused with its own message, nothing left in the picker's folder

def copy_checkpoint(checkpoints, name, tmp_path) -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(checkpoints[name][0], d)
    return d


def edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def refused(source, tmp_path, match: str, **kw) -> None:
    """Importing `source` fails with `match`, writing nothing where the pages look for models."""
    exported = tmp_path / "exported"
    exported.mkdir(exist_ok=True)
    with pytest.raises(PlaygroundError, match=match):
        import_pretrained(source, exported / "new", **kw)
    assert list(exported.iterdir()) == [] and catalog.list_exported_models(exported) == []


def test_a_directory_without_a_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", tmp_path, "empty has no config.json: not a Hugging Face checkpoint")


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="mistral", architectures=["MistralForCausalLM"]),
     r"model_type 'mistral' \(architecture MistralForCausalLM\) is not supported; this importer reads gpt2 "
     r"\(GPT2LMHeadModel\), llama \(LlamaForCausalLM\), qwen2 \(Qwen2ForCausalLM\)"),
    (dict(architectures=["LlamaForSequenceClassification"]), "architecture 'LlamaForSequenceClassification' is not"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), "rope_type = 'llama3'"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(attention_bias=True), r"attention_bias / mlp_bias = \(True, False\)"),
    (dict(hidden_act="gelu"), "hidden_act = 'gelu'"),
    (dict(head_dim=16), "head_dim = 16"),
    (dict(quantization_config={"quant_method": "gptq"}), "quantization_config = 'gptq'"),
    (dict(num_key_value_heads=3), "divisible by n_kv_head"),
])
def test_unsupported_llama_configs_are_refused_by_name(checkpoints, tmp_path, changes, message):
    d = copy_checkpoint(checkpoints, "llama-gqa", tmp_path)
    edit_config(d, **changes)
    refused(d, tmp_path, message)


@pytest.mark.parametrize("name, changes, message", [
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ("gpt2", dict(activation_function="relu"), "activation_function = 'relu'"),
    ("gpt2", dict(add_cross_attention=True), "add_cross_attention"),
    ("qwen2-padded",
     dict(use_sliding_window=True, sliding_window=16, layer_types=["full_attention", "sliding_attention"]),
     r"use_sliding_window = True.*layers \[1\] attend to the last 16 positions"),
])
def test_unsupported_gpt2_and_qwen2_configs_are_refused_by_name(checkpoints, tmp_path, name, changes, message):
    d = copy_checkpoint(checkpoints, name, tmp_path)
    edit_config(d, **changes)
    refused(d, tmp_path, message)


def test_a_sliding_window_as_long_as_the_context_changes_nothing(checkpoints):
    hf = read_hf_config(checkpoints["qwen2-padded"][0])
    hf.update(use_sliding_window=True, sliding_window=CONTEXT, layer_types=["full_attention", "sliding_attention"])
    assert config_from_hf(hf).block_size == CONTEXT


def test_truncated_weights_are_refused(checkpoints, tmp_path):
    d = copy_checkpoint(checkpoints, "llama-gqa", tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    refused(d, tmp_path, "model.safetensors is not a readable safetensors file .*truncated or damaged")
    (d / "model.safetensors").write_bytes(data[:100])
    refused(d, tmp_path, "model.safetensors is not a readable safetensors file")


def test_mis_shaped_missing_and_unexpected_tensors_are_named(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file
    d = copy_checkpoint(checkpoints, "llama-gqa", tmp_path)
    original = load_file(d / "model.safetensors")
    k = "model.layers.1.self_attn.k_proj.weight"
    save_file({**original, k: torch.zeros(24, 32)}, d / "model.safetensors", metadata={"format": "pt"})
    refused(d, tmp_path, rf"tensor {k} in model.safetensors has shape \(24, 32\), but config.json makes it \(16, 32\)")
    save_file({n: t for n, t in original.items() if n != k}, d / "model.safetensors", metadata={"format": "pt"})
    refused(d, tmp_path, f"missing tensor {k}")
    save_file({**original, "model.layers.0.extra.weight": torch.zeros(2)}, d / "model.safetensors",
              metadata={"format": "pt"})
    refused(d, tmp_path, r"unexpected tensor model.layers.0.extra.weight \(not part of a llama model")
    save_file({**original, k: original[k].to(torch.int8)}, d / "model.safetensors", metadata={"format": "pt"})
    refused(d, tmp_path, f"tensor {k} in model.safetensors is stored as I8")


def test_a_tied_head_that_differs_from_the_embedding_is_refused(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file
    d = copy_checkpoint(checkpoints, "gpt2-untied", tmp_path)
    edit_config(d, tie_word_embeddings=True)      # the file still holds its own lm_head.weight
    refused(d, tmp_path, "ties the head to the embedding .* lm_head.weight differs")
    tensors = load_file(d / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    hf = read_hf_config(d)
    model, _ = load_weights(d, config_from_hf(hf), hf)     # equal: stored twice, and that is fine
    assert model.lm_head.weight is model.transformer.wte.weight
    d2 = copy_checkpoint(checkpoints, "llama-gqa", tmp_path / "b")
    edit_config(d2, tie_word_embeddings=True)
    save_file({n: t for n, t in load_file(d2 / "model.safetensors").items() if n != "lm_head.weight"} |
              {"lm_head.weight": torch.zeros(301, 32)}, d2 / "model.safetensors", metadata={"format": "pt"})
    refused(d2, tmp_path / "b", "lm_head.weight differs from its embedding")


def test_a_shard_missing_from_its_index_is_named(checkpoints, tmp_path):
    d = copy_checkpoint(checkpoints, "llama-tied-sharded", tmp_path)
    shard = sorted(p for p in d.glob("*.safetensors"))[-1]
    shard.unlink()
    refused(d, tmp_path, f"names {shard.name}, which is not in ckpt: a shard is missing")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "../../outside.safetensors" for k in index["weight_map"]}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(d, tmp_path, "names a shard outside the checkpoint")


def test_a_pickle_only_checkpoint_gets_a_conversion_message_and_is_never_unpickled(checkpoints, tmp_path, monkeypatch):
    d = tmp_path / "bin-only"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoints["gpt2"][0] / name, d)
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle, and never opened")

    def no_unpickling(*a, **kw):
        raise AssertionError("torch.load was called")
    monkeypatch.setattr(torch, "load", no_unpickling)
    refused(d, tmp_path, r"only PyTorch pickles \(pytorch_model.bin\), which this importer never unpickles.*"
                         r"save_pretrained\('OUT', safe_serialization=True\)")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(checkpoints, tmp_path):
    d = copy_checkpoint(checkpoints, "llama-gqa", tmp_path)
    small = make_hf("llama", 280, tie=False)             # a model with fewer rows than the 301-id tokenizer
    small.save_pretrained(d, safe_serialization=True)
    refused(d, tmp_path, "301 ids but the model's vocabulary .*280")


def test_a_repo_id_missing_from_the_cache_says_what_to_place_where(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    refused("nobody/no-such-model", tmp_path,
            r"nobody/no-such-model is not in the Hugging Face cache .*HF_HUB_OFFLINE.*config.json.*"
            r"model.safetensors.*tokenizer.json.*\$HF_HOME/hub/models--nobody--no-such-model/snapshots/<revision>/")
    with pytest.raises(PretrainedError, match="neither a directory nor a Hugging Face repo id"):
        resolve_source("../../etc")


def test_a_cached_repo_id_resolves_offline(checkpoints, tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "hub" / "models--tiny-org--tiny-gpt2"
    shutil.copytree(checkpoints["gpt2"][0], repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    directory, where = resolve_source("tiny-org/tiny-gpt2")
    assert directory == repo / "snapshots" / "0123abcd"
    assert where == {"checkpoint": "tiny-org/tiny-gpt2", "revision": "0123abcd"}
    hf = read_hf_config(directory)
    assert isinstance(config_from_hf(hf), ModelConfig)


def test_the_cli_reports_a_bad_checkpoint_without_a_traceback(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert pretrained_main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no config.json" in err and not (tmp_path / "out").exists()


def test_a_target_that_holds_something_is_refused_before_reading(checkpoints, tmp_path, monkeypatch):
    import core.pretrained
    target = tmp_path / "exported" / "taken"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    monkeypatch.setattr(core.pretrained, "load_weights", lambda *a: pytest.fail("weights were read"))
    with pytest.raises(PlaygroundError, match="taken already exists and is not empty"):
        import_pretrained(checkpoints["gpt2"][0], target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------------------------------------------
# The pages, on imported models

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
PAGES = ["playground/learn.py", "playground/tokenizer.py", "playground/generate.py", "playground/compare.py",
         "playground/attention.py", "playground/models.py"]


def open_page(path: str, query: dict):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(APP, default_timeout=180)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(path)
    return at.run()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "qwen2-padded"])
def test_every_page_works_on_an_imported_model(imported, name, monkeypatch):
    exported, _ = imported
    monkeypatch.setattr(catalog, "EXPORTED_DIR", exported)
    for path in PAGES:
        at = open_page(path, {"model": name})
        assert not at.exception, (path, at.exception)
        if path.endswith("tokenizer.py"):     # no picker: the model's tokenizer is one of the choices
            assert f"{name} (model)" in at.multiselect(key="tok_pick").options
        else:
            assert at.selectbox(key="model").value == name
    at = open_page("playground/generate.py", {"model": name, "prompt": "The cat"})
    for _ in range(3):
        next(b for b in at.button if b.label == "Sample one").click().run()
    assert not at.exception and len(at.session_state["trace"]["state"]["branches"][0]["tokens"]) == 3
    for section in ("positions", "attention", "logits", "loss"):
        at = open_page("playground/learn.py", {"model": name, "section": section})
        assert not at.exception, (section, at.exception)
    if name == "llama-gqa":
        at = open_page("playground/learn.py", {"model": name, "section": "attention"})
        assert any("Grouped-query attention" in i.value for i in at.info)


@pytest.mark.slow
def test_attention_shows_a_large_model_a_block_of_layers_and_heads_at_a_time(tmp_path, monkeypatch):
    directory, _ = make_checkpoint(tmp_path / "wide", "gpt2", True, kw=dict(n_layer=6, n_head=12, n_embd=48))
    import_pretrained(directory, tmp_path / "exported" / "wide")
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path / "exported")
    at = open_page("playground/attention.py", {"model": "wide"})
    assert not at.exception
    assert len(at.selectbox(key="attn_layers").options) == 2 and len(at.selectbox(key="attn_heads").options) == 2
    def grid_maps() -> int:           # the grid is one tiled image; each map carries its title
        return len(json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["annotations"])
    assert grid_maps() == 4 * 8                                 # of 6 x 12
    at.selectbox(key="attn_layers").set_value(1).run()
    at.selectbox(key="attn_heads").set_value(1).run()
    assert not at.exception and grid_maps() == 2 * 4
    assert at.query_params["layers"] == "1" and at.query_params["heads"] == "1"


@pytest.mark.slow
def test_the_models_page_imports_a_checkpoint_and_the_picker_offers_it(checkpoints, tmp_path, monkeypatch):
    import time
    from playground import shared
    monkeypatch.setattr(catalog, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path / "exported")
    shutil.copytree(Path(__file__).resolve().parent.parent / "exported" / "shakespeare-char",
                    tmp_path / "exported" / "shakespeare-char")
    shared._board.cache_clear()
    try:
        at = open_page("playground/models.py", {})
        at.session_state["owner"] = "v" * 43
        at.text_input(key="import_source").set_value(str(checkpoints["llama-gqa"][0])).run()
        at.text_input(key="import_name").set_value("imported-llama").run()
        next(b for b in at.button if b.key == "import_start").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        board = shared._board()
        deadline = time.time() + 900
        while time.time() < deadline and board.import_views("v" * 43)[0].state == "importing":
            time.sleep(0.5)
        view = board.import_views("v" * 43)[0]
        assert view.state == "imported", view.message
        at.run()
        assert "imported-llama" in at.selectbox(key="model").options
        assert any("imported as imported-llama" in s.value for s in at.success)
        next(b for b in at.button if b.key == "import_start").click().run()      # the same name again
        assert any("exists already" in e.value for e in at.error)
        at.text_input(key="import_source").set_value(str(tmp_path / "nowhere")).run()
        at.text_input(key="import_name").set_value("nothing").run()
        next(b for b in at.button if b.key == "import_start").click().run()
        deadline = time.time() + 300
        while time.time() < deadline and board.import_views("v" * 43)[0].state == "importing":
            time.sleep(0.5)
        failed = board.import_views("v" * 43)[0]
        assert failed.state == "failed" and "neither a directory nor a Hugging Face repo id" in failed.message
        assert not (tmp_path / "exported" / "nothing").exists()
        monkeypatch.setattr(shared, "HOSTED", True)
        hosted = open_page("playground/models.py", {})
        assert not any(b.key == "import_start" for b in hosted.button)    # a hosted demo offers a fixed list
    finally:
        shared._board().close()
        shared._board.cache_clear()
