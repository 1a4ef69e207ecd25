"""The one-stage loss heads: torchvision's FCOS and RetinaNet heads with the cls_loss and box_loss
slots (RetinaNet: sample_weighting too) and per-box weights on every term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead

from .slots import LossSlots, PositiveSamples, box_weights_of, has_box_weights, weigh_positives
from .terms import FocalLoss, GIoUBoxLoss, L1BoxLoss


def _one_stage_samples(targets, matched_idxs, num_classes: int, dtype, ignore: int | None):
    """Per image: one-hot class targets [A, K], matched box weights [A], foreground and valid masks [A]."""
    out = []
    for t, matched in zip(targets, matched_idxs):
        fg = matched >= 0
        valid = matched != ignore if ignore is not None else torch.ones_like(fg)
        cls_targets = torch.zeros((len(matched), num_classes), dtype=dtype, device=matched.device)
        if fg.any():
            cls_targets[fg, t["labels"][matched[fg]]] = 1.0
        out.append((cls_targets, box_weights_of(t, matched, fg, dtype), fg, valid))
    return out


class _LevelSizes:
    """Remembers, from the head's forward, how many samples each pyramid level contributes, so
    the losses can tell each sample's level (torchvision concatenates the levels)."""

    level_sizes: list[int] = []

    def remember_levels(self, x: list[Tensor], per_location: int) -> None:
        self.level_sizes = [int(f.shape[-2] * f.shape[-1]) * per_location for f in x]

    def sample_levels(self, device) -> Tensor:
        sizes = torch.tensor(self.level_sizes, device=device)
        return torch.repeat_interleave(torch.arange(len(self.level_sizes), device=device), sizes)


class FCOSLossHead(LossSlots, _LevelSizes, FCOSHead):
    """torchvision's FCOS head with settable classification and box losses and per-box weights on
    all three losses (see the module docstring)."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss"}
    detector = "fcos"
    loss_per_level = False  # mmdetection FCOSHead.loss_by_feat: the levels flattened and concatenated, one call

    def default_loss(self, slot: str) -> nn.Module:
        return {"cls_loss": FocalLoss, "box_loss": GIoUBoxLoss}[slot]()

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        self.remember_levels(x, self.classification_head.num_anchors)
        return super().forward(x)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        if self.cls_loss is None and self.box_loss is None and not has_box_weights(targets):
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        logits = head_outputs["cls_logits"]  # [N, A, K]
        samples = _one_stage_samples(targets, matched_idxs, logits.shape[-1], logits.dtype, ignore=None)
        cls_targets = torch.cat([s[0] for s in samples])
        weights = torch.cat([s[1] for s in samples])
        fg = torch.cat([s[2] for s in samples])
        num_foreground = max(1, int(fg.sum()))
        levels = self.sample_levels(logits.device).repeat(len(targets))
        normalizer = weights.new_full(weights.shape, num_foreground)
        cls_fn = self.slot_loss("cls_loss")
        loss_cls = cls_fn(logits.flatten(0, 1), cls_targets, weights, normalizer, levels)

        # the box loss (torchvision's GIoU by default) and torchvision's centerness loss, each
        # positive location weighted by its box
        gt_boxes = torch.cat([t["boxes"][m.clip(min=0)] if len(t["boxes"]) else t["boxes"].new_zeros((len(m), 4))
                              for t, m in zip(targets, matched_idxs)])
        flat_anchors = torch.cat(anchors)
        reg = head_outputs["bbox_regression"].flatten(0, 1)
        reg_targets = self.box_coder.encode(flat_anchors[fg], gt_boxes[fg])
        box_fn = self.slot_loss("box_loss")
        if box_fn.space == "boxes":
            pred, target = self.box_coder.decode(reg[fg], flat_anchors[fg]), gt_boxes[fg]
        else:
            pred, target = reg[fg], reg_targets
        loss_box = box_fn(pred, target, weights[fg], normalizer[fg], levels[fg])
        lr, tb = reg_targets[:, [0, 2]], reg_targets[:, [1, 3]]
        ctr_targets = torch.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))
        ctr = F.binary_cross_entropy_with_logits(head_outputs["bbox_ctrness"].flatten(0, 1)[fg, 0], ctr_targets,
                                                 reduction="none")
        return {"classification": loss_cls,
                "bbox_regression": loss_box,
                "bbox_ctrness": (ctr * weights[fg]).sum() / num_foreground}


class RetinaNetLossHead(LossSlots, _LevelSizes, RetinaNetHead):
    """torchvision's RetinaNet head with a settable classification loss and box loss, and per-box
    weights on both."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss", "sample_weighting": "sample_weighting"}
    detector = "retinanet"
    loss_per_level = True  # mmdetection AnchorHead.loss_by_feat: multi_apply(loss_by_feat_single) per level

    def default_loss(self, slot: str) -> nn.Module | None:
        if slot == "sample_weighting":
            return None
        return {"cls_loss": FocalLoss, "box_loss": L1BoxLoss}[slot]()

    def forward(self, x):
        self.remember_levels(x, self.classification_head.num_anchors)
        return super().forward(x)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        if (self.cls_loss is None and self.box_loss is None and self.sample_weighting is None
                and not has_box_weights(targets)):
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        ignore = self.classification_head.BETWEEN_THRESHOLDS
        cls_logits = head_outputs["cls_logits"]
        samples = _one_stage_samples(targets, matched_idxs, cls_logits.shape[-1], cls_logits.dtype, ignore)
        levels = self.sample_levels(cls_logits.device)
        coder = self.regression_head.box_coder
        box_fn = self.slot_loss("box_loss")
        cls_parts = {k: [] for k in ("logits", "targets", "weights", "normalizer", "levels")}
        box_parts = {k: [] for k in ("pred", "target", "weights", "normalizer", "levels")}
        pos_parts = {k: [] for k in ("in_cls", "labels", "gt_ids", "pred_boxes", "target_boxes")}
        gt_offset = 0
        for t, logits_i, reg_i, anchors_i, matched, (targets_i, weights_i, fg, valid) in zip(
                targets, cls_logits, head_outputs["bbox_regression"], anchors, matched_idxs, samples):
            # torchvision: per image, sum / max(1, foreground), then the mean over images
            norm = max(1, int(fg.sum())) * len(targets)
            cls_parts["logits"].append(logits_i[valid])
            cls_parts["targets"].append(targets_i[valid])
            cls_parts["weights"].append(weights_i[valid])
            cls_parts["normalizer"].append(weights_i.new_full((int(valid.sum()),), norm))
            cls_parts["levels"].append(levels[valid])
            if box_fn.space == "boxes":
                box_parts["pred"].append(coder.decode_single(reg_i[fg], anchors_i[fg]))
                box_parts["target"].append(t["boxes"][matched[fg]])
            else:
                box_parts["pred"].append(reg_i[fg])
                box_parts["target"].append(coder.encode_single(t["boxes"][matched[fg]], anchors_i[fg]))
            box_parts["weights"].append(weights_i[fg])
            box_parts["normalizer"].append(weights_i.new_full((int(fg.sum()),), norm))
            box_parts["levels"].append(levels[fg])
            if self.sample_weighting is not None:
                pos_parts["in_cls"].append(fg[valid])
                pos_parts["labels"].append(t["labels"][matched[fg]])
                pos_parts["gt_ids"].append(matched[fg] + gt_offset)
                pos_parts["pred_boxes"].append(coder.decode_single(reg_i[fg].detach(), anchors_i[fg]))
                pos_parts["target_boxes"].append(t["boxes"][matched[fg]])
                gt_offset += len(t["boxes"])
        cls_fn = self.slot_loss("cls_loss")
        if self.box_loss is None and self.regression_head._loss_type != "l1":
            raise ValueError(f"per-box weights need RetinaNet's l1 box loss; this head uses "
                             f"{self.regression_head._loss_type!r}")
        logits, cls_targets, cls_weights, cls_norm, cls_levels = (torch.cat(v) for v in cls_parts.values())
        pred, target, box_weights, box_norm, box_levels = (torch.cat(v) for v in box_parts.values())
        extra = {}
        if self.sample_weighting is not None:
            pos = torch.where(torch.cat(pos_parts["in_cls"]))[0]
            ones = cls_norm.new_ones(len(pos))
            samples = PositiveSamples(
                logits=logits[pos], labels=torch.cat(pos_parts["labels"]), sigmoid=True,
                gt_ids=torch.cat(pos_parts["gt_ids"]), pred_boxes=torch.cat(pos_parts["pred_boxes"]),
                target_boxes=torch.cat(pos_parts["target_boxes"]), cls_weights=cls_weights[pos],
                box_weights=box_weights,
                # mmdetection's ratio sums the per-sample losses: no normalizer
                cls_loss=lambda w: cls_fn(logits[pos].detach(), cls_targets[pos], w, ones, cls_levels[pos]),
                box_loss=lambda w: box_fn(pred, target, w, box_norm, box_levels))
            cls_weights, extra = weigh_positives(self.sample_weighting, samples, cls_weights, pos)
        return {"classification": cls_fn(logits, cls_targets, cls_weights, cls_norm, cls_levels),
                "bbox_regression": box_fn(pred, target, box_weights, box_norm, box_levels), **extra}


def one_stage_head(model: nn.Module) -> FCOSLossHead | RetinaNetLossHead:
    head = getattr(model, "head", None)
    if not isinstance(head, (FCOSLossHead, RetinaNetLossHead)):
        raise TypeError(f"{type(model).__name__} has no one-stage loss head (FCOSLossHead or RetinaNetLossHead); "
                        "build it with ablate.models.build_model")
    return head
