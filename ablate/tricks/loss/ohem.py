"""Online hard example mining for the RoI head (Shrivastava, Gupta and Girshick 2016): the RoIs it
trains on are the proposals with the highest loss under the current weights, within the baseline's
positive and negative quotas, as mmdetection's OHEMSampler chooses them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.losses import RoIOutputs, current_slot, set_slot
from ..base import Trick


class OHEMSampler:
    """Per image: the num·fraction positives (label >= 1) and the rest negatives (label 0) with the
    highest classification loss (fewer where there are fewer), as torchvision's and mmdetection's
    quotas; the loss of each candidate is the softmax cross-entropy of the box head's output on it
    against its label (background for negatives), under the current weights (uses_outputs)."""
    uses_outputs = True

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction

    def __call__(self, matched_idxs: list[Tensor], outputs: RoIOutputs) -> tuple[list[Tensor], list[Tensor]]:
        losses = [F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
                  for logits, labels in zip(outputs.logits, matched_idxs)]
        return self.hardest(matched_idxs, losses)

    def hardest(self, matched_idxs: list[Tensor], losses: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The masks of the hardest positives and negatives, by each candidate's loss."""
        pos_masks, neg_masks = [], []
        for labels, loss in zip(matched_idxs, losses):
            pos, neg = torch.where(labels >= 1)[0], torch.where(labels == 0)[0]
            num_pos = min(int(self.batch_size_per_image * self.positive_fraction), len(pos))
            num_neg = min(self.batch_size_per_image - num_pos, len(neg))
            chosen_pos = pos[loss[pos].topk(num_pos).indices]
            chosen_neg = neg[loss[neg].topk(num_neg).indices]
            pos_mask, neg_mask = torch.zeros_like(labels, dtype=torch.uint8), torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[chosen_pos], neg_mask[chosen_neg] = 1, 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks


class OHEM(Trick):
    claims = ("roi_sampler",)
    fits = ("two_stage",)

    def on_model(self, model: nn.Module) -> nn.Module:
        old = current_slot(model, "roi_sampler")
        set_slot(model, "roi_sampler", OHEMSampler(old.batch_size_per_image, old.positive_fraction))
        return model
