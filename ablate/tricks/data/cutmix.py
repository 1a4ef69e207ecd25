"""Detection CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", arXiv:1905.04899; the detection variant as used in
YOLOv4 and mmdetection-style pipelines): a rectangle of image B is pasted into image A, and
the boxes follow the pixels.

The rules, exactly:

Pairing and draws. Each image A of the batch is paired with B = the next image of a random
permutation of the batch (a permutation shifted by one has no fixed point), as MixUp does. Per
image, in this order from ``ctx.rng``: ``random() < prob`` decides whether A is cut at all; then
lambda ~ Beta(alpha, alpha); then the region's centre x, then its centre y.

The region. The paper's: cut ratio r = sqrt(1 - lambda), region size (round(r * W), round(r * H)),
centre uniform over the pixels (``integers(0, W)``, ``integers(0, H)``), then clipped to the
image, so that before clipping its area is (1 - lambda) * W * H (up to rounding) and after
clipping it is smaller. Edges are integers (pixel boundaries, which box coordinates share), the
region is the half-open pixel range [x0, x1) x [y0, y1), and is empty when x0 == x1 or y0 == y1.
Images of a batch may differ in size: W and H are those of the area both images cover when
their top-left corners coincide (min of the widths, min of the heights), so the region lies
inside both and its pixels keep their coordinates (no resampling, no shift; MixUp aligns its
images the same way). The result has A's size. Lambda is not adjusted to the clipped area (the
paper does so for its soft labels; boxes here carry no lambda).

Pixels. Inside the region the result is B's pixels, everywhere else A's.

A's boxes. Let v = (area of the box outside the region) / (area of the box). A box is dropped
when v < min_visible or when nothing of it stays visible (v == 0). A kept box becomes the tight
box of its visible part. That visible part is the box minus a rectangle, so its tight box differs
from the box only when the region covers a whole side strip of it (spans the box from edge to
edge in one direction and reaches past one of its other edges): the box is then cut back to the
part that remains. A region that bites a corner, punches a hole or splits the box in two leaves
the box unchanged (the tight box of an L, a frame or two strips is the whole box). Boxes of zero
area (which the detectors reject anyway) are kept unchanged unless they lie inside the region.

B's boxes. Each is clipped to the region (intersection of the box and the region) and added
after A's boxes when its clipped box has positive width and height and its area is at least
min_visible times the original area.

Weights. target["weights"] is written only when A's or B's target had it (CutMix itself weights
nothing: a box is either there or not, as in YOLOv4): every kept box keeps its own input weight,
1 for a target without weights. Other keys of the target (image_id, scale, ...) are A's.

``off_last_fraction`` = f turns CutMix off for the final share f of training: for epochs
ctx.epoch >= ctx.num_epochs - round_half_up(f * ctx.num_epochs) (the rule MixUp uses,
:func:`base.off_at_end`), drawing nothing from ctx.rng then. The default 0 keeps it on throughout,
as the paper's code does (clovaai/CutMix-PyTorch train.py cuts each batch with probability
cutmix_prob in every epoch); 0.05 would be YOLOX's no_aug_epochs 15 of max_epoch 300, 0.1
GluonCV's YOLOv3 MixUp setting (20 of 200 epochs).
"""
from __future__ import annotations

import math

import torch

from ..base import (BatchContext, Images, Targets, Trick, check_fraction, check_number, off_at_end,
                   plan_partners)

Region = tuple[int, int, int, int]  # x0, y0, x1, y1: the pixels [x0, x1) x [y0, y1)


def cut_region(height: int, width: int, lam: float, cx: int, cy: int) -> Region:
    """The paper's cut rectangle for this lambda, centred on pixel (cx, cy) and clipped to the
    image: size (round(sqrt(1 - lam) * width), round(sqrt(1 - lam) * height)) before clipping."""
    ratio = math.sqrt(max(0.0, 1.0 - lam))
    cut_w, cut_h = int(round(width * ratio)), int(round(height * ratio))
    x0, y0 = cx - cut_w // 2, cy - cut_h // 2
    x1, y1 = x0 + cut_w, y0 + cut_h
    return (min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height))


def _areas(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _per_box(region: Region | torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x0, y0, x1, y1 of the region of each box: one region for all, or one row per box."""
    r = torch.as_tensor(region, dtype=boxes.dtype, device=boxes.device).reshape(-1, 4).expand(len(boxes), 4)
    return r.unbind(1)


def _clip_to(boxes: torch.Tensor, x0, y0, x1, y1) -> torch.Tensor:
    return torch.stack([torch.maximum(boxes[:, 0], x0), torch.maximum(boxes[:, 1], y0),
                        torch.minimum(boxes[:, 2], x1), torch.minimum(boxes[:, 3], y1)], dim=1)


def boxes_around(boxes: torch.Tensor, region: Region | torch.Tensor,
                 min_visible: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A's boxes once the region (one for all boxes, or one row per box) is pasted over them:
    (kept boxes, each cut back to the tight box of its visible part; the boolean mask of kept
    input boxes)."""
    boxes = boxes.reshape(-1, 4)
    x0, y0, x1, y1 = _per_box(region, boxes)
    empty = (x0 >= x1) | (y0 >= y1)  # nothing pasted: every box stays as it is
    area = _areas(boxes)
    covered = _areas(_clip_to(boxes, x0, y0, x1, y1))  # the intersection (0 when they do not meet)
    visible = area - covered
    positive = area > 0
    fraction = torch.where(positive, visible / area.clamp(min=torch.finfo(area.dtype).tiny), torch.ones_like(area))
    inside = ((boxes[:, 0] >= x0) & (boxes[:, 2] <= x1) & (boxes[:, 1] >= y0) & (boxes[:, 3] <= y1))
    keep = empty | torch.where(positive, (visible > 0) & (fraction >= min_visible), ~inside)

    out = boxes.clone()
    cut = positive & ~empty
    # The region spans the box horizontally: what stays is above and/or below it.
    spans_x = (x0 <= boxes[:, 0]) & (x1 >= boxes[:, 2]) & cut
    # ... and vertically: what stays is left and/or right of it.
    spans_y = (y0 <= boxes[:, 1]) & (y1 >= boxes[:, 3]) & cut
    top_gone, bottom_gone = (y0 <= boxes[:, 1]) & (y1 > boxes[:, 1]), (y1 >= boxes[:, 3]) & (y0 < boxes[:, 3])
    left_gone, right_gone = (x0 <= boxes[:, 0]) & (x1 > boxes[:, 0]), (x1 >= boxes[:, 2]) & (x0 < boxes[:, 2])
    # A strip is removed only when the region spans one direction and reaches past one edge in
    # the other (spanning both with a remaining part is impossible: that box is fully covered).
    out[:, 1] = torch.where(spans_x & top_gone & ~bottom_gone, y1, out[:, 1])
    out[:, 3] = torch.where(spans_x & bottom_gone & ~top_gone, y0, out[:, 3])
    out[:, 0] = torch.where(spans_y & left_gone & ~right_gone, x1, out[:, 0])
    out[:, 2] = torch.where(spans_y & right_gone & ~left_gone, x0, out[:, 2])
    return out[keep], keep


def boxes_within(boxes: torch.Tensor, region: Region | torch.Tensor,
                 min_visible: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B's boxes seen through the region (one for all boxes, or one row per box): (kept boxes
    clipped to it, the boolean mask of kept input boxes)."""
    boxes = boxes.reshape(-1, 4)
    clipped = _clip_to(boxes, *_per_box(region, boxes))
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (w > 0) & (h > 0) & (w * h >= min_visible * _areas(boxes))
    return clipped[keep], keep


def _weights(tgt: dict) -> torch.Tensor:
    """The target's box weights, 1 for each box when it has none."""
    if "weights" in tgt:
        return tgt["weights"]
    return torch.ones(len(tgt["boxes"]), device=tgt["boxes"].device)


def _boxes_of(pairs: list[tuple[dict, Region]], rule, min_visible: float):
    """`rule` (boxes_around or boxes_within) applied to the boxes of many targets at once, each
    with its own region (a few tensor ops per batch rather than per image); per target: (kept
    boxes, kept mask)."""
    counts = [len(t["boxes"]) for t, _ in pairs]
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t, _ in pairs])
    regions = torch.tensor([r for (_, r), c in zip(pairs, counts) for _ in range(c)],
                           dtype=boxes.dtype, device=boxes.device).reshape(-1, 4)
    kept, keep = rule(boxes, regions, min_visible)
    keeps = keep.split(counts)
    return list(zip(kept.split([int(k.sum()) for k in keeps]), keeps))


def cut_pairs(pairs: list[tuple[torch.Tensor, dict, torch.Tensor, dict, Region]],
              min_visible: float) -> list[tuple[torch.Tensor, dict]]:
    """For each (A image, A target, B image, B target, region): A with B's pixels pasted in the
    region (same coordinates in both), and the boxes of both as the module docstring says."""
    for img_a, _, img_b, _, region in pairs:
        x0, y0, x1, y1 = region
        h, w = min(img_a.shape[1], img_b.shape[1]), min(img_a.shape[2], img_b.shape[2])
        if not (0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h):
            raise ValueError(f"cut region {region} does not lie inside both images (common area {w}x{h})")
    if not pairs:
        return []
    around = _boxes_of([(p[1], p[4]) for p in pairs], boxes_around, min_visible)
    within = _boxes_of([(p[3], p[4]) for p in pairs], boxes_within, min_visible)
    out = []
    for (img_a, tgt_a, img_b, tgt_b, (x0, y0, x1, y1)), (boxes_a, keep_a), (boxes_b, keep_b) in zip(pairs, around, within):
        mixed = img_a.clone()
        mixed[:, y0:y1, x0:x1] = img_b[:, y0:y1, x0:x1]
        target = dict(tgt_a)
        target["boxes"] = torch.cat([boxes_a, boxes_b.to(boxes_a.device, boxes_a.dtype)])
        target["labels"] = torch.cat([tgt_a["labels"][keep_a], tgt_b["labels"][keep_b].to(tgt_a["labels"].device)])
        if "weights" in tgt_a or "weights" in tgt_b:
            weights_a = _weights(tgt_a)[keep_a]
            weights_b = _weights(tgt_b)[keep_b].to(weights_a.device, weights_a.dtype)
            target["weights"] = torch.cat([weights_a, weights_b])
        out.append((mixed, target))
    return out


def cut_pair(img_a: torch.Tensor, tgt_a: dict, img_b: torch.Tensor, tgt_b: dict, region: Region,
             min_visible: float) -> tuple[torch.Tensor, dict]:
    """One pair of :func:`cut_pairs`."""
    return cut_pairs([(img_a, tgt_a, img_b, tgt_b, region)], min_visible)[0]


class CutMix(Trick):
    claims = ("batch_mix",)

    def __init__(self, alpha: float, prob: float, min_visible: float, off_last_fraction: float):
        self.alpha = check_number("alpha", alpha, 0, low_open=True)
        self.prob = check_fraction("prob", prob)
        self.min_visible = check_fraction("min_visible", min_visible)
        self.off_last_fraction = check_fraction("off_last_fraction", off_last_fraction)

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        if off_at_end(self.off_last_fraction, ctx.epoch, ctx.num_epochs):
            return images, targets

        def draw_region(i: int, j: int) -> Region:
            lam = float(ctx.rng.beta(self.alpha, self.alpha))
            h = min(images[i].shape[1], images[j].shape[1])
            w = min(images[i].shape[2], images[j].shape[2])
            cx, cy = int(ctx.rng.integers(0, w)), int(ctx.rng.integers(0, h))
            return cut_region(h, w, lam, cx, cy)

        # Every pair's region drawn first, then the boxes of all pairs cut at once.
        regions = plan_partners(len(images), ctx, self.prob, lambda i, j: (i, j, draw_region(i, j)))
        pairs = [(images[i], targets[i], images[j], targets[j], region) for i, j, region in filter(None, regions)]
        cut = iter(cut_pairs(pairs, self.min_visible))
        out = [next(cut) if plan is not None else (img, tgt) for plan, img, tgt in zip(regions, images, targets)]
        return [img for img, _ in out], [tgt for _, tgt in out]
