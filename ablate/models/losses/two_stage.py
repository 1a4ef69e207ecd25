"""Faster R-CNN's (and R-FCN's) loss pieces: the RPN with per-box weights (`LossRPN`) and the RoI
heads with the cls_loss, box_loss, roi_sampler and sample_weighting slots (`LossRoIHeads`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_iou

from .slots import LossSlots, PositiveSamples, RoIOutputs, box_weights_of, has_box_weights, weigh_positives
from .terms import CrossEntropyLoss, SmoothL1BoxLoss


class LossRPN(RegionProposalNetwork):
    """torchvision's RPN with per-box weights on the objectness and box losses of the anchors
    matched to a weighted box (torchvision's code when the batch has no weights)."""

    anchor_weights: list[Tensor] | None = None

    @classmethod
    def adopt(cls, rpn: RegionProposalNetwork) -> "LossRPN":
        """The same RPN (same modules and settings) with this class's losses."""
        rpn.__class__ = cls
        return rpn

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        self.anchor_weights = None
        if has_box_weights(targets):
            self.anchor_weights = []
            for anchors_i, t, labels_i in zip(anchors, targets, labels):
                positive = labels_i == 1
                matched = (self.proposal_matcher(self.box_similarity(t["boxes"], anchors_i)).clamp(min=0)
                           if len(t["boxes"]) else torch.zeros(len(anchors_i), dtype=torch.int64,
                                                                device=anchors_i.device))
                self.anchor_weights.append(box_weights_of(t, matched, positive, torch.float32))
        return labels, matched_gt_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        if self.anchor_weights is None:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        # torchvision's, each sampled anchor's terms multiplied by its weight
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        weights = torch.cat(self.anchor_weights).to(objectness.dtype)
        labels, regression_targets = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
        box_loss = SmoothL1BoxLoss()(pred_bbox_deltas[sampled_pos], regression_targets[sampled_pos],
                                     weights[sampled_pos], weights.new_full((len(sampled_pos),), sampled.numel()))
        bce = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled], reduction="none")
        return (bce * weights[sampled]).mean(), box_loss


class LossRoIHeads(LossSlots, RoIHeads):
    """torchvision's RoI heads (boxes only) with settable classification and box losses, per-box
    weights on both RoI losses, and a sampler that may take each proposal's largest IoU with the
    ground truth."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss", "roi_sampler": "fg_bg_sampler",
                  "sample_weighting": "sample_weighting"}
    detector = "faster_rcnn"
    softmax_cls = True

    @classmethod
    def from_roi_heads(cls, old: RoIHeads) -> "LossRoIHeads":
        if old.has_mask() or old.has_keypoint():
            raise ValueError("LossRoIHeads supports box heads only (no mask or keypoint branch)")
        new = cls(old.box_roi_pool, old.box_head, old.box_predictor,
                  old.proposal_matcher.high_threshold, old.proposal_matcher.low_threshold,
                  old.fg_bg_sampler.batch_size_per_image, old.fg_bg_sampler.positive_fraction,
                  old.box_coder.weights, old.score_thresh, old.nms_thresh, old.detections_per_img)
        new.proposal_matcher.allow_low_quality_matches = old.proposal_matcher.allow_low_quality_matches
        new.box_coder = old.box_coder
        return new

    def default_loss(self, slot: str) -> nn.Module | None:
        if slot == "roi_sampler":
            return self.fg_bg_sampler
        if slot == "sample_weighting":
            return None
        return {"cls_loss": CrossEntropyLoss, "box_loss": SmoothL1BoxLoss}[slot]()

    def select_training_samples(self, proposals, targets, features=None, image_shapes=None):
        return self.sample_rois(proposals, targets, features, image_shapes)[:4]

    def sample_rois(self, proposals, targets, features=None, image_shapes=None):
        """torchvision's select_training_samples, giving the sampler what it declares it uses: each
        proposal's largest IoU with the ground truth (uses_iou) or the box head's outputs on every
        proposal (uses_outputs); plus, per sampled RoI, a weight of its classification loss where
        the sampler gives one (else None)."""
        uses_iou = getattr(self.fg_bg_sampler, "uses_iou", False)
        uses_outputs = getattr(self.fg_bg_sampler, "uses_outputs", False)
        if not (uses_iou or uses_outputs):
            return (*super().select_training_samples(proposals, targets), None)
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if uses_outputs:
            sampled = self.fg_bg_sampler(labels, self.roi_outputs(features, proposals, image_shapes))
        else:
            max_ious = [box_iou(g, p).max(dim=0).values if g.numel() else p.new_zeros(len(p))
                        for g, p in zip(gt_boxes, proposals)]
            sampled = self.fg_bg_sampler(labels, max_ious)
        pos_masks, neg_masks = sampled[:2]
        label_weights = sampled[2] if len(sampled) > 2 else None
        matched_gt_boxes, kept_weights = [], []
        for i in range(len(proposals)):
            keep = torch.where(pos_masks[i] | neg_masks[i])[0]
            proposals[i], labels[i], matched_idxs[i] = proposals[i][keep], labels[i][keep], matched_idxs[i][keep]
            gt = gt_boxes[i] if gt_boxes[i].numel() else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(gt[matched_idxs[i]])
            if label_weights is not None:
                kept_weights.append(label_weights[i][keep])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets, (kept_weights or None)

    @torch.no_grad()
    def roi_outputs(self, features, proposals, image_shapes) -> RoIOutputs:
        """The box head's outputs on every proposal of each image under the current weights, without
        gradient: what a sampler of hard or prime examples ranks by (mmdetection's OHEMSampler and
        ScoreHLRSampler forward the candidates through the box head the same way)."""
        logits, box_regression = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        sizes = [len(p) for p in proposals]
        return RoIOutputs(list(logits.float().split(sizes)), list(box_regression.float().split(sizes)), proposals,
                          self.box_coder, self.slot_loss("cls_loss"))

    def forward(self, features, proposals, image_shapes, targets=None):
        weighted = has_box_weights(targets)
        own_sampler = getattr(self.fg_bg_sampler, "uses_outputs", False)
        if not self.training or (self.cls_loss is None and self.box_loss is None and self.sample_weighting is None
                                 and not weighted and not own_sampler):
            return super().forward(features, proposals, image_shapes, targets)
        # Training with a loss of our own, weighted boxes, a sampler that runs the head or samples
        # re-weighted by importance: torchvision's box branch, our losses.
        proposals, matched_idxs, labels, regression_targets, label_weights = self.sample_rois(
            proposals, targets, features, image_shapes)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        weights = torch.cat([box_weights_of(t, m, l > 0, class_logits.dtype)
                             for t, m, l in zip(targets, matched_idxs, labels)])
        cls_weights = weights if label_weights is None else weights * torch.cat(label_weights).to(weights.dtype)
        loss_fn = self.slot_loss("cls_loss")
        labels_cat = torch.cat(labels)
        extra = {}
        if self.sample_weighting is not None:
            pos = torch.where(labels_cat > 0)[0]
            offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets][:-1], device=pos.device).cumsum(0)
            gt_ids = torch.cat([m + o for m, o in zip(matched_idxs, offsets)])[pos]
            num_classes = class_logits.shape[-1]
            deltas = box_regression.reshape(len(labels_cat), num_classes, 4)[pos, labels_cat[pos]]
            all_proposals = torch.cat(proposals)[pos]
            samples = PositiveSamples(
                logits=class_logits[pos], labels=labels_cat[pos], sigmoid=False, gt_ids=gt_ids,
                pred_boxes=self.box_coder.decode_single(deltas.detach(), all_proposals),
                target_boxes=self.box_coder.decode_single(torch.cat(regression_targets)[pos], all_proposals),
                cls_weights=cls_weights[pos], box_weights=weights[pos],
                cls_loss=lambda w: loss_fn(class_logits[pos].detach(), labels_cat[pos], w),
                box_loss=lambda w: self.box_loss_of(box_regression, proposals, matched_idxs, labels,
                                                    regression_targets, targets, weights.index_put((pos,), w)))
            cls_weights, extra = weigh_positives(self.sample_weighting, samples, cls_weights, pos)
        loss_box_reg = self.box_loss_of(box_regression, proposals, matched_idxs, labels, regression_targets,
                                        targets, weights)
        loss_classifier = loss_fn(class_logits, labels_cat, cls_weights)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, **extra}

    def box_loss_of(self, box_regression, proposals, matched_idxs, labels, regression_targets, targets,
                    weights) -> Tensor:
        """The box loss over the positive RoIs (fastrcnn_loss's smooth L1 by default), each
        weighted by its box, on the class-specific deltas of the RoI's label or on the boxes they
        decode to, normalised by the number of sampled RoIs as fastrcnn_loss does."""
        box_fn = self.slot_loss("box_loss")
        sampled = sum(len(x) for x in labels)
        labels_cat = torch.cat(labels)
        pos = torch.where(labels_cat > 0)[0]
        box_regression = box_regression.reshape(sampled, box_regression.size(-1) // 4, 4)
        pred = box_regression[pos, labels_cat[pos]]
        if box_fn.space == "boxes":
            pred = self.box_coder.decode_single(pred, torch.cat(proposals)[pos])
            target = torch.cat([t["boxes"][m] if len(t["boxes"]) else t["boxes"].new_zeros((len(m), 4))
                                for t, m in zip(targets, matched_idxs)])[pos].to(pred.dtype)
        else:
            target = torch.cat(regression_targets)[pos]
        normalizer = pred.new_full((len(pos),), sampled)
        return box_fn(pred, target, weights[pos], normalizer, torch.zeros_like(pos))
