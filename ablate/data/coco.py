"""COCO-format reader and validator.

Reads one annotation file (``instances_*.json``) plus its image folder into a :class:`CocoSplit`:
the images that are used (sorted by image id, optionally only the first N), their training
targets (clipped, degenerate boxes dropped, crowd regions left out) and the ground truth as a
pycocotools-ready dict. Every problem with the input raises :class:`DatasetError` with a message
that names the file and what is wrong; boxes that are repaired or dropped are counted and logged.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError

log = logging.getLogger("ablate.data")

REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclass
class ImageRecord:
    """One image of a split and its training targets, in the original pixel coordinates."""

    id: int
    file_name: str
    path: Path
    width: int
    height: int
    # float64 [N, 4] xyxy, clipped to the image, every box of positive width and height.
    boxes: np.ndarray
    # int64 [N], contiguous labels 1..K.
    labels: np.ndarray


@dataclass
class CocoSplit:
    """The part of one annotation file that is used, validated and cleaned."""

    ann_file: Path
    images_dir: Path
    records: list[ImageRecord]
    # Category ids in ascending order: label k is categories[k-1].
    category_ids: list[int]
    category_names: list[str]
    # The annotation json restricted to the used images, usable by pycocotools.
    coco_gt: dict
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return {k + 1: cid for k, cid in enumerate(self.category_ids)}


def load_json(path: Path) -> dict:
    """Read an annotation file: a json object holding at least images, annotations and categories."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read annotation file: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be a JSON object, found {type(data).__name__}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise DatasetError(f"{path}: missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: top-level key '{key}' must be a list, found {type(data[key]).__name__}")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, for image entries that lack them."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: unreadable image: {e}") from e


def _parse_categories(path: Path, cats: list) -> tuple[list[int], list[str]]:
    seen: dict[int, str] = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise DatasetError(f"{path}: categories[{i}] has no integer 'id'")
        if c["id"] in seen:
            raise DatasetError(f"{path}: duplicate category id {c['id']}")
        seen[c["id"]] = str(c.get("name", c["id"]))
    if not seen:
        raise DatasetError(f"{path}: 'categories' is empty")
    ids = sorted(seen)
    return ids, [seen[i] for i in ids]


def _parse_images(path: Path, images: list) -> dict[int, dict]:
    by_id: dict[int, dict] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise DatasetError(f"{path}: images[{i}] has no integer 'id'")
        if im["id"] in by_id:
            raise DatasetError(f"{path}: duplicate image id {im['id']}")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise DatasetError(f"{path}: image id {im['id']} has no 'file_name'")
        for key in ("width", "height"):
            if key in im and not (_is_number(im[key]) and im[key] > 0):
                raise DatasetError(f"{path}: image id {im['id']} has invalid {key} {im[key]!r}")
        by_id[im["id"]] = im
    return by_id


def read_coco(ann_file: Path, images_dir: Path, max_images: int | None) -> CocoSplit:
    """Read and validate one COCO annotation file; keep the first ``max_images`` images by id.

    Targets: boxes are clipped to the image; boxes with zero or negative width or height after
    clipping (which includes boxes wholly outside the image) are dropped; both are counted and
    logged at WARNING. Crowd annotations (iscrowd=1) are left out of the targets.
    Ground truth (``coco_gt``): the used images and their annotations, with the same clipping
    and dropping applied to non-crowd boxes, crowd annotations kept as they are, and 'area'
    (box area) and 'iscrowd' (0) filled in where the file lacks them.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    data = load_json(ann_file)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: images folder not found (images of {ann_file})")
    cat_ids, cat_names = _parse_categories(ann_file, data["categories"])
    cat_to_label = {cid: k + 1 for k, cid in enumerate(cat_ids)}
    images = _parse_images(ann_file, data["images"])
    kept_ids = _kept_image_ids(images, max_images)
    anns_by_image = _annotations_by_image(ann_file, data["annotations"], images, cat_to_label, kept_ids)

    counts = {"images": len(kept_ids), "boxes": 0, "clipped": 0, "dropped": 0, "crowd": 0}
    records: list[ImageRecord] = []
    gt_images: list[dict] = []
    gt_anns: list[dict] = []
    for img_id in kept_ids:
        im = images[img_id]
        path, gt_im = _image_entry(ann_file, images_dir, img_id, im)
        gt_images.append(gt_im)
        boxes, labels = _image_targets(anns_by_image[img_id], gt_im["width"], gt_im["height"], cat_to_label,
                                       counts, gt_anns)
        counts["boxes"] += len(boxes)
        records.append(ImageRecord(
            id=img_id, file_name=im["file_name"], path=path, width=int(gt_im["width"]),
            height=int(gt_im["height"]), boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64)))

    _log_counts(ann_file, counts, len(kept_ids), len(records), len(cat_ids))
    coco_gt = {k: v for k, v in data.items() if k not in REQUIRED_KEYS}
    coco_gt.update(images=gt_images, annotations=gt_anns, categories=[dict(c) for c in data["categories"]])
    return CocoSplit(ann_file=ann_file, images_dir=images_dir, records=records, category_ids=cat_ids,
                     category_names=cat_names, coco_gt=coco_gt, counts=counts)


def _kept_image_ids(images: dict[int, dict], max_images: int | None) -> list[int]:
    """The ids of the images used, sorted: the first ``max_images`` of them, so that a smaller run
    always uses the same images."""
    kept_ids = sorted(images)
    if max_images is not None:
        if not _is_int(max_images) or max_images < 0:
            raise DatasetError(f"max_images must be a non-negative integer or null, got {max_images!r}")
        kept_ids = kept_ids[:max_images]
    return kept_ids


def _annotations_by_image(ann_file: Path, annotations: list, images: dict[int, dict],
                          cat_to_label: dict[int, int], kept_ids: list[int]) -> dict[int, list[dict]]:
    """Check every annotation of the file (a broken one fails the run even if its image is not
    used), and keep those of the used images, per image id."""
    anns_by_image: dict[int, list[dict]] = {i: [] for i in kept_ids}
    seen_ann_ids: set[int] = set()
    for i, a in enumerate(annotations):
        _check_annotation(ann_file, i, a, seen_ann_ids, images, cat_to_label)
        if a["image_id"] in anns_by_image:
            anns_by_image[a["image_id"]].append(a)
    return anns_by_image


def _check_annotation(ann_file: Path, i: int, a: Any, seen_ann_ids: set[int], images: dict[int, dict],
                      cat_to_label: dict[int, int]) -> None:
    """Raise DatasetError naming the file and the annotation when annotations[i] is malformed or a
    duplicate; record its id in ``seen_ann_ids``."""
    if not isinstance(a, dict) or not _is_int(a.get("id")):
        raise DatasetError(f"{ann_file}: annotations[{i}] has no integer 'id'")
    aid = a["id"]
    if aid in seen_ann_ids:
        raise DatasetError(f"{ann_file}: duplicate annotation id {aid}")
    seen_ann_ids.add(aid)
    if a.get("image_id") not in images:
        raise DatasetError(f"{ann_file}: annotation id {aid} refers to unknown image_id {a.get('image_id')!r}")
    if a.get("category_id") not in cat_to_label:
        raise DatasetError(
            f"{ann_file}: annotation id {aid} refers to unknown category_id {a.get('category_id')!r}")
    bbox = a.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise DatasetError(f"{ann_file}: annotation id {aid} has bbox {bbox!r}, expected 4 finite numbers [x, y, w, h]")
    crowd = a.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise DatasetError(f"{ann_file}: annotation id {aid} has iscrowd {crowd!r}, expected 0 or 1")
    if "area" in a and not _is_number(a["area"]):
        raise DatasetError(f"{ann_file}: annotation id {aid} has invalid area {a['area']!r}")


def _image_entry(ann_file: Path, images_dir: Path, img_id: int, im: dict) -> tuple[Path, dict]:
    """The image's file (which must exist) and its ground-truth entry, with the width and height read
    from the file where the annotation file lacks them: boxes are clipped to that size."""
    path = images_dir / im["file_name"]
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found (image id {img_id} of {ann_file})")
    gt_im = dict(im)
    if "width" not in im or "height" not in im:
        gt_im["width"], gt_im["height"] = _read_size(path)
    return path, gt_im


def _image_targets(anns: list[dict], width: float, height: float, cat_to_label: dict[int, int],
                   counts: dict[str, int], gt_anns: list[dict]) -> tuple[list[list[float]], list[int]]:
    """One image's training boxes (x1, y1, x2, y2, clipped to the image) and labels. Its ground-truth
    annotations go to ``gt_anns`` with the same clipping, so that training and evaluation see the
    same boxes; crowd regions stay in the ground truth only. Clipped, dropped and crowd boxes are
    counted in ``counts``."""
    boxes: list[list[float]] = []
    labels: list[int] = []
    for a in anns:
        x, y, w, h = (float(v) for v in a["bbox"])
        gt_a = dict(a)
        gt_a.setdefault("iscrowd", 0)
        if gt_a["iscrowd"]:
            gt_a.setdefault("area", max(w, 0.0) * max(h, 0.0))
            counts["crowd"] += 1
            gt_anns.append(gt_a)
            continue
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(width)), min(y + h, float(height))
        if x2 <= x1 or y2 <= y1:
            counts["dropped"] += 1
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            counts["clipped"] += 1
            gt_a["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        gt_a.setdefault("area", (x2 - x1) * (y2 - y1))
        gt_anns.append(gt_a)
        boxes.append([x1, y1, x2, y2])
        labels.append(cat_to_label[a["category_id"]])
    return boxes, labels


def _log_counts(ann_file: Path, counts: dict[str, int], n_used: int, n_records: int, n_categories: int) -> None:
    """Say what reading the file changed (clipped and dropped boxes, at WARNING) and what it holds."""
    if counts["clipped"] or counts["dropped"]:
        log.warning("%s: %d boxes clipped to the image, %d degenerate boxes dropped "
                    "(zero or negative size, or outside the image), among %d images used",
                    ann_file, counts["clipped"], counts["dropped"], n_used)
    log.info("%s: %d images, %d boxes, %d crowd regions, %d categories",
             ann_file, n_records, counts["boxes"], counts["crowd"], n_categories)


def check_same_categories(reference: CocoSplit, other: CocoSplit) -> None:
    """Train and val must share one label map."""
    if (reference.category_ids, reference.category_names) != (other.category_ids, other.category_names):
        raise DatasetError(
            f"{other.ann_file}: categories {list(zip(other.category_ids, other.category_names))} differ from "
            f"those of {reference.ann_file}: {list(zip(reference.category_ids, reference.category_names))}")
