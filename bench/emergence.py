"""Emergence on this machine: each preset of `core.emergence` (the run and its control, trained here one
after the other with the preset's own configs), and where its jump came, in steps and wall seconds.

  induction presets: the step and wall time at which the ICL score fell by >= 2 nats within five
                     evaluations, and the control's (expected: none);
  grokking:          the steps to 0.95 and 0.99 held-out accuracy, the step train accuracy reached 0.99
                     (memorisation), and the weight-decay-0 control's held-out accuracy at the same step.

    python bench/emergence.py                       # every preset
    python bench/emergence.py --preset grokking --steps 3000
    python bench/emergence.py --preset grokking --grokfast 0.98     # faster, but the control generalises too
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import set_threads  # noqa: E402


def run_preset(key: str, steps: int | None, seed: int, workdir: Path, grokfast: float = 0.0) -> None:
    from core import measures
    from core.emergence import PRESETS, find_emergence
    from core.train import EvalResult, Measures, train

    preset = PRESETS[key]
    found = {}
    for r in preset.runs:
        cfg = dataclasses.replace(r.train, out_dir=str(workdir / f"{key}-{r.role}"), seed=seed,
                                  checkpoint_interval=0, milestones=0, grokfast_alpha=grokfast or r.train.grokfast_alpha,
                                  **({"max_steps": steps} if steps else {}))
        records, elapsed = [], {}
        for rec in train(cfg, r.model):
            if isinstance(rec, EvalResult):
                elapsed[rec.step] = rec.elapsed          # seconds of the run (its evaluations included)
            elif isinstance(rec, Measures):
                records.append(dataclasses.asdict(rec))
        e = find_emergence(preset, records)
        found[r.role] = (e, records, elapsed)
        if e.step is None:
            where = "no jump"
        elif preset.signal.change:
            where = (f"jump at step {e.step:,} ({elapsed.get(e.step, float('nan')):.1f} s into the run), "
                     f"{preset.signal.label} {e.before:+.2f} -> {e.after:+.2f}")
        else:
            where = (f"{preset.signal.label} {preset.signal.level} at step {e.step:,} "
                     f"({elapsed.get(e.step, float('nan')):.1f} s into the run)")
        marks = "".join(f", {lvl} at step {s:,}" for lvl, s in e.marks.items() if s is not None)
        mem = ""
        if preset.signal.measure == "val_accuracy":
            s = measures.first_reaching([m["step"] for m in records], [m["train_accuracy"] for m in records], 0.99)
            mem = f"; train accuracy 0.99 at step {s:,}" if s is not None else "; train accuracy never 0.99"
        print(f"{key:17s} {r.role:8s} {r.label:45s} {where}{marks}{mem} "
              f"(last: step {records[-1]['step']:,}, {preset.signal.measure} {records[-1][preset.signal.measure]:.3f})",
              flush=True)
    e_run = found["run"][0]
    if e_run.step is not None and "control" in found:
        at = {m["step"]: m for m in found["control"][1]}.get(e_run.step)
        if at is not None:
            print(f"{key:17s} control at the run's jump step {e_run.step:,}: {preset.signal.measure} "
                  f"{at[preset.signal.measure]:.3f}", flush=True)


def main() -> None:
    from core.emergence import PRESETS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), action="append", help="repeatable; default: all")
    ap.add_argument("--steps", type=int, default=None, help="override every run's max_steps")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grokfast", type=float, default=0.0, metavar="ALPHA",
                    help="train run and control with Grokfast-EMA of this decay (0.98: the paper's)")
    args = ap.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.preset or list(PRESETS):
            run_preset(key, args.steps, args.seed, Path(tmp), args.grokfast)


if __name__ == "__main__":
    main()
