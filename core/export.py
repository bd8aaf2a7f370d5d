"""Export: a trained checkpoint becomes a self-contained ONNX model directory, checked for parity.

Holds `export_model()` and its CLI (`python -m core.export CHECKPOINT OUT_DIR`). It writes
`OUT_DIR/` with:
  model.onnx       one graph for prefill, cached decode and full recomputation:
                   input_ids [batch, seq] + past_key_values.{i}.key|value [batch, heads, past, head_dim]
                   -> logits [batch, seq, vocab] + present.{i}.key|value; positions start at past
                   inside the graph, and past may be 0.
  attention.onnx   input_ids -> logits + attn.{i} [batch, heads, seq, seq], and each layer's q.{i},
                   k.{i}, v.{i} [batch, heads, seq, head_dim], heads.{i} and proj.{i} [batch, seq, n_embd]:
                   the explicit attention path for the pages, kept out of model.onnx so decoding
                   never pays for it.
  model.int8.onnx / model.fp16.onnx   optional variants, with size and logit drift in the card.
  tokenizer/       the tokenizer (tiktoken rank file + JSON).
  card.json        config, parameter counts, tokenizer, data sha256, losses, parity and latency.
Every export runs torch and onnxruntime side by side over a prompt and cached decode steps and fails
loudly when the logits differ by more than the tolerance.

Deliberately not here: running exported models (`core.runtime`, which never imports torch), training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.catalog import (ATTENTION_FILE, CARD_FILE, FORMAT, MODEL_FILE, RUN_FILE, TOKENIZER_DIR, VARIANT_FILES,
                          model_checkpoint_dir, read_log, scrub_paths, shown_path)
from core.checks import PlaygroundError
from core.checkpoint import load_model
from core.files import make_readable, write_atomic
from core.model import GPT
from core.runtime import ATTENTION_PARTS
from core.tokenizer import load_tokenizer


class ExportError(PlaygroundError):
    """The export cannot be made or failed its parity check; nothing is left in the target."""


@dataclass
class ExportConfig:
    opset: int = 18               # 18: the dynamo exporter's well-trodden path, run by onnxruntime >= 1.14
    parity_tolerance: float = 1e-4    # max |logit difference| torch vs onnxruntime (fp32) before failing
    parity_prompt: int = 8        # prompt tokens prefilled in the parity check
    parity_steps: int = 50        # cached decode steps after it (fewer if the context is shorter)
    int8: bool = False            # also write a dynamically quantized int8 model (smaller, faster matmuls)
    fp16: bool = False            # also write an fp16 model (half the size; slower on most CPUs)
    seed: int = 0                 # for the parity check's random tokens


def _names(n_layer: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


class _CachedGraph(torch.nn.Module):
    """input_ids + flat past -> logits + flat present (what model.onnx computes)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        out = self.model(input_ids, past=past, use_cache=True)
        return out.logits, [t for kv in out.present for t in kv]


class _AttentionGraph(torch.nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids, return_attention=True)
        parts = [[p[kind] for p in out.attention_parts] for kind in ATTENTION_PARTS]
        return out.logits, out.attentions, *parts


def _export(module, args, dynamic_shapes, input_names, output_names, path: Path, opset: int,
            metadata: dict) -> None:
    import onnx
    module.eval()
    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                opset_version=opset, input_names=input_names,
                                output_names=output_names, verbose=False)
    program.save(str(path), external_data=False)   # one self-contained file: no external data paths
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_atomic(path, proto.SerializeToString())


def _export_cached(model: GPT, path: Path, io: dict, metadata: dict, opset: int) -> None:
    """The prefill / cached-decode graph, dynamic in batch, sequence and past length. The example has
    batch 2, seq 3 and past 4, so that no dimension specializes to 0 or 1."""
    mc = model.config
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=mc.block_size)
    past_len = torch.export.Dim("past", min=0, max=mc.block_size)
    example = (torch.randint(0, mc.vocab_size, (2, 3)),
               [torch.zeros(2, mc.n_head, 4, mc.head_dim) for _ in range(2 * mc.n_layer)])
    _export(_CachedGraph(model), example,
            {"input_ids": {0: batch, 1: seq}, "past_flat": [{0: batch, 2: past_len} for _ in range(2 * mc.n_layer)]},
            io["inputs"], io["outputs"], path, opset, metadata)


def _session(path: Path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_cached(sess, ids: np.ndarray, n_prompt: int, n_layer: int, n_head: int, head_dim: int,
                dtype=np.float32) -> tuple[np.ndarray, list[float]]:
    """Prefill n_prompt tokens, then decode the rest one by one; logits (B, T, V) and step times."""
    B = ids.shape[0]
    past = {name: np.zeros((B, n_head, 0, head_dim), dtype) for name in _names(n_layer, "past_key_values")}
    outs = sess.run(None, {"input_ids": ids[:, :n_prompt], **past})
    logits, times = [outs[0]], []
    for t in range(n_prompt, ids.shape[1]):
        feeds = {"input_ids": ids[:, t:t + 1]}
        feeds.update(zip(_names(n_layer, "past_key_values"), outs[1:]))
        t0 = time.perf_counter()
        outs = sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
        logits.append(outs[0])
    return np.concatenate(logits, axis=1).astype(np.float32), times


def export_model(source: str | os.PathLike, out_dir: str | os.PathLike,
                 cfg: ExportConfig | None = None) -> dict:
    """Export a checkpoint (file or run directory) to `out_dir`; returns the card.

    Writes into a temporary sibling directory and renames it into place only after the parity check
    passes, so a failed export never leaves a half-written model where the app would list it.
    """
    cfg = cfg or ExportConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} already exists and is not empty; choose another directory or remove it")
    model, ckpt = load_model(source)
    model = model.float().eval()
    mc = model.config
    run_dir = ckpt.path.parent.parent
    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR)
    if tokenizer.n_vocab != mc.vocab_size:
        raise ExportError(f"the tokenizer in {run_dir / TOKENIZER_DIR} has {tokenizer.n_vocab} ids but the "
                          f"model expects {mc.vocab_size}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    make_readable(work, directory=True)
    try:
        card = _export_into(work, out_dir.name, model, ckpt, run_dir, tokenizer, cfg)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return card


def _export_into(work: Path, name: str, model: GPT, ckpt, run_dir: Path, tokenizer, cfg: ExportConfig) -> dict:
    mc = model.config
    L, H, D = mc.n_layer, mc.n_head, mc.head_dim
    io = {"inputs": ["input_ids"] + _names(L, "past_key_values"),
          "outputs": ["logits"] + _names(L, "present"),
          "past_shape": ["batch", "n_head", "past", "head_dim"],
          "attention_outputs": [f"attn.{i}" for i in range(L)],
          # the attention graph's inner vectors, for the Learn page's step-by-step attention
          "attention_parts": {kind: [f"{kind}.{i}" for i in range(L)] for kind in ATTENTION_PARTS}}
    metadata = {"llm_playground.format": FORMAT, "llm_playground.model_config": json.dumps(mc.to_dict()),
                "llm_playground.io": json.dumps(io), "llm_playground.tokenizer": tokenizer.name}

    _export_cached(model, work / MODEL_FILE, io, metadata, cfg.opset)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=mc.block_size)
    _export(_AttentionGraph(model), (torch.randint(0, mc.vocab_size, (2, 3)),),
            {"input_ids": {0: batch, 1: seq}}, ["input_ids"],
            ["logits"] + io["attention_outputs"] + [n for kind in ATTENTION_PARTS for n in io["attention_parts"][kind]],
            work / ATTENTION_FILE, cfg.opset, metadata)

    # -- parity: onnxruntime prefill + cached decode vs torch full recomputation
    n_prompt = min(cfg.parity_prompt, mc.block_size - 1)
    n_total = min(n_prompt + cfg.parity_steps, mc.block_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    seq_ids = torch.randint(0, mc.vocab_size, (1, n_total), generator=gen)
    with torch.no_grad():
        ref = model(seq_ids).logits.numpy()
        ref_out = model(seq_ids, return_attention=True)
        ref_attn = [a.numpy() for a in ref_out.attentions]
        ref_attn += [p[kind].numpy() for kind in ATTENTION_PARTS for p in ref_out.attention_parts]
    sess = _session(work / MODEL_FILE)
    got, step_times = _run_cached(sess, seq_ids.numpy(), n_prompt, L, H, D)
    parity = float(np.abs(got - ref).max())
    attn_outs = _session(work / ATTENTION_FILE).run(None, {"input_ids": seq_ids.numpy()})
    attn_parity = max(float(np.abs(a - b).max()) for a, b in zip(attn_outs[1:], ref_attn))
    attn_logit_parity = float(np.abs(attn_outs[0] - ref).max())
    worst = max(parity, attn_logit_parity)
    if not math.isfinite(worst) or worst > cfg.parity_tolerance:
        raise ExportError(f"parity check failed: max |logits torch - onnxruntime| = {worst:.3g} over a "
                          f"{n_prompt}-token prefill and {n_total - n_prompt} cached steps, above the "
                          f"tolerance {cfg.parity_tolerance:g}; the export was not kept")
    if attn_parity > cfg.parity_tolerance:
        raise ExportError(f"attention probabilities differ from torch's explicit path by {attn_parity:.3g}")

    variants = {"fp32": {"file": MODEL_FILE, "bytes": (work / MODEL_FILE).stat().st_size,
                         "max_logit_diff_vs_torch": parity,
                         "decode_ms_median": 1000 * statistics.median(step_times)}}
    if cfg.int8:
        _export_int8(model, work, io, metadata, cfg)
        variants["int8"] = _variant_report(work, "int8", seq_ids.numpy(), ref, n_prompt, L, H, D, np.float32)
    if cfg.fp16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
        half = convert_float_to_float16(onnx.load(str(work / MODEL_FILE)), keep_io_types=False)
        write_atomic(work / VARIANT_FILES["fp16"], half.SerializeToString())
        variants["fp16"] = _variant_report(work, "fp16", seq_ids.numpy(), ref, n_prompt, L, H, D, np.float16)

    tokenizer.save(work / TOKENIZER_DIR)
    run_info = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
    last_eval = ckpt.meta.get("eval") or {}
    card = {
        "format": FORMAT,
        "name": name,
        "model_config": mc.to_dict(),
        "parameters": model.count_parameters(),
        "flops_per_token": model.flops_per_token(),
        "tokenizer": {"name": tokenizer.name, "kind": tokenizer.kind, "n_vocab": tokenizer.n_vocab},
        "training": {"step": ckpt.step, "tokens_seen": ckpt.meta["state"].get("tokens_seen"),
                     "train_config": _portable_train_config(ckpt.meta.get("train_config")),
                     "corpus": run_info.get("corpus") and shown_path(run_info["corpus"]),
                     "corpus_sha256": ckpt.meta.get("corpus_sha256"),
                     "command": _portable_command(run_info.get("command"), ckpt.meta.get("train_config")),
                     # the loss curve, for the Models page (evals only: a few dozen points)
                     "curve": [{k: r[k] for k in ("step", "train_loss", "val_loss", "val_bits_per_byte")}
                               for r in read_log(run_dir) if r.get("type") == "EvalResult"
                               and r["step"] <= ckpt.step]},
        "train_loss": last_eval.get("train_loss"),
        "val_loss": last_eval.get("val_loss"),
        "val_bits_per_byte": last_eval.get("val_bits_per_byte"),
        "io": io,
        "parity": {"max_abs_logit_diff": parity, "attention_max_abs_diff": attn_parity,
                   "prefill_tokens": n_prompt, "cached_steps": n_total - n_prompt,
                   "tolerance": cfg.parity_tolerance},
        "variants": variants,
        "opset": cfg.opset,
        "exported_with": {"torch": torch.__version__},
    }
    write_atomic(work / CARD_FILE, json.dumps(card, indent=2).encode())
    return card


PATH_FIELDS = ("out_dir", "corpus", "data_dir", "tokenizer")    # TrainConfig fields that may hold a path


def _portable_train_config(cfg: dict | None) -> dict | None:
    """The training settings as a shared card should carry them: no absolute path of the machine that
    trained (a card travels with the model; the corpus is identified by its sha256)."""
    if not cfg:
        return cfg
    return {k: (shown_path(v) if k in PATH_FIELDS and isinstance(v, str) else v) for k, v in cfg.items()}


def _portable_command(command: str | None, cfg: dict | None) -> str | None:
    """The training command with the same paths shortened as in the card's settings."""
    if not command:
        return command
    for k in PATH_FIELDS:
        v = (cfg or {}).get(k)
        if isinstance(v, str) and os.path.isabs(v):
            command = command.replace(v, shown_path(v))
    return scrub_paths(command)


def _export_int8(model: GPT, work: Path, io: dict, metadata: dict, cfg: ExportConfig) -> None:
    """Dynamic int8 quantization of every MatMul weight, per output channel.

    A tied head reaches its MatMul through a Transpose of the embedding, which quantize_dynamic
    leaves in fp32; at batch 1 the head is a large share of the bytes read per token, so the int8
    graph is exported from an untied copy (same values) whose head is a plain weight."""
    import copy

    from onnxruntime.quantization import QuantType, quantize_dynamic
    untied = copy.deepcopy(model)
    if model.config.tie_embeddings:
        untied.config = dataclasses.replace(model.config, tie_embeddings=False)
        untied.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    fp32 = work / "untied.fp32.onnx"
    _export_cached(untied, fp32, io, metadata, cfg.opset)
    try:
        quantize_dynamic(str(fp32), str(work / VARIANT_FILES["int8"]), weight_type=QuantType.QInt8,
                         per_channel=True)
    finally:
        fp32.unlink(missing_ok=True)


def _variant_report(work: Path, variant: str, ids: np.ndarray, ref: np.ndarray, n_prompt: int,
                    L: int, H: int, D: int, dtype) -> dict:
    sess = _session(work / VARIANT_FILES[variant])
    got, times = _run_cached(sess, ids, n_prompt, L, H, D, dtype)
    return {"file": VARIANT_FILES[variant], "bytes": (work / VARIANT_FILES[variant]).stat().st_size,
            "max_logit_diff_vs_torch": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()),
            "decode_ms_median": 1000 * statistics.median(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.export",
                                description="Export a checkpoint (or a run directory's newest one) to ONNX.")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory")
    p.add_argument("out_dir", help="the model directory to create, e.g. exported/shakespeare-byte")
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantized int8 variant")
    p.add_argument("--fp16", action="store_true", help="also write an fp16 variant")
    p.add_argument("--opset", type=int, default=ExportConfig.opset)
    p.add_argument("--checkpoints", action="store_true",
                   help="also export the run's earlier checkpoints into OUT_DIR/checkpoints/step_N "
                        "(the pages' checkpoint scrubber)")
    args = p.parse_args(argv)
    try:
        card = export_model(args.checkpoint, args.out_dir, ExportConfig(opset=args.opset, int8=args.int8,
                                                                        fp16=args.fp16))
        if args.checkpoints:
            from core.checkpoint import list_checkpoints
            final = card["training"]["step"]
            for step, path in list_checkpoints(args.checkpoint):
                if step != final:
                    export_model(path, model_checkpoint_dir(args.out_dir, step),
                                 ExportConfig(parity_steps=10))
    except (ExportError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported {args.out_dir}: {card['parameters']['total']:,} parameters, parity "
          f"{card['parity']['max_abs_logit_diff']:.2e}")
    for name, v in card["variants"].items():
        drift = f", top-1 agreement {v['top1_agreement']:.3f}" if "top1_agreement" in v else ""
        print(f"  {name}: {v['file']} {v['bytes'] / 1e6:.2f} MB, max logit diff {v['max_logit_diff_vs_torch']:.2e}, "
              f"{v['decode_ms_median']:.3f} ms/decode step{drift}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
