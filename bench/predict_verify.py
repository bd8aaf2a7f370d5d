"""Predict, then verify on the committed sweep: the L(N, D) fit of its runs predicts the loss of a run at
FACTOR x its largest budget (the compute-optimal shape of its family, its recipe), then that run is trained
for real through core.sweep (as the Scaling page's job does) and the measured loss is compared with the
prediction and its bootstrap interval.

    python bench/predict_verify.py                 factor 2, in a temporary copy of the sweep
    python bench/predict_verify.py --factor 3 --keep runs/sweeps/tinyshakespeare-byte-verify

The committed sweep is never modified: the run lands in a copy (core.verify's rule). Its stored fits are used
when current; otherwise the copy is fitted first (--bootstrap resamples). Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

sys.path.insert(0, str(ROOT))


def main() -> int:
    from core import scaling, verify
    from core.catalog import SWEEPS_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default=str(SWEEPS_DIR / "tinyshakespeare-byte.json"))
    ap.add_argument("--factor", type=float, default=verify.DEFAULT_FACTOR)
    ap.add_argument("--keep", default="", help="a runs folder to keep the copy in (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    ap.add_argument("--bootstrap", type=int, default=scaling.N_BOOTSTRAP)
    args = ap.parse_args()

    runs = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="predict-verify-"))
    sweep = Path(args.sweep)
    target = verify.target_dir(sweep, runs)
    verify.make_copy(sweep, target)
    stored = scaling.load_fits(target)
    t0 = time.perf_counter()
    if not stored.current:
        print(f"fitting the copy's {len(stored.records)} runs ({args.bootstrap} resamples)…", file=sys.stderr)
        stored = scaling.fit_sweep(target, args.bootstrap)
    fit_s = time.perf_counter() - t0
    config = verify.recipe_of(target)
    name = verify.new_name()
    p = verify.predict(stored, args.factor, config, sweep.stem, name, verify.max_tokens(config))
    verify.store_prediction(target, p)
    print(f"predicted {p.run}: N {p.n_params:,} ({p.shape_label}), D {p.tokens:,}, C {p.flops:.3g} "
          f"({p.factor:g} x {p.largest:.3g}): loss {p.predicted:.4f} [{p.interval[0]:.4f}, {p.interval[1]:.4f}]",
          file=sys.stderr)
    t0 = time.perf_counter()
    rc = verify.run(target, name, runs / name, args.threads, stored.n_bootstrap or args.bootstrap)
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"the run stopped (exit {rc})", file=sys.stderr)
        return rc
    (o,) = [o for o in verify.history(sweep, runs) if o.prediction.name == name]
    held = stored.report("total").held_out
    out = {"sweep": sweep.stem, "run": p.run, "factor": p.factor, "n_params": p.n_params, "tokens": p.tokens,
           "flops": p.flops, "predicted": round(p.predicted, 4), "interval": [round(v, 4) for v in p.interval],
           "measured": round(o.measured, 4), "error": round(o.error, 4),
           "relative_error_pct": round(100 * o.relative_error, 2), "inside": o.inside,
           "train_wall_s": round(o.record.wall_s, 1), "total_wall_s": round(wall, 1), "fit_s": round(fit_s, 1),
           "held_out_mean_rel_error_pct": round(100 * held.mean_rel_error, 2) if held else None,
           "copy": str(target)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
