"""IoU-balanced negative sampling (Pang et al., CVPR 2019, "Libra R-CNN", sec. 3.1), for the RoI
head of a two-stage detector.

Random sampling draws most negatives from the many easy ones (IoU near 0 with every object). Libra
R-CNN splits the negatives' IoU interval evenly into K bins and asks N/K negatives of each bin,
drawn uniformly inside it. Positives are sampled as before (torchvision's
BalancedPositiveNegativeSampler: at most batch x fraction of them, at random).

As mmdetection's IoUBalancedNegSampler (by the paper's authors), which the fallback follows:
- a bin holding fewer than N/K negatives gives all of them; the places left over (and the
  remainder of N/K's rounding) go to negatives drawn at random among those not yet taken;
- floor_thr / floor_fraction: negatives with IoU below floor_thr (IoU exactly 0 when floor_thr = 0)
  are kept out of the bins and make up floor_fraction of the negatives; floor_thr < 0 means no
  floor set, the bins starting at IoU 0 (Libra R-CNN's config: floor_thr -1, floor_fraction 0).
One difference: the bins span [start, the largest IoU among the negatives], the paper's "sampling
interval" of the negatives. mmdetection takes the largest IoU of all proposals, positives and the
ground-truth boxes added as proposals included (1.0), so with negatives below IoU 0.5 its upper bin
is always empty and its share drawn at random.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from ..models.losses import two_stage_roi_heads
from .base import Trick


def _choice(idx: Tensor, k: int) -> Tensor:
    """k of idx, uniformly at random without replacement (all of them when k >= len)."""
    if k >= idx.numel():
        return idx
    return idx[torch.randperm(idx.numel(), device=idx.device)[:k]]


class IoUBalancedSampler(BalancedPositiveNegativeSampler):
    uses_iou = True  # LossRoIHeads gives it each proposal's largest IoU with the ground truth

    def __init__(self, batch_size_per_image: int, positive_fraction: float, num_bins: int, floor_thr: float,
                 floor_fraction: float):
        super().__init__(batch_size_per_image, positive_fraction)
        if num_bins < 1:
            raise ValueError(f"num_bins={num_bins}: must be at least 1")
        if not 0 <= floor_fraction <= 1:
            raise ValueError(f"floor_fraction={floor_fraction}: must be in [0, 1]")
        self.num_bins, self.floor_thr, self.floor_fraction = num_bins, floor_thr, floor_fraction

    def __call__(self, matched_idxs: list[Tensor], max_ious: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        pos_idx, neg_idx = [], []
        for labels, ious in zip(matched_idxs, max_ious):
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            # positives exactly as torchvision's sampler draws them (same random calls, same order)
            pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg = self.sample_negatives(negative, ious[negative], num_neg)
            pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
            neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[pos] = 1
            neg_mask[neg] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
        return pos_idx, neg_idx

    def sample_negatives(self, negative: Tensor, ious: Tensor, num: int) -> Tensor:
        """num of the indices `negative` (whose IoUs are `ious`), balanced over the IoU bins."""
        if negative.numel() <= num:
            return negative
        if self.floor_thr > 0:
            in_floor, start = ious < self.floor_thr, self.floor_thr
        elif self.floor_thr == 0:
            in_floor, start = ious == 0, 0.0
        else:
            in_floor, start = torch.zeros_like(ious, dtype=torch.bool), 0.0
        floor, banded, banded_ious = negative[in_floor], negative[~in_floor], ious[~in_floor]
        num_banded = int(num * (1 - self.floor_fraction))
        if banded.numel() <= num_banded:
            chosen = banded
        elif self.num_bins >= 2:
            chosen = self.sample_via_interval(banded, banded_ious, num_banded, start)
        else:
            chosen = _choice(banded, num_banded)
        chosen = torch.cat([_choice(floor, num - chosen.numel()), chosen])
        return self.fill(negative, chosen, num)

    def sample_via_interval(self, idx: Tensor, ious: Tensor, num: int, start: float) -> Tensor:
        """num // K of each of K equal IoU bins over [start, max IoU]; a short bin gives all it has,
        and the rest is drawn at random from the candidates not yet taken."""
        width = (float(ious.max()) - start) / self.num_bins
        inner = torch.tensor([start + width * k for k in range(1, self.num_bins)], dtype=ious.dtype,
                             device=ious.device)
        bin_of = torch.bucketize(ious, inner, right=True)  # bins [lo, hi), the last one closed
        per_bin = num // self.num_bins
        chosen = torch.cat([_choice(idx[bin_of == k], per_bin) for k in range(self.num_bins)])
        return self.fill(idx, chosen, num)

    @staticmethod
    def fill(pool: Tensor, chosen: Tensor, num: int) -> Tensor:
        """chosen, completed to num with members of pool drawn at random among those not chosen."""
        if chosen.numel() >= num:
            return chosen
        rest = pool[~torch.isin(pool, chosen)]
        return torch.cat([chosen, _choice(rest, num - chosen.numel())])


class IoUBalanced(Trick):
    """IoU-balanced sampling of the RoI head's negatives (Libra R-CNN)."""
    claims = ("roi_sampler",)
    fits = ("two_stage",)

    def __init__(self, num_bins: int, floor_thr: float, floor_fraction: float):
        IoUBalancedSampler(1, 0.5, num_bins, floor_thr, floor_fraction)  # validates
        self.num_bins, self.floor_thr, self.floor_fraction = num_bins, floor_thr, floor_fraction

    def on_model(self, model: nn.Module) -> nn.Module:
        roi_heads = two_stage_roi_heads(model)
        old = roi_heads.fg_bg_sampler
        roi_heads.fg_bg_sampler = IoUBalancedSampler(old.batch_size_per_image, old.positive_fraction,
                                                     self.num_bins, self.floor_thr, self.floor_fraction)
        return model
