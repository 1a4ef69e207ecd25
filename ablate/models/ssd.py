"""SSD (Liu et al. 2016, "SSD: Single Shot MultiBox Detector") on the backbone's taps: torchvision's
SSD, SSDHead and DefaultBoxGenerator (torchvision/models/detection/ssd.py, anchor_utils.py), with
the loss slots of ablate/models/losses/.

- Feature maps: the backbone's taps at model.levels (build_backbone's body, no FPN: the paper's SSD
  predicts from the backbone's own maps), then SSD's extra layers, one per entry of
  model.extra_channels, each a 1x1 conv to half the channels and a 3x3 stride-2 conv (the paper's
  conv8_2-conv11_2, Fig. 2; torchvision's SSDFeatureExtractorVGG.extra), padding 1 so a map never
  vanishes at small inputs (the paper's last two use no padding at 300 px: 5 -> 3 -> 1).
- Default boxes: torchvision's DefaultBoxGenerator scales and aspect ratios, sized to
  data.image_size (SizedDefaultBoxes: the box sizes in pixels do not follow a batch's padded shape).
- Matching: torchvision's SSDMatcher (IoU >= iou_thresh, plus each ground truth's best prior).
- Losses (LossSSD.compute_loss, SSDLossHead.ssd_losses): smooth L1 (beta 1) on the encoded boxes
  of the positives, softmax cross-entropy over the positives and the hardest negatives (3 per
  positive per image, ranked by their plain cross-entropy), both divided by the batch's number of
  positives; with no slot set and no per-box weights it is torchvision's SSD.compute_loss itself.

Slots on model.head (SSDLossHead): cls_loss, loss(logits [R, C], labels [R] (0 the background),
box_weights [R], normalizer [R]) -> scalar over the positives and mined negatives R of the batch;
box_loss, the box interface of ablate/models/losses/ (space "deltas": torchvision's box coder, weights 10, 10,
5, 5; "boxes": decoded x1, y1, x2, y2; `levels`, each prior's feature map 0..5). Loss keys:
classification, bbox_regression.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD, SSDHead, _xavier_init

from ..errors import UserInputError
from .backbones import build_backbone
from .detectors import _no_resize
from .losses import LossSlots, box_weights_of, has_box_weights


class SoftmaxCrossEntropyLoss(nn.Module):
    """SSD's classification loss: softmax cross-entropy of each kept prior (positives and mined
    negatives), weighted by its box, divided by the normalizer (the batch's positives), with torch's
    label smoothing q = (1 - eps) one_hot + eps / C over the C classes (background included)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor, box_weights: Tensor, normalizer: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        return (ce * box_weights / normalizer).sum()


class SmoothL1DeltaLoss(nn.Module):
    """SSD's box loss as torchvision computes it: smooth L1 (beta 1) on the encoded deltas of each
    positive prior, summed over the 4 coordinates, weighted by its box, divided by the normalizer."""
    space = "deltas"

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = F.smooth_l1_loss(pred, target, beta=1.0, reduction="none").sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


def hard_negatives(ce: Tensor, labels: Tensor, neg_to_pos_ratio: float) -> Tensor:
    """[N, A] mask of the negatives kept per image: the neg_to_pos_ratio x (its positives) with the
    largest cross-entropy `ce` (torchvision's SSD.compute_loss: rank of each negative by a sort).
    Where an image has fewer negatives than that, all are kept; torchvision's mask then takes
    positives too (ranked last, at -inf) and counts their loss twice, which this one does not
    (a deviation only on images with under 4x their positives in priors)."""
    positive = labels > 0
    num_negative = neg_to_pos_ratio * positive.sum(1, keepdim=True)
    negative_ce = ce.masked_fill(positive, -float("inf"))
    rank = negative_ce.sort(1, descending=True)[1].sort(1)[1]
    return (rank < num_negative) & ~positive


class SSDLossHead(LossSlots, SSDHead):
    """torchvision's SSDHead with settable classification and box losses and per-box weights; its
    predictors are torchvision's (one 3x3 conv per map and branch) after head_convs - 1 3x3
    conv-ReLU layers."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss"}
    detector = "ssd"

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int, head_convs: int):
        super().__init__(in_channels, num_anchors, num_classes)
        if head_convs < 1:
            raise UserInputError(f"model.head_convs={head_convs}: SSD's prediction branch has at least its 3x3 "
                                 "predictor conv (1, the paper's)")
        for branch in (self.classification_head, self.regression_head):
            for i, (predictor, channels) in enumerate(zip(branch.module_list, in_channels)):
                convs = [nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
                         for _ in range(head_convs - 1)]
                _xavier_init(nn.ModuleList(convs))
                branch.module_list[i] = nn.Sequential(*convs, predictor)

    def default_loss(self, slot: str) -> nn.Module:
        return {"cls_loss": SoftmaxCrossEntropyLoss, "box_loss": SmoothL1DeltaLoss}[slot]()

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        # priors per feature map (cells x boxes per cell), so a box loss can tell each prior's map
        boxes_per_cell = [branch[-1].out_channels // 4 for branch in self.regression_head.module_list]
        self.level_sizes = [f.shape[-2] * f.shape[-1] * a for f, a in zip(x, boxes_per_cell)]
        return super().forward(x)

    def ssd_losses(self, targets, head_outputs, anchors, matched_idxs, box_coder, neg_to_pos_ratio: float
                   ) -> dict[str, Tensor]:
        """SSD's two losses through the slots, each positive's terms weighted by its box."""
        logits, regression = head_outputs["cls_logits"], head_outputs["bbox_regression"]  # [N, A, C], [N, A, 4]
        labels, weights, gt_boxes = [], [], []
        for t, matched in zip(targets, matched_idxs):
            positive = matched >= 0
            labels.append(torch.where(positive, t["labels"][matched.clamp(min=0)], 0) if len(t["boxes"])
                          else torch.zeros_like(matched))
            weights.append(box_weights_of(t, matched, positive, logits.dtype))
            gt_boxes.append(t["boxes"][matched.clamp(min=0)] if len(t["boxes"])
                            else t["boxes"].new_zeros((len(matched), 4)))
        labels, weights, gt_boxes = torch.stack(labels), torch.stack(weights), torch.stack(gt_boxes)
        positive = labels > 0
        with torch.no_grad():  # the negatives are ranked by their plain cross-entropy, as torchvision's
            ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
        kept = positive | hard_negatives(ce, labels, neg_to_pos_ratio)
        num_positive = max(1, int(positive.sum()))
        cls_fn = self.slot_loss("cls_loss")
        cls_norm = weights.new_full((int(kept.sum()),), num_positive)
        loss_cls = cls_fn(logits[kept], labels[kept], weights[kept], cls_norm)

        box_fn = self.slot_loss("box_loss")
        priors = torch.stack(anchors)[positive]
        if box_fn.space == "boxes":
            pred, target = box_coder.decode_single(regression[positive], priors), gt_boxes[positive]
        else:
            pred, target = regression[positive], box_coder.encode_single(gt_boxes[positive], priors)
        sizes = torch.tensor(self.level_sizes, device=labels.device)
        levels = torch.repeat_interleave(torch.arange(len(sizes), device=labels.device), sizes)
        levels = levels.expand_as(labels)[positive]
        loss_box = box_fn(pred, target, weights[positive], weights.new_full((len(pred),), num_positive), levels)
        return {"bbox_regression": loss_box, "classification": loss_cls}


class LossSSD(SSD):
    """torchvision's SSD whose losses are its head's (SSDLossHead): torchvision's own compute_loss
    while no slot is set and the batch has no per-box weights."""

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        if self.head.cls_loss is None and self.head.box_loss is None and not has_box_weights(targets):
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        return self.head.ssd_losses(targets, head_outputs, anchors, matched_idxs, self.box_coder,
                                    self.neg_to_pos_ratio)


class SizedDefaultBoxes(DefaultBoxGenerator):
    """torchvision's DefaultBoxGenerator with the box sizes relative to data.image_size, not to the
    batch's padded tensor: scale s on a batch of any shape is a box of s x image_size pixels (aspect
    ratio a: s sqrt(a) wide, s / sqrt(a) high), as the paper's 300x300 input has. The centres stay
    torchvision's ((i + 0.5) / f_k of the batch's side, f_k the map's size); on a square batch of
    image_size the boxes are torchvision's exactly."""

    def __init__(self, aspect_ratios: list[list[int]], image_size: int, min_ratio: float, max_ratio: float,
                 scales: list[float] | None = None):
        super().__init__(aspect_ratios, min_ratio=min_ratio, max_ratio=max_ratio, scales=scales, clip=True)
        self.image_size = image_size

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        height, width = image_list.tensors.shape[-2:]
        boxes = self._grid_default_boxes(grid_sizes, [height, width], dtype=feature_maps[0].dtype)
        boxes = boxes.to(feature_maps[0].device)
        centres = boxes[:, :2] * torch.tensor([width, height], dtype=boxes.dtype, device=boxes.device)
        half_sizes = 0.5 * boxes[:, 2:] * self.image_size
        in_image = torch.cat([centres - half_sizes, centres + half_sizes], dim=1)
        return [in_image for _ in image_list.image_sizes]


def extra_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """One of SSD's extra feature layers (conv8-conv11 of the paper): 1x1 conv to half the output
    channels, then a 3x3 stride-2 conv, each followed by ReLU."""
    mid = max(1, out_channels // 2)
    return nn.Sequential(nn.Conv2d(in_channels, mid, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, out_channels, 3, stride=2, padding=1), nn.ReLU(inplace=True))


class SSDFeatures(nn.Module):
    """The backbone body's taps (finest first) and the extra layers on the last of them."""

    def __init__(self, body: nn.Module, tap_channels: list[int], extra_channels: list[int]):
        super().__init__()
        self.body = body  # torchvision's IntermediateLayerGetter, as in the FPN detectors (tricks reach it there)
        self.extras = nn.ModuleList()
        channels = tap_channels[-1]
        for out in extra_channels:
            self.extras.append(extra_layer(channels, out))
            channels = out
        _xavier_init(self.extras)  # torchvision initialises its extra layers so
        self.out_channels = list(tap_channels) + list(extra_channels)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = list(self.body(x).values())
        for extra in self.extras:
            features.append(extra(features[-1]))
        return OrderedDict((str(i), f) for i, f in enumerate(features))


def build_ssd(cfg, num_classes: int, image_size: int) -> SSD:
    levels, extra_channels = list(cfg.levels), [int(c) for c in cfg.extra_channels]
    aspect_ratios = [list(r) for r in cfg.aspect_ratios]
    if len(aspect_ratios) != len(levels) + len(extra_channels):
        raise UserInputError(f"model.aspect_ratios has {len(aspect_ratios)} entries: SSD needs one list per feature "
                             f"map, {len(levels)} taps (model.levels) + {len(extra_channels)} extra layers "
                             "(model.extra_channels)")
    scales = list(cfg.scales) if cfg.scales is not None else None
    if scales is not None and len(scales) != len(aspect_ratios) + 1:
        raise UserInputError(f"model.scales has {len(scales)} entries: it needs one per feature map plus one "
                             f"({len(aspect_ratios) + 1}), or null for the paper's rule from min_ratio, max_ratio")
    # build_backbone's body is the IntermediateLayerGetter of the taps (levels checked, pretrained
    # stages frozen); its FPN, built with one channel, is not used: SSD has none.
    backbone = build_backbone(cfg.backbone, levels, 0, 1, two_stage=False)
    tap_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
    features = SSDFeatures(backbone.body, tap_channels, extra_channels)
    anchors = SizedDefaultBoxes(aspect_ratios, image_size, cfg.min_ratio, cfg.max_ratio, scales)
    head = SSDLossHead(features.out_channels, anchors.num_anchors_per_location(), num_classes, int(cfg.head_convs))
    model = LossSSD(features, anchors, (image_size, image_size), num_classes,
                    image_mean=list(cfg.image_mean), image_std=list(cfg.image_std), head=head,
                    score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                    detections_per_img=cfg.detections_per_img, iou_thresh=cfg.iou_thresh,
                    topk_candidates=cfg.topk_candidates, positive_fraction=1 / (1 + cfg.neg_to_pos_ratio))
    return _no_resize(model, cfg)


__all__ = ["SoftmaxCrossEntropyLoss", "SmoothL1DeltaLoss", "hard_negatives", "SSDLossHead", "LossSSD",
           "SizedDefaultBoxes", "SSDFeatures", "build_ssd"]
