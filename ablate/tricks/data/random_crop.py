"""SSD's random crop with a minimum IoU (Liu et al. 2016, sec. 3.6 "data augmentation"): a patch
whose IoU with every ground-truth box is at least a randomly chosen threshold, the boxes whose centre
lies in it kept and clipped, as mmdetection's MinIoURandomCrop; the patch then resized back to the
base size, as SSD's pipeline resizes every image after the crop."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image

from ..base import BatchContext, Images, Targets, Trick, TrickArgumentError, check_fraction, check_number, with_boxes


class RandomCrop(Trick):
    claims = ("batch_crop",)

    def __init__(self, min_ious: list[float], min_crop_size: float, attempts: int):
        if not min_ious:
            raise TrickArgumentError({"min_ious": min_ious}, "name at least one IoU threshold")
        self.modes = (1, *(check_fraction(f"min_ious[{i}]", v) for i, v in enumerate(min_ious)), 0)
        self.min_crop_size = check_number("min_crop_size", min_crop_size, 0, 1, low_open=True)
        self.attempts = check_number("attempts", attempts, 1, integer=True)

    def patch(self, boxes: torch.Tensor, h: int, w: int, rng) -> tuple[tuple[int, int, int, int], torch.Tensor] | None:
        """mmdetection's loop: choose a mode; 1 keeps the image; otherwise up to `attempts` patches
        (aspect h/w within [0.5, 2]) until every box has IoU >= the mode with it and some box centre
        lies inside; then the patch and the mask of boxes kept. Another mode is chosen after
        `attempts` failures. The attempts of a mode are drawn at once and the first that passes is
        taken: the same distribution as drawing them one by one (they are independent), without a
        Python loop of up to `attempts` tries per mode (a third of a training step before)."""
        b = boxes.numpy().astype(np.float32)
        areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        n = self.attempts
        while True:
            mode = self.modes[int(rng.integers(0, len(self.modes)))]
            if mode == 1:
                return None
            new_w = np.asarray(rng.uniform(self.min_crop_size * w, w, size=n), dtype=np.float64)
            new_h = np.asarray(rng.uniform(self.min_crop_size * h, h, size=n), dtype=np.float64)
            # the reference's numpy uniform(x) is uniform(low=x, high=1): between 1 and x
            lo_x, hi_x = np.minimum(w - new_w, 1.0), np.maximum(w - new_w, 1.0)
            lo_y, hi_y = np.minimum(h - new_h, 1.0), np.maximum(h - new_h, 1.0)
            left = lo_x + (hi_x - lo_x) * np.asarray(rng.random(n))
            top = lo_y + (hi_y - lo_y) * np.asarray(rng.random(n))
            x0, y0 = left.astype(np.int64), top.astype(np.int64)
            x1, y1 = (left + new_w).astype(np.int64), (top + new_h).astype(np.int64)
            ok = (new_h / new_w >= 0.5) & (new_h / new_w <= 2) & (x1 != x0) & (y1 != y0)
            if len(b):
                iw = np.clip(np.minimum(x1[:, None], b[:, 2]) - np.maximum(x0[:, None], b[:, 0]), 0, None)
                ih = np.clip(np.minimum(y1[:, None], b[:, 3]) - np.maximum(y0[:, None], b[:, 1]), 0, None)
                inter = (iw * ih).astype(np.float32)
                patch_area = ((x1 - x0) * (y1 - y0)).astype(np.float32)[:, None]
                ious = inter / np.maximum(patch_area + areas - inter, np.float32(1e-12))
                inside = ((cx > x0[:, None]) & (cy > y0[:, None]) & (cx < x1[:, None]) & (cy < y1[:, None]))
                ok &= (ious.min(axis=1) >= mode) & inside.any(axis=1)
            if ok.any():
                i = int(np.argmax(ok))
                mask = torch.from_numpy(inside[i].copy()) if len(b) else torch.zeros(0, dtype=torch.bool)
                return (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])), mask

    def crop(self, img: torch.Tensor, tgt: dict, rng) -> tuple[torch.Tensor, dict]:
        h, w = img.shape[1:]
        boxes = tgt["boxes"].reshape(-1, 4)
        found = self.patch(boxes.cpu().float(), h, w, rng)
        if found is None:
            return img, tgt
        (x0, y0, x1, y1), keep = found
        keep = keep.to(boxes.device)
        cropped = img[:, y0:y1, x0:x1]
        kept = boxes[keep] - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype, device=boxes.device)
        kept = clip_boxes_to_image(kept, (y1 - y0, x1 - x0))
        # back to the base size (the longer side), as SSD resizes after cropping
        scale = max(h, w) / max(y1 - y0, x1 - x0)
        nh, nw = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
        resized = F.interpolate(cropped[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        kept = kept * torch.tensor([nw / (x1 - x0), nh / (y1 - y0)] * 2, dtype=kept.dtype, device=kept.device)
        return resized, with_boxes(tgt, kept, keep)

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        pairs = [self.crop(img, tgt, ctx.rng) for img, tgt in zip(images, targets)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
