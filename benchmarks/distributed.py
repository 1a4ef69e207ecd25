"""Two processes against one on the CPU: per-step losses and training images/s of one run.

    python benchmarks/distributed.py                         # 2 epochs, default config (FCOS, 160 px, batch 16)
    python benchmarks/distributed.py --epochs 3 --out /tmp/ddp-bench
    python benchmarks/distributed.py model=retinanet tricks=[group_norm] data.hflip=0   # overrides for both runs

The same `ablate train` config runs twice with the same global batch (data.batch_size): once as
one process with 2 intra-op threads (runtime.num_threads=2), once under torchrun as 2 processes
(gloo) with 1 thread each, so both use the same 2 cores. Training images/s is the record's
timings.images_per_s (images of the global batch over training seconds, checkpoints and
evaluation excluded). Evaluation is cut to a few val images: it is not what is measured. Printed:
the per-logged-step losses side by side with their relative difference, and the images/s ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MEASURED = ["data.max_val_images=16", "eval.latency_images=1", "train.log_every=10", "runtime.progress=false",
            "runtime.reuse=never"]


def run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ablate-distributed-bench"))
    parser.add_argument("overrides", nargs="*", help="ablate train overrides for both runs")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    common = [f"train.epochs={args.epochs}", f"paths.runs={args.out / 'runs'}", *MEASURED, *args.overrides]
    one_dir, two_dir = args.out / "one_process", args.out / "two_processes"
    run([sys.executable, "-m", "ablate.cli", "train", *common, "runtime.num_threads=2", f"hydra.run.dir={one_dir}"],
        dict(env, OMP_NUM_THREADS="2"))
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ablate.cli",
         "train", *common, "runtime.num_threads=1", f"hydra.run.dir={two_dir}"], dict(env, OMP_NUM_THREADS="1"))
    one, two = (json.loads((d / "result.json").read_text()) for d in (one_dir, two_dir))
    print(f"{'step':>5} {'1 process':>12} {'2 processes':>12} {'rel. diff':>10}")
    worst = 0.0
    for a, b in zip((p for p in one["curve"] if "loss" in p), (p for p in two["curve"] if "loss" in p)):
        rel = abs(b["loss"] - a["loss"]) / abs(a["loss"])
        worst = max(worst, rel)
        print(f"{a['step']:>5} {a['loss']:>12.6f} {b['loss']:>12.6f} {rel:>10.2e}")
    ips1, ips2 = one["timings"]["images_per_s"], two["timings"]["images_per_s"]
    print(f"largest relative loss difference: {worst:.2e}")
    print(f"val mAP: 1 process {one['metrics'].get('mAP', float('nan')):.4f}, "
          f"2 processes {two['metrics'].get('mAP', float('nan')):.4f} (on {MEASURED[0].split('=')[1]} val images)")
    print(f"training images/s: 1 process x 2 threads {ips1:.1f}, 2 processes x 1 thread {ips2:.1f}, "
          f"ratio {ips2 / ips1:.2f} (train_s {one['timings']['train_s']:.0f} s vs {two['timings']['train_s']:.0f} s)")
    print(f"2-process record: distributed={two['distributed']}, config_hash {two['config_hash']} "
          f"(1 process: {one['config_hash']})")


if __name__ == "__main__":
    main()
