"""Large-scale jitter (Ghiasi et al. 2021, "Simple Copy-Paste", sec. 3.1; Du et al. 2021): each
training image resized to a random scale of the square target size, then cropped (when larger) or
padded (when smaller) to that size, as detectron2's LSJ recipe (ResizeScale + FixedSizeCrop)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import clip_boxes_to_image

from ..base import BatchContext, Images, Targets, Trick, check_fraction, check_interval, with_boxes


class ScaleJitter(Trick):
    claims = ("batch_scale",)

    def __init__(self, min_scale: float, max_scale: float, pad_value: float):
        self.min_scale, self.max_scale = check_interval("min_scale", min_scale, "max_scale", max_scale)
        self.pad_value = check_fraction("pad_value", pad_value)

    def jitter(self, img: torch.Tensor, tgt: dict, size: int, rng) -> tuple[torch.Tensor, dict]:
        h, w = img.shape[1:]
        # ResizeScale: scale = min(S r / h, S r / w), output = round(input x scale)
        r = rng.uniform(self.min_scale, self.max_scale)
        scale = min(size * r / h, size * r / w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        boxes = tgt["boxes"].reshape(-1, 4) * torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=tgt["boxes"].dtype,
                                                           device=tgt["boxes"].device)
        # FixedSizeCrop: one uniform fraction of the spare room on both axes, rounded; then pad
        fraction = rng.uniform(0.0, 1.0)
        oy, ox = int(round(max(nh - size, 0) * fraction)), int(round(max(nw - size, 0) * fraction))
        img = img[:, oy:oy + size, ox:ox + size]
        boxes = boxes - torch.tensor([ox, oy, ox, oy], dtype=boxes.dtype, device=boxes.device)
        ch, cw = img.shape[1:]
        boxes = clip_boxes_to_image(boxes, (ch, cw))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # cropped away entirely: dropped
        padded = img.new_full((img.shape[0], size, size), self.pad_value)
        padded[:, :ch, :cw] = img
        return padded, with_boxes(tgt, boxes[keep], keep)

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        size = max(max(img.shape[1:]) for img in images)  # the base size: data.image_size
        pairs = [self.jitter(img, tgt, size, ctx.rng) for img, tgt in zip(images, targets)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
