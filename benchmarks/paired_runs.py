"""Two set-ups' whole runs compared seed by seed: mAP per seed, the paired 95% interval of the
difference (B − A) as the report computes it, and the ratio of training times.

    python benchmarks/paired_runs.py A_DIR B_DIR [--metric mAP]

A_DIR and B_DIR hold the records (result.json, any depth) of the two arms, e.g. the two baselines
of a sweep in benchmarks/sweeps/ (`ablate sweep benchmarks/sweeps/cpu_bf16.yaml` trains them, and
reuses a runs folder's records of the same config). What the report cannot say when two set-ups
are baselines rather than a baseline and a trick: whether changing the set-up changed mAP beyond
seed noise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate.report.stats import compare  # noqa: E402
from ablate.results import find_records  # noqa: E402


def by_seed(root: Path) -> dict[int, object]:
    found, errors = find_records(root)
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    runs = {}
    for path, record in found:
        if record.status != "ok":
            print(f"skipped: {path} has status {record.status}", file=sys.stderr)
            continue
        if record.seed in runs:
            raise SystemExit(f"{root}: two ok records of seed {record.seed}; give one arm per folder")
        runs[record.seed] = record
    if not runs:
        raise SystemExit(f"{root}: no ok record")
    return runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--metric", default="mAP")
    args = ap.parse_args(argv)
    a, b = by_seed(args.a), by_seed(args.b)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise SystemExit(f"no seed ran in both arms (A: {sorted(a)}, B: {sorted(b)})")
    print(f"A: {args.a}\nB: {args.b}\n")
    print(f"{'seed':>4}  {'A ' + args.metric:>9}  {'B ' + args.metric:>9}  {'B − A':>7}  {'train_s B/A':>11}")
    ma, mb = {}, {}
    for s in seeds:
        ma[s], mb[s] = 100 * float(a[s].metrics[args.metric]), 100 * float(b[s].metrics[args.metric])
        ratio = float(b[s].timings["train_s"]) / float(a[s].timings["train_s"])
        print(f"{s:>4}  {ma[s]:9.1f}  {mb[s]:9.1f}  {mb[s] - ma[s]:+7.1f}  {ratio:11.2f}")
    iv = compare(mb, ma)
    mean_a, mean_b = sum(ma.values()) / len(seeds), sum(mb.values()) / len(seeds)
    print(f"\nmean A {mean_a:.1f}, B {mean_b:.1f} ({args.metric} points, {len(seeds)} seeds)")
    print(f"B − A: {iv.mean:+.1f} points, 95% {iv.method} interval [{iv.low:+.1f}, {iv.high:+.1f}]"
          + (" (excludes zero)" if iv.excludes_zero else " (includes zero: within seed noise)"))
    print("whole-run time ratios are noisy on a shared machine; the step ratio comes from the "
          "interleaved benchmarks (frcnn_budget.py, cpu_amp.py)")


if __name__ == "__main__":
    main()
