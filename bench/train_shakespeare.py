"""Train the byte-level 4L/4H/128 model on tiny shakespeare with core's trainer and report how fast it
reaches nanoGPT's CPU-recipe figure (val loss 1.886 after 2000 iterations), as wall time and MFU.

    python bench/train_shakespeare.py                      # the project's recipe
    python bench/train_shakespeare.py --recipe nanogpt     # nanoGPT's own recipe, for comparison

Prints every eval, the first step whose val estimate is <= --target, the training time to get there
(evals excluded) and the whole wall time, MFU against a matmul peak measured in the same run, and a
final exact val loss over every non-overlapping window of the val split.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

from common import default_data_dir, matmul_peak_gflops, set_threads

RECIPES = {
    # nanoGPT's config/train_shakespeare_char.py as its README runs it on CPU
    "nanogpt": dict(train=dict(max_steps=2000, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100,
                               beta2=0.99),
                    model=dict(pos_encoding="learned")),
    # the project's recipe: chosen by measurement (see the closing note of the issue)
    # (measured: rope beats learned positions at equal steps; 3e-3 x 900 steps missed on the exact
    # val loss, 1.886; 2e-3 x 1000 steps reaches 1.858)
    "fast": dict(train=dict(max_steps=1000, learning_rate=2e-3, min_lr=2e-4, warmup_steps=50,
                            beta2=0.99),
                 model=dict(pos_encoding="rope")),
}


def exact_val_loss(model, dataset, block_size: int) -> float:
    """Mean loss over every non-overlapping block_size window of the val split (no sampling noise)."""
    import numpy as np
    import torch
    val = np.asarray(dataset.val, dtype=np.int64)
    n = (len(val) - 1) // block_size
    x = torch.from_numpy(val[: n * block_size].reshape(n, block_size))
    y = torch.from_numpy(val[1: n * block_size + 1].reshape(n, block_size))
    total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, 256):
            total += model(x[i:i + 256], y[i:i + 256]).loss.item() * len(x[i:i + 256])
    return total / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="fast")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target", type=float, default=1.88)
    p.add_argument("--eval-interval", type=int, default=100)
    p.add_argument("--max-steps", type=int, help="override the recipe's steps")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--pos", choices=["learned", "sinusoidal", "rope"], help="override positions")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    set_threads(args.threads)

    from core.checkpoint import load_model
    from core.config import ModelConfig
    from core.data import load_corpus, prepare_dataset
    from core.tokenizer import byte_tokenizer
    from core.train import EvalResult, RunStarted, TrainConfig, TrainStep, train

    recipe = RECIPES[args.recipe]
    tkw, mkw = dict(recipe["train"]), dict(recipe["model"])
    if args.max_steps:
        tkw["max_steps"] = args.max_steps
    if args.lr:
        tkw["learning_rate"], tkw["min_lr"] = args.lr, args.lr / 10
    if args.pos:
        mkw["pos_encoding"] = args.pos
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak on {args.threads} threads: {peak:.0f} GFLOP/s")

    out = tempfile.mkdtemp(prefix="bench-shakespeare-")
    cfg = TrainConfig(out_dir=out, data_dir=default_data_dir(), batch_size=12, eval_interval=args.eval_interval,
                      eval_iters=200, checkpoint_interval=0, dtype=args.dtype, compile=args.compile,
                      threads=args.threads, **tkw)
    mcfg = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, **mkw)
    print(f"recipe {args.recipe}: {tkw} {mkw}")
    t_wall = time.perf_counter()
    train_time, steps, hit = 0.0, 0, None
    flops_per_token, tokens_per_step = None, None
    for rec in train(cfg, mcfg):
        if isinstance(rec, RunStarted):
            flops_per_token, tokens_per_step = rec.flops_per_token, rec.tokens_per_step
            print(f"{rec.parameters['total']:,} parameters; {flops_per_token / 1e6:.2f} MFLOP/token")
        elif isinstance(rec, TrainStep):
            steps += 1
            train_time += tokens_per_step / rec.tokens_per_s   # this step's own duration
        elif isinstance(rec, EvalResult):
            print(f"step {rec.step:5d}  val {rec.val_loss:.4f}  train {rec.train_loss:.4f}  "
                  f"train time {train_time:6.1f} s  wall {time.perf_counter() - t_wall:6.1f} s", flush=True)
            if hit is None and rec.val_loss <= args.target:
                hit = (rec.step, train_time, time.perf_counter() - t_wall)
    wall = time.perf_counter() - t_wall
    model, _ = load_model(out)
    dataset = prepare_dataset(load_corpus("tinyshakespeare", default_data_dir()), byte_tokenizer(),
                              default_data_dir())
    exact = exact_val_loss(model, dataset, 64)
    tokens_per_s = steps * tokens_per_step / train_time
    mfu = tokens_per_s * flops_per_token / (peak * 1e9)
    print(f"\n{steps} steps in {train_time:.1f} s of training ({wall:.1f} s wall with evals): "
          f"{tokens_per_s:,.0f} tokens/s, {1000 * train_time / steps:.1f} ms/step, MFU {100 * mfu:.1f} % "
          f"of the measured fp32 peak")
    print(f"exact val loss over the whole val split: {exact:.4f} nats/token "
          f"({exact / math.log(2):.4f} bits/byte)")
    if hit:
        print(f"target val <= {args.target}: reached at step {hit[0]}, after {hit[1]:.1f} s of training "
              f"({hit[2]:.1f} s wall)")
    else:
        print(f"target val <= {args.target}: NOT reached")


if __name__ == "__main__":
    main()
