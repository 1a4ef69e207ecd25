"""Reference numbers for a refactor that must not change them: record, then compare.

    python benchmarks/reference_numbers.py record  [--out /tmp/redesign_ref]
    python benchmarks/reference_numbers.py compare [--out /tmp/redesign_ref]

`record` runs, at one thread, `ablate sweep quick profile=smoke` and one smoke run per detector
(a data, a loss and a network trick each, some with a schedule trick), rebuilds the report of
every committed reports/*/runs (and of the bare records in reports/heads_bccd), and keeps, per
run, the logged loss curve and the final metrics in <out>/<label>/numbers.json, the reports'
table.csv and report.md beside them. It also keeps the checkpoint a two-epoch run wrote after its
first epoch (<out>/resume/epoch1.pt) with the full run's numbers.

`compare` does the same into <out>/after (fresh folders, so no record is reused), checks every
number for exact equality with <out>/before, and resumes the kept checkpoint (runtime.reuse=any_code:
the code fingerprint changes with the code) to check that the resumed run ends with the full
run's numbers. Exit status 1 when anything differs.

Run it with the tree under test first on the path: `PYTHONPATH=$PWD python benchmarks/...`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# One smoke run per detector: a data, a loss and a network trick that fit it (each trick's `fits`),
# a schedule or weight-averaging trick on some, so every hook runs.
RUNS = {
    "fcos": ["mixup", "diou", "spp"],
    "retinanet": ["photometric", "ghm_r", "mish", "ema"],
    "reppoints": ["cutmix", "diou", "dropblock"],
    "faster_rcnn": ["random_crop", "ohem", "spp", "warmup"],
    "rfcn": ["random_erasing", "giou", "pan"],
    "yolov3": ["mixup", "giou", "spp"],
    "ssd": ["mixup", "giou", "mish"],
    # No loss trick fits CenterNet or CornerNet: their one slot, box_loss, takes deltas losses only,
    # and balanced_l1 (the one such trick) fits RetinaNet and the two-stage detectors.
    "centernet": ["scale_jitter", "spp", "warmup"],
    "cornernet": ["mixup", "dropblock", "cosine"],  # droppath needs residual blocks: the tiny backbone has none
}
COMMON = ["profile=smoke", "runtime.num_threads=1", "runtime.reuse=never", "runtime.progress=false"]
RESUME = ["model=retinanet", "tricks=[mixup,giou,mish,ema]", "train.epochs=2"]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return e


def ablate(*args: str, cwd: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "ablate.cli", *args]
    done = subprocess.run(cmd, env=env(), cwd=cwd or REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")


def numbers(result: Path) -> dict:
    rec = json.loads(result.read_text())
    return {"status": rec["status"], "curve": rec["curve"], "metrics": rec["metrics"],
            "per_class_ap": rec.get("per_class_ap"), "params": rec.get("params"), "flops": rec.get("flops")}


def record_all(out: Path, keep: bool = False) -> dict:
    """With keep, the runs already complete in `out` (of an earlier call cut short) are not run again."""
    if out.exists() and not keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    found: dict = {}
    # The quick sweep, smoke profile.
    if not (keep and len(list((out / "runs" / "quick").rglob("result.json"))) == 3):
        ablate("sweep", "quick", *COMMON, f"paths.runs={out}/runs", f"paths.reports={out}/reports")
    for res in sorted((out / "runs").rglob("result.json")):
        found[f"quick/{res.parent.relative_to(out / 'runs')}"] = numbers(res)
    # One run per detector.
    for model, tricks in RUNS.items():
        run_dir = out / "train" / model
        if not (keep and (run_dir / "result.json").is_file()):
            ablate("train", f"model={model}", f"tricks=[{','.join(tricks)}]", *COMMON, f"paths.runs={out}/runs",
                   f"hydra.run.dir={run_dir}")
        found[f"train/{model}"] = numbers(run_dir / "result.json")
    # The committed reports, rebuilt.
    reports: dict = {}
    # reports/heads_bccd holds bare records (<model>.json): each put in a folder of its own as result.json.
    heads = out / "heads_bccd_runs"
    for record in sorted((REPO / "reports" / "heads_bccd").glob("*.json")):
        (heads / record.stem).mkdir(parents=True, exist_ok=True)
        shutil.copy(record, heads / record.stem / "result.json")
    for runs in sorted(REPO.glob("reports/*/runs")) + [heads]:
        name = "reports/heads_bccd" if runs == heads else runs.relative_to(REPO).as_posix()
        dest = out / "reports_rebuilt" / name.replace("/", "_")
        ablate("report", str(runs), "--out", str(dest))
        reports[name] = {f: (dest / f).read_text() for f in ("table.csv", "report.md") if (dest / f).exists()}
    return {"runs": found, "reports": reports}


def resume_run(out: Path, keep_first: bool) -> dict:
    """The two-epoch run; with keep_first, its checkpoint after epoch 1 is copied aside (by
    polling the run folder, so the script depends on no name inside ablate.train)."""
    run_dir = out / "resume_full"
    cmd = [sys.executable, "-m", "ablate.cli", "train", *RESUME, *COMMON, f"paths.runs={out}/runs",
           f"hydra.run.dir={run_dir}"]
    if not keep_first:
        subprocess.run(cmd, env=env(), cwd=REPO, check=True, capture_output=True)
        return numbers(run_dir / "result.json")
    import time
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, kept = run_dir / "last.pt", out / "resume" / "epoch1.pt"
    kept.parent.mkdir(parents=True, exist_ok=True)
    import torch
    while proc.poll() is None:
        if ckpt.exists() and not kept.exists():
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
                if state["epoch"] == 0:
                    shutil.copy(ckpt, kept)
            except Exception:
                pass
        time.sleep(0.05)
    if proc.returncode != 0 or not kept.exists():
        raise SystemExit("resume reference: run failed or its first checkpoint was not caught")
    assert torch.load(kept, map_location="cpu", weights_only=True)["epoch"] == 0
    return numbers(run_dir / "result.json")


def diff(a, b, where="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only before" for k in a.keys() - b.keys()]
        out += [f"{where}.{k}: only after" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += diff(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{where}[{i}]")]
    if a != b and not (a != a and b != b):  # NaN == NaN here
        return [f"{where}: {a!r} != {b!r}"]
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["record", "compare"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/redesign_ref"))
    ap.add_argument("--keep", action="store_true", help="keep the runs already complete in the output folder")
    args = ap.parse_args()
    side = args.out / ("before" if args.mode == "record" else "after")
    found = record_all(side, args.keep)
    found["resume_full"] = resume_run(side, keep_first=args.mode == "record")
    found["where"] = {"repo": str(REPO), "out": str(side)}
    (side / "numbers.json").write_text(json.dumps(found, indent=1, sort_keys=True))
    print(f"{len(found['runs'])} runs, {len(found['reports'])} reports -> {side / 'numbers.json'}")
    if args.mode == "record":
        return
    before = json.loads((args.out / "before" / "numbers.json").read_text())
    before_where = before.pop("where", {"repo": "/tmp/ref_src", "out": str(args.out / "before")})
    after = json.loads(json.dumps(found))
    after.pop("where")
    # The reports name the folders they were made from and into: the same text once those are named alike.
    for numbers_, where in ((before, before_where), (after, found["where"])):
        for files in numbers_["reports"].values():
            for f, text in files.items():
                text = text.replace(where["out"], "<OUT>").replace(where["repo"], "<REPO>")
                files[f] = re.sub(r" on \d{4}-\d\d-\d\d \d\d:\d\d ", " on <DATE> ", text)  # "Built by ... on"
    problems = diff(before, after)
    # Resume the checkpoint kept before the change, in a fresh folder, with the code of now.
    run_dir = side / "resumed"
    run_dir.mkdir(parents=True)
    shutil.copy(args.out / "before" / "resume" / "epoch1.pt", run_dir / "last.pt")
    ablate("train", *RESUME, *[c for c in COMMON if not c.startswith("runtime.reuse")], "runtime.reuse=any_code",
           f"paths.runs={side}/runs", f"hydra.run.dir={run_dir}")
    resumed = numbers(run_dir / "result.json")
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    resumed_ok = "resuming from" in log or any("resuming from" in p.read_text() for p in run_dir.glob("*.log"))
    problems += [f"resume: {d}" for d in diff(before["resume_full"], resumed, "resume")]
    if not resumed_ok:
        problems.append("resume: the run did not say it resumed from the checkpoint")
    for name in sorted(before["runs"]):
        same = not any(p.startswith(f".runs.{name}") for p in problems)
        print(f"{'identical' if same else 'DIFFERENT'}  {name}  (mAP {before['runs'][name]['metrics'].get('mAP')}, "
              f"{len(before['runs'][name]['curve'])} curve points)")
    for name in sorted(before["reports"]):
        same = not any(p.startswith(f".reports.{name}") for p in problems)
        print(f"{'identical' if same else 'DIFFERENT'}  report {name}")
    print(f"{'identical' if not any(p.startswith('resume') for p in problems) else 'DIFFERENT'}  resume from the "
          "checkpoint written before the change")
    if problems:
        print("\n".join(problems[:50]))
        raise SystemExit(1)
    print("all identical")


if __name__ == "__main__":
    main()
