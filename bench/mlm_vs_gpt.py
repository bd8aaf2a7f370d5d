"""Masked LM vs GPT on the same data: the two objectives trained by the same trainer at the same shape, steps,
batch, learning rate and seed on tiny shakespeare (byte tokenizer), one after the other, and the loss each reaches.

  GPT: causal attention, next-token loss (nats per token, every position, predicted from the left);
  MLM: bidirectional attention, BERT's masked-LM loss (nats per masked token: 15 % of the positions, 80/10/10),
       predicted from both sides, on a fixed seeded mask of the whole val split.

The caveat the numbers need: they score different tasks. Predicting a token with both neighbours in view is easier
than predicting it from the left alone, so the MLM's loss is lower at equal size and data; that says nothing about
which is the better language model (the MLM gives no probability of a text and cannot write). A GPT sees every
position as a target, an MLM only 15 % of them: per step the GPT learns from ~6.7x more targets.

    python bench/mlm_vs_gpt.py                       # 4 layers x 128, block 128, 600 steps each
    python bench/mlm_vs_gpt.py --steps 2000 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, set_threads  # noqa: E402


def run(objective: str, steps: int, workdir: Path, threads: int) -> dict:
    from core.config import ModelConfig, TrainConfig
    from core.train import EvalResult, Measures, RunFinished, train

    mlm = objective == "mlm"
    model = ModelConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, pos_encoding="rope",
                        attention="bidirectional" if mlm else "causal", objective=objective)
    shared = SHARED_DATA / "tinyshakespeare.txt"          # read in place; the token cache goes to the temp dir
    cfg = TrainConfig(out_dir=str(workdir / objective), corpus=str(shared) if shared.is_file() else "tinyshakespeare",
                      data_dir=str(workdir / "data"),
                      batch_size=12, max_steps=steps, learning_rate=3e-3, min_lr=3e-4, warmup_steps=30,
                      optimizer="muon", muon_lr=0.03, eval_interval=0, eval_at_start=False, eval_train=False,
                      exact_final_eval=True, eval_batch_size=12, checkpoint_interval=0, threads=threads,
                      dtype="float32")
    out = {"objective": objective}
    for rec in train(cfg, model):
        if isinstance(rec, EvalResult):
            out.update(val_loss=rec.val_loss, train_loss=rec.train_loss)
        elif isinstance(rec, Measures):
            out["val_accuracy"] = rec.val_accuracy
        elif isinstance(rec, RunFinished):
            out.update(seconds=rec.elapsed, tokens=rec.tokens_seen)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(objective, args.steps, Path(tmp), args.threads) for objective in ("next-token", "mlm")]
    print(f"4 layers x 128 wide, block 128, batch 12, {args.steps} steps each, tiny shakespeare (byte), seed 1337")
    print(f"{'objective':<12} {'val loss':>9} {'train loss':>11} {'val top-1':>10} {'seconds':>8}  loss is")
    units = {"next-token": "nats/token, from the left", "mlm": "nats/masked token, from both sides"}
    for r in rows:
        print(f"{r['objective']:<12} {r['val_loss']:>9.4f} {r['train_loss']:>11.4f} {r['val_accuracy']:>10.3f} "
              f"{r['seconds']:>8.1f}  {units[r['objective']]}")
    print("Not comparable as better/worse: the MLM's task (a token with both sides in view) is easier, so its loss "
          "is lower at the same size and data; the GPT's loss is the one that prices a whole text.")


if __name__ == "__main__":
    main()
