"""Box-regression losses in place of each detector's own (the box_loss slot, ablate/models/losses/):
the IoU-type losses on decoded boxes (IoU, GIoU, DIoU, CIoU) and Libra R-CNN's balanced L1 on the
encoded deltas. The formulas are mmdetection v3's (compared line by line: iou_loss.py,
balanced_l1_loss.py, bbox_overlaps.py); each YAML says where its loss weights come from.

A loss weight is tied to the detector's normalisation, so each trick gives one per detector:
Faster R-CNN divides its box loss by all sampled RoIs (512 per image), not by the positives, which
is why mmdetection's configs weight an IoU-type loss there by 10-12.
"""
from __future__ import annotations

from torch import nn

from ...models.losses import (BalancedL1Loss, GIoUBoxLoss, IoUTypeLoss, ScaledLoss, check_box_space, current_slot,
                             detector_name, set_slot)
from ..base import Trick, TrickArgumentError, check_choice, check_number


def per_detector(arg: str, values: dict, detector: str, trick: str) -> float:
    """values[detector], or an error naming the key to add."""
    if detector not in values:
        raise ValueError(f"tricks.{trick}.{arg} has no value for {detector} (it has {', '.join(values)}); "
                         f"add tricks.{trick}.{arg}.{detector}=... with the reference's value")
    return float(values[detector])


def check_per_detector(arg: str, values, low_open: bool = True) -> dict:
    if not isinstance(values, dict) or not values:
        raise TrickArgumentError({arg: values}, "must map detectors to numbers, e.g. {fcos: 1.0, faster_rcnn: 10.0}")
    return {str(k): check_number(f"{arg}.{k}", v, 0, low_open=low_open) for k, v in values.items()}


class IoUBoxLoss(Trick):
    """An IoU-type loss (iou, giou, diou, ciou) on the decoded boxes, times the detector's loss weight."""
    claims = ("box_loss",)

    def __init__(self, kind: str, eps: float, loss_weight: dict):
        self.kind = check_choice("kind", kind, ("iou", "giou", "diou", "ciou"))
        self.eps = check_number("eps", eps, 0, low_open=True)
        self.loss_weight = check_per_detector("loss_weight", loss_weight)

    def on_model(self, model: nn.Module) -> nn.Module:
        from ..base import TrickConflictError

        detector = detector_name(model)
        check_box_space(model, IoUTypeLoss.space)  # a detector whose box loss takes no boxes: before its weight
        if self.kind == "giou" and isinstance(current_slot(model, "box_loss"), GIoUBoxLoss):
            raise TrickConflictError(f"trick '{self.name}' is {detector}'s own box loss (the baseline already trains "
                                     "with the GIoU loss): not applicable, it would be the baseline again")
        weight = per_detector("loss_weight", self.loss_weight, detector, self.name)
        set_slot(model, "box_loss", ScaledLoss(IoUTypeLoss(self.kind, self.eps), weight))
        return model


class BalancedL1(Trick):
    """Libra R-CNN's balanced L1 on the encoded deltas, with the detector's β and loss weight."""
    claims = ("box_loss",)
    fits = ("retinanet", "two_stage")

    def __init__(self, alpha: float, gamma: float, beta: dict, loss_weight: dict):
        self.alpha = check_number("alpha", alpha, 0, low_open=True)
        self.gamma = check_number("gamma", gamma, 0, low_open=True)
        self.beta = check_per_detector("beta", beta)
        self.loss_weight = check_per_detector("loss_weight", loss_weight)

    def on_model(self, model: nn.Module) -> nn.Module:
        detector = detector_name(model)
        beta = per_detector("beta", self.beta, detector, self.name)
        weight = per_detector("loss_weight", self.loss_weight, detector, self.name)
        set_slot(model, "box_loss", ScaledLoss(BalancedL1Loss(self.alpha, self.gamma, beta), weight))
        return model
