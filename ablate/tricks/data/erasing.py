"""Erasing a region of each training image: Random Erasing (Zhong et al. 2017) and Cutout (DeVries
and Taylor 2017). The boxes stay as they are, except a box the region covers wholly, which is dropped:
nothing of its object is left to detect (a partly erased box keeps its label and extent, as the
Random Erasing paper's image-aware variant for detection keeps its annotations)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..base import BatchContext, Images, Targets, Trick, TrickArgumentError, check_fraction, check_number, with_boxes

Region = tuple[int, int, int, int]  # x0, y0, x1, y1: the pixels [x0, x1) x [y0, y1)


def without_covered_boxes(target: dict, region: Region) -> dict:
    """The target without the boxes lying wholly inside the region (their labels and weights too)."""
    boxes = target["boxes"].reshape(-1, 4)
    x0, y0, x1, y1 = region
    covered = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)
    if not covered.any():
        return target
    return with_boxes(target, boxes[~covered], ~covered)


def erased(img: torch.Tensor, region: Region, fill: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = region
    out = img.clone()
    out[:, y0:y1, x0:x1] = fill.to(img.dtype).to(img.device)
    return out


class RandomErasing(Trick):
    """With probability p, one rectangle of area share in `scale` and aspect ratio (h/w) in `ratio`,
    log-uniform, at a uniform position, filled with uniform random values (the paper's)."""
    claims = ("batch_erase",)

    def __init__(self, p: float, scale: list[float], ratio: list[float], attempts: int):
        self.p = check_fraction("p", p)
        if len(scale) != 2 or not 0 < check_fraction("scale[0]", scale[0]) <= check_fraction("scale[1]", scale[1]):
            raise TrickArgumentError({"scale": list(scale)}, "must be [low, high] shares with 0 < low <= high <= 1")
        if len(ratio) != 2 or not 0 < check_number("ratio[0]", ratio[0], 0, low_open=True) <= ratio[1]:
            raise TrickArgumentError({"ratio": list(ratio)}, "must be [low, high] with 0 < low <= high")
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.attempts = check_number("attempts", attempts, 1, integer=True)

    def region(self, height: int, width: int, rng) -> Region | None:
        """torchvision's RandomErasing.get_params draws, from ctx.rng: up to `attempts` times an area
        and a log-uniform aspect ratio until the rectangle fits; then its top-left corner."""
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.attempts):
            area = height * width * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < h < height and 0 < w < width:
                y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                return x, y, x + w, y + h
        return None

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        out_images, out_targets = [], []
        for img, tgt in zip(images, targets):
            region = self.region(img.shape[1], img.shape[2], ctx.rng) if ctx.rng.random() < self.p else None
            if region is not None:
                x0, y0, x1, y1 = region
                fill = torch.from_numpy(ctx.rng.random((img.shape[0], y1 - y0, x1 - x0)).astype(np.float32))
                img, tgt = erased(img, region, fill), without_covered_boxes(tgt, region)
            out_images.append(img)
            out_targets.append(tgt)
        return out_images, out_targets


class Cutout(Trick):
    """With probability p, a square of side `size` × the image's shorter side, centred on a uniform
    pixel and clipped at the borders, filled with `fill` (the normalisation mean: zero after it)."""
    claims = ("batch_erase",)

    def __init__(self, p: float, size: float, fill: list[float]):
        self.p = check_fraction("p", p)
        self.size = check_number("size", size, 0, 1, low_open=True)
        if len(fill) != 3:
            raise TrickArgumentError({"fill": list(fill)}, "must give one value per RGB channel")
        self.fill = torch.tensor([check_fraction(f"fill[{i}]", v) for i, v in enumerate(fill)])

    def region(self, height: int, width: int, rng) -> Region:
        """The authors' (uoguelph-mlrg/Cutout util/cutout.py): centre y, x uniform over the pixels,
        the square [c - L//2, c + L//2) clipped to the image."""
        length = int(round(self.size * min(height, width)))
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        return (min(max(x - length // 2, 0), width), min(max(y - length // 2, 0), height),
                min(max(x + length // 2, 0), width), min(max(y + length // 2, 0), height))

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        out_images, out_targets = [], []
        for img, tgt in zip(images, targets):
            if ctx.rng.random() < self.p:
                region = self.region(img.shape[1], img.shape[2], ctx.rng)
                img, tgt = erased(img, region, self.fill[:, None, None]), without_covered_boxes(tgt, region)
            out_images.append(img)
            out_targets.append(tgt)
        return out_images, out_targets
