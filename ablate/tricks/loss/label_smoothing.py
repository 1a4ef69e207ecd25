"""Label smoothing of the classification targets (Szegedy et al. 2016, "Rethinking the Inception
Architecture", sec. 7; for detection heads: Zhang et al. 2019, "Bag of Freebies for Training Object
Detection Neural Networks", sec. 3.3).

Two-stage (softmax over C = K + 1 classes, background included): torch's cross-entropy label
smoothing, q = (1 - eps) * one_hot(y) + eps / C.

One-stage (K independent sigmoids, no background channel): each binary target of a foreground
location is smoothed as a two-way softmax, y' = y * (1 - eps) + eps / 2 (so 1 - eps/2 for its class,
eps/2 for the others; ultralytics YOLOv3/v5 `smooth_BCE`); background locations keep all-zero
targets, as YOLO's objectness stays hard. The loss is the baseline's focal loss in its soft-target
form, alpha_t |y' - p|^gamma BCE(p, y') (ablate.models.losses.soft_focal_loss, the Quality Focal
Loss form of Li et al. 2020), which equals the focal loss on hard targets and is lowest at p = y':
the hard label's focal factor (1 - p_t)^gamma would move the minimum to 0.995 for y' = 0.95, a far
weaker regulariser than label smoothing. YOLOv3 (its classification loss sigmoid BCE, no focal
term): BCE on the same smoothed targets of its positives, GluonCV's label_smooth.

SSD (softmax over C = K + 1, background included, over the positives and mined negatives): the
same q as two-stage, in SSD's own loss (ablate.models.ssd.SoftmaxCrossEntropyLoss: divided by the
positives, as its baseline); the negatives are still mined by their plain cross-entropy.
"""
from __future__ import annotations

from torch import nn

from ...models.losses import (CrossEntropyLoss, FocalLoss, SigmoidBCELoss, current_slot, detector_name,
                             set_cls_loss, set_slot)
from ...models.ssd import SoftmaxCrossEntropyLoss
from ..base import Trick, check_number


class LabelSmoothing(Trick):
    claims = ("cls_loss",)

    def __init__(self, epsilon: float):
        self.epsilon = check_number("epsilon", epsilon, 0, 1, high_open=True)

    def on_model(self, model: nn.Module) -> nn.Module:
        if detector_name(model) == "ssd":
            set_slot(model, "cls_loss", SoftmaxCrossEntropyLoss(label_smoothing=self.epsilon))
            return model
        # a sigmoid head keeps its loss's form: the focal loss (FCOS, RetinaNet) or BCE (YOLOv3)
        sigmoid_bce = isinstance(current_slot(model, "cls_loss"), SigmoidBCELoss)
        one_stage = SigmoidBCELoss if sigmoid_bce else FocalLoss
        set_cls_loss(model, one_stage=one_stage(label_smoothing=self.epsilon),
                     two_stage=CrossEntropyLoss(label_smoothing=self.epsilon))
        return model
