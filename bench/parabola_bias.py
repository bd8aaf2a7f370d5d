"""How wrong the IsoFLOP parabolas make the allocation exponent, on noiseless synthetic surfaces, and
whether `core.scaling.parabola_bias` warns where it matters; VPNLS on the same runs beside it.

    python bench/parabola_bias.py

Each case: 4 budgets a decade apart (1e12..1e15 FLOPs, C = 6ND), 7 sizes per budget evenly spaced in
ln N over +-1.2 (a factor of 11 in N), placed around the law's true optimum N*(C) as the case says:
  centred     the window centred on N* at every budget
  drift 0.6   the window's centre moves from N* (smallest budget) to 0.6 of its half-width off it (largest)
  drift -0.6  the same on the other side
  fixed       the same 7 sizes at every budget, spanning the optima of the smallest and largest budgets
Printed: the true a = beta / (alpha + beta), the parabolas' a and its error, VPNLS's a, the largest
misplacement of a parabola's N_opt, and how many budgets the rule warns about.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core import scaling  # noqa: E402
from core.scaling import ChinchillaLaw, RunRecord  # noqa: E402

LAWS = {"Hoffmann 0.34/0.28": ChinchillaLaw(1.69, 406.4, 410.7, 0.34, 0.28),
        "0.35/0.40": ChinchillaLaw(1.3, 60.0, 300.0, 0.35, 0.40),
        "equal 0.30/0.30": ChinchillaLaw(1.5, 100.0, 400.0, 0.30, 0.30),
        "lopsided 0.20/0.60": ChinchillaLaw(0.8, 20.0, 900.0, 0.20, 0.60)}
BUDGETS = (1e12, 1e13, 1e14, 1e15)
OFFSETS = np.linspace(-1.2, 1.2, 7)


def records(law: ChinchillaLaw, case: str) -> list[RunRecord]:
    out = []
    opt = [math.log(scaling.allocate(law, c).n) for c in BUDGETS]
    for i, c in enumerate(BUDGETS):
        if case == "fixed":
            xs = np.linspace(opt[0], opt[-1], 7)
        else:
            drift = {"centred": 0.0, "drift 0.6": 0.6, "drift -0.6": -0.6}[case] * 1.2 * i / (len(BUDGETS) - 1)
            xs = opt[i] + drift + OFFSETS
        for x in xs:
            n = math.exp(x)
            d = c / (6 * n)
            loss = float(law.predict(n, d))
            out.append(RunRecord(f"C{c:.0e}-N{n:.0f}", int(round(n)), int(round(n)), int(round(d)), c, 6 * n,
                                 loss, loss, loss / math.log(2), 1.0, budget=c))
    return out


def main() -> None:
    print(f"{'law':<20} {'case':<11} {'true a':>6} {'parab a':>7} {'error':>6} {'VPNLS a':>7} "
          f"{'worst N_opt':>11} {'warned':>6}")
    for name, law in LAWS.items():
        for case in ("centred", "drift 0.6", "drift -0.6", "fixed"):
            recs = records(law, case)
            iso = scaling.fit_isoflop(recs, n_bootstrap=0)
            vp = scaling.fit_vpnls(recs, n_bootstrap=0)
            worst = max(abs(p.n_opt / scaling.allocate(law, p.budget).n - 1) for p in iso.profiles)
            warned = sum(scaling.parabola_bias(p, vp) is not None for p in iso.profiles)
            print(f"{name:<20} {case:<11} {law.a:6.3f} {iso.a:7.3f} {iso.a - law.a:+6.3f} {vp.a:7.3f} "
                  f"{100 * worst:10.1f}% {warned:>3}/{len(iso.profiles)}")


if __name__ == "__main__":
    main()
