"""A COCO set like the one FCOS collapsed on (issue 9): 12 classes, 600 train / 150 val images of
416x416, objects about 26x54 px (tall, narrow), median one object per image, 8% with 8-20.
Usage: python benchmarks/collapse/make_tall_set.py OUT_DIR"""
import json
import sys
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw

root = Path(sys.argv[1]); n_train, n_val = 600, 150
COLORS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40)]
KINDS = ["rect", "ellipse", "tri"]
cats = [{"id": i + 1, "name": f"{k}_{c}"} for i, (k, c) in enumerate((k, c) for k in KINDS for c in range(4))]
def make(split, n, seed):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        bg = rng.integers(60, 180, 3)
        arr = np.clip(bg[None, None, :] + rng.normal(0, 15, (416, 416, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr); d = ImageDraw.Draw(im)
        u = rng.random()
        k = 1 if u < 0.55 else (int(rng.integers(2, 5)) if u < 0.92 else int(rng.integers(8, 20)))
        for _ in range(k):
            w = int(np.clip(rng.normal(26, 6), 12, 45)); h = int(np.clip(rng.normal(54, 10), 30, 90))
            x = int(rng.integers(0, 416 - w)); y = int(rng.integers(0, 416 - h))
            c = int(rng.integers(12)); kind, col = KINDS[c // 4], COLORS[c % 4]
            if kind == "rect": d.rectangle([x, y, x + w - 1, y + h - 1], fill=col)
            elif kind == "ellipse": d.ellipse([x, y, x + w - 1, y + h - 1], fill=col)
            else: d.polygon([(x + w / 2, y), (x, y + h - 1), (x + w - 1, y + h - 1)], fill=col)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
        name = f"{split}_{i:04d}.jpg"; im.save(root / "images" / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": 416, "height": 416})
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
make("train", n_train, 0); make("val", n_val, 1)
