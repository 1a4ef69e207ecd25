"""The torch Dataset over a read COCO split: decode, resize, optional in-memory cache, train flip."""
from __future__ import annotations

import gc
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .coco import CocoSplit, DatasetError, ImageRecord, RecordTable

log = logging.getLogger("ablate.data")
# data.flip_rng: where a training image's flip is drawn from (conf/data/*.yaml says why).
FLIP_RNGS = ("sample", "global")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resized_size(width: int, height: int, image_size: int | None) -> tuple[int, int, float]:
    """(new_width, new_height, scale) so that max(new_width, new_height) == image_size, aspect kept."""
    if image_size is None:
        return width, height, 1.0
    scale = image_size / max(width, height)
    if width >= height:
        return image_size, max(1, math.floor(height * scale + 0.5)), scale
    return max(1, math.floor(width * scale + 0.5)), image_size, scale


def decode_image(rec: ImageRecord, image_size: int | None) -> torch.Tensor:
    """Decode one image to a uint8 RGB tensor [3, H, W], resized (antialiased) to image_size."""
    try:
        with Image.open(rec.path) as im:
            im.load()
            if im.size != (rec.width, rec.height):
                raise DatasetError(
                    f"{rec.path}: image is {im.size[0]}x{im.size[1]} but its annotation file says "
                    f"{rec.width}x{rec.height} (image id {rec.id})")
            im = im.convert("RGB")
    except DatasetError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{rec.path}: unreadable image (image id {rec.id}): {e}") from e
    new_w, new_h, _ = resized_size(rec.width, rec.height, image_size)
    if (new_w, new_h) != im.size:
        # PIL's bilinear resize widens its filter when it shrinks: antialiased.
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()


class DetectionDataset(Dataset):
    """Images of one split with their detection targets.

    ``dataset[i]`` is ``(image, target)``: image a uint8 tensor [3, H, W] (RGB, longer side
    ``image_size``), target a dict with ``boxes`` (float32 [N, 4] xyxy, resized pixels),
    ``labels`` (int64 [N], 1..K), ``image_id``, ``scale`` (resized / original) and
    ``orig_size`` ((h, w) of the original image).

    Training images flip with probability ``hflip``. With ``flip_rng="sample"`` the flip of image
    ``i`` in an epoch is drawn from its own generator, seeded by (the epoch's seed, set by
    :meth:`set_epoch`, and ``i``): it is the same whatever else drew random numbers before it (a
    trick's torch draws), in whichever order, process or loader worker the image is read. With
    ``"global"`` it is drawn from torch's global RNG, as before that key existed.
    """

    def __init__(self, split: CocoSplit, image_size: int | None, train: bool, hflip: float,
                 cache_ram_mb: float, flip_rng: str, name: str | None = None):
        if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
            raise DatasetError(f"image_size must be a positive integer or null, got {image_size!r}")
        if not 0.0 <= hflip <= 1.0:
            raise DatasetError(f"hflip must be a probability in [0, 1], got {hflip!r}")
        if flip_rng not in FLIP_RNGS:
            raise DatasetError(f"flip_rng={flip_rng!r}: choose one of {', '.join(FLIP_RNGS)}")
        self.name = name or split.ann_file.name
        # Flat arrays, no Python object per image (records.py says why): so are the targets below.
        self.records: RecordTable = split.records
        self.image_size = image_size
        self.train = train
        self.hflip = float(hflip)
        self.classes = list(split.category_names)
        self.flips = train and self.hflip > 0
        self.flip_rng = flip_rng
        # The seed of the current epoch (set_epoch), for flip_rng=sample.
        self.epoch_seed: int | None = None
        # Targets in resized coordinates, computed once: per image its scale and (h, w); per box
        # (rows records.box_offsets[i]:[i + 1]) its float32 xyxy.
        self._scales, self._sizes = _resized_sizes(self.records, image_size)
        self._boxes = _resized_boxes(self.records, self._scales, self._sizes)
        self._pixels: torch.Tensor | None = None
        # MiB the cache holds (0 when images are decoded on each access).
        self.cached_mb = 0.0
        need_mb = int((3 * self._sizes[:, 0] * self._sizes[:, 1]).sum()) / 2**20
        if need_mb <= cache_ram_mb:
            self.cached_mb = need_mb
            t0 = time.perf_counter()
            self._pixels, self._pixel_offsets = self._decode_all()
            log.info("%s: %d images decoded and cached in memory (%.1f MiB of the %s MiB budget, %.1f s)",
                     self.name, len(self), need_mb, cache_ram_mb, time.perf_counter() - t0)
        else:
            log.info("%s: %d images (%.1f MiB decoded) exceed the %s MiB cache budget: decoding on each access",
                     self.name, len(self), need_mb, cache_ram_mb)

    def _decode_all(self) -> tuple[torch.Tensor, np.ndarray]:
        """Every image decoded and resized into one uint8 buffer (image i at offsets[i], [3, h, w])."""
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(3 * self._sizes[:, 0] * self._sizes[:, 1], out=offsets[1:])
        pixels = torch.empty(int(offsets[-1]), dtype=torch.uint8)

        def decode_into(i: int) -> None:
            h, w = self._sizes[i].tolist()
            pixels[int(offsets[i]):int(offsets[i + 1])].view(3, h, w).copy_(decode_image(self.records[i], self.image_size))

        # PIL decodes and resizes without the GIL: threads share the cores.
        with ThreadPoolExecutor(max_workers=_cores()) as pool:
            list(pool.map(decode_into, range(len(self))))
        return pixels, offsets

    @property
    def image_ids(self) -> list[int]:
        return self.records.ids.tolist()

    @property
    def cached(self) -> bool:
        return self._pixels is not None

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, seed: int) -> None:
        """The seed of the epoch about to be read (train.epoch_seed). Set before the epoch's loader
        is iterated: its workers take a copy of the dataset when they start."""
        self.epoch_seed = int(seed)

    def flipped(self, i: int) -> bool:
        """Whether image ``i`` is flipped when read now (one draw per read with flip_rng=global)."""
        if not self.flips:
            return False
        if self.flip_rng == "global":
            # torchvision's RandomHorizontalFlip draw: flip unless torch.rand(1) >= p.
            return bool(torch.rand(1) < self.hflip)
        if self.epoch_seed is None:
            raise RuntimeError(f"{self.name}: set_epoch(seed) before reading training images (flip_rng=sample)")
        # Child i of the epoch's SeedSequence: independent streams per image, and none of them is
        # the stream the tricks' BatchContext.rng draws from (default_rng(epoch seed), no spawn key).
        seq = np.random.SeedSequence(self.epoch_seed, spawn_key=(int(i),))
        return bool(np.random.default_rng(seq).random() < self.hflip)

    def targets(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``i``'s boxes (float32 [N, 4] xyxy, resized pixels, not flipped) and labels (int64
        [N]), new tensors."""
        lo, hi = self.records.box_range(i)
        return torch.from_numpy(self._boxes[lo:hi].copy()), torch.from_numpy(self.records.labels[lo:hi].copy())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        i = self.records.index(i)
        if self._pixels is not None:
            h, w = self._sizes[i].tolist()
            # A copy of the cached image, so that nothing downstream can write into the cache.
            start = int(self._pixel_offsets[i])
            image = self._pixels[start:start + 3 * h * w].view(3, h, w).clone()
        else:
            image = decode_image(self.records[i], self.image_size)
        boxes, labels = self.targets(i)
        if self.flipped(i):
            image = TF.horizontal_flip(tv_tensors.Image(image)).as_subclass(torch.Tensor)
            boxes = TF.horizontal_flip(tv_tensors.BoundingBoxes(
                boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))).as_subclass(torch.Tensor)
        target = {"boxes": boxes, "labels": labels, "image_id": int(self.records.ids[i]),
                  "scale": float(self._scales[i]),
                  "orig_size": (int(self.records.heights[i]), int(self.records.widths[i]))}
        return image, target


def _resized_sizes(records: RecordTable, image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the scale to ``image_size`` (float64) and the resized (h, w) (int64 [N, 2]), each
    from :func:`resized_size`, called once per distinct original size."""
    sizes = np.stack([records.widths, records.heights], axis=1).reshape(-1, 2)
    distinct, which = np.unique(sizes, axis=0, return_inverse=True)
    resized = [resized_size(int(w), int(h), image_size) for w, h in distinct]
    scales = np.array([scale for _, _, scale in resized], dtype=np.float64).reshape(-1)
    new_hw = np.array([(new_h, new_w) for new_w, new_h, _ in resized], dtype=np.int64).reshape(-1, 2)
    which = which.reshape(-1)
    return scales[which], new_hw[which]


def _resized_boxes(records: RecordTable, scales: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Every box in its resized image's pixels, float32 [M, 4], clamped to that image: the float64
    product cast to float32, then clamped, as torch did it per image before."""
    per_box = np.repeat(np.arange(len(records)), np.diff(records.box_offsets))
    boxes = (records.boxes * scales[per_box, None]).astype(np.float32)
    bounds = sizes[per_box, ::-1].astype(np.float32)  # (w, h) of each box's image
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, bounds[:, :1])
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, bounds[:, 1:])
    return boxes


def collate(batch):
    """A detection batch: (list of images, list of targets); images may differ in size."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def freeze_inherited_objects(worker_id: int) -> None:
    """A loader worker's first act: the objects it inherited from the main process (the
    interpreter's, torch's, the dataset's few) are left out of its garbage collections. A full
    collection writes into every object it walks, so each worker copied the main process's heap
    page by page over an epoch: ~100 MB per worker at COCO size, the records being flat arrays
    already (benchmarks/coco_size.py). What the worker makes itself is collected as usual."""
    gc.freeze()


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int | None = None,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader with :func:`collate`. With ``seed`` the order of each epoch (and the workers'
    random seeds) come from a torch.Generator seeded with it, so runs repeat."""
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate, generator=generator, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0, drop_last=drop_last,
                      worker_init_fn=freeze_inherited_objects)
