"""COCO evaluation: faster-coco-eval against pycocotools, same detections, side by side.

    python benchmarks/evaluation.py                # the embedded val set and BCCD's
    python benchmarks/evaluation.py --repeats 5

The detections are a detector's typical output, made deterministically from the ground truth:
every object found with a jittered box (some missed, some with the wrong class), plus false
positives, up to 100 per image with scores. Both backends score them through
`ablate.evaluate.coco_metrics` (what a run uses); the script checks that the 12 stats agree to
1e-6 and prints the time ratio, alternating the backends to share any slow spell of the machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"
DATA = {"shapes": ["data=shapes"], "bccd": ["data=coco", f"data.root={BCCD}"]}


def synthetic_detections(coco_gt: dict, per_image: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in coco_gt["categories"]]
    images = {im["id"]: im for im in coco_gt["images"]}
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    for ann in coco_gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    dets = []
    for image_id, anns in by_image.items():
        w, h = images[image_id]["width"], images[image_id]["height"]
        made = []
        for ann in anns:
            if rng.random() < 0.1:  # missed
                continue
            x, y, bw, bh = ann["bbox"]
            jitter = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
            made.append(([x + jitter[0], y + jitter[1], max(1.0, bw + jitter[2]), max(1.0, bh + jitter[3])],
                         cat, float(rng.uniform(0.3, 1.0))))
        while len(made) < per_image:  # false positives, mostly low scores
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            made.append(([rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], int(rng.choice(cats)),
                         float(rng.uniform(0.05, 0.6))))
        dets += [{"image_id": image_id, "category_id": c, "bbox": [round(float(v), 3) for v in b],
                  "score": round(s, 5)} for b, c, s in made]
    return dets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-image", type=int, default=100, help="detections per image")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from ablate.config import conf_dir
    from ablate.data import build_data
    from ablate.evaluate import coco_metrics

    for name, overrides in DATA.items():
        if name == "bccd" and not BCCD.is_dir():
            print(f"bccd: skipped, {BCCD} not found")
            continue
        with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(conf_dir()), version_base=None):
            cfg = compose("config", overrides + [f"paths.cache={tmp}"])
            data = build_data(cfg.data, Path(cfg.paths.cache))
        gt = data.val_coco_gt
        dets = synthetic_detections(gt, args.per_image)
        names = {data.label_to_cat_id[k + 1]: n for k, n in enumerate(data.classes)}
        times: dict[str, list[float]] = {"pycocotools": [], "faster_coco_eval": []}
        stats = {}
        for _ in range(args.repeats):
            for backend in times:
                start = time.perf_counter()
                stats[backend], _ = coco_metrics(gt, dets, data.val.image_ids, backend, names)
                times[backend].append(time.perf_counter() - start)
        diff = max(abs(stats["pycocotools"][k] - stats["faster_coco_eval"][k]) for k in stats["pycocotools"])
        ref, fast = statistics.median(times["pycocotools"]), statistics.median(times["faster_coco_eval"])
        print(f"{name}: {len(data.val.image_ids)} images, {len(dets)} detections; pycocotools {ref:.3f} s, "
              f"faster_coco_eval {fast:.3f} s (medians of {args.repeats}): {ref / fast:.1f}x faster; "
              f"largest difference over the 12 stats {diff:.1e} (mAP {stats['pycocotools']['mAP']:.4f})")
        if diff > 1e-6:
            sys.exit(f"{name}: the backends disagree by {diff:.1e} (> 1e-6)")


if __name__ == "__main__":
    main()
