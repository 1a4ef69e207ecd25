"""COCO-size data (issue 28): reading the annotation index, building the dataset, the memory the
records take in the main process, its DataLoader workers and 2 processes, and COCO evaluation at
val2017 size.

    python benchmarks/coco_size.py                         # COCO size, this checkout's code
    python benchmarks/coco_size.py --before /work/bench-coco/before   # and the parent commit's, side by side
    python benchmarks/coco_size.py --images 2000 --boxes 14000 --val-images 200 --dir /tmp/small  # small

`--before SRC` is a folder holding another version of the `ablate` package (made with
`git archive <commit> ablate | tar -x -C SRC`): every measure then runs once with that code and
once with this checkout's, alternately, each in a fresh process (PYTHONPATH set to the code's
folder), so before/after ratios come from one run of the script on the same machine state.

The data (written once into `--dir`, kept while its size options are the same): a train split of
`--images` 640x480 images with `--boxes` boxes over 80 categories (COCO's sparse ids), ~1% of
them crowd regions and ~2% reaching over the image border (clipped), and a val split of
`--val-images` images; the image files are hard links of 4 JPEGs.

Measures, each in a fresh process:
- `read`: the train annotation file read and validated (`read_coco`), with an empty index cache
  and then again with the cache the first read wrote (the code before has none: both are a parse);
- `build`: `DetectionDataset` on that split (train, 320 px, flips, no image cache);
- memory: RSS and PSS (proportional set size, from /proc/PID/smaps_rollup; summed over the main
  process and its workers: PSS shares each page among the processes that map it, so the sum is
  the memory they take together) after one epoch of the training loader (ablate's make_loader,
  batch 64, shuffled: every index once) with 0, 2 and 8 workers, and the same under 2 processes
  (torchrun, gloo, CPU; each process its share of every batch, ablate's rank_loader). Each
  access runs the dataset's whole `__getitem__` (the record, its targets, its flip) but for the
  JPEG decode, replaced by a constant 3x1x1 image: decoding 118k images takes too long here, and
  the memory in question is the records', not the pixels';
- evaluation: `coco_metrics` on the val split with synthetic detections (benchmarks/evaluation.py:
  jittered ground truth plus false positives; `--det-per-image` per image, the first
  `--detections` of them), with faster-coco-eval and pycocotools, three calls in a row as a run
  with train.eval_every evaluates several times.

Times are wall seconds on whatever else the machine runs (this project's machine is shared):
compare the before/after ratios of one run, not absolute times across runs. PSS is what the
processes hold, which contention does not change.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE_W, IMAGE_H = 640, 480
JPEGS = 4
# COCO's 80 category ids: 1..90 without the 10 it skips.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


# --------------------------------------------------------------------------------------------- data

def write_split(path: Path, images_dir: Path, n_images: int, n_boxes: int, seed: int, prefix: str) -> None:
    """A COCO annotation file of n_images 640x480 images and n_boxes boxes, its images hard links
    of the JPEGs in images_dir/_jpeg*.jpg."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 10 * n_images + 1), n_images, replace=False))
    # Boxes per image: Poisson around the mean, a few images without any (as in COCO).
    counts = rng.multinomial(n_boxes, np.full(n_images, 1 / n_images))
    owners = np.repeat(ids, counts)
    w = np.exp(rng.uniform(np.log(4), np.log(500), n_boxes))
    h = np.clip(w * np.exp(rng.normal(0, 0.4, n_boxes)), 2, 470)
    x = rng.uniform(0, IMAGE_W - w)
    y = rng.uniform(0, IMAGE_H - h)
    over = rng.random(n_boxes) < 0.02  # reaching over the right border: clipped when read
    x[over] = IMAGE_W - w[over] / 2
    crowd = rng.random(n_boxes) < 0.01
    cats = rng.choice(COCO_CATEGORY_IDS, n_boxes)
    images = [{"id": int(i), "file_name": f"{prefix}{i:012d}.jpg", "width": IMAGE_W, "height": IMAGE_H}
              for i in ids]
    annotations = [{"id": k + 1, "image_id": int(owners[k]), "category_id": int(cats[k]),
                    "bbox": [round(float(x[k]), 2), round(float(y[k]), 2), round(float(w[k]), 2),
                             round(float(h[k]), 2)],
                    "area": round(float(w[k] * h[k]), 2), "iscrowd": int(crowd[k])} for k in range(n_boxes)]
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_CATEGORY_IDS]
    for k, im in enumerate(images):
        target = images_dir / im["file_name"]
        if not target.exists():
            os.link(images_dir / f"_jpeg{k % JPEGS}.jpg", target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"info": {"description": "synthetic, COCO size"}, "images": images,
                               "annotations": annotations, "categories": categories}))
    tmp.replace(path)


def ensure_data(root: Path, args) -> dict:
    """The synthetic set under root, written unless the one there has the same size options."""
    spec = {"images": args.images, "boxes": args.boxes, "val_images": args.val_images,
            "val_boxes": args.val_boxes, "version": 1}
    done = root / "spec.json"
    if done.is_file() and json.loads(done.read_text()) == spec:
        return spec
    from PIL import Image

    if root.exists():
        shutil.rmtree(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(JPEGS):
        pixels = rng.integers(0, 256, (IMAGE_H // 8, IMAGE_W // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((IMAGE_W, IMAGE_H)).save(images_dir / f"_jpeg{k}.jpg", quality=85)
    t0 = time.perf_counter()
    write_split(root / "annotations" / "instances_train.json", images_dir, args.images, args.boxes, 1, "train_")
    write_split(root / "annotations" / "instances_val.json", images_dir, args.val_images, args.val_boxes, 2, "val_")
    done.write_text(json.dumps(spec))
    print(f"wrote the synthetic set into {root} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return spec


# ------------------------------------------------------------------ measures (in a fresh process)

def _pss_rss(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in bytes, from /proc/PID/smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("Pss:", "Rss:"):
            values[parts[0]] = int(parts[1]) * 1024
    return values["Pss:"], values["Rss:"]


def _read_split(ann_file: Path, images_dir: Path, cache: Path, ground_truth: bool):
    """read_coco as build_data calls it: with the index cache and without the train ground truth
    where this code has them (the code before has neither)."""
    import inspect

    from ablate.data.coco import read_coco

    if "cache_dir" in inspect.signature(read_coco).parameters:
        return read_coco(ann_file, images_dir, None, cache, ground_truth=ground_truth)
    return read_coco(ann_file, images_dir, None)


def measure_read(spec: dict) -> dict:
    import ablate.data  # noqa: F401  (torch and the rest imported before the clock starts)

    root = Path(spec["root"])
    t0 = time.perf_counter()
    split = _read_split(root / "annotations/instances_train.json", root / "images", Path(spec["cache"]), False)
    read_s = time.perf_counter() - t0
    from ablate.data.dataset import DetectionDataset

    t0 = time.perf_counter()
    dataset = DetectionDataset(split, image_size=320, train=True, hflip=0.5, cache_ram_mb=0, flip_rng="sample")
    build_s = time.perf_counter() - t0
    pss, rss = _pss_rss(os.getpid())
    import ablate

    return {"read_s": read_s, "build_s": build_s, "images": len(dataset), "pss": pss, "rss": rss,
            "code": ablate.__file__}


def measure_memory(spec: dict) -> dict:
    """One epoch of the training loader, each __getitem__ whole but for the JPEG decode; then the
    PSS and RSS of this process and its (persistent, still alive) workers."""
    import gc

    import torch

    import ablate.data.dataset as dataset_module
    from ablate import distributed

    processes = int(os.environ.get("WORLD_SIZE", 1))
    if processes > 1:
        torch.distributed.init_process_group("gloo")
    tiny = torch.zeros(3, 1, 1, dtype=torch.uint8)
    dataset_module.decode_image = lambda *args, **kwargs: tiny.clone()
    root = Path(spec["root"])
    split = _read_split(root / "annotations/instances_train.json", root / "images", Path(spec["cache"]), False)
    dataset = dataset_module.DetectionDataset(split, image_size=320, train=True, hflip=0.5, cache_ram_mb=0,
                                              flip_rng="sample")
    del split  # build_data keeps the datasets alone
    gc.collect()
    dataset.set_epoch(0)
    loader = distributed.rank_loader(dataset, spec["batch"], spec["workers"], seed=0)
    t0 = time.perf_counter()
    batches = iter(loader)
    seen = sum(len(images) for images, _ in batches)
    epoch_s = time.perf_counter() - t0
    # The workers (persistent) are still alive: their pages are measured as the epoch left them.
    pids = [os.getpid()] + [w.pid for w in getattr(batches, "_workers", [])]
    pss, rss = (sum(v) for v in zip(*(_pss_rss(p) for p in pids)))
    out = {"pss": pss, "rss": rss, "processes": len(pids), "accesses": seen, "epoch_s": epoch_s}
    if processes > 1:
        everyone = [None] * processes
        torch.distributed.all_gather_object(everyone, out)  # all alive while each measures
        out = {k: sum(o[k] for o in everyone) for k in ("pss", "rss", "processes", "accesses")}
        out["epoch_s"] = max(o["epoch_s"] for o in everyone)
        torch.distributed.destroy_process_group()
    return out


def measure_eval(spec: dict) -> dict:
    """coco_metrics three times in a row per backend on the val split and synthetic detections."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from evaluation import synthetic_detections

    from ablate.evaluate import coco_metrics

    root = Path(spec["root"])
    split = _read_split(root / "annotations/instances_val.json", root / "images", Path(spec["cache"]), True)
    gt = split.coco_gt
    dets = synthetic_detections(gt, spec["per_image"])[:spec["detections"]]
    names = {cid: name for cid, name in zip(split.category_ids, split.category_names)}
    ids = [im["id"] for im in gt["images"]]
    out = {"images": len(ids), "gt_boxes": len(gt["annotations"]), "detections": len(dets)}
    for backend in spec["backends"]:
        times = []
        for _ in range(spec["calls"]):
            fresh = [dict(d) for d in dets]  # loadRes writes into the detections it is given
            t0 = time.perf_counter()
            metrics, _ = coco_metrics(gt, fresh, ids, backend, names)
            times.append(time.perf_counter() - t0)
        out[backend] = {"calls_s": times, "mAP": metrics["mAP"]}
    return out


MEASURES = {"read": measure_read, "memory": measure_memory, "eval": measure_eval}


# ------------------------------------------------------------------------------------ the driver

def child(code: Path, spec: dict, processes: int = 1) -> dict:
    """A measure in a fresh process (torchrun with ``processes`` > 1) running ``code``'s ablate."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", json.dumps(spec)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29400 + os.getpid() % 1000)] + cmd[1:]
    proc = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"measure {spec} with {code} failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def estimate(memory: dict[int, dict], workers: int) -> float:
    """The summed PSS of one process with ``workers`` workers, from those measured (0 when none is):
    the machine is shared, and the code before copies ~1 GB per worker at COCO size."""
    if workers in memory:
        return memory[workers]["pss"]
    measured = sorted(w for w in memory if w > 0)
    if 0 not in memory or not measured:
        return 0.0
    per_worker = (memory[measured[-1]]["pss"] - memory[0]["pss"]) / measured[-1]
    return memory[0]["pss"] + workers * per_worker


def run_all(args, codes: dict[str, Path]) -> dict:
    """Every measure, the codes alternating within each, so that a slow spell hits both."""
    data = Path(args.dir) / "data"
    res: dict = {label: {"read": {}, "memory": {}, "dist": {}, "eval": {}} for label in codes}
    for label, code in codes.items():
        cache = Path(args.dir) / f"cache-{label}"
        shutil.rmtree(cache, ignore_errors=True)
        res[label]["read"]["first"] = child(code, {"kind": "read", "root": str(data), "cache": str(cache)})
        res[label]["read"]["cached"] = child(code, {"kind": "read", "root": str(data), "cache": str(cache)})
        print(label, "read", res[label]["read"], flush=True)
    for processes, workers_list, key in ((1, args.workers, "memory"), (2, args.dist_workers, "dist")):
        for workers in workers_list:
            for label, code in codes.items():
                need = processes * estimate(res[label]["memory"], workers)
                if need > 0.8 * available_bytes():
                    print(f"{label}: {processes} processes x {workers} workers skipped: ~{need / 2**30:.1f} GiB "
                          f"needed, {available_bytes() / 2**30:.1f} GiB available", flush=True)
                    continue
                spec = {"kind": "memory", "root": str(data), "cache": str(Path(args.dir) / f"cache-{label}"),
                        "workers": workers, "batch": args.batch}
                res[label][key][workers] = child(code, spec, processes)
                print(label, key, workers, res[label][key][workers], flush=True)
    for per_image, detections in args.eval_sets:
        for label, code in codes.items():
            spec = {"kind": "eval", "root": str(data), "cache": str(Path(args.dir) / f"cache-{label}"),
                    "per_image": per_image, "detections": detections, "calls": args.calls,
                    "backends": ["faster_coco_eval", "pycocotools"]}
            res[label]["eval"][f"{per_image}/{detections}"] = child(code, spec)
            print(label, "eval", per_image, res[label]["eval"][f"{per_image}/{detections}"], flush=True)
    return res


def table(res: dict, labels: list[str]) -> str:
    """The figures as a markdown table, one column per code, and after/before where both ran."""
    mb = 2**20
    rows: list[tuple[str, list]] = []

    def row(name: str, get) -> None:
        values = []
        for label in labels:
            try:
                values.append(get(res[label]))
            except (KeyError, TypeError):
                values.append(None)
        rows.append((name, values))

    row("annotation read, first (s)", lambda r: r["read"]["first"]["read_s"])
    row("annotation read, second run (s)", lambda r: r["read"]["cached"]["read_s"])
    row("dataset build (s)", lambda r: r["read"]["first"]["build_s"])
    row("PSS after read + build, first run (MB)", lambda r: r["read"]["first"]["pss"] / mb)
    row("PSS after read + build, second run (MB)", lambda r: r["read"]["cached"]["pss"] / mb)
    for key, what in (("memory", "1 process"), ("dist", "2 processes")):
        for workers in sorted({w for label in labels for w in res[label][key]}):
            row(f"{what}, {workers} workers: summed PSS (MB)", lambda r: r[key][workers]["pss"] / mb)
            row(f"{what}, {workers} workers: summed RSS (MB)", lambda r: r[key][workers]["rss"] / mb)
            row(f"{what}, {workers} workers: PSS / 1 process 0 workers",
                lambda r: r[key][workers]["pss"] / r["memory"][0]["pss"])
            row(f"{what}, {workers} workers: epoch of accesses (s)", lambda r: r[key][workers]["epoch_s"])
    for name in sorted({n for label in labels for n in res[label]["eval"]}):
        for backend in ("faster_coco_eval", "pycocotools"):
            row(f"eval {name} per image/detections, {backend}: 1st call (s)",
                lambda r: r["eval"][name][backend]["calls_s"][0])
            row(f"eval {name} per image/detections, {backend}: later calls, mean (s)",
                lambda r: sum(r["eval"][name][backend]["calls_s"][1:]) / (len(r["eval"][name][backend]["calls_s"]) - 1))
    head = "| measure | " + " | ".join(labels) + (" | after / before |" if len(labels) == 2 else " |")
    lines = [head, "|---" * (len(labels) + 1 + (len(labels) == 2)) + "|"]
    for name, values in rows:
        cells = ["—" if v is None else f"{v:.3g}" if v < 100 else f"{v:.0f}" for v in values]
        if len(labels) == 2:
            after, before = values[labels.index("after")], values[labels.index("before")]
            cells.append("—" if not (after and before) else f"{after / before:.3g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/work/bench-coco", help="where the data, caches and results go")
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--boxes", type=int, default=828_009)
    parser.add_argument("--val-images", type=int, default=5_000)
    parser.add_argument("--val-boxes", type=int, default=36_000)
    parser.add_argument("--before", help="a folder holding the ablate package to compare with (see above)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    parser.add_argument("--dist-workers", type=int, nargs="*", default=[0, 2, 8],
                        help="workers per process under torchrun with 2 processes (none: skip)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-sets", type=lambda v: tuple(int(x) for x in v.split("/")), nargs="*",
                        default=[(8, 36_000), (100, 500_000)],
                        help="PER_IMAGE/DETECTIONS: detections made per image, the first DETECTIONS kept")
    parser.add_argument("--calls", type=int, default=3, help="evaluations in a row per backend")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        spec = json.loads(args.measure)
        out = MEASURES[spec["kind"]](spec)
        if int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps(out), flush=True)
        return
    if 0 not in args.workers:
        parser.error("--workers must include 0: the other figures are given relative to it")
    ensure_data(Path(args.dir) / "data", args)
    codes = {"before": Path(args.before).resolve()} if args.before else {}
    codes["after"] = REPO
    res = run_all(args, codes)
    out = Path(args.dir) / "results.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"\n{args.images} train images, {args.boxes} boxes; val {args.val_images} images, {args.val_boxes} boxes"
          f" (all measures in {out})\n")
    print(table(res, list(codes)))


if __name__ == "__main__":
    main()
