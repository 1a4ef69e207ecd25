"""The embedded synthetic detection set ("shapes").

Generated deterministically from ``data.generator`` into ``<cache>/shapes/<hash>/`` on first use,
as PNG files plus COCO json, so that the COCO reader serves it exactly like real data::

    <root>/images/{train,val}/000001.png
    <root>/annotations/instances_{train,val}.json
    <root>/generator.json            # the generator config the folder was made from

Each image: a random two-colour gradient background, up to ``max_clutter`` distractors (straight
lines, scribbles and jagged blobs, which look like no class), then 1..``max_objects`` objects
(circle, square, triangle, cross, ring) of log-uniform size in [min_size, max_size], aspect
stretched a little, drawn from the largest to the smallest so that small ones stay visible, each
in a colour that contrasts with what lies beneath it; placements that would push the IoU of two
objects over ``max_iou`` or leave less than ``min_visible`` of an object visible are rejected.
Gaussian noise (``noise_std``) is added to the whole image last. The box of an object is the tight
box of its visible pixels; ``area`` is the box area.

Image ``i`` of a split is drawn from its own RNG seeded with (seed, split, i), so any image can be
regenerated on its own, and the same config gives byte-identical files.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import struct
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw

from .coco import DatasetError

log = logging.getLogger("ablate.data")

# Bump when the drawing code changes what a config produces: old cache folders are then not reused.
GENERATOR_VERSION = 1
SPLITS = {"train": 0, "val": 1}
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring")
# Placement tries per object before it is left out (the first object of an image always fits).
_PLACEMENT_TRIES = 50
# Colour draws per object before the most contrasting one drawn is taken.
_COLOUR_TRIES = 20
IMAGES_DIR = "images"
ANNOTATION_FILE = "annotations/instances_{split}.json"


@dataclasses.dataclass(frozen=True)
class GeneratorParams:
    seed: int
    num_train: int
    num_val: int
    image_size: int
    classes: tuple[str, ...]
    min_objects: int
    max_objects: int
    min_size: float
    max_size: float
    max_aspect: float
    max_iou: float
    min_visible: float
    min_contrast: float
    max_clutter: int
    noise_std: float

    @classmethod
    def from_cfg(cls, gen: Any) -> "GeneratorParams":
        d = _to_dict(gen)
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in d]
        unknown = sorted(set(d) - {f.name for f in fields})
        if missing or unknown:
            raise DatasetError(f"data.generator: missing keys {missing}, unknown keys {unknown}")
        # Normalised types, so that e.g. noise_std=8 and noise_std=8.0 name the same set.
        values: dict[str, Any] = {}
        for f in fields:
            v = d[f.name]
            if f.name == "classes":
                ok = isinstance(v, (list, tuple))
                values[f.name] = tuple(str(c) for c in v) if ok else v
            else:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                ok = ok and (f.type != "int" or float(v).is_integer())
                values[f.name] = (int(v) if f.type == "int" else float(v)) if ok else v
            if not ok:
                raise DatasetError(f"data.generator.{f.name}: bad value {v!r}")
        p = cls(**values)
        p.check()
        return p

    def check(self) -> None:
        bad = [c for c in self.classes if c not in SHAPE_CLASSES]
        if not self.classes or bad or len(set(self.classes)) != len(self.classes):
            raise DatasetError(f"data.generator.classes must be distinct names from {list(SHAPE_CLASSES)}, "
                               f"got {list(self.classes)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise DatasetError(f"data.generator needs 1 <= min_objects <= max_objects, got "
                               f"{self.min_objects}, {self.max_objects}")
        if not 3 <= self.min_size <= self.max_size:
            raise DatasetError(f"data.generator needs 3 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.image_size < 8 or self.num_train < 0 or self.num_val < 0 or self.max_clutter < 0:
            raise DatasetError("data.generator needs image_size >= 8 and non-negative num_train, num_val, max_clutter")
        if self.max_aspect < 1 or not 0 <= self.max_iou <= 1 or not 0 <= self.min_visible <= 1:
            raise DatasetError("data.generator needs max_aspect >= 1 and max_iou, min_visible in [0, 1]")
        if self.noise_std < 0 or self.min_contrast < 0:
            raise DatasetError("data.generator needs non-negative noise_std and min_contrast")


def _to_dict(gen: Any) -> dict:
    if isinstance(gen, DictConfig):
        return OmegaConf.to_container(gen, resolve=True)
    return dict(gen)


def generator_hash(gen: Any) -> str:
    """Name of the cache folder of a generator config (and of the generator's version)."""
    params = dataclasses.asdict(GeneratorParams.from_cfg(gen))
    blob = json.dumps({"version": GENERATOR_VERSION, "generator": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- drawing

def _shape_mask(kind: str, w: int, h: int) -> np.ndarray:
    """Boolean [h, w] mask of a shape that touches all four sides of its w x h frame."""
    if kind == "square":
        return np.ones((h, w), dtype=bool)
    if kind == "cross":
        m = np.zeros((h, w), dtype=bool)
        t = max(2, round(0.3 * min(w, h)))
        ty, tx = (h - t) // 2, (w - t) // 2
        m[ty:ty + t, :] = True
        m[:, tx:tx + t] = True
        return m
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    if kind == "circle":
        d.ellipse([0, 0, w - 1, h - 1], fill=1)
    elif kind == "ring":
        t = max(1, round(0.2 * min(w, h)))  # thin enough to leave a hole at any size
        d.ellipse([0, 0, w - 1, h - 1], fill=1)
        if w - 1 - 2 * t > 0 and h - 1 - 2 * t > 0:
            d.ellipse([t, t, w - 1 - t, h - 1 - t], fill=0)
    elif kind == "triangle":
        d.polygon([((w - 1) / 2, 0), (0, h - 1), (w - 1, h - 1)], fill=1)
    else:
        raise DatasetError(f"unknown shape class {kind!r}")
    return np.asarray(im, dtype=bool)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) of the True pixels (x2, y2 exclusive), None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _contrasting_colour(rng: np.random.Generator, beneath: np.ndarray, min_contrast: float) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(_COLOUR_TRIES):
        c = rng.uniform(0, 255, 3)
        dist = float(np.linalg.norm(c - beneath))
        if dist >= min_contrast:
            return c
        if dist > best_d:
            best, best_d = c, dist
    return best


@functools.lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    """The standard normal's quantiles at the midpoints of 2**16 equal steps: indexing it with uniform
    16-bit integers draws Gaussian noise, three times faster than rng.standard_normal."""
    inv_cdf = statistics.NormalDist().inv_cdf
    return np.array([inv_cdf((k + 0.5) / (1 << 16)) for k in range(1 << 16)], dtype=np.float32)


def _paint(canvas: np.ndarray, mask: np.ndarray, x: int, y: int, rng: np.random.Generator,
           min_contrast: float) -> None:
    """Paint the True pixels of ``mask`` (placed at x, y) in a colour that contrasts with what is there."""
    region = canvas[y:y + mask.shape[0], x:x + mask.shape[1]]
    if mask.any():
        region[mask] = _contrasting_colour(rng, region[mask].mean(axis=0), min_contrast)


def _draw_clutter(canvas: np.ndarray, rng: np.random.Generator, p: GeneratorParams) -> None:
    S = p.image_size
    for _ in range(int(rng.integers(0, p.max_clutter + 1))):
        im = Image.new("L", (S, S), 0)
        d = ImageDraw.Draw(im)
        kind = int(rng.integers(0, 3))
        if kind == 0:  # a straight line
            pts = [tuple(rng.uniform(0, S, 2)) for _ in range(2)]
            d.line(pts, fill=1, width=int(rng.integers(1, 4)))
        elif kind == 1:  # a scribble: a random walk
            pts = [rng.uniform(0, S, 2)]
            for _ in range(int(rng.integers(3, 8))):
                pts.append(np.clip(pts[-1] + rng.normal(0, 0.15 * S, 2), 0, S - 1))
            d.line([tuple(q) for q in pts], fill=1, width=int(rng.integers(1, 3)))
        else:  # a jagged blob: many vertices at uneven radii
            r = 0.5 * math.exp(rng.uniform(math.log(p.min_size), math.log(max(p.min_size, p.max_size / 2))))
            cx, cy = rng.uniform(0, S, 2)
            n = int(rng.integers(7, 12))
            ang = np.sort(rng.uniform(0, 2 * math.pi, n))
            rad = r * rng.uniform(0.3, 1.0, n)
            d.polygon([(cx + q * math.cos(a), cy + q * math.sin(a)) for a, q in zip(ang, rad)], fill=1)
        bbox = im.getbbox()
        if bbox is not None:
            _paint(canvas, np.asarray(im.crop(bbox), dtype=bool), bbox[0], bbox[1], rng, p.min_contrast)


def render_image(p: GeneratorParams, split: str, index: int) -> tuple[np.ndarray, list[tuple[int, list[int]]]]:
    """Image ``index`` of ``split``: (uint8 [S, S, 3], [(class index, [x, y, w, h]) ...])."""
    rng = np.random.default_rng([int(p.seed), SPLITS[split], int(index)])
    S = p.image_size

    # Background: a two-colour gradient in a random direction.
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.arange(S, dtype=np.float32)
    t = ramp[None, :] * np.float32(math.cos(theta)) + ramp[:, None] * np.float32(math.sin(theta))
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    canvas = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    _draw_clutter(canvas, rng, p)

    # Objects: sizes first, placed from the largest to the smallest.
    n = int(rng.integers(p.min_objects, p.max_objects + 1))
    sizes = np.sort(np.exp(rng.uniform(math.log(p.min_size), math.log(p.max_size), n)))[::-1]
    idmap = np.full((S, S), -1, dtype=np.int16)
    objs: list[dict] = []  # frame (x, y, w, h), mask, cls, pixels, box (visible, x2/y2 exclusive)
    log_aspect = math.log(p.max_aspect)
    for s in sizes:
        cls = int(rng.integers(0, len(p.classes)))
        aspect = math.exp(rng.uniform(-log_aspect, log_aspect))
        w = int(min(S, max(3, round(s * math.sqrt(aspect)))))
        h = int(min(S, max(3, round(s / math.sqrt(aspect)))))
        mask = _shape_mask(p.classes[cls], w, h)
        for _ in range(_PLACEMENT_TRIES):
            x, y = int(rng.integers(0, S - w + 1)), int(rng.integers(0, S - h + 1))
            placed = _try_place(objs, idmap, mask, x, y, p)
            if placed is not None:
                k = len(objs)
                for j, box in placed.items():
                    objs[j]["box"] = box
                bx = _tight_box(mask)
                objs.append({"frame": (x, y, w, h), "mask": mask, "cls": cls,
                             "pixels": int(mask.sum()), "box": (x + bx[0], y + bx[1], x + bx[2], y + bx[3])})
                idmap[y:y + h, x:x + w][mask] = k
                break

    for o in objs:  # paint in drawing order: later ones cover earlier ones
        _paint(canvas, o["mask"], o["frame"][0], o["frame"][1], rng, p.min_contrast)

    if p.noise_std > 0:
        canvas += _normal_table()[rng.integers(0, 1 << 16, (S, S, 3), dtype=np.uint16)] * np.float32(p.noise_std)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    anns = [(o["cls"], [o["box"][0], o["box"][1], o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]])
            for o in objs]
    return image, anns


def _try_place(objs: list[dict], idmap: np.ndarray, mask: np.ndarray, x: int, y: int,
               p: GeneratorParams) -> dict[int, tuple] | None:
    """The new visible boxes of the objects a candidate drawn at (x, y) would cover, or None when
    it would hide too much of one of them or push the IoU of two objects over max_iou."""
    h, w = mask.shape
    under = idmap[y:y + h, x:x + w][mask]
    changed: dict[int, tuple] = {}
    for k in np.unique(under[under >= 0]).tolist():
        ox, oy, ow, oh = objs[k]["frame"]
        vis = idmap[oy:oy + oh, ox:ox + ow] == k
        # Take away what the candidate covers, in k's frame.
        x1, y1, x2, y2 = max(x, ox), max(y, oy), min(x + w, ox + ow), min(y + h, oy + oh)
        vis[y1 - oy:y2 - oy, x1 - ox:x2 - ox] &= ~mask[y1 - y:y2 - y, x1 - x:x2 - x]
        bx = _tight_box(vis)
        if bx is None or vis.sum() < p.min_visible * objs[k]["pixels"]:
            return None
        changed[k] = (ox + bx[0], oy + bx[1], ox + bx[2], oy + bx[3])
    bx = _tight_box(mask)
    boxes = [changed.get(j, o["box"]) for j, o in enumerate(objs)] + [(x + bx[0], y + bx[1], x + bx[2], y + bx[3])]
    new = len(boxes) - 1
    for i in [*changed, new]:
        for j in range(len(boxes)):
            if j != i and _iou(boxes[i], boxes[j]) > p.max_iou:
                return None
    return changed


# -------------------------------------------------------------------------------------- generation

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """A uint8 [H, W, 3] array as an 8-bit RGB PNG (lossless; the same pixels give the same bytes).

    Written directly, three times faster than Pillow's encoder on these images and no bigger: every
    row gets PNG's "Sub" filter (the difference to the pixel on the left), and zlib codes it with
    Huffman coding only, since the noise leaves little for LZ matching to find.
    """
    h, w, _ = image.shape
    rows = image.reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 1  # filter type Sub
    raw[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=raw[:, 4:])  # wraps modulo 256, as PNG wants
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    idat = packer.compress(raw.tobytes()) + packer.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, adaptive filters, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _render_split(p: GeneratorParams, split: str, count: int, out: Path) -> dict:
    img_dir = out / IMAGES_DIR / split
    img_dir.mkdir(parents=True)

    def one(i: int):
        image, anns = render_image(p, split, i)
        name = f"{split}/{i + 1:06d}.png"
        (out / IMAGES_DIR / name).write_bytes(encode_png(image))
        return name, anns

    # numpy, PIL's drawing and zlib let go of the GIL: threads share the cores, the order is kept.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=cores) as pool:
        results = list(pool.map(one, range(count)))
    images, annotations = [], []
    for i, (name, anns) in enumerate(results):
        images.append({"id": i + 1, "file_name": name, "width": p.image_size, "height": p.image_size})
        for cls, (bx, by, bw, bh) in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": [float(bx), float(by), float(bw), float(bh)],
                                "area": float(bw * bh), "iscrowd": 0})
    return {
        "info": {"description": f"ablate shapes, {split} split, generator v{GENERATOR_VERSION}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(p.classes)],
    }


def generate(gen: Any, out: Path) -> None:
    """Write the whole set described by the generator config into the (new) folder ``out``."""
    p = GeneratorParams.from_cfg(gen)
    out = Path(out)
    (out / "annotations").mkdir(parents=True)
    for split, count in (("train", p.num_train), ("val", p.num_val)):
        coco = _render_split(p, split, count, out)
        (out / ANNOTATION_FILE.format(split=split)).write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    (out / "generator.json").write_text(
        json.dumps({"version": GENERATOR_VERSION, "generator": _to_dict(gen)}, indent=2, sort_keys=True) + "\n")


def ensure_shapes(gen: Any, cache_dir: Path) -> Path:
    """The folder of the generated set, ``cache_dir/shapes/<hash>``; generated on first use.

    Safe under concurrent jobs: each builds in its own temporary folder beside the target and
    renames it into place; a job that finds the target already there keeps it and deletes its own.
    """
    target = Path(cache_dir) / "shapes" / generator_hash(gen)  # checks the config first
    if target.is_dir():
        log.info("shapes: reusing %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished set is an ordinary readable folder
    t0 = time.perf_counter()
    try:
        generate(gen, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("shapes: %s was generated meanwhile by another job; using it", target)
        return target
    log.info("shapes: generated %s in %.1f s", target, time.perf_counter() - t0)
    return target
