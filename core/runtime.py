"""Runtime: exported models on onnxruntime, with no torch anywhere.

Holds `Model`, which opens an exported model directory (see `core.export`) and answers: next-token
logits with a KV cache (`step`), logits for a whole sequence (`logits`), attention probabilities of
every layer and head (`attention`), and a text's score (`score`: per-token logprobs and ranks, optionally each
position's likeliest tokens, perplexity, bits per byte); for a masked LM (encoder-only, objective mlm: model.onnx
reads a whole sequence, no cache) `logits`, `attention` and `fill_mask` (each [MASK]'s likeliest tokens, from both
sides), while stepping and scoring refuse with a message naming a next-token model to pick. One `Model` (and its onnxruntime sessions) is shared by every user of a server: it keeps
no per-caller state; each caller holds its own `KVCache`, a value that can be kept, forked and thrown
away freely. `CachedGraph` runs model.onnx's graph (any variant) from a `KVCache`, in either of the
export's cache layouts: "shared" (one preallocated buffer per layer that onnxruntime writes each step's
positions into, bound in place with I/O binding, so decoding never copies the cache) or "concat" (old
exports, and any graph without onnxruntime's contrib operators: the graph returns a new, longer cache).

A shared cache stays a value: the positions a KVCache holds are never written again, and only the
cache that ends where its buffers are written may append in place; stepping any other (a fork, a
kept beam, an older cache) first copies its positions into new buffers.

Safety: only files inside the model directory are opened (symlinks out are refused); a graph may keep
its weights in external-data files (a large model must: ONNX's protobuf stops at 2 GB), but only in
plain relative names inside the model directory (no `../`, no absolute path, no symlink leading out,
within the file's size), and anything else is refused before onnxruntime opens the graph; the card is
JSON and nothing is unpickled; token ids, the cache's shape and the context length are checked before
onnxruntime sees them (it silently accepts ids like -1).

Vocabulary: a checkpoint may pad its embedding past the tokenizer's ids (Qwen2 does). The graph
computes logits for every row, and this module serves only the first `tokenizer.n_vocab` of them: the
logits every caller sees have one column per id the tokenizer can decode, so no sampler, beam or page
can ever pick a padded row, and ids past the tokenizer are refused as input. A tokenizer with more ids
than the model has rows is refused when the model is opened.

Context policy: `step` refuses to go past the model's context (block_size) with ContextLimitError;
callers that want to keep going slide the window themselves (`core.generate` re-prefills the most
recent half-context and says so), and `score` evaluates long texts in overlapping windows.

Deliberately not here: torch, sampling and decoding strategies (`core.sampling`, `core.generate`).
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.catalog import (ATTENTION_FILE, CARD_FILE, FORMAT, MODEL_FILE, PAST_LENGTH, TOKENIZER_DIR, VARIANT_FILES,
                          cache_names)
from core.checks import ConfigError, PlaygroundError
from core.config import ModelConfig
from core.files import resolve_inside
from core.mlm import Blank, fill_blanks
from core.sampling import log_softmax
from core.tokenizer import Tokenizer, TokenizerError, load_tokenizer

# the attention graph's inner vectors per layer, beside attn.{i} (the exporter writes them under these names)
ATTENTION_PARTS = ("q", "k", "v", "heads", "proj")
# a mixture of experts' attention.onnx also returns where each token went: the chosen experts (B, T, L, k),
# their weights (B, T, L, k) and the router's probabilities over every expert (B, T, L, E)
ROUTING_OUTPUTS = ("experts", "expert_weights", "router_probs")
THREADS_ENV = "LLM_PLAYGROUND_ORT_THREADS"     # onnxruntime intra-op threads, overriding the default
MIN_CAPACITY = 64      # positions a fresh shared cache holds; it doubles when full, up to the context
# rows of a window that `score` turns into float64 log-probs at once: with a 150k vocabulary, 64 rows are ~77 MB
# (and a bool copy for the ranks), where a whole 4k-token window would be ~5 GB
SCORE_ROWS = 64


class ModelError(PlaygroundError):
    """A model directory cannot be opened or a request cannot be run; the message says why."""


class ContextLimitError(ModelError):
    """The request would go past the model's context length."""


def available_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, then the CPU."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class _Buffers:
    """The memory behind shared-layout caches: every layer's key and value arrays (B, n_kv, capacity,
    hs), bound once as both the graph's past and its present, and how far they are written (`end`).
    Each KVCache on them sees its first `length` positions; a step may append in place only from the
    cache whose length is `end`, so one caller at a time runs the binding."""

    def __init__(self, arrays: tuple[np.ndarray, ...], end: int):
        self.arrays = arrays
        self.end = end
        self.capacity = arrays[0].shape[2]
        self._binding = self._session = None
        self._lock = threading.Lock()
        # a step's ids, length and (one position's) logits, bound once and rewritten in place: binding them
        # afresh through onnxruntime's Python wrappers cost a decode step of 4 layers x 128 ~10 % of its time.
        # Only the caller that claimed the next positions uses them.
        self._length = np.zeros((), np.int64)
        self._ids = np.zeros((0, 0), np.int64)
        self._logits: np.ndarray | None = None       # bound to "logits" while the bound output is this array

    def claim(self, start: int, end: int) -> bool:
        """Take positions start..end-1 for writing, if nobody has written past `start` yet."""
        with self._lock:
            if self.end != start or end > self.capacity:
                return False
            self.end = end
            return True

    def binding(self, graph: "CachedGraph") -> ort.IOBinding:
        """The graph's I/O binding with these buffers as past and present (made once per session, not
        per step: a step only binds its ids, its length and its logits)."""
        if self._session is not graph.session:
            io = graph.session.io_binding()
            for past, present, a in zip(graph.past_names, graph.present_names, self.arrays):
                value = ort.OrtValue.ortvalue_from_numpy(a)
                io.bind_ortvalue_input(past, value)
                io.bind_ortvalue_output(present, value)     # the same memory: written in place, never copied
            io.bind_ortvalue_input(PAST_LENGTH, ort.OrtValue.ortvalue_from_numpy(self._length))
            io.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(self._ids))
            self._binding, self._session, self._logits = io, graph.session, None
        return self._binding

    def run_step(self, graph: "CachedGraph", ids: np.ndarray, length: int) -> np.ndarray:
        """Run the graph on `ids` (B, T) after `length` cached positions, writing their keys and values in
        place; the logits (B, T, graph vocab) are the caller's own array. Inputs are written into the bound
        arrays and rebound only when the ids' shape changes (a prefill, then one token a step); one
        position's logits land in a bound array and are copied out (a prefill's are a new array instead:
        copying B x T x V floats would cost more than binding)."""
        io = self.binding(graph)
        if self._ids.shape != ids.shape:
            self._ids = np.array(ids, dtype=np.int64, order="C")
            io.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(self._ids))
        else:
            self._ids[...] = ids
        self._length[...] = length
        shape, one = (*ids.shape, graph.vocab), ids.shape[1] == 1
        logits = self._logits if one else None        # its dtype is this session's: binding() resets it
        if logits is None or logits.shape != shape:
            logits = np.empty(shape, graph.logits_dtype)
            io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
            self._logits = logits if one else None
        graph.session.run_with_iobinding(io)
        return logits.copy() if one else logits


@dataclass(frozen=True)
class KVCache:
    """Keys and values of the positions seen so far, per layer. Its positions are never written again
    (see the module's note on shared buffers), so it can be kept and forked like an immutable value."""

    arrays: tuple[np.ndarray, ...]   # past_key_values.{i}.key, .value for every layer, in order: (B, n_kv, T, hs),
                                     # T = length ("concat") or the buffers' capacity ("shared")
    length: int                      # positions held
    batch: int
    buffers: _Buffers | None = field(default=None, repr=False, compare=False)

    def select(self, rows) -> "KVCache":
        """The cache of these batch rows, in this order (beam search's reordering): a copy."""
        rows = np.asarray(rows, dtype=np.int64)
        arrays = tuple(a[rows] for a in self.arrays)
        return KVCache(arrays, self.length, len(rows),
                       _Buffers(arrays, self.length) if self.buffers is not None else None)


class CachedGraph:
    """model.onnx's graph (any variant) on one onnxruntime session, run from a KVCache in the graph's own
    cache layout. It checks nothing about the ids or the context (`Model` does); `core.quantize` and
    `core.export` measure graphs with it, so every caller runs a graph the same way."""

    def __init__(self, session: ort.InferenceSession, n_layer: int, block_size: int):
        self.session = session
        inputs = session.get_inputs()
        self.shared = PAST_LENGTH in [i.name for i in inputs]
        self.past_names = cache_names(n_layer)
        self.present_names = cache_names(n_layer, "present")
        past = inputs[2 if self.shared else 1]
        self.kv_shape = past.shape                     # [batch, heads, past|capacity, head_dim]
        self.kv_dtype = np.float16 if past.type == "tensor(float16)" else np.float32
        logits = session.get_outputs()[0]
        self.vocab = logits.shape[-1]                  # the graph's rows (a padded embedding's included)
        self.logits_dtype = np.float16 if logits.type == "tensor(float16)" else np.float32
        self.block_size = block_size

    def empty_cache(self, batch: int = 1) -> KVCache:
        z = np.zeros((batch, self.kv_shape[1], 0, self.kv_shape[3]), self.kv_dtype)
        return KVCache(tuple(z for _ in self.past_names), 0, batch)

    def step(self, ids: np.ndarray, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """Logits (B, T, graph vocab) for int64 ids (B, T) after the cached positions, and the new cache."""
        total = cache.length + ids.shape[1]
        if not self.shared:
            feeds = {"input_ids": ids}
            feeds.update(zip(self.past_names, cache.arrays))
            outs = self.session.run(None, feeds)
            return outs[0], KVCache(tuple(outs[1:]), total, cache.batch)
        B, T = ids.shape
        if B > 1 and T > 1 and cache.length:
            # GroupQueryAttention takes several new positions after a cache only at batch 1: one at a time
            out = []
            for t in range(T):
                logits, cache = self.step(ids[:, t:t + 1], cache)
                out.append(logits)
            return np.concatenate(out, axis=1), cache
        buffers = cache.buffers
        if buffers is None or not buffers.claim(cache.length, total):
            buffers = self._copied(cache, total)
        logits = buffers.run_step(self, ids, cache.length)
        return logits, KVCache(buffers.arrays, total, cache.batch, buffers)

    def _copied(self, cache: KVCache, total: int) -> _Buffers:
        """New buffers holding the cache's positions, room for `total` (doubling, up to the context)."""
        capacity = MIN_CAPACITY
        while capacity < total:
            capacity *= 2
        capacity = max(min(capacity, self.block_size), total)
        arrays = []
        for a in cache.arrays:
            buf = np.zeros((cache.batch, a.shape[1], capacity, a.shape[3]), self.kv_dtype)
            buf[:, :, :cache.length] = a[:, :, :cache.length]
            arrays.append(buf)
        return _Buffers(tuple(arrays), total)


@dataclass
class TextScore:
    tokens: list[int]
    logprobs: list[float]            # log p(token i | tokens < i) for i >= 1 (nats)
    mean_nll: float                  # nats per predicted token
    perplexity: float
    bits_per_byte: float             # over the bytes of the predicted tokens
    windows: int                     # model calls (more than one when the text exceeds the context)
    # per scored token, aligned with logprobs (row j is token j + 1), from the same log-softmax rows:
    ranks: list[int] = field(default_factory=list)      # its rank among all tokens there (1: the likeliest)
    top_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))        # (n, top), likeliest first
    top_logprobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float64))  # (n, top), theirs
    pieces: list[bytes] = field(default_factory=list, repr=False)   # each token's bytes in the text (b"" for a BOS)

    def text_before(self, index: int) -> str:
        """The text before token `index`: the model's context when it predicted that token."""
        return b"".join(self.pieces[:index]).decode("utf-8", errors="replace")


@dataclass
class AttentionMaps:
    logits: np.ndarray               # (B, T, V)
    probs: list[np.ndarray] = field(default_factory=list)   # per layer (B, n_head, T, T)
    # per layer {"q", "k", "v": (B, n_head, T, head_dim), "heads", "proj": (B, T, n_embd)}; empty for
    # models exported before the graph returned them
    parts: list[dict] = field(default_factory=list)
    # a mixture of experts: {"experts", "expert_weights", "router_probs"} (see ROUTING_OUTPUTS); else None
    routing: dict | None = None


@dataclass
class FillMask:
    ids: list[int]                   # the text's tokens, [MASK] included
    blanks: list[Blank]              # per [MASK], left to right: its likeliest tokens and their probabilities


class Model:
    """An exported model, ready to run. Thread-safe: share one per server."""

    def __init__(self, directory: str | os.PathLike, variant: str = "fp32", threads: int | None = None,
                 providers: list[str] | None = None):
        self.directory = Path(directory).resolve()
        if not self.directory.is_dir():
            raise ModelError(f"no model directory at {directory}")
        if variant not in VARIANT_FILES:
            raise ModelError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANT_FILES)}")
        self.card = self._read_card()
        try:
            self.config = cfg = ModelConfig.from_dict(self.card["model_config"])
        except (ConfigError, TypeError) as e:
            raise ModelError(f"{self.directory.name}: its card's model config is not valid ({e}); re-export "
                             f"the model") from e
        self.n_layer, self.n_head, self.head_dim = cfg.n_layer, cfg.n_head, cfg.head_dim
        self.n_kv_head = cfg.kv_heads          # the cache's heads: fewer than n_head under grouped-query attention
        self.block_size = cfg.block_size
        self.variant = variant
        self.threads = threads or default_threads(cfg.n_embd)
        self.providers = providers or available_providers()
        try:
            self.tokenizer: Tokenizer = load_tokenizer(self._inside(TOKENIZER_DIR))
        except TokenizerError as e:
            raise ModelError(f"{self.directory.name}: {e}") from e
        if self.tokenizer.n_vocab > cfg.vocab_size:
            raise ModelError(f"{self.directory.name}: the tokenizer has {self.tokenizer.n_vocab} ids, more than "
                             f"the model's {cfg.vocab_size}")
        # ids this model reads and writes: the tokenizer's (a padded embedding's extra rows are never served)
        self.vocab_size = self.tokenizer.n_vocab
        self.session = self._open_session(VARIANT_FILES[variant])
        self._past_names = cache_names(self.n_layer)
        names = [i.name for i in self.session.get_inputs()]
        self.masked = cfg.objective == "mlm"       # a masked LM: model.onnx reads a whole sequence, no cache
        if self.masked:
            if names != ["input_ids"] or self.tokenizer.mask_id is None:
                raise ModelError(f"{self.directory.name} says it is a masked LM, but its {VARIANT_FILES[variant]} "
                                 f"or tokenizer is not one's (input_ids only, a [MASK] token); re-export the model")
            self.graph = None
            self._init_rest()
            return
        if names not in (["input_ids"] + self._past_names, ["input_ids", PAST_LENGTH] + self._past_names):
            raise ModelError(f"{self.directory.name}/{VARIANT_FILES[variant]} does not have the inputs of "
                             f"an exported playground model (input_ids, [{PAST_LENGTH},] {self._past_names[0]}, ...)")
        self.graph = CachedGraph(self.session, self.n_layer, self.block_size)
        shape = self.graph.kv_shape            # [batch, heads, past|capacity, head_dim]; named dims are str
        if len(shape) != 4 or shape[1] != self.n_kv_head or shape[3] != self.head_dim:
            raise ModelError(f"{self.directory.name}/{VARIANT_FILES[variant]} keeps a cache of shape {shape}, but "
                             f"its card says [batch, {self.n_kv_head}, past, {self.head_dim}]; re-export the model")
        self._init_rest()

    def _init_rest(self) -> None:
        self._graphs: dict[str, ort.InferenceSession] = {}     # the directory's other graphs, opened on first use
        self._graphs_lock = threading.Lock()
        self._weights: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        return self.directory.name

    def weights(self, *names: str) -> dict[str, np.ndarray]:
        """Named weights read from model.onnx (e.g. "transformer.wte.weight"), for pages that show
        them; names the graph does not hold are left out. Each is read once, when first asked for, then
        kept (only those: a model's whole weights can be gigabytes)."""
        wanted = [n for n in names if n not in self._weights]
        if wanted:
            import onnx
            from onnx import numpy_helper
            path = self._inside(VARIANT_FILES["fp32"])
            check_external_data(path, self.directory)
            proto = onnx.load(str(path), load_external_data=False)
            for init in proto.graph.initializer:
                name = init.name.removeprefix("model.")
                if init.name.startswith("model.") and name in wanted:
                    self._weights[name] = numpy_helper.to_array(init, base_dir=str(self.directory))
            del proto
            for name in wanted:
                self._weights.setdefault(name, None)   # not in this graph: remembered, not looked for again
        return {n: self._weights[n] for n in names if self._weights.get(n) is not None}

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __repr__(self) -> str:
        return f"Model({self.name!r}, variant={self.variant!r}, provider={self.provider!r})"

    # -- opening -----------------------------------------------------------------------------------
    def _inside(self, name: str) -> Path:
        try:
            return resolve_inside(self.directory, name)
        except ValueError as e:
            raise ModelError(f"{self.directory.name}: {e}") from e

    def _read_card(self) -> dict:
        path = self._inside(CARD_FILE)
        if not path.is_file():
            raise ModelError(f"{self.directory} has no {CARD_FILE}: not an exported model directory")
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
            card["model_config"]["n_layer"]
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{path} is damaged or not a model card ({type(e).__name__}); re-export the model") from e
        if card.get("format") != FORMAT:
            raise ModelError(f"{path}: unknown format {card.get('format')!r} (expected {FORMAT})")
        return card

    def graph_session(self, filename: str) -> ort.InferenceSession:
        """A session on another graph of the model directory (attention.onnx, the inspection graphs), opened
        on first use with this model's threads and providers, then shared by every caller."""
        with self._graphs_lock:
            if filename not in self._graphs:
                self._graphs[filename] = self._open_session(filename)
            return self._graphs[filename]

    def _open_session(self, filename: str) -> ort.InferenceSession:
        path = self._inside(filename)
        if not path.is_file():
            raise ModelError(f"{self.directory.name} has no {filename}"
                             + ("" if filename == MODEL_FILE else "; export it with that variant"))
        check_external_data(path, self.directory)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False     # the arena cost 26-79 MB per small session for nothing
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as e:   # onnxruntime raises its own exception types for damaged files
            raise ModelError(f"onnxruntime cannot load {self.directory.name}/{filename}: it is damaged or "
                             f"truncated ({type(e).__name__}); re-export the model") from e

    # -- running -----------------------------------------------------------------------------------
    def _not_generative(self) -> ModelError:
        return ModelError(f"{self.name} is a masked LM (encoder-only, bidirectional attention): it fills in blanks "
                          f"(fill_mask) from both sides but has no KV cache and does not write left to right; pick a "
                          f"next-token (decoder-only) model, such as shakespeare-char, to generate, score or compare")

    def empty_cache(self, batch: int = 1) -> KVCache:
        if self.masked:
            raise self._not_generative()
        return self.graph.empty_cache(batch)

    def check_ids(self, ids) -> np.ndarray:
        """ids as an int64 (B, T) array, or ModelError naming the problem."""
        try:
            arr = np.asarray(ids)
        except (ValueError, TypeError) as e:
            raise ModelError(f"token ids must be a list or array of integers ({e})") from e
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ModelError(f"token ids must be 1-D or 2-D (batch, seq), got shape {arr.shape}")
        if arr.size == 0:
            raise ModelError("no token ids given: the input is empty")
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise ModelError(f"token ids must be integers, got {arr.dtype}")
        # this runs on every decode step: a few ids are checked in Python, where numpy's calls cost more
        few = arr.ravel().tolist() if arr.size <= 16 else None
        lo, hi = (min(few), max(few)) if few else (arr.min(), arr.max())
        if lo < 0 or hi >= self.vocab_size:
            b, t = np.argwhere((arr < 0) | (arr >= self.vocab_size))[0]
            raise ModelError(f"token id {int(arr[b, t])} at position {int(t)} is out of range "
                             f"(this model's ids are 0..{self.vocab_size - 1})")
        return arr.astype(np.int64, copy=False)

    def step(self, ids, cache: KVCache | None = None) -> tuple[np.ndarray, KVCache]:
        """Logits (B, T, V) for `ids` following the cached positions, and the extended cache."""
        if self.masked:
            raise self._not_generative()
        arr = self.check_ids(ids)
        cache = cache or self.empty_cache(arr.shape[0])
        if arr.shape[0] != cache.batch:
            raise ModelError(f"batch of {arr.shape[0]} does not match the cache's batch of {cache.batch}")
        want = (cache.batch, self.n_kv_head, cache.length, self.head_dim)
        # buffers this runtime made hold arrays of one shape: the first stands for all (a per-step saving)
        arrays = cache.arrays[:1] if cache.buffers is not None else cache.arrays
        if len(cache.arrays) != len(self._past_names) or any(
                a.shape[:2] + a.shape[3:] != want[:2] + want[3:] or a.shape[2] < cache.length
                or (a.shape[2] != cache.length and not self.graph.shared) for a in arrays):
            raise ModelError(f"the cache does not fit this model: it needs {len(self._past_names)} arrays of "
                             f"shape {want}; start from model.empty_cache()")
        total = cache.length + arr.shape[1]
        if total > self.block_size:
            raise ContextLimitError(
                f"{total} positions exceed the context of {self.block_size} tokens "
                f"({cache.length} cached + {arr.shape[1]} new); shorten the input or slide the window")
        logits, cache = self.graph.step(arr, cache)
        return self._served(logits), cache

    def _served(self, logits: np.ndarray) -> np.ndarray:
        """float32 logits of the ids the tokenizer has (a padded embedding's rows dropped: a view, no copy)."""
        logits = logits[..., :self.vocab_size]
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def next_logits(self, ids, cache: KVCache | None = None) -> tuple[np.ndarray, KVCache]:
        """The last position's logits (V,) for batch 1: the decode loop's call."""
        logits, cache = self.step(ids, cache)
        return logits[0, -1], cache

    def logits(self, ids) -> np.ndarray:
        """Logits (B, T, V) of a whole sequence, computed afresh (a masked LM's: each position's, from both sides)."""
        if not self.masked:
            return self.step(ids)[0]
        arr = self.check_ids(ids)
        if arr.shape[1] > self.block_size:
            raise ContextLimitError(f"{arr.shape[1]} tokens exceed the context of {self.block_size}; shorten the text")
        return self._served(self.session.run(None, {"input_ids": arr})[0])

    def fill_mask(self, text: str, k: int = 5) -> FillMask:
        """A masked LM's guesses for each "[MASK]" written in `text`: its k likeliest tokens there, with their
        probabilities, each read from the words on both sides."""
        if not self.masked:
            raise ModelError(f"{self.name} is a next-token model: it predicts from the left only and has no [MASK] "
                             f"token; pick a masked LM (objective mlm) to fill in blanks")
        ids = self.tokenizer.encode_masked(text)
        if self.tokenizer.mask_id not in ids:
            raise ModelError("write [MASK] where a token should be guessed, e.g. 'To be, or not to [MASK]e'")
        logits = self.logits(ids)[0]
        return FillMask(ids, fill_blanks(logits, ids, self.tokenizer.mask_id, max(1, min(int(k), self.vocab_size))))

    def attention(self, ids) -> AttentionMaps:
        """Logits and every layer's attention probabilities (B, n_head, T, T) for `ids`."""
        arr = self.check_ids(ids)
        if arr.shape[1] > self.block_size:
            raise ContextLimitError(f"{arr.shape[1]} tokens exceed the context of {self.block_size}; "
                                    f"show attention for a shorter text")
        attention = self.graph_session(ATTENTION_FILE)
        names = [o.name for o in attention.get_outputs()]
        outs = dict(zip(names, attention.run(None, {"input_ids": arr})))
        L = self.n_layer
        parts = []
        if all(f"q.{i}" in outs for i in range(L)):
            parts = [{kind: outs[f"{kind}.{i}"] for kind in ATTENTION_PARTS} for i in range(L)]
        routing = {name: outs[name] for name in ROUTING_OUTPUTS} if ROUTING_OUTPUTS[0] in outs else None
        return AttentionMaps(self._served(outs["logits"]), [outs[f"attn.{i}"] for i in range(L)], parts, routing)

    def score(self, text: str, top: int = 0) -> TextScore:
        """How well the model predicts `text`: each token's logprob given the ones before it, its rank among all
        tokens there and, with `top` > 0, the model's `top` likeliest tokens at each position (one pass: all of
        them come from the same log-softmax rows).

        Texts longer than the context are scored in windows that overlap by half a context, each token
        scored once with at least half a context before it (except at the start). Memory stays one window's
        logits plus SCORE_ROWS rows of log-probs at a time, whatever the text's length or the vocabulary."""
        if self.masked:
            raise self._not_generative()
        ids = self.tokenizer.encode_prompt(text)
        if len(ids) < 2:
            raise ModelError("scoring needs at least 2 tokens (the first is only context); give a longer text")
        top = min(max(0, int(top)), self.vocab_size)
        logprobs: list[float] = []
        ranks: list[int] = []
        tops: list[tuple[np.ndarray, np.ndarray]] = []
        windows, start, stride = 0, 0, max(1, self.block_size // 2)
        while True:
            window = ids[start:start + self.block_size]
            logits = self.logits(window)[0]                       # (T, V): the one window held
            first = 0 if start == 0 else self.block_size - stride - 1
            targets = np.asarray(window[first + 1:], dtype=np.int64)
            for c in range(0, len(targets), SCORE_ROWS):
                want = targets[c:c + SCORE_ROWS]
                lp = log_softmax(logits[first + c:first + c + len(want)])      # (rows, V)
                got = lp[np.arange(len(want)), want]
                logprobs += got.tolist()
                ranks += (1 + (lp > got[:, None]).sum(axis=1)).tolist()     # ties share the better rank
                if top:
                    tops.append(_likeliest(lp, top))
            windows += 1
            if start + self.block_size >= len(ids):
                break
            start += stride
        nll = -sum(logprobs)
        n_bytes = len(self.tokenizer.decode_bytes(ids[1:]))
        mean = nll / len(logprobs)
        tok = self.tokenizer
        bos = tok.add_bos and tok.bos_id is not None and ids[0] == tok.bos_id     # encode_prompt put it there
        pieces = [b"" if bos and i == 0 else tok.token_bytes(t) for i, t in enumerate(ids)]
        top_ids = np.concatenate([t[0] for t in tops]) if tops else np.zeros((len(logprobs), 0), np.int64)
        top_lps = np.concatenate([t[1] for t in tops]) if tops else np.zeros((len(logprobs), 0), np.float64)
        return TextScore(ids, logprobs, mean, math.exp(min(mean, 700)), nll / math.log(2) / n_bytes, windows,
                         ranks, top_ids, top_lps, pieces)


def _likeliest(lp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k likeliest ids of each row of log-probs (rows, V) and their log-probs, likeliest first (equal ones
    by id). argpartition finds them in O(V) per row; only the k are sorted."""
    if k < lp.shape[1]:
        idx = np.argpartition(-lp, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(lp.shape[1]), lp.shape)
    vals = np.take_along_axis(lp, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)
    return np.take_along_axis(idx, order, axis=1).astype(np.int64), np.take_along_axis(vals, order, axis=1)


def default_threads(n_embd: int) -> int:
    """onnxruntime intra-op threads for a model of this width, chosen by measurement
    (bench/generate_speed.py, 2 vCPUs): up to 256 wide one thread was faster and far steadier at
    batch 1 (two spinning threads doubled the step time under load); at 384 wide two were ~10 % faster."""
    forced = os.environ.get(THREADS_ENV, "")
    if forced.isdigit() and int(forced) > 0:
        return int(forced)     # a deployment's choice (bench/load.py measures the options)
    return 1 if n_embd <= 256 else min(2, os.cpu_count() or 1)


def check_external_data(path: Path, directory: Path) -> None:
    """Refuse an ONNX file that is not a model, or whose external data lies anywhere but in plain files
    inside `directory`.

    onnxruntime resolves external-data locations relative to the model and reads whatever they name;
    our exports keep large weights in FILE.data beside FILE, so a location is allowed only as a relative
    name with no `..`, resolving (symlinks followed) inside the model directory to a regular file that
    holds the bytes it claims. Anything else is either not ours or crafted to read a file it should not."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as e:
        raise ModelError(f"{path.name} is not a readable ONNX file ({type(e).__name__}): it is damaged or "
                         f"truncated; re-export the model") from e
    if len(proto.graph.node) == 0:
        raise ModelError(f"{path.name} holds no graph: it is damaged or truncated; re-export the model")
    sizes: dict[str, int] = {}
    for t in _all_tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            info = {e.key: e.value for e in t.external_data}
            where = info.get("location", "")
            why = _external_problem(directory, where, info, sizes)
            if why:
                raise ModelError(f"{path.name} refers to external data ({where!r}) {why}; playground models keep "
                                 f"their weights in files of their own directory, so this file is refused")


def _external_problem(directory: Path, where: str, info: dict, sizes: dict[str, int]) -> str | None:
    """What is wrong with one tensor's external-data entry, or None. `sizes` caches the files' sizes."""
    if not where or Path(where).is_absolute() or ".." in Path(where).parts or "\\" in where or ":" in where:
        return "that is not a plain name inside the model directory"
    if where not in sizes:
        try:
            target = resolve_inside(directory, where)
        except ValueError:
            return "that leads outside the model directory"
        if not target.is_file():
            return "that is missing or not a file"
        sizes[where] = target.stat().st_size
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", sizes[where] - offset))
    except ValueError:
        return "with an offset or length that is not a number"
    if offset < 0 or length < 0 or offset + length > sizes[where]:
        return f"past the end of that file ({sizes[where]} bytes): it is truncated or damaged"
    return None


def _all_tensors(graph):
    """Every tensor stored in a graph: initializers, constant attributes, and those of subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)
