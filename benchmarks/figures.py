"""The headline figures of the README, measured on this machine by running `ablate` as a user does.

    python benchmarks/figures.py                 # smoke, quick and bccd, one after the other
    python benchmarks/figures.py smoke           # only `ablate sweep quick profile=smoke`
    python benchmarks/figures.py quick --keep reports/quick   # keep its records, rebuild its report there

Each figure runs in fresh temporary runs/, reports/ and cache folders (the shapes set is
generated inside the timed command, as on a new machine). Run one benchmark at a time: two at
once share the cores and both figures are wrong.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BCCD, REPO, records, run_ablate

# The README's BCCD command (tiny backbone, 320 px).
BCCD_OVERRIDES = ["data=coco", f"data.root={BCCD}", "train.epochs=30"]


def run(args: list[str], workdir: Path) -> float:
    return run_ablate([*args, f"paths.runs={workdir / 'runs'}", f"paths.reports={workdir / 'reports'}",
                       "runtime.progress=false"], workdir / "cache")


def sweep_figure(name: str, extra: list[str], keep: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        elapsed = run(["sweep", "quick", *extra], work)
        recs = records(work / "runs")
        print(f"`ablate sweep quick {' '.join(extra)}`: {elapsed:.1f} s wall for {len(recs)} runs")
        for key, rec in sorted(recs.items()):
            t = rec["timings"]
            print(f"  {key}: status {rec['status']}, mAP {rec['metrics'].get('mAP', float('nan')):.4f}, "
                  f"train {t.get('train_s', 0):.1f} s at {t.get('images_per_s', 0):.1f} images/s, "
                  f"data wait {100 * t.get('data_wait_fraction', 0):.1f}% of training, "
                  f"inference {rec['inference_ms_per_image'] or float('nan'):.2f} ms/image")
        if keep:
            # Keep the records (not the checkpoints) and rebuild the report from them, so the
            # example can be rebuilt with `ablate report <keep>/runs` from the repository.
            shutil.rmtree(keep, ignore_errors=True)
            for path in (work / "runs" / "quick").rglob("result.json"):
                target = keep / "runs" / path.parent.relative_to(work / "runs" / "quick") / "result.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            rel = keep.resolve().relative_to(REPO) if keep.resolve().is_relative_to(REPO) else keep.resolve()
            subprocess.run([sys.executable, "-m", "ablate.cli", "report", str(rel / "runs"), "--out", str(rel),
                            "--title", "quick"], cwd=REPO, check=True, capture_output=True)
            print(f"  records and report kept in {keep}")


def bccd_figure() -> None:
    if not BCCD.is_dir():
        print(f"bccd: skipped, {BCCD} not found")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        elapsed = run(["train", *BCCD_OVERRIDES], work)
        (rec,) = records(work / "runs").values()
        t = rec["timings"]
        print(f"`ablate train {' '.join(o.replace(str(BCCD), '../shared/data/bccd') for o in BCCD_OVERRIDES)}`: "
              f"{elapsed:.1f} s wall, {t['train_s']:.1f} s training at {t['images_per_s']:.1f} images/s, "
              f"val mAP {rec['metrics']['mAP']:.4f} (AP50 {rec['metrics']['AP50']:.4f}), "
              f"per class {', '.join(f'{k} {v:.3f}' for k, v in rec['per_class_ap'].items())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figures", nargs="*", choices=["smoke", "quick", "bccd"], default=["smoke", "quick", "bccd"])
    parser.add_argument("--keep", type=Path, default=None, help="copy the quick sweep's report here")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores; python {sys.version.split()[0]}")
    for fig in args.figures:
        if fig == "smoke":
            sweep_figure("smoke", ["profile=smoke"], None)
        elif fig == "quick":
            sweep_figure("quick", [], args.keep)
        else:
            bccd_figure()


if __name__ == "__main__":
    main()
