"""Export: a GPT in memory (trained here, or imported) becomes a self-contained ONNX model directory,
checked for parity.

Holds `export_gpt()` (the one exporter: a model, its tokenizer and what the card should say about where
it came from), `export_model()` and its CLI (`python -m core.export CHECKPOINT OUT_DIR`: a run
directory's checkpoint through `export_gpt`), and `PeakMemory` (what an export cost in memory). It writes
`OUT_DIR/` with:
  model.onnx       one graph for prefill, cached decode and full recomputation, in one of two KV-cache
                   layouts (`ExportConfig.kv_cache`, `core.catalog.KV_LAYOUTS`):
                   shared (the default): input_ids [batch, seq] + past_length [] (int64) +
                   past_key_values.{i}.key|value [batch, n_kv_head, capacity, head_dim] -> logits
                   [batch, seq, vocab] + present.{i}.key|value of the same shape: the new positions
                   are written at past_length.. (GroupQueryAttention, com.microsoft), and a caller that
                   binds present to past's memory (onnxruntime's I/O binding) never copies the cache;
                   concat: input_ids + past_key_values [batch, n_kv_head, past, head_dim] -> logits +
                   present [.., past + seq, ..], plain ONNX that any runtime runs. Either way the
                   positions start at the past inside the graph, and past may be 0.
  attention.onnx   input_ids -> logits + attn.{i} [batch, heads, seq, seq], and each layer's q.{i},
                   k.{i}, v.{i} [batch, heads, seq, head_dim] (k and v repeated per query head under
                   grouped-query attention), heads.{i} and proj.{i} [batch, seq, n_embd]: the explicit
                   attention path for the pages, kept out of model.onnx so decoding never pays for it. A
                   mixture of experts adds its routing (core.runtime.ROUTING_OUTPUTS: experts and
                   expert_weights [batch, seq, n_layer, k], router_probs [batch, seq, n_layer, E]). Its
                   graphs run every expert on every token and zero the ones not chosen: exact, and a
                   static graph, at E x the MLP's compute (bench/moe_vs_dense.py measures the cost).
  inspect.onnx     the inspection path for `core.interpret`: input_ids [batch, seq] + head_mix [batch, seq,
                   n_layer, n_head] + head_value [1, seq, n_layer, n_head, head_dim] + resid_mix [batch, seq,
                   n_layer + 1] + resid_value [1, seq, n_layer + 1, n_embd] -> resid [batch, seq, 2 n_layer + 1,
                   n_embd] + head_z [batch, seq, n_layer, n_head, head_dim] (`core.model.Intervention`:
                   each head's output and the stream entering each block blended with a value, one source
                   for the whole batch of edited runs); no logits: they are lens.onnx on the last point.
  lens.onnx        resid [rows, n_embd] + targets [rows, m] -> top_ids, top_logprobs [rows, k] (k on the card),
                   target_logits, target_logprobs [rows, m] and entropy [rows], over the tokenizer's ids:
                   the final norm and the unembedding for any point of the residual stream, so a scan never
                   holds a (rows, vocab) matrix for long. Every export writes both (the card's `inspection`
                   says so); `add_inspection` (`--add-inspection MODEL_DIR`) adds them to an older export from
                   model.onnx's own weights, without touching model.onnx.
  model.int8.onnx  optional: 8-bit weights (`core.quantize`), kept only when its next tokens agree with
                   fp32's (the card records the agreement, the recipe and the speed; one that does not
                   agree is not kept, and the card says why in `variants_not_kept`).
  model.fp16.onnx  optional, with size, logit drift and latency in the card.
  *.onnx.data      the weights of a graph larger than `ExportConfig.external_data_mb` (ONNX's protobuf
                   stops at 2 GB, and writing them apart streams them instead of building the whole file
                   in memory); attention.onnx and the inspection graphs then read model.onnx.data rather
                   than a second copy.
  tokenizer/       the tokenizer (`Tokenizer.save`).
  card.json        config, parameter counts, tokenizer, where the weights came from (a run: data sha256,
                   losses, the training command; an import: the checkpoint and its files' sha256),
                   parity, size and latency per variant, the export's time and peak memory.
Every export runs torch and onnxruntime side by side over a prompt and cached decode steps and fails
loudly when the logits differ by more than the tolerance; it is built in a temporary sibling directory
and renamed into place only when it passed, so a failure leaves nothing a picker would list.

Deliberately not here: running exported models (`core.runtime`, which never imports torch), training,
reading other formats' checkpoints (`core.pretrained`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core import cli
from core.catalog import (REWARD_HEAD_KEY, ATTENTION_FILE, CARD_FILE, EXTERNAL_DATA_SUFFIX, FORMAT, INSPECT_FILE, INSPECT_INPUTS,
                          INSPECT_OUTPUTS, INSPECTION_CARD_KEY, KV_LAYOUTS, LENS_FILE, LENS_INPUTS, LENS_OUTPUTS,
                          MODEL_FILE, PAST_LENGTH, RUN_FILE, TOKENIZER_DIR, VARIANT_FILES, cache_names, graph_bytes,
                          model_checkpoint_dir, model_checkpoints, read_log, scrub_paths, shown_path)
from core.checks import PlaygroundError
from core.checkpoint import load_model
from core.config import MLM_FP32_ONLY, MLM_NO_READBACK, TRAIN_PATH_FIELDS, ModelConfig, TrainConfig
from core.files import make_readable, write_atomic
from core.model import GPT, CacheBuffers, Intervention
from core.quantize import QuantizeConfig, QuantizeError, open_graph, quantize_model, run_cached, session
from core.runtime import ATTENTION_PARTS, ROUTING_OUTPUTS, check_external_data
from core.tokenizer import Tokenizer, load_tokenizer



class ExportError(PlaygroundError):
    """The export cannot be made or failed its parity check; nothing is left in the target."""


@dataclass
class ExportConfig:
    opset: int = 18               # 18: the dynamo exporter's well-trodden path, run by onnxruntime >= 1.14
    kv_cache: str = "shared"      # model.onnx's cache layout (core.catalog.KV_LAYOUTS): "shared" never copies the
                                  # cache (1.3-2x faster decoding here); "concat" for runtimes without
                                  # onnxruntime's contrib operators
    parity_tolerance: float = 1e-4    # max |logit difference| torch vs onnxruntime (fp32) before failing
    parity_prompt: int = 8        # prompt tokens prefilled in the parity check
    parity_steps: int = 50        # cached decode steps after it (fewer if the context is shorter)
    int8: bool = False            # also write an int8 variant, kept only if it agrees with fp32 (core.quantize)
    int8_approximate: bool = False    # keep the int8 variant even below the agreement bar, labelled approximate
    fp16: bool = False            # also write an fp16 model (half the size; slower on most CPUs)
    seed: int = 0                 # for the parity check's random tokens
    lens_top_k: int = 10          # top tokens lens.onnx returns per residual row
    external_data_mb: float = 256     # graphs with more weight than this keep it in FILE.data beside FILE:
                                      # streamed to disk one tensor at a time (a single file is built whole in
                                      # memory, twice) and required past ONNX's 2 GB protobuf limit


class PeakMemory:
    """Wall time and the peak resident memory of this process from `start()` on.

    Linux lets a process reset its own high-water mark (/proc/self/clear_refs, "5"), so the peak is this
    job's; elsewhere it is the process's lifetime peak (getrusage), and `since_start` says which."""

    def __init__(self):
        self.start()

    def start(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.since_start = True
        except OSError:
            self.since_start = False
        self.t0 = time.perf_counter()
        return self

    @staticmethod
    def peak_mb() -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024    # bytes on macOS, KiB on Linux

    def report(self) -> dict:
        return {"seconds": round(time.perf_counter() - self.t0, 2), "peak_rss_mb": round(self.peak_mb(), 1),
                "peak_since_start": self.since_start}


class _CachedGraph(torch.nn.Module):
    """input_ids + flat past -> logits + flat present (what model.onnx computes in the "concat" layout)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        out = self.model(input_ids, past=past, use_cache=True)
        return out.logits, [t for kv in out.present for t in kv]


class _SharedCacheGraph(torch.nn.Module):
    """input_ids + past_length + flat buffers -> logits + flat buffers (the "shared" layout)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, past_length, past_flat):
        layers = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        out = self.model(input_ids, past=CacheBuffers(layers, past_length), use_cache=True)
        return out.logits, [t for kv in out.present for t in kv]


class _AttentionGraph(torch.nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids, return_attention=True)
        parts = [[p[kind] for p in out.attention_parts] for kind in ATTENTION_PARTS]
        routing = [] if out.expert_ids is None else [out.expert_ids, out.expert_weights, out.router_probs]
        return out.logits, out.attentions, *parts, *routing


class _FullGraph(torch.nn.Module):
    """input_ids -> logits of every position, with no cache: a masked LM's model.onnx (each position's output
    depends on the whole sequence, so there is nothing to cache and no step to take)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids).logits


class _InspectGraph(torch.nn.Module):
    """input_ids + an Intervention's four tensors -> the residual stream's points and every head's z."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, head_mix, head_value, resid_mix, resid_value):
        # last_only: the logits are not an output (lens.onnx makes them from the last point); what is left of
        # the head is pruned from the graph
        out = self.model(input_ids, intervention=Intervention(head_mix, head_value, resid_mix, resid_value),
                         last_only=True)
        return out.resid, out.head_z


class _LensGraph(torch.nn.Module):
    """Residual rows -> the final norm and the unembedding, reduced at once to what a page shows: the top k
    tokens and the logits of chosen ones (a row's whole vocabulary never leaves the graph)."""

    def __init__(self, model: GPT, n_vocab: int, top_k: int):
        super().__init__()
        self.ln_f, self.lm_head = model.transformer.ln_f, model.lm_head
        self.n_vocab, self.top_k = n_vocab, top_k

    def forward(self, resid, targets):
        # only the tokenizer's ids: a padded embedding's rows are never served (core.runtime)
        logits = torch.nn.functional.linear(self.ln_f(resid), self.lm_head.weight[:self.n_vocab])   # (N, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        top_logprobs, top_ids = logprobs.topk(self.top_k, dim=-1)                                    # (N, k)
        entropy = -(logprobs.exp() * logprobs).sum(-1)                                               # (N,)
        return top_ids, top_logprobs, logits.gather(1, targets), logprobs.gather(1, targets), entropy


def _weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter and buffer (a tied head counted once)."""
    return (sum(p.numel() * p.element_size() for p in model.parameters())
            + sum(b.numel() * b.element_size() for b in model.buffers()))


def _contrib_op(name: str, inputs: list[str], outputs: list[str], attributes: dict[str, str] = {}):
    """onnxruntime's operator `name` (com.microsoft), declared for onnxscript (which knows only ONNX's own
    operators); inputs ending in "?" are optional, every tensor is a float."""
    import onnxscript
    from onnx.defs import OpSchema
    optional, single = OpSchema.FormalParameterOption.Optional, OpSchema.FormalParameterOption.Single

    def arg(n: str):
        types = "M" if n in ("seqlens_k", "total_sequence_length") else "T"
        return OpSchema.FormalParameter(n.rstrip("?"), types, param_option=optional if n.endswith("?") else single)
    schema = OpSchema(name, "com.microsoft", 1, inputs=[arg(n) for n in inputs], outputs=[arg(n) for n in outputs],
                      type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                                        ("M", ["tensor(int32)"], "")],
                      attributes=[OpSchema.Attribute(k, OpSchema.AttrType.INT, why) for k, why in attributes.items()])
    return onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), name, schema)


def _translations() -> dict:
    """How the "shared" graph maps torch operators onto onnxruntime's fused ones (one node where plain
    ONNX takes five to ten: per-node overhead, not arithmetic, is most of a small model's decode step):
    core.model's buffered attention -> GroupQueryAttention, exact GELU -> Gelu, tanh GELU -> FastGelu."""
    gqa = _contrib_op("GroupQueryAttention",
                      ["query", "key?", "value?", "past_key", "past_value", "seqlens_k", "total_sequence_length",
                       "cos_cache?", "sin_cache?"], ["output", "present_key", "present_value"],
                      {"num_heads": "query heads", "kv_num_heads": "key/value heads",
                       "do_rotary": "rotate q and k (RoPE)"})
    gelu, fast_gelu = _contrib_op("Gelu", ["X"], ["Y"]), _contrib_op("FastGelu", ["X", "bias?"], ["Y"])

    def buffered_attention(qkv, k_buf, v_buf, seqlens_k, total, cos, sin, n_head: int, n_kv: int):
        # packed q, k, v (no key or value input); GroupQueryAttention's rotary is RoPE's rotate-half form
        # (rotary_interleaved 0), at positions it derives from seqlens_k as core.model does
        return gqa(qkv, None, None, k_buf, v_buf, seqlens_k, total, cos, sin, num_heads=n_head,
                   kv_num_heads=n_kv, do_rotary=int(cos is not None), _outputs=3)

    def any_gelu(x, approximate: str = "none"):
        return fast_gelu(x) if approximate == "tanh" else gelu(x)

    return {torch.ops.playground.buffered_attention.default: buffered_attention,
            torch.ops.aten.gelu.default: any_gelu}


def _export(module, args, dynamic_shapes, input_names, output_names, path: Path, opset: int,
            metadata: dict, external: bool, fused: bool) -> None:
    """Trace `module` and write it to `path`, with the metadata set on the in-memory graph (never by
    loading the written file again), its weights in `path`.data when `external`; with `fused`, onto
    onnxruntime's fused operators (`_translations`), else plain ONNX."""
    module.eval()
    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                opset_version=opset, input_names=input_names,
                                output_names=output_names, verbose=False,
                                custom_translation_table=_translations() if fused else None)
    program.model.metadata_props.update(metadata)
    # external_data=False still goes external past 2 GB (torch's own rule); the runtime reads either
    program.save(str(path), external_data=external)


def _export_cached(model: GPT, path: Path, io: dict, metadata: dict, opset: int, external: bool) -> None:
    """The prefill / cached-decode graph, dynamic in batch, sequence and past length (or capacity). The
    example has batch 2, seq 3 and past 4 (capacity 8), so that no dimension specializes to 0 or 1."""
    mc = model.config
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=mc.block_size)
    if io["kv_cache"] == "shared":
        capacity = torch.export.Dim("capacity", min=2, max=mc.block_size)
        example = (torch.randint(0, mc.vocab_size, (2, 3)), torch.tensor(4),
                   [torch.zeros(2, mc.kv_heads, 8, mc.head_dim) for _ in range(2 * mc.n_layer)])
        _export(_SharedCacheGraph(model), example,
                {"input_ids": {0: batch, 1: seq}, "past_length": None,
                 "past_flat": [{0: batch, 2: capacity} for _ in range(2 * mc.n_layer)]},
                io["inputs"], io["outputs"], path, opset, metadata, external, fused=True)
        return
    past_len = torch.export.Dim("past", min=0, max=mc.block_size)
    example = (torch.randint(0, mc.vocab_size, (2, 3)),
               [torch.zeros(2, mc.kv_heads, 4, mc.head_dim) for _ in range(2 * mc.n_layer)])
    _export(_CachedGraph(model), example,
            {"input_ids": {0: batch, 1: seq}, "past_flat": [{0: batch, 2: past_len} for _ in range(2 * mc.n_layer)]},
            io["inputs"], io["outputs"], path, opset, metadata, external, fused=False)


def _layout_for(mc, wanted: str) -> str:
    """The KV-cache layout a model can have: "shared" needs head_dim % 8 == 0 (GroupQueryAttention's
    kernels refuse other sizes at run time), else it falls back to "concat"."""
    return "concat" if wanted == "shared" and mc.head_dim % 8 else wanted


def check_target(out_dir: Path) -> None:
    """Refuse a target that already holds something: an export never mixes its files with others'."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not empty; choose another directory or remove it")


def export_model(source: str | os.PathLike, out_dir: str | os.PathLike,
                 cfg: ExportConfig | None = None) -> dict:
    """Export a checkpoint (file or run directory) to `out_dir`; returns the card."""
    memory = PeakMemory()
    out_dir = Path(out_dir)
    check_target(out_dir)
    model, ckpt = load_model(source)
    run_dir = ckpt.path.parent.parent
    if REWARD_HEAD_KEY in ckpt.tensors:
        raise ExportError(f"{run_dir} is a reward model: it scores texts and writes none, so there is nothing to "
                          f"generate with; PPO reads it from its run directory (--reward-model)")
    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR)
    if tokenizer.n_vocab != model.config.vocab_size:
        raise ExportError(f"the tokenizer in {run_dir / TOKENIZER_DIR} has {tokenizer.n_vocab} ids but the "
                          f"model expects {model.config.vocab_size}")
    return export_gpt(model, tokenizer, out_dir, cfg, _training_card(ckpt, run_dir), memory)


def export_gpt(model: GPT, tokenizer: Tokenizer, out_dir: str | os.PathLike, cfg: ExportConfig | None = None,
               info: dict | None = None, memory: PeakMemory | None = None,
               say: Callable[[str], None] | None = None) -> dict:
    """Export an in-memory model with its tokenizer to `out_dir`; returns the card.

    `info` goes into the card as it is: `training`, the losses and the like for a trained run, `source`
    for an imported checkpoint. `memory`, when the caller started one, makes the card's time and peak
    memory cover the caller's loading too; `say` hears each step as it starts (a CLI's progress). The
    model's embedding may have more rows than the tokenizer has ids (checkpoints pad it; the runtime
    never offers those ids), never fewer.

    Writes into a temporary sibling directory and renames it into place only after the parity check
    passes, so a failed export never leaves a half-written model where the app would list it.
    """
    memory = memory or PeakMemory()
    cfg = cfg or ExportConfig()
    if cfg.kv_cache not in KV_LAYOUTS:
        raise ExportError(f"unknown KV-cache layout {cfg.kv_cache!r}; choose one of {', '.join(KV_LAYOUTS)}")
    out_dir = Path(out_dir)
    check_target(out_dir)
    model = model.float().eval()
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ExportError(f"the tokenizer has {tokenizer.n_vocab} ids but the model's embedding only "
                          f"{model.config.vocab_size} rows: ids past {model.config.vocab_size - 1} could not be read")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    make_readable(work, directory=True)
    try:
        card = _export_into(work, out_dir.name, model, tokenizer, cfg, info or {}, memory, say or (lambda _: None))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return card


# what a masked LM's card says of its losses (core.mlm says why)
def mlm_loss_note(rate: float) -> str:
    """What a masked LM's card says its losses are (at the mask rate it was trained with)."""
    return (f"train_loss and val_loss are nats per masked token (BERT's masking: {rate * 100:g} % of positions, "
            "80/10/10), predicted from both sides; a next-token model's loss predicts from the left alone, "
            "a harder task: the two numbers are not comparable")

STEP_CURVE_POINTS = 100    # the per-step training loss, averaged into at most this many points for the card


def step_curve(records: list[dict], last_step: int) -> list[dict]:
    """The training loss of every step up to `last_step`, averaged over consecutive steps into at most
    STEP_CURVE_POINTS points ({"step": the bucket's last step, "loss": its mean}): the curve of a run that
    evaluates rarely (a time-budgeted one evaluates once, at the end)."""
    losses = [(r["step"], r["loss"]) for r in records if r.get("type") == "TrainStep" and r["step"] <= last_step
              and math.isfinite(r["loss"])]
    size = max(1, math.ceil(len(losses) / STEP_CURVE_POINTS))
    return [{"step": chunk[-1][0], "loss": sum(loss for _, loss in chunk) / len(chunk)}
            for chunk in (losses[i:i + size] for i in range(0, len(losses), size))]


def _training_card(ckpt, run_dir: Path) -> dict:
    """What a card says about a model trained here: its run, data, command, loss curves and losses."""
    run_info = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
    last_eval = ckpt.meta.get("eval") or {}
    records = read_log(run_dir)
    post = run_info.get("posttrain")
    if post:
        # a post-training run (core.posttrain): the card says what it started from, how, on which data; a card
        # travels with the model, so the machine's paths are shortened as the training card's are
        base = dict(post.get("base") or {})
        if base.get("path"):
            base["path"] = shown_path(base["path"])
        data = post.get("data") or ""
        return {"posttraining": {**post, "base": base, "data": data if data.startswith("judge:") else shown_path(data),
                                 "reward_model": post.get("reward_model") and shown_path(post["reward_model"]),
                                 "step": ckpt.step, "command": run_info.get("command") and
                                 scrub_paths(run_info["command"]), "last_eval": last_eval},
                "val_loss": last_eval.get("val_loss"),
                "training": (post.get("base") or {}).get("training")}
    return {
        "training": {"step": ckpt.step, "tokens_seen": ckpt.meta["state"].get("tokens_seen"),
                     "train_config": _portable_train_config(ckpt.meta.get("train_config")),
                     "corpus": run_info.get("corpus") and shown_path(run_info["corpus"]),
                     "corpus_sha256": ckpt.meta.get("corpus_sha256"),
                     "command": _portable_command(run_info.get("command"), ckpt.meta.get("train_config")),
                     # the loss curves, for the Models page: every evaluation, and the steps' own losses
                     "curve": [{k: r[k] for k in ("step", "train_loss", "val_loss", "val_bits_per_byte")}
                               for r in records if r.get("type") == "EvalResult" and r["step"] <= ckpt.step],
                     "step_curve": step_curve(records, ckpt.step)},
        "train_loss": last_eval.get("train_loss"),
        "val_loss": last_eval.get("val_loss"),
        "val_bits_per_byte": last_eval.get("val_bits_per_byte"),
    }


def _export_into(work: Path, name: str, model: GPT, tokenizer: Tokenizer, cfg: ExportConfig, info: dict,
                 memory: PeakMemory, say: Callable[[str], None]) -> dict:
    mc = model.config
    L = mc.n_layer
    masked = mc.objective == "mlm"
    if masked and (cfg.int8 or cfg.fp16):
        raise ExportError(f"{MLM_FP32_ONLY} (drop --int8 / --fp16)")
    layout = "none" if masked else _layout_for(mc, cfg.kv_cache)
    if not masked and layout != cfg.kv_cache:
        say(f"the shared KV-cache layout needs a head dimension divisible by 8 (onnxruntime's "
            f"GroupQueryAttention); this model's is {mc.head_dim}: exporting the concat layout")
    shared = layout == "shared"
    io = {"inputs": ["input_ids"] + ([] if masked else [PAST_LENGTH] if shared else []) + ([] if masked else cache_names(L)),
          "outputs": ["logits"] + ([] if masked else cache_names(L, "present")),
          "kv_cache": layout,       # "none": a masked LM's model.onnx reads a whole sequence, logits (batch, seq, vocab)
          "past_shape": None if masked else ["batch", "n_kv_head", "capacity" if shared else "past", "head_dim"],
          "attention_outputs": [f"attn.{i}" for i in range(L)],
          # the attention graph's inner vectors, for the Learn page's step-by-step attention
          "attention_parts": {kind: [f"{kind}.{i}" for i in range(L)] for kind in ATTENTION_PARTS},
          # a mixture of experts: the attention graph also says where each token went (core.model.GPTOutput)
          "routing_outputs": list(ROUTING_OUTPUTS) if mc.n_experts else []}
    metadata = {"llm_playground.format": FORMAT, "llm_playground.model_config": json.dumps(mc.to_dict()),
                "llm_playground.io": json.dumps(io), "llm_playground.tokenizer": tokenizer.name}
    external = _weight_bytes(model) > cfg.external_data_mb * 2 ** 20

    say(f"exporting {MODEL_FILE} ({_weight_bytes(model) / 1e6:.0f} MB of weights"
        + (f", kept in {MODEL_FILE}{EXTERNAL_DATA_SUFFIX})" if external else ")"))
    if masked:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=mc.block_size)
        _export(_FullGraph(model), (torch.randint(0, mc.vocab_size, (2, 3)),), {"input_ids": {0: batch, 1: seq}},
                io["inputs"], io["outputs"], work / MODEL_FILE, cfg.opset, metadata, external, fused=True)
    else:
        _export_cached(model, work / MODEL_FILE, io, metadata, cfg.opset, external)
    say(f"exporting {ATTENTION_FILE} (every layer's attention, for the pages)")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=mc.block_size)
    _export(_AttentionGraph(model), (torch.randint(0, mc.vocab_size, (2, 3)),),
            {"input_ids": {0: batch, 1: seq}}, ["input_ids"],
            ["logits"] + io["attention_outputs"] + [n for kind in ATTENTION_PARTS for n in io["attention_parts"][kind]]
            + io["routing_outputs"], work / ATTENTION_FILE, cfg.opset, metadata, external, fused=shared or masked)
    if external:
        _share_weights(work, ATTENTION_FILE, MODEL_FILE)

    # -- parity: onnxruntime prefill + cached decode vs torch full recomputation
    say("checking parity: onnxruntime against torch over a prefill and cached decode steps")
    n_prompt = min(cfg.parity_prompt, mc.block_size - 1)
    n_total = min(n_prompt + cfg.parity_steps, mc.block_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    seq_ids = torch.randint(0, tokenizer.n_vocab, (1, n_total), generator=gen)   # ids the tokenizer can make
    with torch.no_grad():
        ref = model(seq_ids).logits.numpy()
        ref_out = model(seq_ids, return_attention=True)
        ref_attn = [a.numpy() for a in ref_out.attentions]
        ref_attn += [p[kind].numpy() for kind in ATTENTION_PARTS for p in ref_out.attention_parts]
        if mc.n_experts:      # the routing too: the same experts chosen, with the same weights
            ref_attn += [ref_out.expert_ids.numpy(), ref_out.expert_weights.numpy(), ref_out.router_probs.numpy()]
        del ref_out
    if masked:
        # the whole sequence in one call, timed (a masked LM has no decode step)
        full = session(work / MODEL_FILE)
        step_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            got = full.run(None, {"input_ids": seq_ids.numpy()})[0]
            step_times.append(time.perf_counter() - t0)
    else:
        got, step_times = run_cached(open_graph(work / MODEL_FILE, mc), seq_ids.numpy(), n_prompt)
    parity = float(np.abs(got - ref).max())
    attn_outs = session(work / ATTENTION_FILE).run(None, {"input_ids": seq_ids.numpy()})
    attn_parity = max(float(np.abs(a - b).max()) for a, b in zip(attn_outs[1:], ref_attn))
    attn_logit_parity = float(np.abs(attn_outs[0] - ref).max())
    del attn_outs, ref_attn
    worst = max(parity, attn_logit_parity)
    if not math.isfinite(worst) or worst > cfg.parity_tolerance:
        how = (f"a {n_total}-token sequence" if masked else
               f"a {n_prompt}-token prefill and {n_total - n_prompt} cached steps")
        raise ExportError(f"parity check failed: max |logits torch - onnxruntime| = {worst:.3g} over "
                          f"{how}, above the "
                          f"tolerance {cfg.parity_tolerance:g}; the export was not kept")
    if attn_parity > cfg.parity_tolerance:
        raise ExportError(f"attention probabilities differ from torch's explicit path by {attn_parity:.3g}")
    # after the model's own parity, so a model that fails it fails before the slower inspection export
    inspection = None
    if not masked:      # the interpretability pages read next-token models only: a masked LM's would go unread
        say(f"exporting {INSPECT_FILE} and {LENS_FILE} (the interpretability instruments)")
        inspection = _export_inspection(model, tokenizer.n_vocab, work, cfg, metadata, external, shared)

    variants = {"fp32": {"file": MODEL_FILE, "bytes": graph_bytes(work / MODEL_FILE),
                         "max_logit_diff_vs_torch": parity,
                         # a masked LM: one pass over the parity sequence (it has no decode step)
                         ("full_pass_ms_median" if masked else "decode_ms_median"):
                             1000 * statistics.median(step_times)}}
    if cfg.fp16:
        say("writing the fp16 variant")
        _export_fp16(work, external)
        variants["fp16"] = _variant_report(work, "fp16", seq_ids.numpy(), ref, n_prompt, mc)

    tokenizer.save(work / TOKENIZER_DIR)
    card = {
        "format": FORMAT,
        "name": name,
        "model_config": mc.to_dict(),
        "parameters": model.count_parameters(),
        "flops_per_token": model.flops_per_token(),
        "tokenizer": {"name": tokenizer.name, "kind": tokenizer.kind, "n_vocab": tokenizer.n_vocab},
        "training": {},
        "train_loss": None,
        "val_loss": None,
        "val_bits_per_byte": None,
        **info,
        "io": io,
        "parity": {"max_abs_logit_diff": parity, "attention_max_abs_diff": attn_parity,
                   "prefill_tokens": n_total if masked else n_prompt, "cached_steps": 0 if masked else n_total - n_prompt,
                   "tolerance": cfg.parity_tolerance},
        "variants": variants,
        **({INSPECTION_CARD_KEY: inspection} if inspection else {"loss_note": mlm_loss_note(
            ((info.get("training") or {}).get("train_config") or {}).get("mask_rate", TrainConfig.mask_rate))}),
        "files": {p.name: p.stat().st_size for p in sorted(work.iterdir()) if p.is_file()},
        "opset": cfg.opset,
        "exported_with": {"torch": torch.__version__},
        # the whole job's cost: an import's loading included when it started the clock
        "export": memory.report(),
    }
    write_atomic(work / CARD_FILE, json.dumps(card, indent=2).encode())
    if cfg.int8:
        # from the fp32 graph just written, measured against it; one that does not agree is not kept,
        # and the card says why (the fp32 model is kept either way)
        try:
            quantize_model(work, QuantizeConfig(approximate=cfg.int8_approximate), say=say)
        except Exception as e:      # the quantizer's own errors too: a checked fp32 export is never lost to them
            if isinstance(e, OSError):
                raise                   # a full disk: the caller says how to continue
            why = str(e) if isinstance(e, QuantizeError) else f"the quantizer failed ({type(e).__name__}: {e})"
            say(f"int8 variant not kept: {why}")
            card["variants_not_kept"] = {"int8": why}
            write_atomic(work / CARD_FILE, json.dumps(card, indent=2).encode())
        card = json.loads((work / CARD_FILE).read_text(encoding="utf-8"))
    return card


def _share_weights(work: Path, filename: str, owner: str) -> None:
    """Point `filename`'s external tensors at identical ones in `owner`'s data file, keeping only the rest
    in its own: the attention graph holds the same weights as model.onnx, and a second copy of a 500 MB
    model on disk helps nobody. The exporter names folded weights anew in each graph (a transposed
    matrix becomes `val_123`), so equal bytes decide, not names. model.onnx's Gemms keep a Linear's
    weight as it is (out, in) where the attention graph's MatMuls keep it transposed: such a matrix is
    read from model.onnx's bytes too, through a Transpose node (folded once when the graph loads)."""
    import hashlib

    import onnx
    from onnx import helper
    from onnx.external_data_helper import ExternalDataInfo

    def externals(proto):
        return [(t, ExternalDataInfo(t)) for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]

    def read(f, info) -> bytes:
        f.seek(info.offset or 0)
        return f.read(info.length)

    own_data, owner_data = work / (filename + EXTERNAL_DATA_SUFFIX), work / (owner + EXTERNAL_DATA_SUFFIX)
    if not (own_data.is_file() and owner_data.is_file()):
        return
    theirs = {}
    with open(owner_data, "rb") as f:
        for _, info in externals(onnx.load(str(work / owner), load_external_data=False)):
            if info.location == owner_data.name:
                theirs.setdefault(hashlib.sha256(read(f, info)).digest(), info)
    mine = onnx.load(str(work / filename), load_external_data=False)
    kept = own_data.with_name(own_data.name + ".tmp")
    offset = 0
    with open(own_data, "rb") as src, open(kept, "wb") as out:
        for t, info in externals(mine):
            data = read(src, info)
            other = theirs.get(hashlib.sha256(data).digest())
            if other is None and len(t.dims) == 2:
                dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
                flipped = np.frombuffer(data, dtype=dtype).reshape(tuple(t.dims)).T.tobytes()
                other = theirs.get(hashlib.sha256(flipped).digest())
                if other is not None:        # this graph holds W^T, model.onnx W: read W, transpose here
                    name, rows, cols = t.name, t.dims[0], t.dims[1]
                    t.name = name + ".shared_transposed"
                    t.dims[:] = [cols, rows]
                    mine.graph.node.insert(0, helper.make_node("Transpose", [t.name], [name], perm=[1, 0],
                                                               name=name + ".transpose"))
            if other is not None:
                entries = {"location": owner_data.name, "offset": str(other.offset or 0), "length": str(len(data))}
            else:
                entries = {"location": own_data.name, "offset": str(offset), "length": str(len(data))}
                out.write(data)
                offset += len(data)
            del t.external_data[:]
            for key, value in entries.items():
                entry = t.external_data.add()
                entry.key, entry.value = key, value
    if offset:
        os.replace(kept, own_data)
    else:
        kept.unlink()
        own_data.unlink()
    write_atomic(work / filename, mine.SerializeToString())


def _export_inspection(model: GPT, n_vocab: int, work: Path, cfg: ExportConfig, metadata: dict, external: bool,
                       fused: bool) -> dict:
    """Write inspect.onnx and lens.onnx into `work` (beside a model.onnx whose data they share when
    `external`), check them against torch, and return the card's `inspection` entry."""
    mc = model.config
    L, nh, hs, C = mc.n_layer, mc.n_head, mc.head_dim, mc.n_embd
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=mc.block_size)
    T = min(5, mc.block_size)
    example = (torch.randint(0, mc.vocab_size, (2, T)), torch.ones(2, T, L, nh), torch.zeros(1, T, L, nh, hs),
               torch.ones(2, T, L + 1), torch.zeros(1, T, L + 1, C))
    dynamic = {"input_ids": {0: batch, 1: seq}, "head_mix": {0: batch, 1: seq}, "head_value": {1: seq},
               "resid_mix": {0: batch, 1: seq}, "resid_value": {1: seq}}
    _export(_InspectGraph(model), example, dynamic, list(INSPECT_INPUTS), list(INSPECT_OUTPUTS),
            work / INSPECT_FILE, cfg.opset, metadata, external, fused)
    k = min(cfg.lens_top_k, n_vocab)
    rows, wanted = torch.export.Dim("rows"), torch.export.Dim("targets")
    _export(_LensGraph(model, n_vocab, k), (torch.randn(3, C), torch.randint(0, n_vocab, (3, 2))),
            {"resid": {0: rows}, "targets": {0: rows, 1: wanted}}, list(LENS_INPUTS), list(LENS_OUTPUTS),
            work / LENS_FILE, cfg.opset, metadata, external, fused)
    if external:
        _share_weights(work, INSPECT_FILE, MODEL_FILE)
        _share_weights(work, LENS_FILE, MODEL_FILE)

    # parity: a patching-like edit (another sequence's activations blended in at random strengths), then
    # the lens on every row of the last point against torch's own logits
    gen = torch.Generator().manual_seed(cfg.seed)
    T = min(16, mc.block_size)
    ids = torch.randint(0, n_vocab, (2, T), generator=gen)
    with torch.no_grad():
        source = model(torch.randint(0, n_vocab, (1, T), generator=gen), intervention=Intervention())
        # the points entering each block (and ln_f) are the even ones: 0, 2, ..., 2L
        iv = Intervention(torch.rand(2, T, L, nh, generator=gen), source.head_z, torch.rand(2, T, L + 1, generator=gen),
                          source.resid[:, :, ::2])
        ref = model(ids, intervention=iv)
    feeds = dict(zip(INSPECT_INPUTS, (ids.numpy(), *(t.numpy() for t in (iv.head_mix, iv.head_value, iv.resid_mix,
                                                                         iv.resid_value)))))
    resid, head_z = session(work / INSPECT_FILE).run(list(INSPECT_OUTPUTS), feeds)
    inspect_diff = max(float(np.abs(resid - ref.resid.numpy()).max()), float(np.abs(head_z - ref.head_z.numpy()).max()))
    last = resid[:, :, -1].reshape(-1, C)                                    # (2T, C)
    targets = np.tile(np.arange(n_vocab), (last.shape[0], 1))
    _, top_lp, logits, logprobs, _ = session(work / LENS_FILE).run(list(LENS_OUTPUTS), {"resid": last, "targets": targets})
    want = ref.logits[..., :n_vocab].reshape(-1, n_vocab)
    lens_diff = max(float(np.abs(logits - want.numpy()).max()),
                    float(np.abs(logprobs - torch.log_softmax(want, -1).numpy()).max()))
    worst = max(inspect_diff, lens_diff)
    if not math.isfinite(worst) or worst > cfg.parity_tolerance:
        raise ExportError(f"parity check failed: the inspection graphs differ from torch's explicit path by "
                          f"{worst:.3g} (tolerance {cfg.parity_tolerance:g}); the export was not kept")
    return {"files": [INSPECT_FILE, LENS_FILE], "points": 2 * L + 1, "lens_top_k": k, "lens_vocab": n_vocab,
            "max_abs_diff": worst}


def load_exported(model_dir: str | os.PathLike, cfg: ExportConfig | None = None,
                  say: Callable[[str], None] | None = None) -> tuple[GPT, Tokenizer, dict, dict]:
    """(model, tokenizer, card, graph metadata) rebuilt from an exported model's own model.onnx weights, so a
    model that has no checkpoint here (a committed default, a shared export) can be inspected again or
    fine-tuned. Checked first: the rebuilt model must reproduce model.onnx's logits."""
    import onnx
    from onnx import numpy_helper
    cfg = cfg or ExportConfig()
    say = say or (lambda _: None)
    d = Path(model_dir)
    if not (d / CARD_FILE).is_file() or not (d / MODEL_FILE).is_file():
        raise ExportError(f"{d} is not an exported model directory (no {CARD_FILE} or {MODEL_FILE})")
    card = json.loads((d / CARD_FILE).read_text(encoding="utf-8"))
    mc = ModelConfig.from_dict(card["model_config"])
    if mc.objective == "mlm":
        raise ExportError(MLM_NO_READBACK.format(source=d))
    tokenizer = load_tokenizer(d / TOKENIZER_DIR)
    check_external_data(d / MODEL_FILE, d)
    proto = onnx.load(str(d / MODEL_FILE), load_external_data=False)
    metadata = {p.key: p.value for p in proto.metadata_props}
    model = GPT(mc)
    wanted = model.state_dict()
    found = {}
    for init in proto.graph.initializer:
        name = init.name.removeprefix("model.")
        if init.name.startswith("model.") and name in wanted:
            found[name] = torch.from_numpy(numpy_helper.to_array(init, base_dir=str(d)).copy())
    del proto
    tied = {"transformer.wte.weight"} if mc.tie_embeddings else set()
    missing = sorted(set(wanted) - set(found) - tied)
    if missing:
        raise ExportError(f"{d.name}/{MODEL_FILE} does not hold {', '.join(missing[:3])}"
                          + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                          + ": export the model again from its checkpoint instead")
    if tied and "lm_head.weight" in found:
        found["transformer.wte.weight"] = found["lm_head.weight"]
    model.load_state_dict(found, strict=False)
    model.eval()
    say(f"checking the weights read from {MODEL_FILE} against its own logits")
    ids = torch.randint(0, tokenizer.n_vocab, (1, min(24, mc.block_size)), generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    if mc.objective == "mlm":
        got = session(d / MODEL_FILE).run(None, {"input_ids": ids.numpy()})[0]
    else:
        got, _ = run_cached(open_graph(d / MODEL_FILE, mc), ids.numpy(), ids.shape[1])
    diff = float(np.abs(got[..., :ref.shape[-1]] - ref).max())
    if not math.isfinite(diff) or diff > cfg.parity_tolerance:
        raise ExportError(f"the weights read from {d.name}/{MODEL_FILE} do not reproduce its logits (max difference "
                          f"{diff:.3g}): export the model again from its checkpoint instead")
    return model, tokenizer, card, metadata


def add_inspection(model_dir: str | os.PathLike, cfg: ExportConfig | None = None,
                   say: Callable[[str], None] | None = None) -> dict:
    """Give a model exported before the inspection graphs existed its inspect.onnx and lens.onnx, built from
    model.onnx's own weights (checked first: the rebuilt model must reproduce model.onnx's logits); model.onnx
    and every other file but the card are left as they are. Returns the updated card."""
    cfg = cfg or ExportConfig()
    say = say or (lambda _: None)
    d = Path(model_dir)
    model, tokenizer, card, metadata = load_exported(d, cfg, say)
    for name in (INSPECT_FILE, LENS_FILE):
        for stale in (d / name, d / (name + EXTERNAL_DATA_SUFFIX)):
            stale.unlink(missing_ok=True)
    say(f"exporting {INSPECT_FILE} and {LENS_FILE}")
    external = (d / (MODEL_FILE + EXTERNAL_DATA_SUFFIX)).is_file()
    try:
        card[INSPECTION_CARD_KEY] = _export_inspection(model, tokenizer.n_vocab, d, cfg, metadata, external,
                                                       card.get("io", {}).get("kv_cache") == "shared")
    except BaseException:
        for name in (INSPECT_FILE, LENS_FILE):
            for partial in (d / name, d / (name + EXTERNAL_DATA_SUFFIX)):
                partial.unlink(missing_ok=True)
        raise
    ours = [n for name in (INSPECT_FILE, LENS_FILE) for n in (name, name + EXTERNAL_DATA_SUFFIX)]
    files = {k: v for k, v in card.get("files", {}).items() if k not in ours}
    files.update({n: (d / n).stat().st_size for n in ours if (d / n).is_file()})
    card["files"] = files
    ending = "\n" if (d / CARD_FILE).read_text(encoding="utf-8").endswith("\n") else ""
    write_atomic(d / CARD_FILE, (json.dumps(card, indent=2) + ending).encode())
    return card


def _portable_train_config(cfg: dict | None) -> dict | None:
    """The training settings as a shared card should carry them: no absolute path of the machine that
    trained (a card travels with the model; the corpus is identified by its sha256)."""
    if not cfg:
        return cfg
    return {k: (shown_path(v) if k in TRAIN_PATH_FIELDS and isinstance(v, str) else v) for k, v in cfg.items()}


def _portable_command(command: str | None, cfg: dict | None) -> str | None:
    """The training command with the same paths shortened as in the card's settings."""
    if not command:
        return command
    for k in TRAIN_PATH_FIELDS:
        v = (cfg or {}).get(k)
        if isinstance(v, str) and os.path.isabs(v):
            command = command.replace(v, shown_path(v))
    return scrub_paths(command)


def _export_fp16(work: Path, external: bool) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    half = convert_float_to_float16(onnx.load(str(work / MODEL_FILE)), keep_io_types=False)
    target = work / VARIANT_FILES["fp16"]
    if external:
        onnx.save_model(half, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + EXTERNAL_DATA_SUFFIX)
    else:
        write_atomic(target, half.SerializeToString())


def _variant_report(work: Path, variant: str, ids: np.ndarray, ref: np.ndarray, n_prompt: int, mc) -> dict:
    got, times = run_cached(open_graph(work / VARIANT_FILES[variant], mc), ids, n_prompt)
    return {"file": VARIANT_FILES[variant], "bytes": graph_bytes(work / VARIANT_FILES[variant]),
            "max_logit_diff_vs_torch": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()),
            "decode_ms_median": 1000 * statistics.median(times)}


def export_from_cli(out_dir: str | os.PathLike, make_card: Callable[[], dict], then: str) -> int:
    """A CLI's export (`make_card` writes the model and returns its card): the card's summary and exit 0, or
    `error: ...` (saying how to continue: `then`) and exit 1."""
    try:
        card = make_card()
    except (PlaygroundError, OSError) as e:
        return cli.report_error(e, then)
    print_card(out_dir, card)
    return 0


def print_card(out_dir: str | os.PathLike, card: dict) -> None:
    """The CLI's summary of an export: parity, then size, drift and latency per variant, then its cost."""
    print(f"exported {out_dir}: {card['parameters']['total']:,} parameters, parity "
          f"{card['parity']['max_abs_logit_diff']:.2e}")
    for name, v in card["variants"].items():
        # an int8 variant is judged by its next tokens' agreement, the others by their logits' distance
        drift = f", top-1 agreement {v['top1_agreement']:.3f}" if "top1_agreement" in v else ""
        diff = (f", max logit diff {v['max_logit_diff_vs_torch']:.2e}" if "max_logit_diff_vs_torch" in v else "")
        speed = (f"{v['decode_ms_median']:.3f} ms/decode step" if "decode_ms_median" in v else
                 f"{v['full_pass_ms_median']:.3f} ms/full pass (a masked LM)")
        print(f"  {name}: {v['file']} {v['bytes'] / 1e6:.2f} MB{diff}, {speed}{drift}")
    cost = card.get("export") or {}
    if cost:
        print(f"  took {cost['seconds']:.1f} s, peak memory {cost['peak_rss_mb']:.0f} MB"
              + ("" if cost.get("peak_since_start") else " (the process's lifetime peak)"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.export",
                                description="Export a checkpoint (or a run directory's newest one) to ONNX.")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint file or a run directory")
    p.add_argument("out_dir", nargs="?", help="the model directory to create, e.g. exported/shakespeare-byte")
    p.add_argument("--add-inspection", metavar="MODEL_DIR",
                   help="instead of exporting: add the inspection graphs (inspect.onnx, lens.onnx) to a model "
                        "exported before they existed, and to its exported checkpoints, from model.onnx's own "
                        "weights (model.onnx is not changed)")
    p.add_argument("--int8", action="store_true",
                   help="also write an int8 variant, kept only if its next tokens agree with fp32's on "
                        + f"{QuantizeConfig.min_agreement:.0%}".replace("%", "%%")
                        + " of positions (python -m core.quantize says how)")
    p.add_argument("--int8-approximate", action="store_true",
                   help="with --int8: keep the variant even below that bar, labelled approximate")
    p.add_argument("--fp16", action="store_true", help="also write an fp16 variant")
    p.add_argument("--opset", type=int, default=ExportConfig.opset)
    p.add_argument("--kv-cache", choices=KV_LAYOUTS, default=ExportConfig.kv_cache,
                   help="model.onnx's cache layout: shared (one buffer per layer, written in place; "
                        "onnxruntime) or concat (plain ONNX, a copy of the cache every step)")
    p.add_argument("--checkpoints", action="store_true",
                   help="also export the run's earlier checkpoints into OUT_DIR/checkpoints/step_N "
                        "(the pages' checkpoint scrubber)")
    args = p.parse_args(argv)
    if args.add_inspection:
        if args.checkpoint or args.out_dir:
            p.error("--add-inspection takes only the model directory")

        try:
            for step_dir in [d for _, d in model_checkpoints(args.add_inspection)] + [Path(args.add_inspection)]:
                entry = add_inspection(step_dir, say=print)[INSPECTION_CARD_KEY]
                print(f"added {INSPECT_FILE} and {LENS_FILE} to {step_dir}: max difference from torch "
                      f"{entry['max_abs_diff']:.2e}")
        except (PlaygroundError, OSError) as e:
            return cli.report_error(e, "export the model again from its checkpoint")
        return 0
    if not (args.checkpoint and args.out_dir):
        p.error("give a checkpoint (or run directory) and the model directory to create")

    def export_all() -> dict:
        card = export_model(args.checkpoint, args.out_dir,
                            ExportConfig(opset=args.opset, kv_cache=args.kv_cache, int8=args.int8 or args.int8_approximate,
                                         int8_approximate=args.int8_approximate, fp16=args.fp16))
        if args.checkpoints:
            from core.checkpoint import list_checkpoints
            final = card["training"]["step"]
            for step, path in list_checkpoints(args.checkpoint):
                if step != final:
                    export_model(path, model_checkpoint_dir(args.out_dir, step),
                                 ExportConfig(parity_steps=10, kv_cache=args.kv_cache))
        return card
    return export_from_cli(args.out_dir, export_all,
                           "free some space and export again: nothing half-written was kept")


if __name__ == "__main__":
    sys.exit(main())
