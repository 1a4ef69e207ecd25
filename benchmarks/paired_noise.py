"""How noisy a sweep's paired comparisons are, from its records: per base, the paired σ_d of its
tricks (the report's pool, robust to an outlying trick, and the plain pool), the seed-to-seed σ of
the baseline, the correlation between a variant's mAP and its baseline's across seeds, and the
noise the val set alone explains (each run's bootstrap `mAP_se`, where records carry it); with
--early EPOCH, how much of each variant's seed noise its early training already shows (the spread of
its training loss in that epoch over seeds, and that loss's correlation with the final mAP).

    python benchmarks/paired_noise.py before=reports/bag_of_tricks_3seed/runs after=reports/bag_of_tricks/runs

Each argument is LABEL=RUNS_DIR. Variants are named <base>/<tricks> (a sweep of named baselines);
a variant's partner is <base>/baseline at the same seed. mAP in points. Issue 25 asks for these
before and after the larger val set and the per-image flips.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Mapping

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate.report.stats import pooled_std  # noqa: E402
from ablate.results import RunRecord, find_records  # noqa: E402
from ablate.sweep.adaptive import pooled_sigma  # noqa: E402


Found = list[tuple[Path, RunRecord]]  # find_records' records with their result.json paths


def by_variant(found: Found) -> dict[str, dict[int, tuple[float, float]]]:
    """variant -> seed -> (mAP, mAP_se) in points, ok runs only (mAP_se NaN where not recorded)."""
    out: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for _, r in found:
        if r.status == "ok":
            out[r.variant][r.seed] = (100 * r.metrics["mAP"], 100 * r.metrics.get("mAP_se", math.nan))
    return out


def correlation(pairs: list[tuple[list[float], list[float]]]) -> float:
    """Pearson's r of variant against baseline across seeds, each trick centred on its own means (a
    trick's effect is no correlation), pooled over the base's tricks."""
    xs, ys = [], []
    for v, b in pairs:
        if len(v) >= 2:
            xs += list(np.asarray(v) - np.mean(v))
            ys += list(np.asarray(b) - np.mean(b))
    if len(xs) < 3 or not np.std(xs) or not np.std(ys):
        return math.nan
    return float(np.corrcoef(xs, ys)[0, 1])


def rms(values: list[float]) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if values else math.nan


def base_names(runs: Mapping[str, object]) -> list[str]:
    """The bases of variants named <base>/<tricks>, in the order of their names."""
    return sorted({v.split("/", 1)[0] for v in runs if "/" in v})


def by_base(runs: dict[str, dict[int, tuple[float, float]]]
            ) -> list[tuple[str, dict[int, tuple[float, float]], list[str], list[list[int]]]]:
    """Per base, in the order of their names: its baseline's runs, its tricks, and the seeds each trick
    shares with the baseline (those its paired differences are taken at)."""
    out = []
    for base in base_names(runs):
        baseline = runs.get(f"{base}/baseline", {})
        tricks = sorted(v for v in runs if v.startswith(f"{base}/") and v != f"{base}/baseline")
        out.append((base, baseline, tricks, [sorted(set(runs[t]) & set(baseline)) for t in tricks]))
    return out


def base_rows(runs: dict[str, dict[int, tuple[float, float]]]) -> list[dict]:
    rows = []
    for base, baseline, tricks, seed_lists in by_base(runs):
        diffs, pairs, se = [], [], []
        for t, seeds in zip(tricks, seed_lists):
            diffs.append([runs[t][s][0] - baseline[s][0] for s in seeds])
            pairs.append(([runs[t][s][0] for s in seeds], [baseline[s][0] for s in seeds]))
            se += [math.hypot(runs[t][s][1], baseline[s][1]) for s in seeds]
        robust, df, kept, _ = pooled_sigma(diffs)
        plain, _ = pooled_std(diffs)
        rows.append({"base": base, "tricks": len(tricks), "runs": sum(len(d) for d in diffs) + len(baseline),
                     "sigma_d": robust, "df": df, "left_out": [t.split("/", 1)[1] for t, k in zip(tricks, kept) if not k],
                     "sigma_d_plain": plain, "sigma_base": float(np.std([m for m, _ in baseline.values()], ddof=1))
                     if len(baseline) > 1 else math.nan, "r": correlation(pairs),
                     "val_noise": rms([x for x in se if not math.isnan(x)])})
    return rows


def early_loss(found: Found, epoch: int) -> dict[str, dict[int, tuple[float, float]]]:
    """variant -> seed -> (training loss of `epoch`, mAP in points), healthy ok runs: the epoch's mean loss
    from the run's train.log (its last "epoch E/N: loss X" line, the one of the launch that finished),
    else the mean of the record's loss curve in that epoch (every 20th step: a noisier figure)."""
    out: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for path, r in found:
        if r.status != "ok" or r.health:
            continue
        log = Path(path).parent / "train.log"
        logged = re.findall(rf"epoch {epoch}/\d+: loss ([0-9.]+)", log.read_text()) if log.is_file() else []
        losses = [float(logged[-1])] if logged else [p["loss"] for p in (r.curve or [])
                                                     if p.get("epoch") == epoch and "loss" in p]
        if losses:
            out[r.variant][r.seed] = (float(np.mean(losses)), 100 * r.metrics["mAP"])
    return out


def early_rows(runs: dict[str, dict[int, tuple[float, float]]]) -> list[dict]:
    """Per variant with 3 seeds or more: the spread over seeds of its early loss and of its mAP, and
    their correlation; per base, that correlation pooled over its variants (each centred on its own
    means): how much of the seed noise the early phase of training already shows."""
    rows = []
    for base in base_names(runs):
        xs, ys = [], []
        for v in sorted(t for t in runs if t.startswith(f"{base}/") and len(runs[t]) >= 3):
            loss, m = (np.array(c) for c in zip(*runs[v].values()))
            rows.append({"variant": v, "seeds": len(loss), "loss_sd": float(loss.std(ddof=1)),
                         "map_sd": float(m.std(ddof=1)), "r": float(np.corrcoef(loss, m)[0, 1])})
            xs += list(loss - loss.mean())
            ys += list(m - m.mean())
        if len(xs) >= 3:
            rows.append({"variant": f"{base} (pooled)", "seeds": len(xs), "loss_sd": math.nan, "map_sd": math.nan,
                         "r": float(np.corrcoef(xs, ys)[0, 1])})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUNS_DIR")
    ap.add_argument("--early", type=int, default=0, metavar="EPOCH",
                    help="also: per variant, the spread over seeds of its training loss in EPOCH and that loss's "
                         "correlation with the final mAP (healthy runs; variants with 3 seeds or more)")
    args = ap.parse_args(argv)
    print("| records | base | tricks | runs | σ_d pooled (df; left out) | σ_d plain pool | σ baseline | r(variant, baseline) "
          "| √(se_v² + se_b²) |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    records = {label: find_records(Path(path))[0] for label, _, path in (a.partition("=") for a in args.runs)}
    for label, found in records.items():
        for r in base_rows(by_variant(found)):
            out = ", ".join(r["left_out"]) or "none"
            print(f"| {label} | {r['base']} | {r['tricks']} | {r['runs']} | {r['sigma_d']:.2f} ({r['df']:.1f}; {out}) "
                  f"| {r['sigma_d_plain']:.2f} | {r['sigma_base']:.2f} | {r['r']:+.2f} | {r['val_noise']:.2f} |")
    if args.early:
        print(f"\n| records | variant | seeds | sd of epoch-{args.early} loss | σ mAP | r(epoch-{args.early} loss, mAP) |")
        print("|---|---|--:|--:|--:|--:|")
        for label, found in records.items():
            for r in early_rows(early_loss(found, args.early)):
                print(f"| {label} | {r['variant']} | {r['seeds']} | {r['loss_sd']:.3f} | {r['map_sd']:.2f} | {r['r']:+.2f} |")


if __name__ == "__main__":
    main()
