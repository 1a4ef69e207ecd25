"""IoU-balanced negative sampling (Pang et al., CVPR 2019, "Libra R-CNN", sec. 3.1), for the RoI
head of a two-stage detector.

Random sampling draws most negatives from the many easy ones (IoU near 0 with every object). Libra
R-CNN splits the IoU interval into K equal bins and asks N/K negatives of each, drawn uniformly
inside the bin. Positives are sampled as before: exactly as torchvision's
BalancedPositiveNegativeSampler draws them (at most batch x fraction, at random, same random calls).

The negatives follow, step by step, the authors' IoUBalancedNegSampler (OceanPang/Libra_R-CNN
mmdet/core/bbox/samplers/iou_balanced_neg_sampler.py, the same in open-mmlab/mmdetection
mmdet/models/task_modules/samplers/iou_balanced_neg_sampler.py). For one image asking N negatives:
- N or fewer negatives: all of them.
- Floor set and IoU-sampling set, by floor_thr: floor_thr > 0: IoU in [0, floor_thr) and
  IoU >= floor_thr; floor_thr == 0: IoU exactly 0 and IoU > 0; floor_thr == -1: no floor set,
  every negative in the IoU-sampling set (see below).
- int(N x (1 - floor_fraction)) negatives from the IoU-sampling set (all of it if it holds no
  more): with K >= 2 bins, num // K from each bin [lo, hi) of K equal bins over
  [start, largest IoU of all the image's proposals) (start = floor_thr, 0 when floor_thr = -1);
  a bin holding no more gives all it has; the places left over are drawn at random from the
  IoU-sampling set not yet taken. With K = 1, drawn at random from the set.
- The rest of N from the floor set, at random (all of it if short); then, if still short, at
  random from all the negatives not yet taken.
The largest IoU of all proposals is that of the ground-truth boxes added as proposals (1.0 in
any image with a box; LossRoIHeads gives the sampler each proposal's largest IoU, those included),
so with negatives below IoU 0.5 and K = 3 the top bin [2/3, 1) is empty and its share is drawn at
random from the other negatives above the floor. With floor_thr = 0 and floor_fraction = 0 (the
default), negatives of IoU 0 are taken only when those above 0 run out.

One deviation: the reference's floor_thr = -1 (mmdetection's configs/libra_rcnn) sets the
sampler's floor_thr to 0 at the end of its first call, so it acts as floor_thr = -1 on one image
and as floor_thr = 0 on every later one. Here no call changes the sampler: -1 means "no floor"
on every call, and conf/tricks/iou_balanced.yaml sets floor_thr: 0, what the reference does on
every call but its first.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from ...models.losses import current_slot, set_slot
from ..base import Trick, check_fraction, check_number


def _choice(idx: Tensor, k: int) -> Tensor:
    """k of idx, uniformly at random without replacement (all of them when k >= len)."""
    if k >= idx.numel():
        return idx
    return idx[torch.randperm(idx.numel(), device=idx.device)[:k]]


def _not_in(pool: Tensor, taken: Tensor) -> Tensor:
    return pool[~torch.isin(pool, taken)]


class IoUBalancedSampler(BalancedPositiveNegativeSampler):
    uses_iou = True  # LossRoIHeads gives it each proposal's largest IoU with the ground truth

    def __init__(self, batch_size_per_image: int, positive_fraction: float, num_bins: int, floor_thr: float,
                 floor_fraction: float):
        super().__init__(batch_size_per_image, positive_fraction)
        self.num_bins = check_number("num_bins", num_bins, 1, integer=True)
        if check_number("floor_thr", floor_thr) != -1:
            check_number("floor_thr", floor_thr, 0)  # -1: no floor set
        self.floor_thr = floor_thr
        self.floor_fraction = check_fraction("floor_fraction", floor_fraction)

    def __call__(self, matched_idxs: list[Tensor], max_ious: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: matched_idxs, the proposals' labels (>= 1 positive, 0 negative, -1 ignored);
        max_ious, each proposal's largest IoU with the image's ground truth (all proposals, the
        ground-truth boxes added as proposals included). Returns the positive and negative masks."""
        pos_idx, neg_idx = [], []
        for labels, ious in zip(matched_idxs, max_ious):
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            # positives exactly as torchvision's sampler draws them (same random calls, same order)
            pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg = self.sample_negatives(negative, ious, num_neg)
            pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
            neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[pos] = 1
            neg_mask[neg] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
        return pos_idx, neg_idx

    def sample_negatives(self, negative: Tensor, ious: Tensor, num: int) -> Tensor:
        """num of the proposal indices `negative`; `ious`: the largest IoU of every proposal of
        the image (indexed by proposal, not only the negatives)."""
        if negative.numel() <= num:
            return negative
        neg_ious = ious[negative]
        if self.floor_thr > 0:
            in_floor, in_sampling = (neg_ious >= 0) & (neg_ious < self.floor_thr), neg_ious >= self.floor_thr
        elif self.floor_thr == 0:
            in_floor, in_sampling = neg_ious == 0, neg_ious > 0
        else:  # -1: no floor set
            in_floor, in_sampling = torch.zeros_like(neg_ious, dtype=torch.bool), neg_ious > self.floor_thr
        floor, sampling = negative[in_floor], negative[in_sampling]
        num_sampling = int(num * (1 - self.floor_fraction))
        if sampling.numel() <= num_sampling:
            chosen = sampling
        elif self.num_bins >= 2:
            start = max(float(self.floor_thr), 0.0)  # -1: the bins start at 0
            chosen = self.sample_via_interval(sampling, ious[sampling], ious.max(), num_sampling, start)
        else:
            chosen = _choice(sampling, num_sampling)
        chosen = torch.cat([_choice(floor, num - chosen.numel()), chosen])
        if chosen.numel() < num:  # floor set short too: any negative not yet taken
            chosen = torch.cat([chosen, _choice(_not_in(negative, chosen), num - chosen.numel())])
        return chosen

    def sample_via_interval(self, idx: Tensor, ious: Tensor, max_iou: Tensor, num: int, start: float) -> Tensor:
        """num of idx (whose IoUs are ious): num // K from each of the K bins [lo, hi) splitting
        [start, max_iou) evenly, a bin holding no more giving all it has; the places left over drawn
        at random from idx not yet taken."""
        width = (max_iou - start) / self.num_bins
        per_bin = num // self.num_bins
        chosen = []
        for k in range(self.num_bins):
            lo, hi = start + k * width, start + (k + 1) * width
            chosen.append(_choice(idx[(ious >= lo) & (ious < hi)], per_bin))
        chosen = torch.cat(chosen)
        if chosen.numel() < num:
            chosen = torch.cat([chosen, _choice(_not_in(idx, chosen), num - chosen.numel())])
        return chosen


class IoUBalanced(Trick):
    """IoU-balanced sampling of the RoI head's negatives (Libra R-CNN)."""
    claims = ("roi_sampler",)
    fits = ("two_stage",)

    def __init__(self, num_bins: int, floor_thr: float, floor_fraction: float):
        IoUBalancedSampler(1, 0.5, num_bins, floor_thr, floor_fraction)  # validates
        self.num_bins, self.floor_thr, self.floor_fraction = num_bins, floor_thr, floor_fraction

    def on_model(self, model: nn.Module) -> nn.Module:
        old = current_slot(model, "roi_sampler")
        set_slot(model, "roi_sampler", IoUBalancedSampler(old.batch_size_per_image, old.positive_fraction,
                                                          self.num_bins, self.floor_thr, self.floor_fraction))
        return model
