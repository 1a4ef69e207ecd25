"""Loss plumbing: per-model places where a trick sets the classification loss, the box loss or
the RoI sampler, without touching torchvision's module-level functions.

torchvision's heads compute their losses with module-level functions (`sigmoid_focal_loss` in
fcos.py and retinanet.py, `fastrcnn_loss` in roi_heads.py). Patching those names would change
every model in the process, and several runs of a sweep share one process. So the builders in
detectors.py use the small subclasses below, whose attributes are None by default:

| model       | module                          | attributes a trick may set                          |
|-------------|---------------------------------|-----------------------------------------------------|
| fcos        | model.head: FCOSLossHead        | cls_loss (a one-stage classification loss)          |
| retinanet   | model.head: RetinaNetLossHead   | cls_loss, box_loss (on the encoded box deltas)      |
| faster_rcnn | model.roi_heads: LossRoIHeads   | cls_loss (a two-stage one); fg_bg_sampler may take  |
|             |                                 | the proposals' IoUs (a sampler with uses_iou=True)  |

With nothing set and no target["weights"] in the batch, each subclass calls torchvision's own
code: the baseline's losses are exactly torchvision's.

Per-box weights (target["weights"], put there by MixUp): each positive location / anchor / RoI's
classification loss is multiplied by the weight of the ground-truth box it is matched to;
background samples, and boxes of targets without "weights", weigh 1. Box-regression losses are
not weighted.

Loss interfaces:
- one-stage classification: loss(logits [P, K], targets [P, K] in {0, 1}, box_weights [P],
  normalizer [P]) -> scalar, over the valid locations/anchors of the whole batch. `normalizer`
  is torchvision's: the number of foreground samples (FCOS: of the batch; RetinaNet: of the
  sample's image, times the number of images, as RetinaNet averages per-image losses).
- one-stage box: loss(pred [P, 4], target [P, 4]) -> scalar, over the positive anchors of the
  batch, deltas encoded by the head's box coder.
- two-stage classification: loss(logits [R, C], labels [R], box_weights [R]) -> scalar, over the
  sampled RoIs of the batch (label 0 is the background).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import box_iou, sigmoid_focal_loss


def has_box_weights(targets) -> bool:
    return targets is not None and any("weights" in t for t in targets)


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


class FocalLoss(nn.Module):
    """The one-stage baseline's loss: torchvision's sigmoid_focal_loss with its defaults
    (alpha 0.25, gamma 2, as FCOS and RetinaNet call it), on optionally smoothed targets."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, targets: Tensor, box_weights: Tensor, normalizer: Tensor) -> Tensor:
        targets = smooth_binary_targets(targets, self.label_smoothing)
        per_sample = sigmoid_focal_loss(logits, targets, reduction="none").sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class CrossEntropyLoss(nn.Module):
    """The two-stage baseline's loss: softmax cross-entropy averaged over the sampled RoIs, with
    torch's label smoothing q = (1 - eps) one_hot + eps / C over the C classes (background too)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor, box_weights: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        return (ce * box_weights).mean()


def _one_stage_samples(targets, matched_idxs, num_classes: int, dtype, ignore: int | None):
    """Per image: one-hot class targets [A, K], matched box weights [A], foreground and valid masks [A]."""
    out = []
    for t, matched in zip(targets, matched_idxs):
        fg = matched >= 0
        valid = matched != ignore if ignore is not None else torch.ones_like(fg)
        cls_targets = torch.zeros((len(matched), num_classes), dtype=dtype, device=matched.device)
        weights = torch.ones(len(matched), dtype=dtype, device=matched.device)
        if fg.any():
            gt = matched[fg]
            cls_targets[fg, t["labels"][gt]] = 1.0
            if "weights" in t:
                weights[fg] = t["weights"][gt].to(dtype)
        out.append((cls_targets, weights, fg, valid))
    return out


class FCOSLossHead(FCOSHead):
    """torchvision's FCOS head with a settable classification loss (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cls_loss: nn.Module | None = None

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if self.cls_loss is None and not has_box_weights(targets):
            return losses
        logits = head_outputs["cls_logits"]  # [N, A, K]
        samples = _one_stage_samples(targets, matched_idxs, logits.shape[-1], logits.dtype, ignore=None)
        cls_targets = torch.cat([s[0] for s in samples])
        weights = torch.cat([s[1] for s in samples])
        num_foreground = sum(int(s[2].sum()) for s in samples)
        normalizer = weights.new_full(weights.shape, max(1, num_foreground))
        loss_fn = self.cls_loss if self.cls_loss is not None else FocalLoss()
        losses["classification"] = loss_fn(logits.flatten(0, 1), cls_targets, weights, normalizer)
        return losses


class RetinaNetLossHead(RetinaNetHead):
    """torchvision's RetinaNet head with a settable classification loss and box loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cls_loss: nn.Module | None = None
        self.box_loss: nn.Module | None = None

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        weighted = has_box_weights(targets)
        if self.cls_loss is None and self.box_loss is None and not weighted:
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if self.cls_loss is None and not weighted:
            cls = self.classification_head.compute_loss(targets, head_outputs, matched_idxs)
        else:
            cls = self._classification(targets, head_outputs["cls_logits"], matched_idxs)
        if self.box_loss is None:
            box = self.regression_head.compute_loss(targets, head_outputs, anchors, matched_idxs)
        else:
            box = self._regression(targets, head_outputs["bbox_regression"], anchors, matched_idxs)
        return {"classification": cls, "bbox_regression": box}

    def _classification(self, targets, cls_logits, matched_idxs) -> Tensor:
        ignore = self.classification_head.BETWEEN_THRESHOLDS
        samples = _one_stage_samples(targets, matched_idxs, cls_logits.shape[-1], cls_logits.dtype, ignore)
        logits, cls_targets, weights, normalizer = [], [], [], []
        for logits_i, (targets_i, weights_i, fg, valid) in zip(cls_logits, samples):
            logits.append(logits_i[valid])
            cls_targets.append(targets_i[valid])
            weights.append(weights_i[valid])
            # torchvision: per image, sum / max(1, foreground), then the mean over images
            normalizer.append(weights_i.new_full((int(valid.sum()),), max(1, int(fg.sum())) * len(targets)))
        loss_fn = self.cls_loss if self.cls_loss is not None else FocalLoss()
        return loss_fn(torch.cat(logits), torch.cat(cls_targets), torch.cat(weights), torch.cat(normalizer))

    def _regression(self, targets, bbox_regression, anchors, matched_idxs) -> Tensor:
        coder = self.regression_head.box_coder
        preds, deltas = [], []
        for t, pred_i, anchors_i, matched in zip(targets, bbox_regression, anchors, matched_idxs):
            fg = torch.where(matched >= 0)[0]
            preds.append(pred_i[fg])
            deltas.append(coder.encode_single(t["boxes"][matched[fg]], anchors_i[fg]))
        return self.box_loss(torch.cat(preds), torch.cat(deltas))


class LossRoIHeads(RoIHeads):
    """torchvision's RoI heads (boxes only) with a settable classification loss, and a sampler
    that may take each proposal's largest IoU with the ground truth."""

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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cls_loss: nn.Module | None = None

    def select_training_samples(self, proposals, targets):
        if not getattr(self.fg_bg_sampler, "uses_iou", False):
            return super().select_training_samples(proposals, targets)
        # torchvision's select_training_samples, with each proposal's max IoU given to the sampler
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        max_ious = [box_iou(g, p).max(dim=0).values if g.numel() else p.new_zeros(len(p))
                    for g, p in zip(gt_boxes, proposals)]
        pos_masks, neg_masks = self.fg_bg_sampler(labels, max_ious)
        matched_gt_boxes = []
        for i in range(len(proposals)):
            keep = torch.where(pos_masks[i] | neg_masks[i])[0]
            proposals[i], labels[i], matched_idxs[i] = proposals[i][keep], labels[i][keep], matched_idxs[i][keep]
            gt = gt_boxes[i] if gt_boxes[i].numel() else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(gt[matched_idxs[i]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training or (self.cls_loss is None and not has_box_weights(targets)):
            return super().forward(features, proposals, image_shapes, targets)
        # Training with a classification loss of our own: torchvision's box branch and box loss.
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        _, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        weights = []
        for t, matched, labels_i in zip(targets, matched_idxs, labels):
            w = torch.ones(len(labels_i), dtype=class_logits.dtype, device=class_logits.device)
            if "weights" in t and len(t["weights"]):
                fg = labels_i > 0
                w[fg] = t["weights"][matched[fg]].to(w.dtype)
            weights.append(w)
        loss_fn = self.cls_loss if self.cls_loss is not None else CrossEntropyLoss()
        loss_classifier = loss_fn(class_logits, torch.cat(labels), torch.cat(weights))
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


def one_stage_head(model: nn.Module) -> FCOSLossHead | RetinaNetLossHead:
    head = getattr(model, "head", None)
    if not isinstance(head, (FCOSLossHead, RetinaNetLossHead)):
        raise TypeError(f"{type(model).__name__} has no one-stage loss head (FCOSLossHead or RetinaNetLossHead); "
                        "build it with ablate.models.build_model")
    return head


def two_stage_roi_heads(model: nn.Module) -> LossRoIHeads:
    roi_heads = getattr(model, "roi_heads", None)
    if not isinstance(roi_heads, LossRoIHeads):
        raise TypeError(f"{type(model).__name__} has no LossRoIHeads; build it with ablate.models.build_model")
    return roi_heads


def set_cls_loss(model: nn.Module, one_stage: nn.Module | None, two_stage: nn.Module | None) -> None:
    """Set the classification loss of whichever kind of detector `model` is."""
    if isinstance(getattr(model, "roi_heads", None), LossRoIHeads):
        if two_stage is None:
            raise TypeError("this loss has no two-stage form")
        model.roi_heads.cls_loss = two_stage
    else:
        head = one_stage_head(model)
        if one_stage is None:
            raise TypeError("this loss has no one-stage form")
        head.cls_loss = one_stage
