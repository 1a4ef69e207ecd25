"""The adaptive-seeds rule on simulated sweeps with known effects: the share of each verdict and the
seeds used, per true effect and seed noise (paired std σ_d), by Monte Carlo.

    python benchmarks/adaptive_simulation.py [--min 2] [--max 8] [--margin 0.3] [--sims 20000]

What tests/test_adaptive.py asserts (false gains or losses at most α when there is no effect, false
"no effect" at most α when the true change is the margin), with the power and the seeds saved beside.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate.sweep.adaptive import HELPED, HURT, NO_EFFECT, UNDECIDED, Plan, simulate  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min", type=int, default=2)
    ap.add_argument("--max", type=int, default=8)
    ap.add_argument("--margin", type=float, default=0.3)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--sims", type=int, default=20_000)
    args = ap.parse_args(argv)
    plan = Plan(args.min, args.max, args.margin, args.alpha)
    print(f"plan: min {plan.min_seeds}, max {plan.max_seeds}, margin ±{plan.margin:g}, α {plan.alpha:g}; "
          f"{args.sims} simulated comparisons per row\n")
    print("| true Δ | σ_d | helped | hurt | no effect | undecided | mean seeds |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for sigma in (0.3, 1.0):
        for effect in (0.0, plan.margin, -plan.margin, 0.5, 1.0, 2.0, -2.0):
            r = simulate(plan, effect, sigma, args.sims, seed=7)
            print(f"| {effect:+.1f} | {sigma:.1f} | {100 * r[HELPED]:.1f}% | {100 * r[HURT]:.1f}% | "
                  f"{100 * r[NO_EFFECT]:.1f}% | {100 * r[UNDECIDED]:.1f}% | {r['mean_seeds']:.2f} |")


if __name__ == "__main__":
    main()
