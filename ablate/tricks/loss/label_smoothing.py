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

epsilon per detector (conf/tricks/label_smoothing.yaml): a number, or "gluoncv" on YOLOv3 for
GluonCV's YOLOV3TargetMerger rule w = min(1/K, 1/40), positives' class 1 - w and other classes w,
which is the one-stage y' with epsilon = 2w.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from ...models.losses import (CrossEntropyLoss, FocalLoss, SigmoidBCELoss, current_slot, detector_name,
                             set_cls_loss, set_slot)
from ...models.ssd import SoftmaxCrossEntropyLoss
from ..base import Trick, TrickArgumentError, TrickConfigError, check_number

# The detectors a rule (a string value of epsilon) is defined for.
RULES = {"gluoncv": ("yolov3",)}


def gluoncv_yolov3_epsilon(num_classes: int) -> float:
    """GluonCV's YOLOV3TargetMerger (label_smooth): smooth_weight w = min(1/K, 1/40); a positive's
    class target 1 becomes 1 - w, its other classes' 0 become w. As y' = y (1 - eps) + eps / 2
    (smooth_binary_targets), that is eps = 2w: 0.05 for K <= 40 (VOC's 20: 0.975 / 0.025), 2 / K
    above (COCO's 80: 0.025, targets 0.9875 / 0.0125)."""
    return 2.0 * min(1.0 / num_classes, 1.0 / 40)


class LabelSmoothing(Trick):
    claims = ("cls_loss",)

    def __init__(self, epsilon: Any):
        # one number for every detector, or a mapping detector (model.name) -> number or rule
        per_model = dict(epsilon) if isinstance(epsilon, (dict, DictConfig)) else None
        if per_model is None:
            self.epsilon: float | dict[str, float | str] = check_number("epsilon", epsilon, 0, 1, high_open=True)
            return
        for model, value in per_model.items():
            if isinstance(value, str):
                if value not in RULES or model not in RULES[value]:
                    rules = "; ".join(f"{r!r} on {', '.join(m)}" for r, m in RULES.items())
                    raise TrickArgumentError({f"epsilon.{model}": value},
                                             f"must be a number in [0, 1) or a rule of that detector ({rules})")
            else:
                per_model[model] = check_number(f"epsilon.{model}", value, 0, 1, high_open=True)
        self.epsilon = per_model

    def epsilon_for(self, model: nn.Module) -> float:
        """The epsilon this detector gets: the single number, or its entry (a rule resolved here)."""
        if not isinstance(self.epsilon, dict):
            return self.epsilon
        name = detector_name(model)
        if name not in self.epsilon:
            raise TrickConfigError(f"tricks.label_smoothing.epsilon={self.epsilon!r} has no entry for model={name}: "
                                   f"add tricks.label_smoothing.epsilon.{name} (conf/tricks/label_smoothing.yaml)")
        value = self.epsilon[name]
        if value == "gluoncv":
            return gluoncv_yolov3_epsilon(model.head.num_classes)
        return value

    def on_model(self, model: nn.Module) -> nn.Module:
        # a detector without a classification-loss slot (CenterNet, CornerNet) does not fit: say that,
        # not that the epsilon table lacks it
        current_slot(model, "cls_loss")
        epsilon = self.epsilon_for(model)
        if detector_name(model) == "ssd":
            set_slot(model, "cls_loss", SoftmaxCrossEntropyLoss(label_smoothing=epsilon))
            return model
        # a sigmoid head keeps its loss's form: the focal loss (FCOS, RetinaNet) or BCE (YOLOv3)
        sigmoid_bce = isinstance(current_slot(model, "cls_loss"), SigmoidBCELoss)
        one_stage = SigmoidBCELoss if sigmoid_bce else FocalLoss
        set_cls_loss(model, one_stage=one_stage(label_smoothing=epsilon),
                     two_stage=CrossEntropyLoss(label_smoothing=epsilon))
        return model
