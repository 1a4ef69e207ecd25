"""Sweep throughput on one machine: which launcher set-up finishes a sweep soonest.

    python benchmarks/launchers.py                 # 4 short jobs on this machine's cores
    python benchmarks/launchers.py --jobs 6 --repeats 2

The same small sweep (one_at_a_time over the first tricks, short runs on the embedded data) runs
under each set-up in a fresh runs folder, one after the other:

- sequential: Hydra's basic launcher, one job at a time, torch using every core;
- parallel, threads split: `hydra/launcher=joblib` with n_jobs = cores / threads, each job's
  `runtime.num_threads` = threads (cores split between the jobs).

It prints each set-up's wall time and the speed-up of the best over sequential. The shapes set
is generated once before, untimed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, run_ablate

TRICKS = ["warmup", "mixup", "cutmix", "label_smoothing", "mish", "dropblock", "ghm"]
SHORT = ["data.max_val_images=32", "train.epochs=2", "eval.latency_images=2", "runtime.progress=false",
         "runtime.checkpoint=false"]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sweep(sweep_file: Path, extra: list[str], work: Path, label: str) -> float:
    return run_ablate(["sweep", str(sweep_file), *SHORT, *extra, f"paths.runs={work / f'runs-{label}'}",
                       f"paths.reports={work / 'reports'}"], work / "cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="runs in the sweep (baseline + jobs-1 tricks)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=640, help="training images per run (2 epochs)")
    args = parser.parse_args()
    c = cores()
    setups = {"sequential (basic, all threads)": []}
    for threads in sorted({1, max(1, c // 2)}):
        n_jobs = c // threads
        if n_jobs > 1:
            setups[f"joblib n_jobs={n_jobs}, {threads} thread(s) each"] = [
                "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}", f"runtime.num_threads={threads}"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sweep_file = work / "throughput.yaml"
        sweep_file.write_text(f"design: one_at_a_time\ntricks: [{', '.join(TRICKS[:args.jobs - 1])}]\nseeds: 1\n")
        # Generate the shapes set (and warm the disk cache) before any timing.
        subprocess.run([sys.executable, "-m", "ablate.cli", "show-batch", "--out", str(work / "warm.png")],
                       cwd=REPO, env=dict(os.environ, ABLATE_CACHE=str(work / "cache")), check=True,
                       capture_output=True)
        times: dict[str, list[float]] = {name: [] for name in setups}
        for r in range(args.repeats):
            for name, extra in setups.items():
                times[name].append(sweep(sweep_file, [f"data.max_train_images={args.images}", *extra], work,
                                         f"{len(times[name])}-{abs(hash(name))}"))
                print(f"  repeat {r + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    print(f"\n{args.jobs} jobs on {c} cores:")
    seq = min(times["sequential (basic, all threads)"])
    for name, ts in times.items():
        print(f"  {name}: {min(ts):.1f} s (best of {len(ts)}), speed-up over sequential {seq / min(ts):.2f}x")
    best = min(times, key=lambda k: min(times[k]))
    print(f"fastest: {best}")


if __name__ == "__main__":
    main()
