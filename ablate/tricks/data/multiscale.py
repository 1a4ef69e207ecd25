"""Multi-scale training: each batch resized to a random size around the base one, evaluation at the
base size (YOLOv2, Redmon and Farhadi 2017, sec. "Multi-Scale Training"; as ultralytics trains YOLO)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..base import BatchContext, Images, Targets, Trick, check_interval, check_number


class MultiScale(Trick):
    claims = ("batch_scale",)

    def __init__(self, low: float, high: float, multiple: int):
        self.low, self.high = check_interval("low", low, "high", high)
        self.multiple = check_number("multiple", multiple, 1, integer=True)

    def size(self, base: int, rng) -> int:
        """ultralytics' draw: randrange(int(base * low), int(base * high) + multiple) // multiple * multiple."""
        return int(rng.integers(int(base * self.low), int(base * self.high) + self.multiple)) // self.multiple * self.multiple

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        base = max(max(img.shape[1:]) for img in images)
        factor = self.size(base, ctx.rng) / base
        if factor == 1:
            return images, targets
        out_images, out_targets = [], []
        for img, tgt in zip(images, targets):
            h, w = img.shape[1:]
            # ultralytics: each side to ceil(side x factor / multiple) x multiple, bilinear
            nh, nw = (max(self.multiple, math.ceil(x * factor / self.multiple) * self.multiple) for x in (h, w))
            out_images.append(F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0])
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=tgt["boxes"].dtype, device=tgt["boxes"].device)
            out_targets.append({**tgt, "boxes": tgt["boxes"] * scale})
        return out_images, out_targets
