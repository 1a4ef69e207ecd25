"""SSD's random crop with a minimum IoU (Liu et al. 2016, sec. 3.6 "data augmentation"): a patch
whose IoU with every ground-truth box is at least a randomly chosen threshold, the boxes whose centre
lies in it kept and clipped, as mmdetection's MinIoURandomCrop; the patch then resized back to the
base size, as SSD's pipeline resizes every image after the crop."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image

from .base import BatchContext, Images, Targets, Trick, TrickArgumentError, check_fraction, check_number, with_boxes


def min_iou_below(boxes: list[tuple[float, float, float, float, float]], patch: tuple[int, int, int, int],
                  threshold: float) -> bool:
    """Whether some box (x0, y0, x1, y1, area) has an IoU with the patch below the threshold
    (mmdetection's overlaps.min() < min_iou), stopping at the first such box."""
    px0, py0, px1, py1 = patch
    patch_area = (px1 - px0) * (py1 - py0)
    for x0, y0, x1, y1, area in boxes:
        iw, ih = min(px1, x1) - max(px0, x0), min(py1, y1) - max(py0, y0)
        inter = iw * ih if iw > 0 and ih > 0 else 0.0
        if inter / (patch_area + area - inter) < threshold:
            return True
    return False


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
        `attempts` failures."""
        # The boxes as Python floats, once: the loop may try a hundred patches per image (every box
        # must reach the IoU), and most tries fail on the first box checked, so a plain loop that
        # stops there is cheaper than any tensor call (a torch call per try cost a third of a step).
        listed = [(x0, y0, x1, y1, (x1 - x0) * (y1 - y0)) for x0, y0, x1, y1 in boxes.tolist()]
        while True:
            mode = self.modes[int(rng.integers(0, len(self.modes)))]
            if mode == 1:
                return None
            for _ in range(self.attempts):
                new_w, new_h = rng.uniform(self.min_crop_size * w, w), rng.uniform(self.min_crop_size * h, h)
                if new_h / new_w < 0.5 or new_h / new_w > 2:
                    continue
                # the reference's numpy uniform(x) is uniform(low=x, high=1): between 1 and x
                left, top = rng.uniform(*sorted((w - new_w, 1.0))), rng.uniform(*sorted((h - new_h, 1.0)))
                x0, y0, x1, y1 = int(left), int(top), int(left + new_w), int(top + new_h)
                if x1 == x0 or y1 == y0:
                    continue
                if not listed:
                    return (x0, y0, x1, y1), torch.zeros(0, dtype=torch.bool)
                if min_iou_below(listed, (x0, y0, x1, y1), mode):
                    continue
                cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
                inside = (cx > x0) & (cy > y0) & (cx < x1) & (cy < y1)
                if inside.any():
                    return (x0, y0, x1, y1), inside

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
