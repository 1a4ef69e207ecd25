"""COCO-format reader and validator.

Reads one annotation file (``instances_*.json``) plus its image folder into a :class:`CocoSplit`:
the images that are used (sorted by image id, optionally only the first N), their training
targets (clipped, degenerate boxes dropped, crowd regions left out) as a :class:`RecordTable` of
flat arrays (records.py says why), and, when asked for, the ground truth as a pycocotools-ready
dict. Every problem with the input raises :class:`DatasetError` with a message that names the
file and what is wrong; boxes that are repaired or dropped are counted and logged.

The file is checked column by column (numpy) and, only when something there is off, annotation
by annotation, for the message that names the first bad one. With a cache folder
(``build_data``: ``${paths.cache}/coco_index``) the parsed split is kept there, keyed by the
annotation file's path, size and modification time, the images folder's, ``max_images`` and the
source of this reader, so a second run reads it back instead of parsing the JSON again; a cache
file that does not read back whole is rebuilt.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from .records import ImageRecord, RecordTable, read_index, write_index

__all__ = ["CocoSplit", "DatasetError", "ImageRecord", "RecordTable", "check_same_categories", "load_json",
           "read_coco"]

log = logging.getLogger("ablate.data")

REQUIRED_KEYS = ("images", "annotations", "categories")
# Bump when the cache file's content changes meaning; the reader's source is in the key as well.
INDEX_FORMAT = 1


class _Missing:
    """A key absent from an image or annotation (None is a value the file may hold)."""


MISSING = _Missing()


@dataclass
class CocoSplit:
    """The part of one annotation file that is used, validated and cleaned."""

    ann_file: Path
    images_dir: Path
    records: RecordTable
    # Category ids in ascending order: label k is categories[k-1].
    category_ids: list[int]
    category_names: list[str]
    # The annotation json restricted to the used images, usable by pycocotools (None when not asked for).
    coco_gt: dict | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return {k + 1: cid for k, cid in enumerate(self.category_ids)}


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """json builds a container per image, annotation and box (~2M at COCO size) and none of them
    is in a cycle: the collector walking them as they pile up doubled the parse time (3.5 s
    against 1.8 s for train2017's size)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_json(path: Path) -> dict:
    """Read an annotation file: a json object holding at least images, annotations and categories."""
    path = Path(path)
    _require_file(path)
    try:
        with open(path, encoding="utf-8") as f, _collector_paused():
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


def read_coco(ann_file: Path, images_dir: Path, max_images: int | None, cache_dir: Path | None = None,
              ground_truth: bool = True) -> CocoSplit:
    """Read and validate one COCO annotation file; keep the first ``max_images`` images by id.

    Targets: boxes are clipped to the image; boxes with zero or negative width or height after
    clipping (which includes boxes wholly outside the image) are dropped; both are counted and
    logged at WARNING. Crowd annotations (iscrowd=1) are left out of the targets.
    Ground truth (``coco_gt``, made when ``ground_truth``): the used images and their annotations,
    with the same clipping and dropping applied to non-crowd boxes, crowd annotations kept as they
    are, and 'area' (box area) and 'iscrowd' (0) filled in where the file lacks them.
    With ``cache_dir`` the split is read from there when the file and folder are those it was
    made from, else parsed and written there.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    if cache_dir is None:
        return parse_coco(ann_file, images_dir, max_images, ground_truth)
    _require_file(ann_file)
    _check_images_dir(ann_file, images_dir)
    entry, key = _cache_entry(ann_file, images_dir, max_images, ground_truth, Path(cache_dir))
    split = _cached_split(entry, key, ann_file, images_dir)
    if split is None:
        split = parse_coco(ann_file, images_dir, max_images, ground_truth)
        _store(entry, key, split)
    return split


def _require_file(ann_file: Path) -> None:
    if not ann_file.is_file():
        raise DatasetError(f"{ann_file}: annotation file not found")


def _check_images_dir(ann_file: Path, images_dir: Path) -> None:
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: images folder not found (images of {ann_file})")


def parse_coco(ann_file: Path, images_dir: Path, max_images: int | None, ground_truth: bool) -> CocoSplit:
    """:func:`read_coco` without the cache: the file parsed and checked."""
    data = load_json(ann_file)
    _check_images_dir(ann_file, images_dir)
    cat_ids, cat_names = _parse_categories(ann_file, data["categories"])
    entries, ids = _image_columns(ann_file, data["images"])
    kept = _kept_images(ids, max_images)
    anns = _annotation_columns(ann_file, data["annotations"], np.sort(ids), np.asarray(cat_ids, dtype=np.int64))
    used = _used_images(ann_file, images_dir, entries, kept, ground_truth)
    clean = _clean_boxes(anns, ids[kept], used.widths, used.heights)
    labels = np.searchsorted(cat_ids, anns.category[clean.order][clean.kept]).astype(np.int64) + 1
    records = RecordTable.build(images_dir, ids[kept], used.widths.astype(np.int64), used.heights.astype(np.int64),
                                used.names, clean.xyxy[clean.kept], labels,
                                np.bincount(clean.image[clean.kept], minlength=len(kept)))
    counts = {"images": len(kept), "boxes": len(labels), "clipped": int(clean.clipped.sum()),
              "dropped": int(clean.dropped.sum()), "crowd": int(clean.crowd.sum())}
    _log_counts(ann_file, counts, len(kept), len(records), len(cat_ids))
    coco_gt = None
    if ground_truth:
        coco_gt = {k: v for k, v in data.items() if k not in REQUIRED_KEYS}
        coco_gt.update(images=used.gt_images, annotations=_gt_annotations(data["annotations"], anns, clean),
                       categories=[dict(c) for c in data["categories"]])
    return CocoSplit(ann_file=ann_file, images_dir=images_dir, records=records, category_ids=cat_ids,
                     category_names=cat_names, coco_gt=coco_gt, counts=counts)


def _columns(items: list, keys: tuple[str, ...]) -> dict[str, list] | None:
    """Each key's values over the items (MISSING where absent), or None if an item is not an object."""
    if any(type(item) is not dict for item in items):
        return None
    return {key: [item.get(key, MISSING) for item in items] for key in keys}


def _only(values: Any, *types: type) -> bool:
    """Every value is of one of these exact types (so no bool passes for an int)."""
    return set(map(type, values)) <= set(types)


def _image_columns(ann_file: Path, images: list) -> tuple[list[dict], np.ndarray]:
    """The image entries, checked, and their ids (int64, in file order)."""
    cols = _columns(images, ("id", "file_name", "width", "height"))
    if cols is None or not _images_look_valid(cols):
        _parse_images(ann_file, images)  # raises, naming the first bad image
        cols = _columns(images, ("id",))
    try:
        return images, np.array(cols["id"], dtype=np.int64).reshape(-1)
    except OverflowError:
        raise DatasetError(f"{ann_file}: an image id does not fit in 64 bits") from None


def _images_look_valid(cols: dict[str, list]) -> bool:
    ids, names = cols["id"], cols["file_name"]
    if not (_only(ids, int) and len(set(ids)) == len(ids) and _only(names, str) and all(names)):
        return False
    for key in ("width", "height"):
        if not _only(cols[key], int, float, _Missing):
            return False
        given = np.array([v for v in cols[key] if v is not MISSING], dtype=np.float64)
        if not (np.isfinite(given) & (given > 0)).all():
            return False
    return True


def _kept_images(ids: np.ndarray, max_images: int | None) -> np.ndarray:
    """The positions (in file order) of the images used, by ascending id: the first ``max_images``
    of them, so that a smaller run always uses the same images."""
    order = np.argsort(ids, kind="stable")
    if max_images is not None:
        if not _is_int(max_images) or max_images < 0:
            raise DatasetError(f"max_images must be a non-negative integer or null, got {max_images!r}")
        order = order[:max_images]
    return order


@dataclass
class _UsedImages:
    names: list[str]
    widths: np.ndarray  # float64: the file's values (boxes are clipped to them)
    heights: np.ndarray
    gt_images: list[dict] | None


def _used_images(ann_file: Path, images_dir: Path, entries: list[dict], kept: np.ndarray,
                 ground_truth: bool) -> _UsedImages:
    """The used images' files (which must exist), sizes and ground-truth entries, with the width and
    height read from the file where the annotation file lacks them: boxes are clipped to that size."""
    with os.scandir(images_dir) as listing:  # one listing, not a stat per image
        present = {e.name for e in listing if e.is_file()}
    used = _UsedImages([], np.zeros(len(kept)), np.zeros(len(kept)), [] if ground_truth else None)
    for k, pos in enumerate(kept.tolist()):
        im = entries[pos]
        name = im["file_name"]
        if name not in present and not os.path.isfile(os.path.join(images_dir, name)):
            raise DatasetError(f"{images_dir / name}: image file not found (image id {im['id']} of {ann_file})")
        if "width" in im and "height" in im:
            width, height = im["width"], im["height"]
        else:
            width, height = _read_size(images_dir / name)
        used.names.append(name)
        used.widths[k], used.heights[k] = width, height
        if used.gt_images is not None:
            used.gt_images.append({**im, "width": width, "height": height})
    return used


@dataclass
class _Annotations:
    """Every annotation of a file, in file order, as columns."""
    image: np.ndarray     # int64 image_id
    category: np.ndarray  # int64 category_id
    bbox: np.ndarray      # float64 [n, 4] x, y, w, h
    crowd: np.ndarray     # bool


def _annotation_columns(ann_file: Path, annotations: list, image_ids: np.ndarray,
                        cat_ids: np.ndarray) -> _Annotations:
    """Check every annotation of the file (a broken one fails the run even if its image is not
    used) and return them as columns; ``image_ids`` and ``cat_ids`` sorted."""
    cols = _columns(annotations, ("id", "image_id", "category_id", "bbox", "iscrowd", "area"))
    anns = _as_arrays(cols) if cols is not None else None
    if anns is None or not _annotations_look_valid(cols, anns, image_ids, cat_ids):
        # Something is off: the check of each annotation names the first bad one.
        seen: set[int] = set()
        known_images, known_cats = set(image_ids.tolist()), set(cat_ids.tolist())
        for i, a in enumerate(annotations):
            _check_annotation(ann_file, i, a, seen, known_images, known_cats)
        # Valid, in values Python compares equal to ints (1.0, true) where numpy needs them.
        cols = _columns(annotations, ("id", "image_id", "category_id", "bbox", "iscrowd", "area"))
        anns = _as_arrays(cols)
    return anns


def _as_arrays(cols: dict[str, list]) -> _Annotations | None:
    """The columns as arrays, or None where a value does not convert (the checks then name it)."""
    try:
        bbox = np.array(cols["bbox"], dtype=np.float64)
        if bbox.size == 0:
            bbox = bbox.reshape(0, 4)
        if bbox.shape != (len(cols["bbox"]), 4):
            return None
        return _Annotations(image=np.array(cols["image_id"], dtype=np.int64).reshape(-1),
                            category=np.array(cols["category_id"], dtype=np.int64).reshape(-1), bbox=bbox,
                            crowd=np.array([0 if c is MISSING else c for c in cols["iscrowd"]], dtype=bool))
    except (TypeError, ValueError, OverflowError):
        return None


def _annotations_look_valid(cols: dict[str, list], anns: _Annotations, image_ids: np.ndarray,
                            cat_ids: np.ndarray) -> bool:
    """What _check_annotation asks of each annotation, asked of the columns at once (exact types:
    the values json gives a valid file)."""
    ids = cols["id"]
    if not (_only(ids, int) and len(set(ids)) == len(ids) and _only(cols["image_id"], int)
            and _only(cols["category_id"], int) and np.isin(anns.image, image_ids).all()
            and np.isin(anns.category, cat_ids).all()):
        return False
    if not (_only(cols["bbox"], list) and _only(itertools.chain.from_iterable(cols["bbox"]), int, float)
            and np.isfinite(anns.bbox).all()):
        return False
    areas = cols["area"]
    if not (_only(cols["iscrowd"], int, _Missing) and _only(areas, int, float, _Missing)):
        return False
    crowd = np.array([c for c in cols["iscrowd"] if c is not MISSING], dtype=np.int64)
    given = np.array([a for a in areas if a is not MISSING], dtype=np.float64)
    return bool(np.isin(crowd, (0, 1)).all() and np.isfinite(given).all())


def _check_annotation(ann_file: Path, i: int, a: Any, seen_ann_ids: set[int], images: set[int],
                      categories: set[int]) -> None:
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
    if a.get("category_id") not in categories:
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


@dataclass
class _Clean:
    """The annotations of the used images, grouped by image (file order within one), with their
    boxes clipped: annotation ``order[j]`` of the file belongs to used image ``image[j]``."""
    order: np.ndarray
    image: np.ndarray
    xyxy: np.ndarray     # float64 [n, 4], clipped
    crowd: np.ndarray    # bool: left out of the targets, kept in the ground truth as it is
    dropped: np.ndarray  # bool: no area left after clipping
    clipped: np.ndarray  # bool: a kept box that clipping changed

    @property
    def kept(self) -> np.ndarray:
        return ~(self.crowd | self.dropped)


def _clean_boxes(anns: _Annotations, used_ids: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> _Clean:
    """Clip each box of the used images to its image; drop those left without area."""
    pos = np.searchsorted(used_ids, anns.image)
    if len(used_ids):
        mine = used_ids[np.minimum(pos, len(used_ids) - 1)] == anns.image
    else:
        mine = np.zeros(len(anns.image), dtype=bool)
    picked = np.flatnonzero(mine)
    order = picked[np.argsort(pos[picked], kind="stable")]
    image = pos[order]
    x, y, w, h = anns.bbox[order].T
    right, bottom = x + w, y + h
    # Python's max(x, 0.0) and min(x + w, width) element by element: the same floats as ever.
    x1, y1 = np.where(0.0 > x, 0.0, x), np.where(0.0 > y, 0.0, y)
    x2 = np.where(widths[image] < right, widths[image], right)
    y2 = np.where(heights[image] < bottom, heights[image], bottom)
    crowd = anns.crowd[order]
    dropped = ~crowd & ((x2 <= x1) | (y2 <= y1))
    clipped = ~crowd & ~dropped & ((x1 != x) | (y1 != y) | (x2 != right) | (y2 != bottom))
    return _Clean(order=order, image=image, xyxy=np.stack([x1, y1, x2, y2], axis=1).reshape(-1, 4), crowd=crowd,
                  dropped=dropped, clipped=clipped)


def _gt_annotations(annotations: list[dict], anns: _Annotations, clean: _Clean) -> list[dict]:
    """The ground-truth annotations of the used images, with the training targets' clipping, so
    that training and evaluation see the same boxes; crowd regions as they are; 'iscrowd' and
    'area' filled in where missing."""
    gt_anns = []
    rows = zip(clean.order.tolist(), anns.bbox[clean.order].tolist(), clean.xyxy.tolist(), clean.crowd.tolist(),
               clean.dropped.tolist(), clean.clipped.tolist())
    for j, (x, y, w, h), (x1, y1, x2, y2), crowd, dropped, clipped in rows:
        if dropped:
            continue
        gt_a = dict(annotations[j])
        gt_a.setdefault("iscrowd", 0)
        if crowd:
            gt_a.setdefault("area", max(w, 0.0) * max(h, 0.0))
        else:
            if clipped:
                gt_a["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            gt_a.setdefault("area", (x2 - x1) * (y2 - y1))
        gt_anns.append(gt_a)
    return gt_anns


def _log_counts(ann_file: Path, counts: dict[str, int], n_used: int, n_records: int, n_categories: int) -> None:
    """Say what reading the file changed (clipped and dropped boxes, at WARNING) and what it holds."""
    if counts["clipped"] or counts["dropped"]:
        log.warning("%s: %d boxes clipped to the image, %d degenerate boxes dropped "
                    "(zero or negative size, or outside the image), among %d images used",
                    ann_file, counts["clipped"], counts["dropped"], n_used)
    log.info("%s: %d images, %d boxes, %d crowd regions, %d categories",
             ann_file, n_records, counts["boxes"], counts["crowd"], n_categories)


# ------------------------------------------------------------------------------- the index cache

@functools.cache
def _reader_hash() -> str:
    """The source of this reader and of the record format: other code, other cache files."""
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / name).read_bytes() for name in ("coco.py", "records.py"))).hexdigest()[:16]


def _cache_entry(ann_file: Path, images_dir: Path, max_images: Any, ground_truth: bool,
                 cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The cache file of this split of this file, and the key it must hold to be read back: one
    file per (annotation file, images folder, max_images, ground_truth), rewritten when the file
    or the folder changes (size, modification time), or the reader does."""
    where = {"file": str(ann_file.resolve()), "images_dir": str(images_dir.resolve()),
             "max_images": max_images, "ground_truth": bool(ground_truth)}
    name = hashlib.sha256(json.dumps(where, sort_keys=True, default=str).encode()).hexdigest()[:16]
    ann_stat, dir_stat = ann_file.stat(), images_dir.stat()
    key = {**where, "format": INDEX_FORMAT, "reader": _reader_hash(), "size": ann_stat.st_size,
           "mtime_ns": ann_stat.st_mtime_ns, "images_mtime_ns": dir_stat.st_mtime_ns}
    return cache_dir / f"{ann_file.stem}-{name}.idx", json.loads(json.dumps(key, default=str))


def _cached_split(entry: Path, key: dict[str, Any], ann_file: Path, images_dir: Path) -> CocoSplit | None:
    """The split cached in ``entry`` if it was made from this key, else None (a stale or broken
    file is rebuilt by the caller)."""
    if not entry.is_file():
        return None
    try:
        header, arrays = read_index(entry)
        if header["key"] != key:
            log.info("%s: %s changed since it was cached: reading it again", entry, ann_file)
            return None
        meta = header["meta"]
        coco_gt = None
        if key["ground_truth"]:
            with _collector_paused():
                coco_gt = json.loads(arrays["ground_truth"].tobytes())
        split = CocoSplit(ann_file=ann_file, images_dir=images_dir,
                          records=RecordTable.from_arrays(images_dir, arrays),
                          category_ids=[int(c) for c in meta["category_ids"]],
                          category_names=[str(c) for c in meta["category_names"]], coco_gt=coco_gt,
                          counts={k: int(v) for k, v in meta["counts"].items()})
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        log.warning("%s: index cache unreadable (%s): reading %s again", entry, e, ann_file)
        return None
    _log_counts(ann_file, split.counts, len(split.records), len(split.records), len(split.category_ids))
    log.info("%s: index read from the cache %s", ann_file, entry)
    return split


def _store(entry: Path, key: dict[str, Any], split: CocoSplit) -> None:
    """Write the split to its cache file (atomically); a cache that cannot be written costs the
    next run a parse, nothing else."""
    arrays = split.records.arrays()
    if split.coco_gt is not None:
        arrays["ground_truth"] = np.frombuffer(json.dumps(split.coco_gt).encode("utf-8"), dtype=np.uint8)
    meta = {"category_ids": split.category_ids, "category_names": split.category_names, "counts": split.counts}
    try:
        write_index(entry, {"key": key, "meta": meta}, arrays)
    except OSError as e:
        log.warning("%s: cannot write the index cache (%s): the next run reads %s again", entry, e, split.ann_file)


def check_same_categories(reference: CocoSplit, other: CocoSplit) -> None:
    """Train and val must share one label map."""
    if (reference.category_ids, reference.category_names) != (other.category_ids, other.category_names):
        raise DatasetError(
            f"{other.ann_file}: categories {list(zip(other.category_ids, other.category_names))} differ from "
            f"those of {reference.ann_file}: {list(zip(reference.category_ids, reference.category_names))}")
