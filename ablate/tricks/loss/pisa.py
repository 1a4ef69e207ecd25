"""Prime Sample Attention (Cao, Chen, Loy and Lin, CVPR 2020, "Prime Sample Attention in Object
Detection"): the samples that matter most for mAP, the best-localised positive of each object and
the highest-scoring negative of each cluster, weigh more in the loss.

Three parts, each as mmdetection computes it (mmdet/models/losses/pisa_loss.py isr_p and carl_loss,
mmdet/models/task_modules/samplers/score_hlr_sampler.py, mmcv's nms_match), on the detectors
mmdetection has PISA on that this harness has (RetinaNet, Faster R-CNN), and R-FCN, whose RoI heads
are Faster R-CNN's with another box path (the same samples, losses and class-specific deltas):

- ISR-P (positives): IoU-HLR, the IoU of each positive's predicted box with its ground truth ranked
  first within the samples of the same object, then across the objects of the same class by
  (local rank, IoU); weight (max_l - rank) / max_l with max_l the largest number of positives of
  one class, mapped by (bias + (1 - bias) w)^k, scaled so the positives' classification loss is
  what it was.
- ISR-N (negatives; two-stage, the RoI sampler): score-HLR, the negatives whose best foreground
  score is above score_thr grouped by NMS of their predicted boxes (nms_match), ranked first by
  their rank within the group, then by score; the top ones sampled, weighted (U - rank) / U
  (U = max(wanted, valid)) mapped by (bias + (1 - bias) w)^k; the rest drawn at random with the
  smallest weight; scaled so their classification loss is what it was.
- CARL: a second box-loss term, each positive's box loss weighted by (bias + (1 - bias) s)^k with s
  its classification score of its class (with gradient: the classifier learns from localisation),
  weights scaled to sum to the number of positives.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from ...models.losses import PositiveSamples, RoIOutputs, aligned_iou, current_slot, set_slot
from ..base import Trick, check_fraction, check_number


def descending_rank(x: Tensor) -> Tensor:
    """The rank of each entry of x in descending order (0 for the largest; ties by position)."""
    order = torch.argsort(x, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(x), device=x.device)
    return rank


def nms_match(boxes: Tensor, scores: Tensor, iou_thr: float) -> list[Tensor]:
    """mmcv.ops.nms_match: greedy NMS in descending score; each group is a kept box followed by the
    boxes it suppresses (IoU >= iou_thr with it, not suppressed before), in descending score."""
    order = torch.argsort(scores, descending=True, stable=True)
    ious = box_iou(boxes[order], boxes[order])
    free = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    groups = []
    for i in range(len(order)):
        if not free[i]:
            continue
        members = free & (ious[i] >= iou_thr)
        members[: i + 1] = False
        free &= ~members
        groups.append(order[torch.cat([torch.tensor([i], device=boxes.device), torch.where(members)[0]])])
    return groups


def isr_p_weights(ious: Tensor, labels: Tensor, gt_ids: Tensor, weights: Tensor, k: float, bias: float) -> Tensor:
    """ISR-P's weights before their normalisation (mmdetection isr_p): `weights` (each positive's
    classification weight so far) times (max_l - IoU-HLR) / max_l, mapped by (bias + (1 - bias) w)^k."""
    ious, weights = ious.clone().float(), weights.clone().float()
    max_l = int(labels.bincount().max())
    for label in labels.unique():
        of_label = torch.where(labels == label)[0]
        label_gts = gt_ids[of_label]
        for gt in label_gts.unique():
            of_gt = of_label[label_gts == gt]
            ious[of_gt] += max_l - descending_rank(ious[of_gt]).float()  # local rank first, IoU within it
        weights[of_label] *= (max_l - descending_rank(ious[of_label]).float()) / max_l
    return (bias + weights * (1 - bias)).pow(k)


def carl_weights(scores: Tensor, k: float, bias: float) -> Tensor:
    """CARL's weight of each positive from its score of its class, (bias + (1 - bias) s)^k, scaled to
    sum to the number of positives (the scaling keeps its gradient, as mmdetection's)."""
    w = (bias + (1 - bias) * scores).pow(k)
    return w * (len(w) / w.sum())


class PrimeSampleWeighting:
    """The sample_weighting slot's PISA: ISR-P on the positives' classification weights, and CARL
    as the extra loss term `loss_carl`."""

    def __init__(self, isr_k: float, isr_bias: float, carl_k: float, carl_bias: float):
        self.isr_k, self.isr_bias, self.carl_k, self.carl_bias = isr_k, isr_bias, carl_k, carl_bias

    def __call__(self, samples: PositiveSamples) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            ious = aligned_iou(samples.pred_boxes.float(), samples.target_boxes.float())
            imp = isr_p_weights(ious, samples.labels, samples.gt_ids, samples.cls_weights, self.isr_k,
                                self.isr_bias)
            # the positives' classification loss as before (mmdetection: ori_pos_loss / new_pos_loss)
            imp = imp * (samples.cls_loss(samples.cls_weights) / samples.cls_loss(imp))
        probs = samples.logits.float().sigmoid() if samples.sigmoid else samples.logits.float().softmax(-1)
        scores = probs.gather(1, samples.labels[:, None])[:, 0]
        carl = carl_weights(scores, self.carl_k, self.carl_bias)
        return imp, {"loss_carl": samples.box_loss(samples.box_weights * carl)}


class ScoreHLRSampler:
    """The RoI sampler of ISR-N (mmdetection's ScoreHLRSampler): positives at random within the
    baseline's quota (as torchvision's sampler draws them), negatives by score-HLR, with a weight
    of each sampled negative's classification loss."""
    uses_outputs = True

    def __init__(self, batch_size_per_image: int, positive_fraction: float, k: float, bias: float,
                 score_thr: float, iou_thr: float):
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.k, self.bias, self.score_thr, self.iou_thr = k, bias, score_thr, iou_thr

    def __call__(self, matched_idxs: list[Tensor], outputs: RoIOutputs
                 ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        pos_masks, neg_masks, label_weights = [], [], []
        for labels, logits, deltas, proposals in zip(matched_idxs, outputs.logits, outputs.box_regression,
                                                     outputs.proposals):
            positive, negative = torch.where(labels >= 1)[0], torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            neg, neg_weights = self.sample_negatives(logits[negative], deltas[negative], proposals[negative],
                                                     num_neg, outputs)
            pos_mask, neg_mask = torch.zeros_like(labels, dtype=torch.uint8), torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[pos], neg_mask[negative[neg]] = 1, 1
            weights = torch.ones(len(labels), dtype=logits.dtype, device=logits.device)
            weights[negative[neg]] = neg_weights
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
            label_weights.append(weights)
        return pos_masks, neg_masks, label_weights

    def sample_negatives(self, logits: Tensor, deltas: Tensor, proposals: Tensor, num: int,
                         outputs: RoIOutputs) -> tuple[Tensor, Tensor]:
        """`num` of the negatives (indices into these rows) and their classification-loss weights."""
        if num == 0:
            return torch.zeros(0, dtype=torch.long, device=logits.device), logits.new_zeros(0)
        max_score, best = logits.softmax(-1)[:, 1:].max(-1)  # the best foreground class (background is 0)
        valid, invalid = torch.where(max_score > self.score_thr)[0], torch.where(max_score <= self.score_thr)[0]
        if len(valid) == 0:
            return torch.randperm(len(logits), device=logits.device)[:num], logits.new_ones(num)
        num_hlr = min(len(valid), num)
        class_deltas = deltas[valid].reshape(len(valid), -1, 4)[torch.arange(len(valid)), best[valid] + 1]
        boxes = outputs.box_coder.decode_single(class_deltas, proposals[valid])
        scores = max_score[valid]
        importance = torch.zeros_like(scores)
        for group in nms_match(boxes, scores, self.iou_thr):  # rank in the group first, score within it
            importance[group] = len(valid) - torch.arange(len(group), device=scores.device) + scores[group]
        hlr = torch.argsort(importance, descending=True, stable=True)[:num]  # the chosen ones' ranks: 0, 1, ...
        rand = invalid[torch.randperm(len(invalid), device=logits.device)[:num - num_hlr]]
        chosen = torch.cat([valid[hlr], rand])
        bound = max(num, len(valid))
        hlr_weights = (bound - torch.arange(len(hlr), device=scores.device).float()) / bound
        weights = torch.cat([hlr_weights, hlr_weights.min().expand(len(rand))])
        weights = (self.bias + (1 - self.bias) * weights).pow(self.k)
        # the chosen negatives' classification loss as before (mmdetection: ori_selected_loss / new_loss)
        background = torch.zeros(len(chosen), dtype=torch.long, device=logits.device)
        ones = torch.ones_like(weights)
        ratio = outputs.cls_loss(logits[chosen], background, ones) / outputs.cls_loss(logits[chosen], background, weights)
        return chosen, weights * ratio


class PISA(Trick):
    """Prime Sample Attention: ISR-P and CARL on RetinaNet, Faster R-CNN and R-FCN, and ISR-N (score-HLR
    sampling of the RoI head's negatives) on the two-stage ones."""
    claims = ("roi_sampler", "sample_weighting")
    fits = ("retinanet", "faster_rcnn", "rfcn")

    def __init__(self, isr_k: float, isr_bias: float, carl_k: float, carl_bias: float, hlr_k: float,
                 hlr_bias: float, score_thr: float, iou_thr: float):
        self.weighting = PrimeSampleWeighting(check_number("isr_k", isr_k, 0), check_fraction("isr_bias", isr_bias),
                                              check_number("carl_k", carl_k, 0),
                                              check_fraction("carl_bias", carl_bias))
        self.hlr_k, self.hlr_bias = check_number("hlr_k", hlr_k, 0), check_fraction("hlr_bias", hlr_bias)
        self.score_thr = check_number("score_thr", score_thr, 0, 1, high_open=True)
        self.iou_thr = check_fraction("iou_thr", iou_thr)

    def on_model(self, model: nn.Module) -> nn.Module:
        set_slot(model, "sample_weighting", self.weighting)
        if hasattr(model, "roi_heads"):
            old = current_slot(model, "roi_sampler")
            set_slot(model, "roi_sampler", ScoreHLRSampler(old.batch_size_per_image, old.positive_fraction,
                                                           self.hlr_k, self.hlr_bias, self.score_thr, self.iou_thr))
        return model
