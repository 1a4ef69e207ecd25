"""The adaptive-seeds rule on simulated sweeps with known effects, beside the rule it replaced (issue 25)
and fixed seeds: error rates, power, seeds and runs, by Monte Carlo.

    python benchmarks/adaptive_simulation.py [--min 2] [--max 8] [--margin 1.25] [--sims 4000] [--tricks 8]
                                             [--replay-only] [--records RUNS_DIR]

Part 1, a grid: sweeps of --tricks tricks on one baseline, every trick's per-seed difference
Normal(Δ, σ_d), Δ ∈ {0, 0.5, 1, 2}, σ_d ∈ {0.3, 0.5, 1.0}. Per rule: the share of tricks called
helped/hurt (a false claim at Δ = 0, the power at Δ > 0), the share of sweeps with any false helped/hurt
(the family-wise error, at Δ = 0), the share called no effect, and the mean seeds per trick. The old rule
stops on each trick's own sequential p-value and adjusts by Holm afterwards (its verdicts here are the
Holm ones); the new rule is ablate/sweep/adaptive.py. One more row at Δ = 0 gives the tricks a shared
baseline (half of each difference's variance common to all tricks, correlation 0.5), which the pooled
σ_d assumes away.

Part 2, a replay at the committed bag-of-tricks table (reports/bag_of_tricks_3seed/runs): each trick's
difference Normal(its mean, its own std over the 3 committed seeds), FCOS's 7 tricks on one baseline and
iou_balanced on Faster R-CNN's; runs in all (variants and baselines), tricks decided and correct verdicts
(helped/hurt of the true sign, or no effect with |true Δ| under the margin stated), for the old rule, the
new one, and fixed 3 seeds (decided as the report now does, and with per-trick t-tests and Holm);
then the new rule at other margins. With --records, the replay is at the effects of a sweep's records
instead (each trick's mean paired difference, its base's pooled σ_d; variants with a collapsed run left
out, as the sweep leaves them): what the rest of a sweep under way can be expected to decide, and in how
many runs; drawn once with the tricks independent and once with each base's ρ̂ shared through its
baseline.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # paired_noise, beside it

from ablate.report.stats import TARGET_DELTA  # noqa: E402
from ablate.sweep.adaptive import (HELPED, HURT, NO_EFFECT, OPEN, UNDECIDED, Plan, holm_rows, look,  # noqa: E402
                                   pooled_sigma, run_plan)

# The committed table (reports/bag_of_tricks_3seed/runs, 3 seeds): mean and std of each trick's paired
# differences, points of mAP, and its base (0 FCOS, 1 Faster R-CNN).
COMMITTED = {
    "warmup": (1.06, 0.52, 0), "mixup": (-3.10, 1.98, 0), "cutmix": (-7.91, 0.64, 0),
    "label_smoothing": (-0.83, 0.49, 0), "ghm": (-48.42, 1.28, 0), "dropblock": (-0.88, 0.35, 0),
    "mish": (-0.30, 0.41, 0), "iou_balanced": (-0.09, 0.62, 1),
}


# The margins of the replay's last table.
MARGINS = (0.5, 0.75, 1.0, 1.25, 1.5)


def old_rule(diffs: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """The rule before issue 25 on diffs [S, k, N]: each trick alone (its own σ on n − 1 df), stopped on its
    raw sequential p-values, Holm over the sweep's tricks afterwards. (Holm verdict [S, k], seeds [S, k])."""
    from scipy import stats

    s, k, _ = diffs.shape
    d_all = diffs.reshape(s * k, -1)
    verdict = np.full(s * k, OPEN, dtype=object)
    seeds = np.zeros(s * k, dtype=int)
    p_d_star, p_e_star, mean = np.ones(s * k), np.ones(s * k), np.zeros(s * k)
    for n, w in zip(plan.looks, plan.weights):
        live = verdict == OPEN
        if not live.any():
            break
        d = d_all[live, :n]
        m, se = d.mean(1), d.std(1, ddof=1) / np.sqrt(n)
        p_d = np.minimum(1, 2 * stats.t.sf(np.abs(m / se), n - 1))
        p_e = np.maximum(stats.t.sf((m + plan.margin) / se, n - 1), stats.t.sf((plan.margin - m) / se, n - 1))
        p_d_star[live] = np.minimum(p_d_star[live], np.minimum(1, p_d / w))
        p_e_star[live] = np.minimum(p_e_star[live], np.minimum(1, p_e / w))
        seeds[live], mean[live] = n, m
        v = np.full(live.sum(), OPEN, dtype=object)
        differ = p_d_star[live] <= plan.alpha
        v[differ] = np.where(m[differ] > 0, HELPED, HURT)
        v[~differ & (p_e_star[live] <= plan.alpha)] = NO_EFFECT
        if n == plan.max_seeds:
            v[v == OPEN] = UNDECIDED
        verdict[live] = v
    adj_d, adj_e = holm_rows(p_d_star.reshape(s, k)), holm_rows(p_e_star.reshape(s, k))
    mean = mean.reshape(s, k)
    holm_verdict = np.where(adj_d <= plan.alpha, np.where(mean > 0, HELPED, HURT),
                            np.where(adj_e <= plan.alpha, NO_EFFECT, UNDECIDED)).astype(object)
    return holm_verdict, seeds.reshape(s, k)


def fixed_rule(diffs: np.ndarray, bases: np.ndarray, n: int, margin: float, alpha: float,
               pooled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fixed n seeds: one look at n, Holm; pooled σ_d per base and equivalence within max(margin, reachable)
    as the report decides, or (pooled=False) per-trick t-tests of a difference alone."""
    s, k, _ = diffs.shape
    length = np.full((s, k), n)
    if pooled:
        at = look(diffs, length, bases, margin, alpha, k, 1.0, n)
        p_d, p_e, mean, x = at.p_difference, at.p_equivalence, at.mean, at.margin
    else:
        from scipy import stats

        d = diffs[..., :n]
        mean, se = d.mean(-1), d.std(-1, ddof=1) / np.sqrt(n)
        p_d, p_e, x = np.minimum(1, 2 * stats.t.sf(np.abs(mean / se), n - 1)), np.ones((s, k)), np.full((s, k), margin)
    adj_d, adj_e = holm_rows(p_d), holm_rows(p_e)
    v = np.where(adj_d <= alpha, np.where(mean > 0, HELPED, HURT), np.where(adj_e <= alpha, NO_EFFECT, UNDECIDED))
    return v.astype(object), x


def runs_of(seeds: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Runs per sweep: every trick's seeds, and each baseline as many as its longest trick."""
    return seeds.sum(1) + sum(seeds[:, bases == b].max(1) for b in np.unique(bases))


def stated(margin: np.ndarray, bases: np.ndarray) -> str:
    """The mean no-effect margin a rule stated, per base: "X0 / X1"."""
    return " / ".join(f"{np.nanmean(margin[:, bases == b]):.2f}" for b in np.unique(bases))


def correct(verdict: np.ndarray, effect: np.ndarray, margin: np.ndarray) -> np.ndarray:
    return (((verdict == HELPED) & (effect > 0)) | ((verdict == HURT) & (effect < 0))
            | ((verdict == NO_EFFECT) & (np.abs(effect) < margin)))


def grid(plan: Plan, sims: int, tricks: int, rng: np.random.Generator) -> None:
    print(f"Part 1: {sims} simulated sweeps of {tricks} tricks per row; plan min {plan.min_seeds}, max "
          f"{plan.max_seeds}, margin ±{plan.margin:g}, α {plan.alpha:g}\n")
    print("| Δ | σ_d | rule | helped/hurt (per trick) | any helped/hurt (per sweep) | no effect | undecided "
          "| seeds per trick | runs per sweep |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    bases = np.zeros(tricks, dtype=int)
    rows = [(e, s, 0.0) for s in (0.3, 0.5, 1.0) for e in (0.0, 0.5, 1.0, 2.0)] + [(0.0, 0.5, 0.5)]
    for effect, sigma, shared in rows:
        noise = rng.normal(0, sigma * np.sqrt(1 - shared), size=(sims, tricks, plan.max_seeds))
        noise += rng.normal(0, sigma * np.sqrt(shared), size=(sims, 1, plan.max_seeds))
        d = effect + noise
        new = run_plan(d, plan)
        for name, (v, seeds) in (("old", old_rule(d, plan)), ("new", (new.verdict, new.seeds))):
            differ = (v == HELPED) | (v == HURT)
            label = f"{effect:g}" + (f" (shared ρ {shared:g})" if shared else "")
            print(f"| {label} | {sigma:g} | {name} | {100 * differ.mean():.1f}% | {100 * differ.any(1).mean():.1f}% | "
                  f"{100 * (v == NO_EFFECT).mean():.1f}% | {100 * (v == UNDECIDED).mean():.1f}% | "
                  f"{seeds.mean():.2f} | {runs_of(seeds, bases).mean():.1f} |")


def from_records(root: Path) -> tuple[dict[str, tuple[float, float, int]], dict[int, float], list[str]]:
    """trick -> (mean paired difference, σ, base index) from a sweep's records (variants <base>/<tricks>,
    partner <base>/baseline at the same seed): σ is the base's pooled σ_d (ablate.sweep.adaptive, robust
    to an outlying trick), or the trick's own std where the pool left it out; each base's ρ̂, the
    correlation its tricks' differences share through its baseline; and the variants left out because
    a run of theirs or of their baseline has a run-health warning (the sweep gives them no more seeds)."""
    from paired_noise import by_base, by_variant

    from ablate.results import find_records

    found, _ = find_records(root)
    unhealthy = {r.variant for _, r in found if r.status == "ok" and r.health}
    runs = by_variant(found)
    out: dict[str, tuple[float, float, int]] = {}
    rho: dict[int, float] = {}
    collapsed = []
    for index, (base, baseline, tricks, seed_lists) in enumerate(by_base(runs)):
        keep = [i for i, t in enumerate(tricks) if t not in unhealthy and f"{base}/baseline" not in unhealthy]
        collapsed += [t for i, t in enumerate(tricks) if i not in keep]
        tricks, seed_lists = [tricks[i] for i in keep], [seed_lists[i] for i in keep]
        diffs = [[runs[t][s][0] - baseline[s][0] for s in seeds] for t, seeds in zip(tricks, seed_lists)]
        sigma, _, kept, rho[index] = pooled_sigma(diffs)
        for t, d, k in zip(tricks, diffs, kept):
            if d:
                own = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
                out[t] = (float(np.mean(d)), sigma if k or math.isnan(own) else own, index)
    return out, rho, collapsed


def replay(plan: Plan, sims: int, rng: np.random.Generator, table: dict[str, tuple[float, float, int]] = COMMITTED,
           source: str = "the committed table's effects and per-trick noise", rho: dict[int, float] | None = None
           ) -> None:
    """The rules on sweeps drawn at ``table``'s effects and noise; with ``rho`` (base index -> ρ), a share
    ρ of each difference's variance is its base's, common to the base's tricks at one seed (their shared
    baseline run), as in a real sweep."""
    names = list(table)
    effect = np.array([table[t][0] for t in names])
    sigma = np.array([table[t][1] for t in names])
    bases = np.array([table[t][2] for t in names])
    k = len(names)
    shared = np.array([(rho or {}).get(b, 0.0) for b in bases])[None, :, None]
    own = rng.standard_normal((sims, len(names), plan.max_seeds))
    common = rng.standard_normal((sims, int(bases.max()) + 1, plan.max_seeds))[:, bases]
    d = effect[None, :, None] + sigma[None, :, None] * (np.sqrt(1 - shared) * own + np.sqrt(shared) * common)
    print(f"\nPart 2: replay at {source}, {sims} simulated sweeps; plan "
          f"min {plan.min_seeds}, max {plan.max_seeds}, margin ±{plan.margin:g}"
          + (", shared-baseline correlation " + ", ".join(f"base {b} ρ {r:.2f}" for b, r in sorted(rho.items()))
             if rho else "") + "\n")
    print("| " + " | ".join(f"{t}: Δ {e:+.2f}, σ {s_:.2f}" for t, e, s_ in zip(names, effect, sigma)) + " |")
    print("|" + "---|" * k + "\n")
    # X: the no-effect margin each rule states, which a design with fewer seeds widens to what it can reach
    print(f"| rule | runs | tricks decided (of {k}) | correct verdicts (of {k}) | mean X stated, base "
          + " / ".join(str(b) for b in np.unique(bases)) + " | " + " | ".join(names) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(names))
    old_v, old_seeds = old_rule(d, plan)
    new = run_plan(d, plan, bases)
    fixed_v, fixed_x = fixed_rule(d, bases, 3, TARGET_DELTA, plan.alpha)  # the report's margin
    fixed_t, _ = fixed_rule(d, bases, 3, plan.margin, plan.alpha, pooled=False)
    three = np.full(d.shape[:2], 3)
    for name, v, seeds, x in (("old adaptive (Holm after)", old_v, old_seeds, np.full(d.shape[:2], plan.margin)),
                              ("new adaptive", new.verdict, new.seeds, new.margin),
                              ("fixed 3 seeds, as the report decides", fixed_v, three, fixed_x),
                              ("fixed 3 seeds, per-trick t + Holm", fixed_t, three, np.full(d.shape[:2], plan.margin))):
        decided = (v == HELPED) | (v == HURT) | (v == NO_EFFECT)
        good = correct(v, effect[None, :], x)
        per = " | ".join(f"{100 * good[:, j].mean():.0f}% ({seeds[:, j].mean():.1f})" for j in range(len(names)))
        print(f"| {name} | {runs_of(seeds, bases).mean():.1f} | {decided.sum(1).mean():.2f} | "
              f"{good.sum(1).mean():.2f} | {stated(x, bases)} | {per} |")
    print("\n(per trick: the share of correct verdicts, and its mean seeds)")
    print(f"\nThe new rule at other margins (the same {sims} sweeps):\n")
    print(f"| margin | runs | tricks decided (of {k}) | correct verdicts (of {k}) | mean X stated, base "
          + " / ".join(str(b) for b in np.unique(bases)) + " |")
    print("|---:|---:|---:|---:|---:|")
    for margin in MARGINS:
        other = Plan(plan.min_seeds, plan.max_seeds, margin, plan.alpha)
        o = run_plan(d, other, bases)
        decided = (o.verdict == HELPED) | (o.verdict == HURT) | (o.verdict == NO_EFFECT)
        print(f"| {margin:g} | {runs_of(o.seeds, bases).mean():.1f} | {decided.sum(1).mean():.2f} | "
              f"{correct(o.verdict, effect[None, :], o.margin).sum(1).mean():.2f} | {stated(o.margin, bases)} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min", type=int, default=2)
    ap.add_argument("--max", type=int, default=8)
    ap.add_argument("--margin", type=float, default=1.25)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--sims", type=int, default=4000)
    ap.add_argument("--tricks", type=int, default=8)
    ap.add_argument("--replay-only", action="store_true")
    ap.add_argument("--records", type=Path, default=None,
                    help="replay at the effects and pooled noise of these records (a sweep's runs folder) instead "
                         "of the committed 3-seed table's")
    args = ap.parse_args(argv)
    plan = Plan(args.min, args.max, args.margin, args.alpha)
    rng = np.random.default_rng(25)
    start = time.perf_counter()
    if not args.replay_only:
        grid(plan, args.sims, args.tricks, rng)
    if args.records is None:
        replay(plan, args.sims, rng)
    else:
        table, rho, collapsed = from_records(args.records)
        if collapsed:
            print(f"Left out (a run of theirs or of their baseline collapsed: no more seeds): {', '.join(collapsed)}")
        unknown = [t for t, (_, sigma, _) in table.items() if math.isnan(sigma)]
        if unknown:
            print(f"Left out (no σ: a single paired seed and no pool in their base): {', '.join(unknown)}")
        table = {t: v for t, v in table.items() if t not in unknown}
        if not table:
            print("Nothing to replay: no trick has two seeds paired with its baseline's yet.")
            return
        bases = sorted({b for *_, b in table.values()})
        source = (f"the effects of {args.records} (their mean paired differences) and their bases' pooled σ_d "
                  f"(bases {', '.join(map(str, bases))}: in the order of their names)")
        replay(plan, args.sims, rng, table, source + ", the tricks drawn independently")
        replay(plan, args.sims, rng, table, source, {b: rho.get(b, 0.0) for b in bases})
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
