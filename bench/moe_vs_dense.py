"""A mixture of experts against a dense model at equal active parameters (and so equal compute per token),
trained on tiny shakespeare by core's trainer with the same data, steps, batch and seed.

    flock /tmp/cpu.lock .venv/bin/python bench/moe_vs_dense.py                 # ~3-5 min on 2 busy cores
    flock /tmp/cpu.lock .venv/bin/python bench/moe_vs_dense.py --save          # also commit the mixture

Models (byte tokens, 2 layers x 4 heads x 64 wide, block 64): dense (one GELU MLP of 256 per block); moe
(4 such MLPs per block, top-1 as Switch: the same active parameters plus a 64 x 4 router, so the same FLOPs
per token within 0.4 %); moe-top2 (8 MLPs of 128, top-2 renormalised as Mixtral: the same again); --big adds
a dense model whose MLP is 4 x wider (the mixture's total parameters). Prints each one's val-loss curve, the
final exact val loss over every window of the val split, the balance loss, each expert's share of the val
split's tokens per layer, the tokens each expert receives most, and decode ms/token of the exported graphs in
onnxruntime (batch 1, 1 thread, interleaved). --save exports moe to exported/shakespeare-moe with the
comparison (core.moe.REPORT_FILE) for the Inside page's Experts tab.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import ROOT, default_data_dir, median, set_threads

SHAPE = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, pos_encoding="rope")
MODELS = {
    "dense": dict(mlp_hidden=256),
    # Switch Transformer's top-1, each expert weighted by its raw probability: renormalised over one expert
    # the weight would always be 1 and the router would learn from the balance loss alone
    "moe": dict(mlp_hidden=256, n_experts=4, moe_top_k=1, moe_aux_coef=0.01, moe_normalize=False),
    # Mixtral's top-2 of 8 half-width experts, renormalised: the same active parameters again
    "moe-top2": dict(mlp_hidden=128, n_experts=8, moe_top_k=2, moe_aux_coef=0.01),
    "dense-big": dict(mlp_hidden=1024),        # --big: the mixture's total parameters, all active
}
SAVED = "moe"               # the mixture --save commits (its routing is what the report describes)


def train_one(name: str, kw: dict, args, work: Path) -> dict:
    from core.config import ModelConfig, TrainConfig, count_parameters, flops_per_token
    from core.train import EvalResult, TrainStep, train
    mc = ModelConfig(**SHAPE, **kw)
    cfg = TrainConfig(out_dir=str(work / name), corpus="tinyshakespeare", data_dir=default_data_dir(), tokenizer="byte",
                      batch_size=args.batch, max_steps=args.steps, eval_interval=max(1, args.steps // 8),
                      eval_iters=args.eval_iters, learning_rate=3e-3, min_lr=3e-4, warmup_steps=30, threads=args.threads,
                      checkpoint_interval=0, exact_final_eval=True, seed=1337)
    curve, aux, t0 = [], [], time.perf_counter()
    for rec in train(cfg, mc):
        if isinstance(rec, EvalResult):
            curve.append({"step": rec.step, "val_loss": rec.val_loss, "train_loss": rec.train_loss})
        elif isinstance(rec, TrainStep) and rec.aux_loss is not None:
            aux.append({"step": rec.step, "aux_loss": rec.aux_loss})
    wall = time.perf_counter() - t0
    p = count_parameters(mc)
    print(f"{name:10s} params total {p['total']:,} active {p['active']:,}  train FLOPs/token {flops_per_token(mc):,.0f}  "
          f"exact val {curve[-1]['val_loss']:.4f}  wall {wall:.0f} s", flush=True)
    return {"name": name, "model_config": mc.to_dict(), "parameters": p, "flops_per_token": flops_per_token(mc),
            "curve": curve, "aux_curve": aux[::max(1, len(aux) // 100)], "wall_s": wall, "run": str(work / name)}


def routing_report(run: str, windows: int = 256) -> dict:
    """The trained mixture's routing over the first `windows` 64-token windows of the val split."""
    import numpy as np
    import torch
    from core import moe
    from core.checkpoint import load_model
    from core.data import load_corpus, prepare_dataset
    from core.tokenizer import byte_tokenizer
    model, _ = load_model(run)
    model.eval()
    tok = byte_tokenizer()
    corpus = load_corpus("tinyshakespeare", default_data_dir())
    data = prepare_dataset(corpus, tok, default_data_dir(), 0.1)
    T = model.config.block_size
    val = np.asarray(data.val[:windows * T], dtype=np.int64).reshape(-1, T)
    with torch.no_grad():
        out = model(torch.from_numpy(val))
    E = model.config.n_experts
    experts = out.expert_ids.numpy()                                      # (B, T, L, k)
    shares = moe.expert_shares(experts, E)
    top = moe.tokens_by_expert(val, experts, E, top=8)
    label = {t: tok.token_text(t) for t in range(tok.n_vocab)}
    return {"tokens": int(val.size), "shares": shares.tolist(),
            "top_tokens": [[[{"token": label[t], "count": c, "share": s} for t, c, s in ex] for ex in layer]
                           for layer in top]}


def decode_ms(dirs: dict[str, Path], n: int = 120, rounds: int = 5) -> dict[str, float]:
    """Median ms per cached decode step, batch 1, one onnxruntime thread, the models interleaved."""
    import numpy as np
    from core.runtime import Model
    models = {name: Model(d, threads=1) for name, d in dirs.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            logits, cache = m.step(np.array([[10]]))
            for _ in range(min(n, m.block_size - 1)):
                t0 = time.perf_counter()
                logits, cache = m.step(np.array([[int(logits[0, -1].argmax())]]), cache)
                times[name].append(time.perf_counter() - t0)
    return {name: 1000 * median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--big", action="store_true", help="also a dense model with the mixture's total parameters")
    p.add_argument("--no-export", action="store_true", help="skip the export and the decode timing")
    p.add_argument("--save", action="store_true", help="write the mixture and the report to exported/shakespeare-moe")
    args = p.parse_args()
    set_threads(args.threads)
    from core import moe
    from core.export import ExportConfig, export_model

    names = ["dense", "moe", "moe-top2"] + (["dense-big"] if args.big else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {n: train_one(n, MODELS[n], args, work) for n in names}
        d = results["dense"]
        print(f"\nval loss by step ({' | '.join(names)}):")
        for i, point in enumerate(d["curve"]):
            row = " | ".join(f"{results[n]['curve'][i]['val_loss']:.4f}" for n in names)
            print(f"  step {point['step']:5d}: {row}")
        for n in names[1:]:
            r = results[n]
            print(f"final (exact val): {n} - dense = {r['curve'][-1]['val_loss'] - d['curve'][-1]['val_loss']:+.4f} nats; "
                  f"FLOPs/token {n}/dense = {r['flops_per_token'] / d['flops_per_token']:.4f}; "
                  f"wall {n}/dense = {r['wall_s'] / d['wall_s']:.2f}")
            if r["aux_curve"]:
                print(f"  {n} balance loss (1 = balanced, {r['model_config']['n_experts']} = collapsed): first "
                      f"{r['aux_curve'][0]['aux_loss']:.3f}, last {r['aux_curve'][-1]['aux_loss']:.3f}")
        routing = routing_report(results[SAVED]["run"])
        print(f"\n{SAVED}: expert shares of the val split's first {routing['tokens']:,} tokens (per layer):")
        for layer, row in enumerate(routing["shares"]):
            print(f"  layer {layer}: " + "  ".join(f"E{e} {s:.3f}" for e, s in enumerate(row)))
        print("\ntokens each expert receives most (count, share of that token's occurrences):")
        for layer, experts in enumerate(routing["top_tokens"]):
            for e, top in enumerate(experts):
                print(f"  L{layer} E{e}: " + ", ".join(f"{t['token']!r} {t['count']} ({t['share']:.0%})" for t in top))
        report = {"shape": SHAPE, "steps": args.steps, "batch": args.batch, "models": results, "routing": routing}
        if not args.no_export:
            dirs = {}
            for n in ("dense", "moe", "moe-top2"):
                dirs[n] = work / f"{n}-export"
                card = export_model(results[n]["run"], dirs[n], ExportConfig(parity_steps=20))
                results[n]["parity"] = card["parity"]["max_abs_logit_diff"]
            ms = decode_ms(dirs)
            report["decode_ms"] = ms
            print("\nonnxruntime decode, batch 1, 1 thread (an exported mixture runs every expert and zeroes the "
                  "ones not chosen):")
            for n, t in ms.items():
                print(f"  {n:9s} {t:.3f} ms/token ({t / ms['dense']:.2f}x dense), max |logits - torch| "
                      f"{results[n]['parity']:.2g}")
            if args.save:
                for r in results.values():
                    r.pop("run")
                target = ROOT / "exported" / "shakespeare-moe"
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(dirs[SAVED], target)
                (target / moe.REPORT_FILE).write_text(json.dumps(report, indent=1))
                print(f"saved {target}")


if __name__ == "__main__":
    main()
