"""Tiny-shakespeare CPU speedrun (after modded-nanogpt's): nanoGPT's own recipe and ours, in one process,
interleaved, on byte tokens and nanoGPT's split (the last 10 % held out).

    python bench/speedrun.py                    # (a) nanogpt and ours x --repeat, then (b) a 5-minute run
    python bench/speedrun.py --only a --repeat 2
    python bench/speedrun.py --only b --budget 300
    python bench/speedrun.py --profile          # MFU and a torch.profiler table of a step of (b)'s recipe
    python bench/speedrun.py --profile ours     # ... of (a)'s recipe
    python bench/speedrun.py --attempt ours --set n_layer=6 --set muon_lr=0.03   # one recipe, for a search

(a) wall time until the val estimate (eval_iters=200 batches, as nanoGPT) is <= --target, the clock running
from the call to the trainer (data, model, every evaluation included), and the exact loss over the whole val
split at the end; the ratio ours / nanoGPT per pair. (b) the exact val loss of a run whose whole wall time
(training, evals and the final exact eval) fits in --budget seconds. MFU is against the *median* matmul
rate of the dtype used, measured in the same run (bench/common.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

from common import default_data_dir, matmul_median_gflops, set_threads
from train_shakespeare import RECIPES as SHAKESPEARE_RECIPES

MODEL_NANOGPT = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)

# name: (train overrides, model overrides). Evaluations: nanoGPT's every 250 steps; ours as few as the
# claim needs (the estimate at the end, then the exact loss once).
RECIPES = {
    "nanogpt": (dict(batch_size=12, eval_interval=250, eval_iters=200, **SHAKESPEARE_RECIPES["nanogpt"]["train"]),
                dict(MODEL_NANOGPT, **SHAKESPEARE_RECIPES["nanogpt"]["model"])),
    # (a): fixed steps, landing under 1.88 with a margin; one eval at the end
    "ours": (dict(optimizer="muon", muon_lr=0.04, learning_rate=4e-3, min_lr=4e-4, warmup_steps=30,
                  batch_size=12, max_steps=380, eval_interval=0, eval_iters=200, eval_batch_size=12,
                  eval_at_start=False, eval_train=False),
             dict(MODEL_NANOGPT, pos_encoding="rope")),
    # (b): a time budget; the lr decay ends on the deadline. Three layers and a 256-byte context (bench/README's
    # log, attempts 11-16); a 40-batch estimate, since the exact loss over the whole split is the figure
    "ours5": (dict(optimizer="muon", muon_lr=0.04, learning_rate=4e-3, min_lr=4e-4, warmup_steps=30,
                   batch_size=12, max_steps=10 ** 9, eval_interval=0, eval_iters=40, eval_batch_size=12,
                   eval_at_start=False, eval_train=False),
              dict(MODEL_NANOGPT, pos_encoding="rope", n_layer=3, block_size=256)),
}


def configs(name: str, out_dir: str, threads: int, sets: list[str], max_seconds: float = 0.0):
    from core.config import ModelConfig, TrainConfig
    tkw, mkw = dict(RECIPES[name][0]), dict(RECIPES[name][1])
    tfields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    mfields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for item in sets:
        key, value = item.split("=", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass                                # a word (rope, muon, linear, ...) stays a string
        if key in tfields:
            tkw[key] = value
        elif key in mfields:
            mkw[key] = value
        else:
            raise SystemExit(f"--set {key}: not a TrainConfig or ModelConfig field")
    if max_seconds:
        tkw["max_seconds"] = max_seconds
    cfg = TrainConfig(out_dir=out_dir, data_dir=default_data_dir(), checkpoint_interval=0, threads=threads,
                      dtype=tkw.pop("dtype", "float32"), exact_final_eval=True, **tkw)
    return cfg, ModelConfig(**mkw)


def run(name: str, args, target: float, max_seconds: float = 0.0, sets: list[str] = ()) -> dict:
    """One run; the wall clock starts at the trainer's call."""
    from core.train import EvalResult, RunFinished, RunStarted, TrainStep, train
    cfg, mcfg = configs(name, tempfile.mkdtemp(prefix=f"speedrun-{name}-"), args.threads, list(sets), max_seconds)
    t0 = time.perf_counter()
    hit, train_s, steps, evals = None, 0.0, 0, []
    info = {}
    for rec in train(cfg, mcfg):
        if isinstance(rec, RunStarted):
            info = dict(flops_per_token=rec.flops_per_token, tokens_per_step=rec.tokens_per_step,
                        params=rec.parameters["total"], dtype=rec.dtype)
        elif isinstance(rec, TrainStep):
            steps += 1
            train_s += info["tokens_per_step"] / rec.tokens_per_s
        elif isinstance(rec, EvalResult):
            estimate = rec.val_loss if rec.val_loss_estimate is None else rec.val_loss_estimate
            evals.append((rec.step, round(estimate, 4), round(time.perf_counter() - t0, 1)))
            if hit is None and estimate <= target:
                hit = time.perf_counter() - t0
        elif isinstance(rec, RunFinished):
            final = rec.final
    wall = time.perf_counter() - t0
    out = dict(recipe=name, sets=list(sets), steps=steps, train_s=round(train_s, 1), wall_s=round(wall, 1),
               hit_s=None if hit is None else round(hit, 1),
               estimate=round(final.val_loss_estimate if final.val_loss_estimate is not None else final.val_loss, 4),
               exact=round(final.val_loss, 4), evals=evals, ms_per_step=round(1000 * train_s / max(steps, 1), 1),
               tokens_per_s=round(steps * info["tokens_per_step"] / max(train_s, 1e-9)), **info)
    print(json.dumps(out), flush=True)
    return out


def mfu(r: dict, peak_gflops: float) -> float:
    return r["tokens_per_s"] * r["flops_per_token"] / (peak_gflops * 1e9)


def profile(args, recipe: str, sets: list[str]) -> None:
    """torch.profiler over a few of one recipe's training steps (after warm-up): top ops by self CPU time,
    and the step's time by kind of work, with matmuls' share of the median peak."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile, record_function

    from core.data import load_corpus, prepare_dataset
    from core.model import GPT
    from core.tokenizer import byte_tokenizer
    from core.train import make_optimizer, set_lr
    cfg, mcfg = configs(recipe, "/tmp/unused", args.threads, sets)
    mcfg = dataclasses.replace(mcfg, vocab_size=257)
    data = prepare_dataset(load_corpus("tinyshakespeare", default_data_dir()), byte_tokenizer(), default_data_dir())
    torch.manual_seed(0)
    model = GPT(mcfg)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    set_lr(opt, cfg.learning_rate, cfg)
    rng = np.random.default_rng(0)

    def step():
        with record_function("## data"):
            x, y = data.get_batch("train", cfg.batch_size, mcfg.block_size, rng)
            x, y = torch.from_numpy(x), torch.from_numpy(y)
        with record_function("## forward"):
            loss = model(x, y).loss
        with record_function("## backward"):
            loss.backward()
        with record_function("## clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        with record_function("## optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    n = 20
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    peak = matmul_median_gflops()
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    print(f"\nprofile: {n} steps of recipe {recipe!r} {json.dumps(sets)}; {total / n / 1000:.1f} ms/step of self CPU time")
    print(ka.table(sort_by="self_cpu_time_total", row_limit=18))
    kinds = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
             "attention (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
             "GELU": ("aten::gelu", "aten::gelu_backward"),
             "layer norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
             "loss (log-softmax, NLL)": ("aten::_log_softmax", "aten::_log_softmax_backward_data",
                                         "aten::nll_loss_forward", "aten::nll_loss_backward"),
             "embedding": ("aten::embedding_dense_backward", "aten::index_select", "aten::embedding"),
             "AdamW (fused)": ("aten::_fused_adamw_",)}
    self_us = {e.key: e.self_cpu_time_total for e in ka}
    shown = 0.0
    print("time by kind of work (self CPU time, all ops incl. Muon's Newton-Schulz matmuls):")
    for kind, names in kinds.items():
        t = sum(self_us.get(k, 0) for k in names)
        shown += t
        print(f"  {kind:26s} {100 * t / total:5.1f} %  {t / n / 1000:6.2f} ms/step")
    print(f"  {'everything else':26s} {100 * (total - shown) / total:5.1f} %  {(total - shown) / n / 1000:6.2f} ms/step")
    regions = {e.key: e.cpu_time_total for e in ka if e.key.startswith("## ")}
    step_us = sum(regions.values())
    print("time by phase (wall inside each region):")
    for k, v in regions.items():
        print(f"  {k[3:]:12s} {100 * v / step_us:5.1f} %  {v / n / 1000:6.2f} ms/step")
    # the model's matmul FLOPs (6N per token, no attention) against the time its matmuls took; Muon's
    # Newton-Schulz matmuls run inside the optimizer region and are not model FLOPs
    from core.config import count_parameters
    tokens = cfg.batch_size * mcfg.block_size
    model_mm_flops = 6 * (count_parameters(mcfg)["non_embedding"] + mcfg.vocab_size * mcfg.n_embd) * tokens
    mm_opt = sum(e.self_cpu_time_total for e in ka if e.key in kinds["matmul"]) / n
    print(f"all matmuls incl. the optimizer's: {mm_opt / 1000:.2f} ms/step; model matmul FLOPs "
          f"{model_mm_flops / 1e9:.3f} GFLOP/step; median fp32 peak {peak:.0f} GFLOP/s")
    step_s = step_us / n / 1e6
    print(f"MFU of the profiled step (6N + attention FLOPs, {1000 * step_s:.1f} ms/step): "
          f"{100 * mcfg_flops(mcfg) * tokens / step_s / (peak * 1e9):.1f} % of the median peak")


def mcfg_flops(mcfg) -> float:
    from core.config import flops_per_token
    return flops_per_token(mcfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["a", "b", "both"], default="both")
    p.add_argument("--repeat", type=int, default=2, help="(a): pairs of runs, nanogpt and ours interleaved")
    p.add_argument("--budget", type=float, default=300.0, help="(b): whole wall seconds of the timed run")
    p.add_argument("--final-eval-s", type=float, default=15.0,
                   help="(b): seconds kept for the final evaluation out of --budget")
    p.add_argument("--first", choices=["nanogpt", "ours"], default="nanogpt",
                   help="(a): which recipe opens the first pair (the next pair swaps; split pairs across runs)")
    p.add_argument("--target", type=float, default=1.88)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", nargs="?", const="ours5", choices=sorted(RECIPES), metavar="RECIPE",
                   help="only the MFU and profiler table of a step of RECIPE (default: (b)'s, ours5)")
    p.add_argument("--attempt", help="one run of this recipe (with --set overrides), for a recipe search")
    p.add_argument("--seconds", type=float, default=0.0, help="--attempt: a max_seconds budget")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TrainConfig/ModelConfig field of our recipe (JSON values)")
    args = p.parse_args()
    set_threads(args.threads)
    if args.profile:
        profile(args, args.profile, args.set)
        return
    if args.attempt:
        run(args.attempt, args, args.target, args.seconds, args.set)
        return
    peaks = [matmul_median_gflops()]
    print(f"median fp32 matmul rate on {args.threads} threads: {peaks[0]:.0f} GFLOP/s", flush=True)
    results = {"nanogpt": [], "ours": []}
    if args.only in ("a", "both"):
        for i in range(args.repeat):
            order = ("nanogpt", "ours") if (i + (args.first == "ours")) % 2 == 0 else ("ours", "nanogpt")
            for name in order:
                results[name].append(run(name, args, args.target, sets=args.set if name == "ours" else []))
    b = None
    if args.only in ("b", "both"):
        b = run("ours5", args, args.target, max_seconds=args.budget - args.final_eval_s - 3.0, sets=args.set)
    peaks.append(matmul_median_gflops())
    peak = statistics.median(peaks)
    print(f"\nmedian fp32 matmul rate: {peak:.0f} GFLOP/s (start {peaks[0]:.0f}, end {peaks[-1]:.0f})")
    for name, rs in results.items():
        for r in rs:
            hit = f"{r['hit_s']:.1f} s" if r["hit_s"] is not None else "not reached"
            print(f"(a) {name:8s} val<={args.target} at {hit:>12s}; estimate {r['estimate']:.4f}, exact "
                  f"{r['exact']:.4f}; {r['steps']} steps, {r['ms_per_step']} ms/step, train {r['train_s']} s, "
                  f"wall {r['wall_s']} s, MFU {100 * mfu(r, peak):.1f} %")
    # a nanoGPT run that never reached the target counts its whole wall time: a lower bound of its time to
    # the target, so the ratio is then an upper bound ("<=")
    pairs = [(o["hit_s"] / (n["hit_s"] or n["wall_s"]), n["hit_s"] is None)
             for n, o in zip(results["nanogpt"], results["ours"]) if o["hit_s"]]
    if pairs:
        ratios = [r for r, _ in pairs]
        print(f"(a) ours / nanoGPT wall time to val <= {args.target}: "
              + ", ".join(f"{'<=' if bound else ''}{r:.3f}" for r, bound in pairs)
              + f" (median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; goal <= 0.5)")
    if b:
        print(f"(b) {args.budget:.0f} s budget: exact val {b['exact']:.4f} (estimate {b['estimate']:.4f}) after "
              f"{b['steps']} steps, wall {b['wall_s']} s, MFU {100 * mfu(b, peak):.1f} %; goal <= 1.55")


if __name__ == "__main__":
    main()
