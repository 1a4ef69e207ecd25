"""The loss terms a slot holds: the baselines' classification and box losses and the ones tricks
put in their place (label-smoothed, softmax focal, IoU-type, balanced L1), each honouring per-box
weights, in the interfaces of the package's docstring.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from .iou import iou_type_loss


def smooth_binary_targets(targets: Tensor, epsilon: float) -> Tensor:
    """Label smoothing for K independent sigmoid targets: each binary target is smoothed as a
    two-way softmax (Szegedy et al. 2016 with K = 2): y' = y (1 - eps) + eps / 2, on the rows of
    positive (foreground) samples only; background rows keep their all-zero targets, as the
    objectness of YOLO-style detectors is not smoothed (ultralytics `smooth_BCE`, GluonCV's
    YOLOv3 for the Bag of Freebies paper smooth only the class targets of positives)."""
    if epsilon == 0:
        return targets
    positive = (targets > 0).any(dim=1, keepdim=True)
    return torch.where(positive, targets * (1 - epsilon) + epsilon / 2, targets)


def soft_focal_loss(logits: Tensor, hard: Tensor, soft: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss on soft targets: alpha_t |soft - p|^gamma BCE(p, soft).

    On hard targets (soft == hard) it is torchvision's sigmoid_focal_loss exactly: |y - p| is
    1 - p_t. On soft targets it is the Quality Focal Loss form (Li et al. 2020, "Generalized Focal
    Loss", eq. 5), whose minimum over p is p = soft: the focal factor (1 - p_t)^gamma of the hard
    label would move the minimum away from a smoothed target (for 0.95, to p = 0.995). alpha_t is
    chosen by the hard label (alpha for a foreground class target), so it scales a sample's loss
    without moving its minimum either."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    loss = ce * (soft - p).abs().pow(gamma)
    if alpha >= 0:
        loss = torch.where(hard > 0, alpha * loss, (1 - alpha) * loss)
    return loss


class _SigmoidClassLoss(nn.Module):
    """The one-stage form of a classification loss: an element-wise loss over the K sigmoid targets of
    each valid sample (smoothed by smooth_binary_targets when label smoothing is on), summed over the
    classes, weighted by the sample's box and divided by the normalizer (the foreground count)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def elementwise(self, logits: Tensor, hard: Tensor, soft: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        soft = smooth_binary_targets(targets, self.label_smoothing)
        per_sample = self.elementwise(logits, targets, soft).sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class FocalLoss(_SigmoidClassLoss):
    """The one-stage baseline's loss: torchvision's sigmoid_focal_loss with its defaults (alpha
    0.25, gamma 2, as FCOS and RetinaNet call it); with label smoothing, on the smoothed targets in
    the soft-target form whose minimum is the smoothed target (see soft_focal_loss)."""

    def elementwise(self, logits: Tensor, hard: Tensor, soft: Tensor) -> Tensor:
        return soft_focal_loss(logits, hard, soft)


class CrossEntropyLoss(nn.Module):
    """The two-stage baseline's loss: softmax cross-entropy averaged over the sampled RoIs, with
    torch's label smoothing q = (1 - eps) one_hot + eps / C over the C classes (background too),
    whose minimum over the softmax is q itself."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor, box_weights: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        return (ce * box_weights).mean()


class SigmoidBCELoss(_SigmoidClassLoss):
    """A one-stage classification loss without the focal term: sigmoid binary cross-entropy summed
    over the K classes of each valid sample, weighted by its box, divided by the foreground count
    (the normalizer the focal loss gets, as mmdetection v3 normalises a sigmoid CrossEntropyLoss in
    its one-stage heads). YOLOv3's classification loss (GluonCV's YOLOV3Loss) is this form, normalised
    by the number of images; with label smoothing, on the smoothed targets (smooth_binary_targets:
    GluonCV's label_smooth of YOLOV3TargetMerger)."""

    def elementwise(self, logits: Tensor, hard: Tensor, soft: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, soft, reduction="none")


class SoftmaxFocalLoss(nn.Module):
    """The focal loss over a softmax of the C classes (background 0 included), as Detectron's
    SoftmaxFocalLoss op (Lin et al. 2017's softmax variant): −z (1 − p_t)^γ ln p_t per sampled RoI,
    z = α for a foreground RoI and 1 − α for a background one, summed and divided by the number
    of foreground RoIs (at least 1); each RoI's term weighted by its box."""

    def __init__(self, gamma: float, alpha: float):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: Tensor, labels: Tensor, box_weights: Tensor) -> Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None])[:, 0]
        z = torch.where(labels > 0, self.alpha, 1 - self.alpha)
        per_roi = -z * (1 - log_p.exp()).pow(self.gamma) * log_p
        return (per_roi * box_weights).sum() / max(int((labels > 0).sum()), 1)


class L1BoxLoss(nn.Module):
    """RetinaNet's box loss as torchvision computes it (l1 on the encoded deltas, summed per image
    and divided by its foreground count, averaged over images), with per-box weights."""
    space = "deltas"

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = (pred - target).abs().sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class GIoUBoxLoss(nn.Module):
    """FCOS's box loss as torchvision computes it: the GIoU loss of each positive location's
    decoded box against its ground-truth box, summed and divided by the foreground count."""
    space = "boxes"

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = generalized_box_iou_loss(pred, target, reduction="none")
        return (per_sample * box_weights / normalizer).sum()


class SmoothL1BoxLoss(nn.Module):
    """Faster R-CNN's RoI box loss as torchvision's fastrcnn_loss computes it: smooth L1 (beta 1/9)
    on the encoded deltas of the positive RoIs, summed and divided by the number of sampled RoIs
    (the RPN's box loss is the same term over its sampled anchors). CornerNet's offset loss is this
    form with beta 1 (models/cornernet.py); RepPoints takes it with its config's beta (0.11) on its
    boxes divided by the level's base scale (models/reppoints.py)."""
    space = "deltas"

    def __init__(self, beta: float = 1 / 9):
        super().__init__()
        self.beta = beta

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = F.smooth_l1_loss(pred, target, beta=self.beta, reduction="none").sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class IoUTypeLoss(nn.Module):
    """A box loss on decoded boxes: iou_type_loss per positive sample, weighted by its box and
    divided by the detector's normalizer."""
    space = "boxes"

    def __init__(self, kind: str, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = iou_type_loss(pred.float(), target.float(), self.kind, self.eps)
        return (per_sample * box_weights / normalizer).sum()


def balanced_l1(diff: Tensor, alpha: float, gamma: float, beta: float) -> Tensor:
    """Libra R-CNN's balanced L1 of |x| (Pang et al. 2019, eq. 8; mmdetection balanced_l1_loss.py):
    α/b (b|x| + 1) ln(b|x|/β + 1) − α|x| below β, γ|x| + γ/b − αβ above, b = e^(γ/α) − 1 (so that
    α ln(b + 1) = γ and the two pieces meet at β)."""
    b = math.e ** (gamma / alpha) - 1
    return torch.where(diff < beta, alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff,
                       gamma * diff + gamma / b - alpha * beta)


class BalancedL1Loss(nn.Module):
    """Balanced L1 on the encoded deltas, summed over the 4 coordinates of each positive sample,
    weighted by its box and divided by the detector's normalizer (as its smooth-L1/L1 baseline)."""
    space = "deltas"

    def __init__(self, alpha: float, gamma: float, beta: float):
        super().__init__()
        self.alpha, self.gamma, self.beta = alpha, gamma, beta

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = balanced_l1((pred - target).abs(), self.alpha, self.gamma, self.beta).sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class ScaledLoss(nn.Module):
    """A slot's loss times a constant factor (a loss weight), in the same form (`space`) as the
    loss it wraps."""

    def __init__(self, inner: nn.Module, factor: float):
        super().__init__()
        self.inner, self.factor = inner, float(factor)
        if hasattr(inner, "space"):
            self.space = inner.space

    def forward(self, *args: Tensor) -> Tensor:
        return self.factor * self.inner(*args)
