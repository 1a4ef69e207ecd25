"""IoU of boxes (x1, y1, x2, y2), aligned pairs or every pair, and the IoU-type losses (IoU, GIoU,
DIoU, CIoU): the IoU helpers of the detectors and tricks, in one place.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _overlap_and_areas(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per pair of boxes a[..., :], b[..., :] (x1, y1, x2, y2; the leading dims broadcast): the area
    of their intersection, and each one's area."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    return (wh[..., 0] * wh[..., 1], (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]),
            (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """The IoU of each pair a[i], b[i], the union floored at eps (mmdetection's bbox_overlaps with
    is_aligned=True)."""
    overlap, area_a, area_b = _overlap_and_areas(a, b)
    return overlap / (area_a + area_b - overlap).clamp(min=eps)


def pairwise_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU [len(a), len(b)] of every pair, the union floored at eps (mmdetection's bbox_overlaps): a
    box of zero size has IoU 0, where torchvision's box_iou gives NaN."""
    return aligned_iou(a[:, None, :], b[None, :, :], eps)


def iou_type_loss(pred: Tensor, target: Tensor, kind: str, eps: float) -> Tensor:
    """Per box [P]: the IoU-type loss of decoded boxes (x1, y1, x2, y2) against their targets, as
    mmdetection v3 computes it (mmdet/models/losses/iou_loss.py with bbox_overlaps):
    - iou: −ln IoU (UnitBox), IoU clamped at eps (no gradient where boxes do not overlap);
    - giou: 1 − GIoU, union and enclosing area floored at eps;
    - diou: 1 − IoU + ρ²/c², eps added to the union and to c²;
    - ciou: 1 − clamp(IoU − ρ²/c² − αv, −1, 1), v = 4/π² (atan(w_gt/h_gt) − atan(w/h))², eps added
      to the heights, α = v / (1 − IoU + v) without gradient and 0 unless IoU > 0.5 (the CIoU paper's
      TCYB version; torchvision's complete_box_iou_loss has no such gate)."""
    overlap, area_p, area_t = _overlap_and_areas(pred, target)
    enclose = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    if kind in ("iou", "giou"):
        union = (area_p + area_t - overlap).clamp(min=eps)
        ious = overlap / union
        if kind == "iou":
            return -ious.clamp(min=eps).log()
        enclose_area = (enclose[:, 0] * enclose[:, 1]).clamp(min=eps)
        return 1 - (ious - (enclose_area - union) / enclose_area)
    ious = overlap / (area_p + area_t - overlap + eps)
    c2 = enclose[:, 0] ** 2 + enclose[:, 1] ** 2 + eps
    rho2 = (((target[:, 0] + target[:, 2]) - (pred[:, 0] + pred[:, 2])) ** 2
            + ((target[:, 1] + target[:, 3]) - (pred[:, 1] + pred[:, 3])) ** 2) / 4
    if kind == "diou":
        return 1 - (ious - rho2 / c2)
    if kind != "ciou":
        raise ValueError(f"IoU-type loss {kind!r}: choose iou, giou, diou or ciou")
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = (ious > 0.5).to(v.dtype) * v / (1 - ious + v)
    return 1 - (ious - (rho2 / c2 + alpha * v)).clamp(min=-1.0, max=1.0)
