"""What an adaptive run of a sweep would have done, replayed from records of a fixed-seed run of it.

    python benchmarks/adaptive_replay.py SWEEP RUNS_DIR [--min 2] [--max 8] [--margin 1.25] [--alpha 0.05]

For each variant, the adaptive rule (ablate/sweep/adaptive.py) is applied to its paired differences
with its baseline, seed by seed, as far as the records go: decided at n seeds, or still open when
the records end (an adaptive run would have gone on, up to --max). Prints the decisions, the seeds
each variant used, and the runs against the fixed run's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate.results import find_records  # noqa: E402
from ablate.sweep.adaptive import OPEN, Plan, decisions_from_records  # noqa: E402
from ablate.sweep.design import load_sweep, resolve_sweep_path  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="sweep name or file (its design names the variants and their baselines)")
    ap.add_argument("runs", type=Path, help="the folder of its records")
    ap.add_argument("--min", type=int, default=2)
    ap.add_argument("--max", type=int, default=8)
    ap.add_argument("--margin", type=float, default=1.25)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    design = load_sweep(resolve_sweep_path(args.sweep))
    plan = Plan(args.min, args.max, args.margin, args.alpha)
    variants = {j.variant: design.baseline_of(j.variant) for j in design.all_jobs((0,)) if j.tricks}
    found, _ = find_records(args.runs)
    records = [r for _, r in found]
    fixed_seeds = sorted({r.seed for r in records})
    decisions = decisions_from_records(records, variants, plan)
    print(f"{args.sweep}: {len(records)} records, seeds {fixed_seeds}; plan min {plan.min_seeds}, max "
          f"{plan.max_seeds}, margin ±{plan.margin:g}, α {plan.alpha:g}\n")
    print(f"{'variant':28} {'verdict (Holm)':>22} {'seeds':>5}  {'ΔmAP ± CI':>14}  {'σ_d (df)':>12}  {'±X':>5}  "
          f"{'p diff':>7} {'Holm':>7}  {'p equiv':>7} {'Holm':>7}")
    seeds_used = {}
    for d in decisions:
        verdict = d.verdict if d.verdict != OPEN else f"open at {d.seeds} (→ up to {plan.max_seeds})"
        seeds_used[d.variant] = d.seeds
        noise = f"{d.std:.2f} ({d.df:.0f}{'' if d.pooled else ', own'})"
        print(f"{d.variant:28} {verdict:>22} {d.seeds:>5}  {d.mean:+6.1f} ± {d.half:4.1f}  {noise:>12}  "
              f"{d.margin:5.2f}  {d.p_difference:7.3g} {d.p_difference_adjusted:7.3g}  {d.p_equivalence:7.3g} "
              f"{d.p_equivalence_adjusted:7.3g}")
    baselines = {}
    for v, b in variants.items():
        baselines[b] = max(baselines.get(b, 0), seeds_used.get(v, 0))
    adaptive_runs = sum(seeds_used.values()) + sum(baselines.values())
    fixed_runs = len({(r.variant, r.seed) for r in records})
    still_open = [d for d in decisions if d.verdict == OPEN]
    open_bases = {d.baseline for d in still_open}
    at_most = (adaptive_runs + sum(plan.max_seeds - d.seeds for d in still_open)
               + sum(plan.max_seeds - baselines[b] for b in open_bases))
    print(f"\nruns: {adaptive_runs} adaptive so far against {fixed_runs} in the fixed run; {len(still_open)} "
          f"variant(s) still open would go on, to at most {plan.max_seeds} seeds: at most {at_most} runs in all, "
          f"against {len(variants) + len(baselines)} variants x {plan.max_seeds} = "
          f"{(len(variants) + len(baselines)) * plan.max_seeds} with {plan.max_seeds} seeds everywhere")

if __name__ == "__main__":
    main()
