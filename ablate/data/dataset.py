"""The torch Dataset over a read COCO split: decode, resize, optional in-memory cache, train flip."""
from __future__ import annotations

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

from .coco import CocoSplit, DatasetError, ImageRecord

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
        self.records = split.records
        self.image_size = image_size
        self.train = train
        self.hflip = float(hflip)
        self.image_ids = [r.id for r in self.records]
        self.classes = list(split.category_names)
        self.flips = train and self.hflip > 0
        self.flip_rng = flip_rng
        # The seed of the current epoch (set_epoch), for flip_rng=sample.
        self.epoch_seed: int | None = None
        # Targets in resized coordinates, computed once.
        self._scales: list[float] = []
        self._boxes: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._sizes: list[tuple[int, int]] = []
        for r in self.records:
            new_w, new_h, scale = resized_size(r.width, r.height, image_size)
            boxes = torch.from_numpy(r.boxes * scale).to(torch.float32).reshape(-1, 4)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
            self._boxes.append(boxes)
            self._labels.append(torch.from_numpy(r.labels).to(torch.int64))
            self._scales.append(scale)
            self._sizes.append((new_h, new_w))
        self._cache: list[torch.Tensor] | None = None
        # MiB the cache holds (0 when images are decoded on each access).
        self.cached_mb = 0.0
        need_mb = sum(3 * h * w for h, w in self._sizes) / 2**20
        if need_mb <= cache_ram_mb:
            self.cached_mb = need_mb
            t0 = time.perf_counter()
            # PIL decodes and resizes without the GIL: threads share the cores.
            with ThreadPoolExecutor(max_workers=_cores()) as pool:
                self._cache = list(pool.map(lambda r: decode_image(r, image_size), self.records))
            log.info("%s: %d images decoded and cached in memory (%.1f MiB of the %s MiB budget, %.1f s)",
                     self.name, len(self.records), need_mb, cache_ram_mb, time.perf_counter() - t0)
        else:
            log.info("%s: %d images (%.1f MiB decoded) exceed the %s MiB cache budget: decoding on each access",
                     self.name, len(self.records), need_mb, cache_ram_mb)

    @property
    def cached(self) -> bool:
        return self._cache is not None

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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec = self.records[i]
        # A copy of the cached image, so that nothing downstream can write into the cache.
        image = self._cache[i].clone() if self._cache is not None else decode_image(rec, self.image_size)
        boxes, labels = self._boxes[i].clone(), self._labels[i].clone()
        if self.flipped(i):
            image = TF.horizontal_flip(tv_tensors.Image(image)).as_subclass(torch.Tensor)
            boxes = TF.horizontal_flip(tv_tensors.BoundingBoxes(
                boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))).as_subclass(torch.Tensor)
        target = {"boxes": boxes, "labels": labels, "image_id": rec.id, "scale": self._scales[i],
                  "orig_size": (rec.height, rec.width)}
        return image, target


def collate(batch):
    """A detection batch: (list of images, list of targets); images may differ in size."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


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
                      persistent_workers=num_workers > 0, drop_last=drop_last)
