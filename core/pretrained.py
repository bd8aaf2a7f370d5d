"""Pretrained: GPT-2 and LLaMA-family checkpoints from Hugging Face become playground models.

Holds `import_pretrained()` and its CLI (`python -m core.pretrained SOURCE OUT_DIR [--int8]`). SOURCE is a
directory holding `config.json`, the weights as safetensors (one file, or shards with their
`model.safetensors.index.json`) and the tokenizer's files, or a Hugging Face repo id: from the local cache
(`$HF_HOME/hub/models--ORG--NAME/snapshots/<rev>/`) first, with no network; downloaded (safetensors and
tokenizer files only) only when it is not cached and the Hub is not switched off (`HF_HUB_OFFLINE=1`,
which the Models page's imports always set: a visitor never starts a download). The steps, each refusing
by name what it cannot do faithfully:
  config    `config_from_hf`: config.json -> a `ModelConfig` (families in FAMILIES: gpt2, llama, qwen2;
            features we do not model, such as rope scaling or a sliding window in use, are refused, never
            ignored);
  weights   `load_weights`: tensors mapped by name into our GPT (GPT-2's Conv1D weights transposed;
            LLaMA's q/k/v fused into c_attn and gate/up into the swiglu c_fc); a missing, unexpected,
            mis-shaped or non-float tensor is an error naming it, and every shape is checked from the
            files' headers before any weight is read;
  tokenizer `core.tokenizer.tokenizer_from_checkpoint`;
  export    `core.export.export_gpt`: the same ONNX export, parity gate and card as a trained run, so the
            model appears in every page's picker.

Deliberately not here: transformers (never imported: config.json and the safetensors are read directly,
and tests hold the result against transformers' own classes), pickled checkpoints (a `.bin`-only
checkpoint gets a message saying how to convert it; nothing is unpickled), tokenizers' formats
(`core.tokenizer`), the ONNX export itself (`core.export`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from core import checks, cli
from core.checks import PlaygroundError
from core.config import ModelConfig
from core.catalog import shown_path
from core.export import ExportConfig, PeakMemory, check_target, export_from_cli, export_gpt
from core.files import resolve_inside
from core.model import GPT
from core.tokenizer import (CHECKPOINT_TOKENIZER, GPT2_MERGES, GPT2_VOCAB, MODEL_CONFIG, SPECIAL_TOKENS_MAP,
                            TOKENIZER_CONFIG, Tokenizer, tokenizer_from_checkpoint)

# a Hugging Face checkpoint's files (the tokenizer's are named where they are read, in core.tokenizer)
CONFIG_FILE = MODEL_CONFIG
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# what a repo id needs from the Hub: never a pickle
NEEDED_PATTERNS = [CONFIG_FILE, "*.safetensors", WEIGHTS_INDEX, CHECKPOINT_TOKENIZER, GPT2_VOCAB, GPT2_MERGES,
                   TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP]
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")     # safetensors' names; read as float32


@dataclass(frozen=True)
class Family:
    model_type: str
    architectures: tuple[str, ...]     # config.json's `architectures` we accept (the LM head class first)
    tie_default: bool                  # tie_word_embeddings when config.json does not say


FAMILIES = {f.model_type: f for f in (
    Family("gpt2", ("GPT2LMHeadModel", "GPT2Model"), True),
    Family("llama", ("LlamaForCausalLM", "LlamaModel"), False),
    Family("qwen2", ("Qwen2ForCausalLM", "Qwen2Model"), False),
)}
SUPPORTED = ", ".join(f"{f.model_type} ({f.architectures[0]})" for f in FAMILIES.values())


class PretrainedError(PlaygroundError):
    """A checkpoint cannot be imported as it is; the message names the file, tensor or setting."""


@dataclass
class ImportConfig:
    block_size: int = 0           # context of the imported model; 0 = the checkpoint's own (n_positions or
                                  # max_position_embeddings); shorter makes smaller position tables
    revision: str | None = None   # a repo id's branch, tag or commit in the cache; None: main
    int8: bool = False            # also write the int8 variant, kept if it agrees with fp32 (core.quantize)
    fp16: bool = False            # also write the fp16 variant (half the size; slower on most CPUs)

    def __post_init__(self):
        checks.integer("block_size", self.block_size, 0)
        if self.revision is not None:
            self.revision = checks.text("revision", self.revision)


# ---------------------------------------------------------------------------------------------------
# Finding the checkpoint

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def resolve_source(source: str, revision: str | None = None) -> tuple[Path, dict]:
    """The local directory of `source` and what the card should say about it.

    A directory is used as it is. Anything else must be a repo id, looked up in the Hugging Face cache
    with no network (`local_files_only`); only when that fails and the Hub is not switched off
    (HF_HUB_OFFLINE) is it downloaded, safetensors and tokenizer files only."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PretrainedError(f"{source} is a file; give the directory that holds {CONFIG_FILE} and the "
                                  f"weights, or a Hugging Face repo id")
        return path, {"checkpoint": path.name}
    if not _REPO_ID.match(source) or ".." in source or "--" in source:
        raise PretrainedError(f"{source!r} is neither a directory nor a Hugging Face repo id (ORG/NAME)")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise PretrainedError(f"{source} is not a directory here, and reading the Hugging Face cache needs "
                              f"huggingface_hub (pip install huggingface_hub)") from None
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    try:
        found = snapshot_download(source, revision=revision, local_files_only=True, allow_patterns=NEEDED_PATTERNS)
    except Exception as e:   # not cached: the hub raises its own types (LocalEntryNotFoundError, ...)
        why = "the Hub is switched off (HF_HUB_OFFLINE)" if offline else None
        found = None
        if not offline:
            try:
                found = snapshot_download(source, revision=revision, allow_patterns=NEEDED_PATTERNS)
            except Exception as e2:   # no network, no such repo, gated: several types
                why = f"it could not be downloaded ({type(e2).__name__})"
        if found is None:
            raise PretrainedError(_not_cached_message(source, revision, constants.HF_HUB_CACHE, why)) from e
    snapshot = Path(found)
    return snapshot, {"checkpoint": source, "revision": snapshot.name}


def _not_cached_message(repo_id: str, revision: str | None, cache: str, why: str) -> str:
    folder = "models--" + repo_id.replace("/", "--")
    return (f"{repo_id}{'@' + revision if revision else ''} is not in the Hugging Face cache ({cache}), and {why}. "
            f"Place its files ({CONFIG_FILE}; {WEIGHTS_FILE}, or its shards with {WEIGHTS_INDEX}; the "
            f"tokenizer's {CHECKPOINT_TOKENIZER}, or {GPT2_VOCAB} and {GPT2_MERGES}) in "
            f"$HF_HOME/hub/{folder}/snapshots/<revision>/ with <revision> written in "
            f"$HF_HOME/hub/{folder}/refs/{revision or 'main'} (that is, under {cache}), or put them in any "
            f"directory and import that directory: python -m core.pretrained DIR OUT_DIR")


# ---------------------------------------------------------------------------------------------------
# config.json -> ModelConfig

def read_hf_config(directory: Path) -> dict:
    """A checkpoint's config.json as a dict, or PretrainedError saying what is wrong with it."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise PretrainedError(f"{directory.name} has no {CONFIG_FILE}: not a Hugging Face checkpoint directory "
                              f"(it needs {CONFIG_FILE}, the *.safetensors weights and the tokenizer's files)")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PretrainedError(f"{CONFIG_FILE} in {directory.name} is not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise PretrainedError(f"{CONFIG_FILE} in {directory.name} is not a JSON object")
    return hf


def _family(hf: dict) -> Family:
    model_type = hf.get("model_type")
    arch = (hf.get("architectures") or [None])[0]
    family = FAMILIES.get(model_type)
    if family is None:
        raise PretrainedError(f"model_type {model_type!r} (architecture {arch or '?'}) is not supported; this "
                              f"importer reads {SUPPORTED}")
    if arch is not None and arch not in family.architectures:
        raise PretrainedError(f"architecture {arch!r} is not supported (its head is not a language model's); "
                              f"this importer reads {SUPPORTED}")
    return family


def _get(hf: dict, name: str, default=None, *, kind: str = "int"):
    """A config.json value, checked: present (or defaulted) and of the expected kind."""
    value = hf.get(name, default)
    if value is None:
        raise PretrainedError(f"{CONFIG_FILE} has no {name}")
    if kind == "int":
        return checks.integer(f"{CONFIG_FILE}: {name}", value, 1, error=PretrainedError)
    if kind == "float":
        return checks.number(f"{CONFIG_FILE}: {name}", value, 0.0, low_open=True, error=PretrainedError)
    return checks.choice(f"{CONFIG_FILE}: {name}", value, (True, False), error=PretrainedError)


def _refuse(feature: str, value, why: str = "") -> None:
    raise PretrainedError(f"{CONFIG_FILE} sets {feature} = {value!r}, which this importer does not model"
                          f"{': ' + why if why else ''}; refusing rather than importing a different model")


def _rope_theta(hf: dict) -> float:
    """RoPE's base from either layout (transformers 5 writes rope_parameters, older files rope_theta
    and rope_scaling); any rope type but the default (linear, dynamic, yarn, llama3...) is refused."""
    params = hf.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        _refuse("rope_parameters", params)
    params = dict(params or {})
    scaling = hf.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if kind != "default":
            _refuse("rope_scaling", scaling, "positions past the trained context are rescaled")
    kind = params.get("rope_type", "default")
    if kind != "default":
        _refuse("rope_parameters.rope_type", kind, "positions past the trained context are rescaled")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        _refuse("partial_rotary_factor", params["partial_rotary_factor"], "only part of each head is rotated")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return checks.number(f"{CONFIG_FILE}: rope_theta", theta, 0.0, low_open=True, error=PretrainedError)


def config_from_hf(hf: dict, block_size: int = 0) -> ModelConfig:
    """Our ModelConfig for a checkpoint's config.json (a dict). `block_size` 0 keeps its context."""
    family = _family(hf)
    quantized = hf.get("quantization_config")
    if quantized:
        _refuse("quantization_config", quantized.get("quant_method", "?") if isinstance(quantized, dict) else quantized,
                "the weights are quantized; import the full-precision checkpoint")
    tie = _get(hf, "tie_word_embeddings", family.tie_default, kind="bool")
    if family.model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        mlp = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu"}.get(act)
        if mlp is None:
            _refuse("activation_function", act)
        if not hf.get("scale_attn_weights", True):
            _refuse("scale_attn_weights", False, "attention scores are not divided by sqrt(head size)")
        if hf.get("scale_attn_by_inverse_layer_idx", False):
            _refuse("scale_attn_by_inverse_layer_idx", True)
        if hf.get("add_cross_attention", False):
            _refuse("add_cross_attention", True, "an encoder-decoder's cross-attention")
        n_embd = _get(hf, "n_embd")
        context = _get(hf, "n_positions", hf.get("n_ctx"))
        fields = dict(n_layer=_get(hf, "n_layer"), n_head=_get(hf, "n_head"), n_embd=n_embd,
                      bias=True, pos_encoding="learned", norm="layernorm", mlp=mlp,
                      mlp_hidden=0 if hf.get("n_inner") in (None, 4 * n_embd) else _get(hf, "n_inner"),
                      norm_eps=_get(hf, "layer_norm_epsilon", 1e-5, kind="float"))
    else:
        n_embd, n_head = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
        head_dim = hf.get("head_dim")
        if head_dim is not None and head_dim * n_head != n_embd:
            _refuse("head_dim", head_dim, f"heads are not hidden_size / num_attention_heads = {n_embd / n_head:g} wide")
        if hf.get("hidden_act", "silu") != "silu":
            _refuse("hidden_act", hf.get("hidden_act"), "the gated MLP here is SwiGLU (silu)")
        if family.model_type == "llama":
            attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
            if attn_bias != mlp_bias:
                _refuse("attention_bias / mlp_bias", (attn_bias, mlp_bias),
                        "biases on every attention projection but not the MLP (or the reverse)")
            bias, qkv_bias = attn_bias, None
        else:   # qwen2: biases on q, k and v only (Qwen2Attention; o_proj and the MLP have none)
            bias, qkv_bias = False, True
            _check_sliding_window(hf, block_size or _get(hf, "max_position_embeddings"))
        context = _get(hf, "max_position_embeddings")
        fields = dict(n_layer=_get(hf, "num_hidden_layers"), n_head=n_head, n_embd=n_embd,
                      n_kv_head=_get(hf, "num_key_value_heads", n_head), bias=bias, qkv_bias=qkv_bias,
                      pos_encoding="rope", rope_theta=_rope_theta(hf), norm="rmsnorm", mlp="swiglu",
                      mlp_hidden=_get(hf, "intermediate_size"), norm_eps=_get(hf, "rms_norm_eps", 1e-6, kind="float"))
    if block_size > context:
        raise PretrainedError(f"block_size {block_size} is longer than the checkpoint's context ({context}): it "
                              f"was never trained on such positions")
    return ModelConfig(vocab_size=_get(hf, "vocab_size"), block_size=block_size or context, dropout=0.0,
                       tie_embeddings=tie, **fields)


def _check_sliding_window(hf: dict, context: int) -> None:
    """Qwen2 may attend within a window on some layers: refused when a layer would actually use one
    shorter than the context (a window covering the whole context changes nothing)."""
    if not hf.get("use_sliding_window", False):
        return
    window = hf.get("sliding_window")
    n_layer = _get(hf, "num_hidden_layers")
    types = hf.get("layer_types") or ["sliding_attention" if i >= hf.get("max_window_layers", n_layer) else
                                      "full_attention" for i in range(n_layer)]
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        _refuse("layer_types", sorted(unknown))
    if "sliding_attention" in types and window is not None and window < context:
        _refuse("use_sliding_window", True, f"layers {[i for i, t in enumerate(types) if t == 'sliding_attention']} "
                f"attend to the last {window} positions only")


# ---------------------------------------------------------------------------------------------------
# Weights: safetensors -> our GPT, by name

# How one of our tensors is made from the checkpoint's: copied, transposed (GPT-2's Conv1D stores
# (in, out)), concatenated along dim 0 (LLaMA's q|k|v into c_attn, gate|up into c_fc), or the first rows
# of a longer table (learned positions when block_size is shortened).
COPY, TRANSPOSE, CAT, ROWS = "copy", "transpose", "cat", "rows"

GPT2_NAMES = {   # ours -> (theirs, how); the checkpoint's names may carry a "transformer." prefix
    "transformer.wte.weight": ("wte.weight", COPY),
    "transformer.wpe.weight": ("wpe.weight", ROWS),
    "transformer.h.{i}.ln_1.weight": ("h.{i}.ln_1.weight", COPY),
    "transformer.h.{i}.ln_1.bias": ("h.{i}.ln_1.bias", COPY),
    "transformer.h.{i}.attn.c_attn.weight": ("h.{i}.attn.c_attn.weight", TRANSPOSE),
    "transformer.h.{i}.attn.c_attn.bias": ("h.{i}.attn.c_attn.bias", COPY),
    "transformer.h.{i}.attn.c_proj.weight": ("h.{i}.attn.c_proj.weight", TRANSPOSE),
    "transformer.h.{i}.attn.c_proj.bias": ("h.{i}.attn.c_proj.bias", COPY),
    "transformer.h.{i}.ln_2.weight": ("h.{i}.ln_2.weight", COPY),
    "transformer.h.{i}.ln_2.bias": ("h.{i}.ln_2.bias", COPY),
    "transformer.h.{i}.mlp.c_fc.weight": ("h.{i}.mlp.c_fc.weight", TRANSPOSE),
    "transformer.h.{i}.mlp.c_fc.bias": ("h.{i}.mlp.c_fc.bias", COPY),
    "transformer.h.{i}.mlp.c_proj.weight": ("h.{i}.mlp.c_proj.weight", TRANSPOSE),
    "transformer.h.{i}.mlp.c_proj.bias": ("h.{i}.mlp.c_proj.bias", COPY),
    "transformer.ln_f.weight": ("ln_f.weight", COPY),
    "transformer.ln_f.bias": ("ln_f.bias", COPY),
    "lm_head.weight": ("lm_head.weight", COPY),
}
_LAYER = "model.layers.{i}."
LLAMA_NAMES = {   # llama and qwen2
    "transformer.wte.weight": ("model.embed_tokens.weight", COPY),
    "transformer.h.{i}.ln_1.weight": (_LAYER + "input_layernorm.weight", COPY),
    "transformer.h.{i}.attn.c_attn.weight": (tuple(_LAYER + f"self_attn.{p}_proj.weight" for p in "qkv"), CAT),
    "transformer.h.{i}.attn.c_attn.bias": (tuple(_LAYER + f"self_attn.{p}_proj.bias" for p in "qkv"), CAT),
    "transformer.h.{i}.attn.c_proj.weight": (_LAYER + "self_attn.o_proj.weight", COPY),
    "transformer.h.{i}.attn.c_proj.bias": (_LAYER + "self_attn.o_proj.bias", COPY),
    "transformer.h.{i}.ln_2.weight": (_LAYER + "post_attention_layernorm.weight", COPY),
    "transformer.h.{i}.mlp.c_fc.weight": ((_LAYER + "mlp.gate_proj.weight", _LAYER + "mlp.up_proj.weight"), CAT),
    "transformer.h.{i}.mlp.c_fc.bias": ((_LAYER + "mlp.gate_proj.bias", _LAYER + "mlp.up_proj.bias"), CAT),
    "transformer.h.{i}.mlp.c_proj.weight": (_LAYER + "mlp.down_proj.weight", COPY),
    "transformer.h.{i}.mlp.c_proj.bias": (_LAYER + "mlp.down_proj.bias", COPY),
    "transformer.ln_f.weight": ("model.norm.weight", COPY),
    "lm_head.weight": ("lm_head.weight", COPY),
}
# buffers some checkpoints carry that are not weights: GPT-2's causal masks, old LLaMA's RoPE frequencies
IGNORED = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(masked_)?bias$|(^|\.)rotary_emb\.inv_freq$")


class _Checkpoint:
    """The safetensors files of a checkpoint directory: every tensor's file, dtype and shape from the
    headers, and the tensors themselves read one at a time (memory-mapped; nothing is unpickled)."""

    def __init__(self, directory: Path):
        from safetensors import SafetensorError, safe_open
        self.directory = directory
        files = self._files()
        self.where: dict[str, Path] = {}
        self.meta: dict[str, tuple[str, list[int]]] = {}
        self._open: dict[Path, object] = {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError, ValueError) as e:
                raise PretrainedError(f"{path.name} is not a readable safetensors file ({e}): it is truncated or "
                                      f"damaged; fetch it again") from e
            self._open[path] = handle
            for name in handle.keys():
                if name in self.where:
                    raise PretrainedError(f"tensor {name} is in both {self.where[name].name} and {path.name}")
                sl = handle.get_slice(name)
                self.where[name], self.meta[name] = path, (sl.get_dtype(), list(sl.get_shape()))
        if self.index is not None:
            listed = set(self.index)
            missing = sorted(listed - set(self.where))
            if missing:
                raise PretrainedError(f"{WEIGHTS_INDEX} lists {missing[0]} in {self.index[missing[0]]}, which does "
                                      f"not hold it ({len(missing)} such tensors): the shards do not match the index")

    def _files(self) -> list[Path]:
        d = self.directory
        self.index = None
        if (d / WEIGHTS_INDEX).is_file():
            try:
                self.index = json.loads((d / WEIGHTS_INDEX).read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(self.index.values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise PretrainedError(f"{WEIGHTS_INDEX} is not a safetensors index ({type(e).__name__})") from e
            files = []
            for name in names:
                try:
                    path = resolve_inside(d, name)
                except ValueError as e:
                    raise PretrainedError(f"{WEIGHTS_INDEX} names a shard outside the checkpoint: {e}") from e
                if not path.is_file():
                    raise PretrainedError(f"{WEIGHTS_INDEX} names {name}, which is not in {d.name}: a shard is missing")
                files.append(path)
            return files
        files = sorted(p for p in d.glob("*.safetensors") if p.is_file())
        if files:
            return files
        pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise PretrainedError(
                f"{d.name} holds only PyTorch pickles ({', '.join(pickles[:3])}), which this importer never "
                f"unpickles (a pickle can run any code). Convert them to safetensors once, where you trust "
                f"the file: python -c \"from transformers import AutoModelForCausalLM as M; "
                f"M.from_pretrained('DIR').save_pretrained('OUT', safe_serialization=True)\", copy the "
                f"tokenizer files into OUT, and import OUT")
        raise PretrainedError(f"{d.name} has no *.safetensors weights")

    def tensor(self, name: str) -> torch.Tensor:
        return self._open[self.where[name]].get_tensor(name)

    def files(self) -> list[Path]:
        return list(self._open)


def _plan(config: ModelConfig, family: Family, names: set[str], shapes: dict[str, tuple]
          ) -> dict[str, tuple[tuple[str, ...], str]]:
    """ours -> (the checkpoint's names, how) for every tensor our model holds (a tied head excluded)."""
    table = GPT2_NAMES if family.model_type == "gpt2" else LLAMA_NAMES
    prefix = ""
    if family.model_type == "gpt2" and any(n.startswith("transformer.") for n in names):
        prefix = "transformer."           # saved from GPT2LMHeadModel rather than GPT2Model
    plan = {}
    for ours in shapes:
        if ours == "lm_head.weight" and config.tie_embeddings:
            continue
        layer = re.search(r"\.h\.(\d+)\.", ours)
        theirs, how = table[re.sub(r"\.h\.\d+\.", ".h.{i}.", ours)]
        theirs = (theirs,) if isinstance(theirs, str) else theirs
        plan[ours] = (tuple(("" if t == "lm_head.weight" else prefix) + t.format(i=layer.group(1) if layer else "")
                            for t in theirs), how)
    return plan


def _expected(ours_shape: tuple, how: str, n_sources: int, config: ModelConfig, hf_context: int,
              part: int) -> tuple:
    """The shape the checkpoint's tensor number `part` must have to make ours."""
    if how == TRANSPOSE:
        return ours_shape[::-1]
    if how == ROWS:
        return (hf_context, *ours_shape[1:])
    if how == CAT:
        if n_sources == 3:    # q, k, v
            kv = config.kv_heads * config.head_dim
            sizes = (config.n_embd, kv, kv)
        else:                 # gate, up
            sizes = (config.mlp_width, config.mlp_width)
        return (sizes[part], *ours_shape[1:])
    return ours_shape


def load_weights(directory: Path, config: ModelConfig, hf: dict) -> tuple[GPT, dict]:
    """Our GPT with the checkpoint's weights (float32), and what was read (files' sha256, stored dtypes).

    Every name, shape and dtype is checked against the files' headers first, so a wrong checkpoint fails
    before any weight is read; the model is built on the meta device, without random initialisation, and
    takes the checkpoint's tensors as its own (no second copy)."""
    family = _family(hf)
    ckpt = _Checkpoint(directory)
    with torch.device("meta"):
        model = GPT(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    plan = _plan(config, family, set(ckpt.where), shapes)
    hf_context = hf.get("n_positions", hf.get("n_ctx")) if family.model_type == "gpt2" else None
    used: set[str] = set()
    problems: list[str] = []
    for ours, (theirs, how) in plan.items():
        for part, name in enumerate(theirs):
            used.add(name)
            if name not in ckpt.meta:
                problems.append(f"missing tensor {name}")
                continue
            dtype, shape = ckpt.meta[name]
            want = _expected(shapes[ours], how, len(theirs), config, hf_context, part)
            if tuple(shape) != tuple(want):
                problems.append(f"tensor {name} in {ckpt.where[name].name} has shape {tuple(shape)}, but "
                                f"{CONFIG_FILE} makes it {tuple(want)}")
            elif dtype not in FLOAT_DTYPES:
                problems.append(f"tensor {name} in {ckpt.where[name].name} is stored as {dtype}; only float "
                                f"weights ({', '.join(FLOAT_DTYPES)}) can be imported")
    # a tied head stored anyway must equal the embedding (checked once read); an untied one is in the plan
    tied_copy = "lm_head.weight" if config.tie_embeddings and "lm_head.weight" in ckpt.meta else None
    if tied_copy:
        used.add(tied_copy)
    unexpected = sorted(n for n in set(ckpt.meta) - used if not IGNORED.search(n))
    if unexpected:
        problems.append(f"unexpected tensor{'s' if len(unexpected) > 1 else ''} {', '.join(unexpected[:5])}"
                        + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
                        + f" (not part of a {family.model_type} model as {CONFIG_FILE} describes it)")
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise PretrainedError(f"the weights in {directory.name} do not fit its {CONFIG_FILE}: "
                              + "; ".join(problems[:5]) + more)
    state = {}
    for ours, (theirs, how) in plan.items():
        parts = [ckpt.tensor(name).to(torch.float32) for name in theirs]
        if how == TRANSPOSE:
            state[ours] = parts[0].t().contiguous()
        elif how == CAT:
            state[ours] = torch.cat(parts, dim=0)
        elif how == ROWS:
            state[ours] = parts[0][:config.block_size].contiguous()
        else:
            state[ours] = parts[0]
        del parts
    if tied_copy and not torch.equal(ckpt.tensor(tied_copy).to(torch.float32), state["transformer.wte.weight"]):
        raise PretrainedError(f"{CONFIG_FILE} ties the head to the embedding (tie_word_embeddings), but the "
                              f"checkpoint's lm_head.weight differs from its embedding: refusing to pick one")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:   # a mapping table out of step with the model: a bug here, not in the checkpoint
        raise RuntimeError(f"weights left unset after the import: {left}")
    stored = sorted({ckpt.meta[n][0] for n in used})
    return model.eval(), {"files": {p.name: _sha256(p) for p in ckpt.files()}, "stored_dtypes": stored}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# The whole import

def load_pretrained(source: str | os.PathLike, cfg: ImportConfig | None = None,
                    say: Callable[[str], None] | None = None) -> tuple[GPT, Tokenizer, dict]:
    """(model, tokenizer, card info) for `source`, checked, nothing written. The tokenizer may have fewer
    ids than the model's embedding has rows (padding), never more. `say` hears each step."""
    say = say or (lambda _: None)
    cfg = cfg or ImportConfig()
    directory, where = resolve_source(str(source), cfg.revision)
    hf = read_hf_config(directory)
    config = config_from_hf(hf, cfg.block_size)
    say(f"{where['checkpoint']}: {hf['model_type']}, {config.n_layer} layers x {config.n_embd} wide, {config.n_head} "
        f"heads ({config.kv_heads} key/value), context {config.block_size}, vocabulary {config.vocab_size}")
    tokenizer = tokenizer_from_checkpoint(directory, config.vocab_size)    # refuses more ids than rows
    say(f"tokenizer: {tokenizer.n_vocab:,} ids ({tokenizer.kind})")
    model, read = load_weights(directory, config, hf)
    say(f"weights: {model.count_parameters()['total']:,} parameters from {len(read['files'])} file(s) "
        f"({', '.join(read['stored_dtypes'])}, read as float32)")
    info = {"source": {"kind": "pretrained", **where, "model_type": hf.get("model_type"),
                       "architecture": (hf.get("architectures") or [None])[0], **read}}
    return model, tokenizer, info


def import_pretrained(source: str | os.PathLike, out_dir: str | os.PathLike, cfg: ImportConfig | None = None,
                      command: str | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Import `source` and export it to `out_dir` (see the module's docstring); returns the card. The
    card's time and peak memory cover the whole import, reading the checkpoint included."""
    memory = PeakMemory()
    cfg = cfg or ImportConfig()
    out_dir = Path(out_dir)
    check_target(out_dir)                 # before reading gigabytes, not after
    model, tokenizer, info = load_pretrained(source, cfg, say)
    if command:
        info["source"]["command"] = command
    return export_gpt(model, tokenizer, out_dir, ExportConfig(int8=cfg.int8, fp16=cfg.fp16), info, memory, say)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m core.pretrained",
        description="Import a GPT-2 or LLaMA-family checkpoint (a local directory or a Hugging Face repo id "
                    "already in the cache) and export it to ONNX for the playground's pages.")
    p.add_argument("source", help="a directory with config.json, *.safetensors and the tokenizer's files, or a "
                                  "repo id such as gpt2, HuggingFaceTB/SmolLM2-135M, Qwen/Qwen2.5-0.5B")
    p.add_argument("out_dir", help="the model directory to create, e.g. exported/gpt2")
    cli.add_dataclass_args(p, ImportConfig)
    args = p.parse_args(argv)

    def import_it() -> dict:
        cfg = ImportConfig(**cli.dataclass_kwargs(args, ImportConfig))
        # as a card may show it: a local checkpoint's and the target's paths shortened (no machine's layout)
        source = shown_path(args.source) if Path(args.source).expanduser().exists() else args.source
        command = shlex.join(["python", "-m", "core.pretrained", source, shown_path(args.out_dir), *cli.to_argv(cfg)])
        return import_pretrained(args.source, args.out_dir, cfg, command, say=lambda line: print(line, flush=True))
    return export_from_cli(args.out_dir, import_it, "run the same command again")

if __name__ == "__main__":
    sys.exit(main())
