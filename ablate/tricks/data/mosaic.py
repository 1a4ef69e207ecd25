"""Mosaic (Bochkovskiy et al. 2020, YOLOv4, sec. 3.3): four training images on one canvas around a
random centre, as mmdetection's Mosaic builds it (the YOLOX recipe), then the canvas's central window
of the base size, as its RandomAffine cuts it (its random translation, scaling and shear left out)."""
from __future__ import annotations

import torch
from torchvision.ops import clip_boxes_to_image

from ..base import (BatchContext, Images, Targets, Trick, check_fraction, check_interval, check_number,
                   clip_and_filter, off_at_end)

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def paste_and_crop(corner: str, cx: int, cy: int, w: int, h: int, size: int) -> tuple[tuple, tuple]:
    """mmdetection's Mosaic._mosaic_combine: where an image of w x h goes on the 2·size canvas
    around (cx, cy), and which part of it is pasted there: ((x1, y1, x2, y2) on the canvas,
    (x1, y1, x2, y2) in the image)."""
    if corner == "top_left":
        paste = (max(cx - w, 0), max(cy - h, 0), cx, cy)
        crop = (w - (paste[2] - paste[0]), h - (paste[3] - paste[1]), w, h)
    elif corner == "top_right":
        paste = (cx, max(cy - h, 0), min(cx + w, 2 * size), cy)
        crop = (0, h - (paste[3] - paste[1]), min(w, paste[2] - paste[0]), h)
    elif corner == "bottom_left":
        paste = (max(cx - w, 0), cy, cx, min(2 * size, cy + h))
        crop = (w - (paste[2] - paste[0]), 0, w, min(paste[3] - paste[1], h))
    else:
        paste = (cx, cy, min(cx + w, 2 * size), min(2 * size, cy + h))
        crop = (0, 0, min(w, paste[2] - paste[0]), min(paste[3] - paste[1], h))
    return paste, crop


class Mosaic(Trick):
    # not batch_mix: YOLOX trains with Mosaic and MixUp together
    claims = ("batch_mosaic",)

    def __init__(self, prob: float, center_low: float, center_high: float, fill: float, off_last_fraction: float,
                 min_size: float, min_area_ratio: float, max_aspect_ratio: float):
        self.prob = check_fraction("prob", prob)
        self.center = check_interval("center_low", center_low, "center_high", center_high)
        self.fill = check_fraction("fill", fill)
        self.off_last_fraction = check_fraction("off_last_fraction", off_last_fraction)
        self.min_size = check_number("min_size", min_size, 0)
        self.min_area_ratio = check_fraction("min_area_ratio", min_area_ratio)
        self.max_aspect_ratio = check_number("max_aspect_ratio", max_aspect_ratio, 1)

    def combine(self, imgs: list[torch.Tensor], tgts: list[dict], cx: int, cy: int, size: int) -> tuple[torch.Tensor, dict]:
        """The four images (in CORNERS order) on a 2·size canvas around (cx, cy), then its central
        size x size window [size/2, 3·size/2); boxes moved with their images, clipped and filtered."""
        canvas = imgs[0].new_full((imgs[0].shape[0], 2 * size, 2 * size), self.fill)
        before, parts = [], {k: [] for k in ("labels", "weights")}
        weighted = any("weights" in t for t in tgts)
        for corner, img, tgt in zip(CORNERS, imgs, tgts):
            h, w = img.shape[1:]
            (x1p, y1p, x2p, y2p), (x1c, y1c, x2c, y2c) = paste_and_crop(corner, cx, cy, w, h, size)
            canvas[:, y1p:y2p, x1p:x2p] = img[:, y1c:y2c, x1c:x2c]
            b = tgt["boxes"].reshape(-1, 4) + torch.tensor([x1p - x1c, y1p - y1c] * 2, dtype=tgt["boxes"].dtype,
                                                           device=tgt["boxes"].device)
            # mmdetection clips the mosaic's boxes to the canvas: they are "before" the window cut
            b = clip_boxes_to_image(b, (2 * size, 2 * size))
            before.append(b)
            parts["labels"].append(tgt["labels"])
            if weighted:
                parts["weights"].append(tgt.get("weights", torch.ones(len(b), device=b.device)))
        lo = size // 2
        window = canvas[:, lo:lo + size, lo:lo + size]
        before_t = torch.cat(before)
        target = {**tgts[0], "boxes": before_t, **{k: torch.cat(v) for k, v in parts.items() if v}}
        shifted = before_t - lo
        return window, clip_and_filter(target, shifted, before_t, size, size, self.min_size, self.min_area_ratio,
                                       self.max_aspect_ratio)

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        n = len(images)
        if n < 2 or off_at_end(self.off_last_fraction, ctx.epoch, ctx.num_epochs):
            return images, targets
        size = max(max(img.shape[1:]) for img in images)  # the base size: data.image_size
        out_images, out_targets = [], []
        for i in range(n):
            if ctx.rng.random() >= self.prob:
                out_images.append(images[i])
                out_targets.append(targets[i])
                continue
            # three partners from the batch (ultralytics draws them from the dataset), then the four
            # shuffled over the corners, as ultralytics' load_mosaic
            others = [j for j in range(n) if j != i]
            order = [i, *(others[int(k)] for k in ctx.rng.integers(0, len(others), size=3))]
            order = [order[int(k)] for k in ctx.rng.permutation(4)]
            cx = int(ctx.rng.uniform(*self.center) * size)
            cy = int(ctx.rng.uniform(*self.center) * size)
            img, tgt = self.combine([images[j] for j in order], [targets[j] for j in order], cx, cy, size)
            out_images.append(img)
            out_targets.append(tgt)
        return out_images, out_targets
