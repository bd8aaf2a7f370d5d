"""Post-training on this machine: each stage's preset (`core.posttrain.PRESETS`) on the committed character
model, with a programmatic judge as ground truth, one after the other, and what each achieved.

  reward: held-out pairwise accuracy against the judge (goal >= 90 %), in how many seconds;
  ppo:    beta 0.05 against beta 0 on that reward model, same seed: reward, judge score, KL to the reference
          and distinct-2 at the first and last evaluation (beta 0.05: judge up, KL bounded; beta 0: the
          reward model is exploited, KL runs away and the text repeats itself);
  grpo:   the same at beta 0.05, groups of 4 rollouts per prompt and no value head;
  sft, dpo: the judge's score of the policy's samples before and after, and the KL they moved.

    python bench/posttrain.py                      # every stage, judge short-lines
    python bench/posttrain.py --stages reward ppo --judge word:love --steps 60
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import set_threads  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(cfg) -> tuple[list, float]:
    from core.posttrain import PostEval, post_train
    t0 = time.perf_counter()
    evals = [rec for rec in post_train(cfg) if isinstance(rec, PostEval)]
    return evals, time.perf_counter() - t0


def show(name: str, evals: list, seconds: float, keys: tuple[str, ...]) -> None:
    first, last = evals[0].metrics, evals[-1].metrics
    cells = ", ".join(f"{k} {first[k]:.3g} -> {last[k]:.3g}" for k in keys if k in first and k in last)
    print(f"{name:<14} {seconds:6.1f} s  step 0 -> {evals[-1].step}: {cells}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(ROOT / "exported" / "shakespeare-char"))
    p.add_argument("--judge", default="short-lines")
    p.add_argument("--stages", nargs="*", default=["reward", "ppo", "grpo", "sft", "dpo"])
    p.add_argument("--steps", type=int, default=0, help="override every preset's steps")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    from core.config import preset_config

    work = Path(tempfile.mkdtemp(prefix="posttrain-bench-"))
    common = dict(base=args.base, data=f"judge:{args.judge}", seed=args.seed, eval_interval=25,
                  checkpoint_interval=0, **({"steps": args.steps} if args.steps else {}))
    print(f"base {args.base}, judge {args.judge}, runs in {work}")
    reward_dir = work / "reward"
    if {"reward", "ppo", "grpo"} & set(args.stages):
        evals, s = run(preset_config("reward", out_dir=str(reward_dir), **common))
        show("reward", evals, s, ("accuracy", "margin", "loss"))
        print(f"{'':<14} held-out pairwise accuracy against the judge: {100 * evals[-1].metrics['accuracy']:.1f} % "
              f"of {len(evals[-1].chosen_rewards)} pairs (goal >= 90 %)")
    if "ppo" in args.stages:
        for beta in (0.05, 0.0):
            evals, s = run(preset_config("ppo", out_dir=str(work / f"ppo-beta{beta}"), reward_model=str(reward_dir),
                                         **{**common, "beta": beta}))
            show(f"ppo beta {beta:g}", evals, s, ("reward", "judge_score", "kl", "distinct_2"))
            print(f"{'':<14} KL by evaluation: " + ", ".join(f"{e.step}: {e.metrics['kl']:.1f}" for e in evals))
    if "grpo" in args.stages:
        evals, s = run(preset_config("grpo", out_dir=str(work / "grpo"), reward_model=str(reward_dir), **common))
        show("grpo beta 0.05", evals, s, ("reward", "judge_score", "kl", "distinct_2"))
    for stage in ("sft", "dpo"):
        if stage in args.stages:
            evals, s = run(preset_config(stage, out_dir=str(work / stage), **common))
            show(stage, evals, s, ("loss", "judge_score", "kl", "accuracy", "distinct_2"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
