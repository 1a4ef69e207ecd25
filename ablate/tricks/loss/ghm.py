"""Gradient Harmonizing Mechanism (Li, Liu and Wang, AAAI 2019, "Gradient Harmonized Single-stage
Detector"), for the one-stage detectors: GHM-C replaces the classification loss, GHM-R the box loss.

Gradient norm of a sample: GHM-C g = |sigmoid(x) - y| (per class of each location), GHM-R
g = |d| / sqrt(d^2 + mu^2) (per coordinate of each positive anchor, d = predicted - target delta).
The unit interval is cut into M bins of width eps = 1/M; the gradient density of a sample is
GD(g) = R(g) / eps, R the number of samples in its bin, smoothed over iterations by an exponential
moving average S_j <- alpha S_j + (1 - alpha) R_j (paper sec. 3.3, alpha the momentum). A sample
weighs beta = N / GD(g), N the number of valid samples, and the loss is (1/N) sum beta_i L_i.

As the authors' code does (mmdetection's GHMC/GHMR, by the paper's authors; compared with
open-mmlab/mmdetection mmdet/models/losses/ghm_loss.py, and with how its heads call a loss:
dense_heads/anchor_head.py and reppoints_head.py loss_by_feat -> multi_apply(loss_by_feat_single), once
per level; fcos_head.py loss_by_feat: every level flattened, concatenated, one call):
- the loss is called the way the detector's reference head calls it (LossSlots.loss_per_level):
  per pyramid level on RetinaNet and RepPoints (one histogram per level, N that level's valid samples,
  the level's loss normalised by its own N, the levels' losses summed; the bins' moving average is
  one, shared by the levels and so updated once per level, L times per iteration); once over all
  levels on FCOS (one histogram, one N, one update per iteration);
- the weights are normalized by the number of non-empty bins n instead of M: beta = N / (S_j n);
- the moving averages start at 0 (so early weights are up to 1/(1 - alpha) larger) and a bin's
  average moves only on calls where the bin holds samples;
- GHM-R's loss is ASL1(d) = sqrt(d^2 + mu^2) - mu, and its last bin edge is open (1e3).
The loss weight of GHM-R (10) presumes the per-level sum (RetinaNet, the only detector it fits).
Per-box weights (MixUp) multiply each sample's term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.losses import RetinaNetLossHead, one_stage_head, set_slot, slot_holders
from ..base import Trick, check_number


class GradientDensity(nn.Module):
    """Per-sample weights N / (S_bin * n) from gradient norms g, with the bins' moving average S
    kept as a buffer (saved in checkpoints)."""

    def __init__(self, bins: int, momentum: float, last_edge: float):
        super().__init__()
        self.bins = check_number("bins", bins, 1, integer=True)
        self.momentum = check_number("momentum", momentum, 0, 1, high_open=True)
        edges = torch.arange(bins + 1, dtype=torch.float32) / bins
        edges[-1] = last_edge
        self.register_buffer("edges", edges, persistent=False)
        self.register_buffer("acc_sum", torch.zeros(bins))

    @torch.no_grad()
    def forward(self, g: Tensor, valid: Tensor | None = None) -> Tensor:
        g = g.float()
        if valid is None:
            valid = torch.ones_like(g, dtype=torch.bool)
        bin_of = (torch.bucketize(g, self.edges, right=True) - 1).clamp(0, self.bins - 1)
        counts = torch.bincount(bin_of[valid], minlength=self.bins).to(self.acc_sum.dtype)
        present = counts > 0
        if self.momentum > 0:
            self.acc_sum.copy_(torch.where(present, self.momentum * self.acc_sum + (1 - self.momentum) * counts,
                                           self.acc_sum))
            density = self.acc_sum
        else:
            density = counts
        total = max(int(valid.sum()), 1)
        n = present.sum().clamp(min=1)
        weights = total / density.clamp(min=1e-12)[bin_of] / n
        return torch.where(valid, weights, torch.zeros_like(weights))


def per_level(level_loss, levels: Tensor, *samples: Tensor) -> Tensor:
    """sum over the pyramid levels present of level_loss(that level's samples), lowest level first
    (the order the authors' head calls the loss in, which the shared moving average depends on)."""
    total = samples[0].sum() * 0
    for level in torch.unique(levels).tolist():
        mask = levels == level
        total = total + level_loss(*(s[mask] for s in samples))
    return total


class GHMCLoss(nn.Module):
    """GHM-C: sum_i beta_i BCE(x_i, y_i) / N over the K binary targets of each valid location, either
    per pyramid level and summed over the levels (per_level) or over all levels at once (a one-stage
    classification loss, see ablate.models.losses). torchvision's per-foreground normalizer is not
    used: GHM-C normalizes by N itself (paper eq. 9)."""

    def __init__(self, bins: int, momentum: float, *, per_level: bool):
        super().__init__()
        self.density = GradientDensity(bins, momentum, last_edge=1.0 + 1e-6)
        self.per_level = bool(per_level)

    def weights(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.density((logits.detach().sigmoid() - targets).abs())

    def forward(self, logits: Tensor, targets: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor) -> Tensor:
        if not self.per_level:
            return self.level_loss(logits, targets, box_weights)
        return per_level(self.level_loss, levels, logits, targets, box_weights)

    def level_loss(self, logits: Tensor, targets: Tensor, box_weights: Tensor) -> Tensor:
        beta = self.weights(logits, targets)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (beta * bce * box_weights[:, None]).sum() / max(logits.numel(), 1)


def asl1(d: Tensor, mu: float) -> Tensor:
    """Authentic smooth L1 (GHM paper eq. 10): sqrt(d^2 + mu^2) - mu."""
    return torch.sqrt(d * d + mu * mu) - mu


class GHMRLoss(nn.Module):
    """GHM-R: per pyramid level, loss_weight * sum_i beta_i ASL1(d_i) / N over the 4 deltas of each
    positive anchor of the level, summed over the levels."""
    space = "deltas"

    def __init__(self, mu: float, bins: int, momentum: float, loss_weight: float):
        super().__init__()
        self.mu = check_number("mu", mu, 0, low_open=True)
        self.loss_weight = check_number("loss_weight", loss_weight, 0, low_open=True)
        self.density = GradientDensity(bins, momentum, last_edge=1e3)

    def weights(self, pred: Tensor, target: Tensor) -> Tensor:
        d = (pred - target).detach()
        return self.density(d.abs() / torch.sqrt(d * d + self.mu * self.mu))

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor) -> Tensor:
        if pred.numel() == 0:
            return pred.sum()
        return per_level(self.level_loss, levels, pred, target, box_weights)

    def level_loss(self, pred: Tensor, target: Tensor, box_weights: Tensor) -> Tensor:
        beta = self.weights(pred, target)
        return self.loss_weight * (beta * asl1(pred - target, self.mu) * box_weights[:, None]).sum() / pred.numel()


class GHMC(Trick):
    """GHM-C in place of the one-stage detector's focal loss, called per pyramid level or once over
    all levels as the detector's reference head calls its classification loss."""
    claims = ("cls_loss",)
    fits = ("one_stage",)

    def __init__(self, bins: int, momentum: float):
        GradientDensity(bins, momentum, 1.0)  # validates
        self.bins, self.momentum = bins, momentum

    def on_model(self, model: nn.Module) -> nn.Module:
        per_level = slot_holders(model)["cls_loss"].loss_per_level
        set_slot(model, "cls_loss", GHMCLoss(self.bins, self.momentum, per_level=per_level))
        return model


class GHMR(Trick):
    """GHM-R in place of RetinaNet's L1 loss on the anchor deltas. FCOS regresses boxes with a
    GIoU loss, not a smooth-L1-type loss on deltas, so GHM-R has nothing to replace there."""
    claims = ("box_loss",)
    fits = ("retinanet",)

    def __init__(self, mu: float, bins: int, momentum: float, loss_weight: float):
        GHMRLoss(mu, bins, momentum, loss_weight)  # validates
        self.mu, self.bins, self.momentum, self.loss_weight = mu, bins, momentum, loss_weight

    def on_model(self, model: nn.Module) -> nn.Module:
        from ..base import TrickConflictError

        head = one_stage_head(model)
        if not isinstance(head, RetinaNetLossHead) or head.regression_head._loss_type not in ("l1", "smooth_l1"):
            raise TrickConflictError(
                f"trick '{self.name or 'ghm_r'}' does not fit {type(model).__name__}: GHM-R replaces a smooth-L1-type "
                "loss on anchor box deltas (model=retinanet); FCOS regresses boxes with a GIoU loss")
        set_slot(model, "box_loss", GHMRLoss(self.mu, self.bins, self.momentum, self.loss_weight))
        return model
