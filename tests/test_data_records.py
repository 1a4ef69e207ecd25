"""The records as flat arrays (issue 28): the same targets in the same order as the per-image
reader of before, the parsed index cached on disk, and loader workers that do not copy them."""
from __future__ import annotations

import gc
import json
import logging
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablate.data import build_data, make_loader
from ablate.data import coco as coco_module
from ablate.data import dataset as dataset_module
from ablate.data.coco import CocoSplit, read_coco
from ablate.data.dataset import DetectionDataset, resized_size
from ablate.data.records import RecordTable
from ablate.distributed import rank_loader


# ------------------------------------------------------------------ the reader of before, in brief

def reference_split(ann_file: Path, images_dir: Path, image_size: int | None, max_images: int | None = None):
    """What the per-image reader and dataset of before made of a valid file (ablate/data/coco.py
    and dataset.py at 3dd440b, without their checks): per used image, by id, (image_id, boxes,
    labels, scale, orig_size) as the dataset served them, and the ground truth."""
    data = json.loads(ann_file.read_text())
    cat_to_label = {c: k + 1 for k, c in enumerate(sorted(c["id"] for c in data["categories"]))}
    images = sorted(data["images"], key=lambda im: im["id"])[:max_images]
    by_image: dict = {im["id"]: [] for im in images}
    for a in data["annotations"]:
        if a["image_id"] in by_image:
            by_image[a["image_id"]].append(a)
    targets, gt_images, gt_anns = [], [], []
    for im in images:
        gt_im = dict(im)
        if "width" not in im or "height" not in im:
            gt_im["width"], gt_im["height"] = Image.open(images_dir / im["file_name"]).size
        gt_images.append(gt_im)
        width, height = gt_im["width"], gt_im["height"]
        boxes, labels = [], []
        for a in by_image[im["id"]]:
            x, y, w, h = (float(v) for v in a["bbox"])
            gt_a = dict(a)
            gt_a.setdefault("iscrowd", 0)
            if gt_a["iscrowd"]:
                gt_a.setdefault("area", max(w, 0.0) * max(h, 0.0))
                gt_anns.append(gt_a)
                continue
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + w, float(width)), min(y + h, float(height))
            if x2 <= x1 or y2 <= y1:
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                gt_a["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            gt_a.setdefault("area", (x2 - x1) * (y2 - y1))
            gt_anns.append(gt_a)
            boxes.append([x1, y1, x2, y2])
            labels.append(cat_to_label[a["category_id"]])
        new_w, new_h, scale = resized_size(int(width), int(height), image_size)
        b = torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale).to(torch.float32)
        b[:, 0::2] = b[:, 0::2].clamp(0, new_w)
        b[:, 1::2] = b[:, 1::2].clamp(0, new_h)
        targets.append((im["id"], b, torch.tensor(labels, dtype=torch.int64), scale, (int(height), int(width))))
    gt = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    gt.update(images=gt_images, annotations=gt_anns, categories=[dict(c) for c in data["categories"]])
    return targets, gt


def messy_set(coco_set_factory, seed: int = 0, n_images: int = 60, n_anns: int = 400, unusual: bool = False):
    """A valid file with everything the reader repairs or leaves out: ids out of order, annotations
    shuffled over the images, boxes over the border, outside it, of no size, crowds, images without
    boxes or without width and height, categories with gaps, keys missing and extra keys.
    ``unusual``: values json allows and the checks accept although numpy would not take them as
    they are (image_id 3.0, iscrowd true/false, category_id 7.0)."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(1, 4 * n_images))[:n_images]
    images = []
    for k, i in enumerate(ids.tolist()):
        w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        im = {"id": i, "file_name": f"{i:04d}.png", "width": w, "height": h, "license": 1}
        images.append(im)
    cats = [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in (7, 2, 11)]
    anns = []
    for j in range(n_anns):
        im = images[int(rng.integers(0, n_images - 5))]  # the last 5 images have no box
        w, h = rng.uniform(-3, 40, 2)
        x, y = rng.uniform(-15, im["width"] + 5), rng.uniform(-15, im["height"] + 5)
        a = {"id": 1000 + j, "image_id": im["id"], "category_id": int(rng.choice([7, 2, 11])),
             "bbox": [round(float(x), 2), round(float(y), 2), round(float(w), 2), int(h)],
             "segmentation": [[1, 2, 3, 4]]}
        if rng.random() < 0.1:
            a["iscrowd"] = 1
        elif rng.random() < 0.5:
            a["iscrowd"] = 0
        if rng.random() < 0.5:
            a["area"] = float(rng.uniform(1, 100))
        if unusual:
            a["image_id"] = float(a["image_id"]) if j % 3 == 0 else a["image_id"]
            a["iscrowd"] = bool(a.get("iscrowd", 0)) if j % 2 else a.get("iscrowd", 0)
            a["category_id"] = float(a["category_id"]) if j % 5 == 0 else a["category_id"]
        anns.append(a)
    ann_file = coco_set_factory(images, anns, cats)
    data = json.loads(ann_file.read_text())
    data["categories"].append({"id": 9, "name": "c9"})  # a category without boxes
    del data["images"][3]["width"], data["images"][4]["height"]  # read from the files
    data["info"] = {"year": 2024}
    ann_file.write_text(json.dumps(data))
    return ann_file


def assert_same_targets(dataset: DetectionDataset, reference: list) -> None:
    """The dataset serves the reference's targets (before its flips, which are the same code as ever)."""
    assert len(dataset) == len(reference)
    for i, (image_id, boxes, labels, scale, orig_size) in enumerate(reference):
        _, target = dataset[i]
        if dataset.flips:
            target["boxes"], target["labels"] = dataset.targets(i)
        assert type(target["image_id"]) is int and target["image_id"] == image_id
        assert torch.equal(target["boxes"], boxes) and target["boxes"].dtype == torch.float32
        assert torch.equal(target["labels"], labels) and target["labels"].dtype == torch.int64
        assert type(target["scale"]) is float and target["scale"] == scale
        assert target["orig_size"] == orig_size and all(type(v) is int for v in target["orig_size"])


@pytest.mark.parametrize("image_size, max_images, unusual", [(64, None, False), (None, None, False),
                                                              (50, 37, False), (64, None, True)])
def test_the_same_targets_in_the_same_order_as_before(coco_set_factory, tmp_path, image_size, max_images, unusual):
    ann_file = messy_set(coco_set_factory, unusual=unusual)
    images_dir = ann_file.parent.parent / "images"
    reference, reference_gt = reference_split(ann_file, images_dir, image_size, max_images)
    assert sum(len(t[2]) for t in reference) > 100 and any(len(t[2]) == 0 for t in reference)
    for cache in (None, tmp_path / "index", tmp_path / "index"):  # parsed, written, read back
        split = read_coco(ann_file, images_dir, max_images, cache)
        assert split.coco_gt == reference_gt
        dataset = DetectionDataset(split, image_size=image_size, train=False, hflip=0.0, cache_ram_mb=0,
                                   flip_rng="sample")
        assert_same_targets(dataset, reference)
        assert dataset.image_ids == [t[0] for t in reference]


def test_the_embedded_set_gives_the_same_targets_as_before(tmp_path, load_conf):
    """The shapes set as build_data reads it (the quick sweep's data, fewer images)."""
    cfg = load_conf("data/shapes", cache_ram_mb=0, **{"generator.num_train": 150, "generator.num_val": 60})
    bundle = build_data(cfg, tmp_path)
    for dataset, name in ((bundle.train, "train"), (bundle.val, "val")):
        ann_file = bundle.root / "annotations" / f"instances_{name}.json"
        reference, reference_gt = reference_split(ann_file, bundle.root / "images", cfg.image_size)
        dataset.set_epoch(0)
        assert_same_targets(dataset, reference)
    assert bundle.val_coco_gt == reference_gt


# -------------------------------------------------------------------------------- the index cache

def index_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.idx"))


def test_a_second_read_comes_from_the_cache(coco_set_factory, tmp_path, monkeypatch):
    ann_file = messy_set(coco_set_factory)
    images_dir = ann_file.parent.parent / "images"
    cache = tmp_path / "index"
    first = read_coco(ann_file, images_dir, None, cache)
    assert len(index_files(cache)) == 1 and not list(cache.glob("*.tmp"))

    def no_parse(path):
        raise AssertionError("parsed again")

    monkeypatch.setattr(coco_module, "load_json", no_parse)
    second = read_coco(ann_file, images_dir, None, cache)
    assert second.coco_gt == first.coco_gt and second.counts == first.counts
    assert (second.category_ids, second.category_names) == (first.category_ids, first.category_names)
    for name, array in first.records.arrays().items():
        assert np.array_equal(getattr(second.records, name), array), name
    # Read from a memory map of the file: the pages are the page cache's, shared by every process.
    base = second.records.boxes
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    assert isinstance(base, mmap.mmap) and not second.records.boxes.flags.writeable
    # Without the ground truth: another entry.
    monkeypatch.undo()
    assert read_coco(ann_file, images_dir, None, cache, ground_truth=False).coco_gt is None
    assert len(index_files(cache)) == 2


def test_the_cache_is_rebuilt_when_the_file_changes(coco_set_factory, tmp_path):
    ann_file = messy_set(coco_set_factory)
    images_dir = ann_file.parent.parent / "images"
    cache = tmp_path / "index"
    read_coco(ann_file, images_dir, None, cache)
    data = json.loads(ann_file.read_text())
    a = next(a for a in data["annotations"] if a["category_id"] in (2, 7))
    a["category_id"] = 9 - a["category_id"]  # 2 <-> 7: another label, the same number of bytes
    text = json.dumps(data)
    assert len(text) == ann_file.stat().st_size  # same size: only the modification time tells
    ann_file.write_text(text)
    stat = ann_file.stat()
    os.utime(ann_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = read_coco(ann_file, images_dir, None, cache)
    assert changed.coco_gt == reference_split(ann_file, images_dir, None)[1]
    assert len(index_files(cache)) == 1  # the entry rewritten, not another beside it
    # Grown: the size tells.
    data["annotations"].append(dict(changed.coco_gt["annotations"][0], id=99999))
    ann_file.write_text(json.dumps(data))
    assert len(read_coco(ann_file, images_dir, None, cache).coco_gt["annotations"]) == \
        len(changed.coco_gt["annotations"]) + 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header"])
def test_a_corrupt_cache_file_is_rebuilt(coco_set_factory, tmp_path, caplog, damage):
    ann_file = messy_set(coco_set_factory)
    images_dir = ann_file.parent.parent / "images"
    cache = tmp_path / "index"
    good = read_coco(ann_file, images_dir, None, cache)
    (entry,) = index_files(cache)
    raw = entry.read_bytes()
    entry.write_bytes({"truncate": raw[:len(raw) // 2], "garbage": os.urandom(len(raw)), "empty": b"",
                       "header": raw.replace(b'"shape": [', b'"shape": [9999999, ', 1)}[damage])
    caplog.set_level(logging.WARNING, logger="ablate.data")
    again = read_coco(ann_file, images_dir, None, cache)
    assert again.coco_gt == good.coco_gt and np.array_equal(again.records.boxes, good.records.boxes)
    assert any("index cache unreadable" in r.getMessage() and str(entry) in r.getMessage() for r in caplog.records)
    assert entry.read_bytes() == raw  # written again, whole


def test_another_reader_does_not_read_the_cache(coco_set_factory, tmp_path, monkeypatch):
    ann_file = messy_set(coco_set_factory)
    images_dir = ann_file.parent.parent / "images"
    cache = tmp_path / "index"
    read_coco(ann_file, images_dir, None, cache)
    monkeypatch.setattr(coco_module, "_reader_hash", lambda: "another reader")
    parsed = []
    monkeypatch.setattr(coco_module, "load_json", lambda path: parsed.append(path) or json.loads(path.read_text()))
    read_coco(ann_file, images_dir, None, cache)
    assert parsed == [ann_file]


def test_build_data_keeps_the_index_under_paths_cache(coco_set_factory, load_conf, tmp_path, monkeypatch):
    ann_file = messy_set(coco_set_factory)
    val = json.loads(ann_file.read_text())
    (ann_file.parent / "instances_val.json").write_text(json.dumps(val))
    cfg = load_conf("data/coco", root=str(ann_file.parent.parent), cache_ram_mb=0)
    first = build_data(cfg, tmp_path / "cache")
    assert len(index_files(tmp_path / "cache" / "coco_index")) == 2
    monkeypatch.setattr(coco_module, "load_json", lambda path: pytest.fail("parsed again"))
    second = build_data(cfg, tmp_path / "cache")
    assert second.val_coco_gt == first.val_coco_gt and second.classes == first.classes
    first.train.set_epoch(3)
    second.train.set_epoch(3)
    for i in range(len(first.train)):
        a, b = first.train[i][1], second.train[i][1]
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


# ----------------------------------------------------------------------- workers share the records

def synthetic_split(n_images: int, boxes_per_image: int, seed: int = 0) -> CocoSplit:
    """A split of n_images 640x480 images (no files: the decoder is replaced where it is read)."""
    rng = np.random.default_rng(seed)
    m = n_images * boxes_per_image
    xy = rng.uniform(0, 300, (m, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 300, (m, 2))], axis=1)
    records = RecordTable.build(Path("/nonexistent"), np.arange(1, n_images + 1, dtype=np.int64),
                                np.full(n_images, 640, dtype=np.int64), np.full(n_images, 480, dtype=np.int64),
                                [f"{i:012d}.jpg" for i in range(n_images)], boxes,
                                rng.integers(1, 81, m).astype(np.int64), np.full(n_images, boxes_per_image))
    return CocoSplit(ann_file=Path("synthetic.json"), images_dir=Path("/nonexistent"), records=records,
                     category_ids=list(range(1, 81)), category_names=[str(i) for i in range(1, 81)], coco_gt=None)


class Reads(torch.utils.data.Dataset):
    """Each item reads the dataset's whole item (decode replaced) and hands back only a number, so
    that an epoch is the records' reads and not the transfer of their tensors."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return len(self.dataset[i][1]["boxes"]), 0


SMAPS = Path("/proc/self/smaps_rollup")
HAS_PSS_ANON = SMAPS.exists() and "Pss_Anon" in SMAPS.read_text()


def summed_anonymous_pss(pids: list[int]) -> int:
    """PSS of the processes' anonymous memory (heap, arrays), summed: the pages they share count
    once. Not the whole PSS: the pages of shared libraries are shared with every process on the
    machine that loads torch, and move as those come and go."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss_Anon:"):
                total += int(line.split()[1]) * 1024
    return total


def worker_pids(loader_iter) -> list[int]:
    return [w.pid for w in loader_iter._workers]


# What an epoch of reads may add to the summed PSS of the main process and 2 workers: what the
# workers allocate themselves (~1 MB here). The per-image objects of before (an ImageRecord, its
# Path, two tensors, a float per image: ablate/data at 3dd440b, the same 20,000 images and reads)
# added 49 MB: each worker copied the pages of the records it read.
EPOCH_PSS_BOUND = 8 * 2**20


@pytest.mark.skipif(not HAS_PSS_ANON, reason="needs Linux's /proc/PID/smaps_rollup with Pss_Anon")
def test_loader_workers_do_not_copy_the_records(monkeypatch):
    tiny = torch.zeros(3, 1, 1, dtype=torch.uint8)
    monkeypatch.setattr(dataset_module, "decode_image", lambda record, image_size: tiny.clone())
    dataset = DetectionDataset(synthetic_split(20_000, 7), image_size=320, train=True, hflip=0.5, cache_ram_mb=0,
                               flip_rng="sample")
    dataset.set_epoch(0)
    gc.collect()
    loader = make_loader(Reads(dataset), batch_size=250, shuffle=True, num_workers=2, seed=0)
    it = iter(loader)
    boxes = sum(next(it)[0])
    pids = [os.getpid(), *worker_pids(it)]
    started = summed_anonymous_pss(pids)
    boxes += sum(sum(counts) for counts, _ in it)
    grown = summed_anonymous_pss(pids) - started
    assert boxes == 20_000 * 7
    assert grown < EPOCH_PSS_BOUND, f"an epoch of reads added {grown / 2**20:.1f} MB of PSS"


class FreezeCount(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return gc.get_freeze_count(), 0


def test_workers_leave_inherited_objects_out_of_their_collections():
    """A full collection writes into every object it walks: a worker that walked the main process's
    objects copied its heap (~100 MB per worker at COCO size, with the records flat already)."""
    assert gc.get_freeze_count() == 0
    for loader in (make_loader(FreezeCount(), 2, shuffle=False, num_workers=1),
                   rank_loader(FreezeCount(), 2, num_workers=1, seed=0, rank_=0, processes=2)):
        counts = [c for images, _ in loader for c in images]
        assert counts and min(counts) > 10_000
    assert gc.get_freeze_count() == 0  # the main process's own collections are untouched
