"""Classification losses in place of each detector's own (the cls_loss slot, ablate/models/losses/),
to ablate the focal loss itself: plain sigmoid BCE on the one-stage heads, and the softmax focal
loss on Faster R-CNN's RoI classifier."""
from __future__ import annotations

from torch import nn

from ...models.losses import SigmoidBCELoss, SoftmaxFocalLoss, set_slot
from ..base import Trick, check_number


class BCE(Trick):
    """Sigmoid BCE in place of the one-stage focal loss."""
    claims = ("cls_loss",)
    fits = ("one_stage",)
    unfit_reasons = {"yolo": "YOLOv3 already trains its class and objectness scores with sigmoid BCE, so its "
                             "baseline is this variant (label_smoothing and the IoU losses act on it)"}

    def on_model(self, model: nn.Module) -> nn.Module:
        set_slot(model, "cls_loss", SigmoidBCELoss())
        return model


class SoftmaxFocal(Trick):
    """The softmax focal loss in place of the RoI classifier's cross-entropy."""
    claims = ("cls_loss",)
    fits = ("two_stage",)

    def __init__(self, gamma: float, alpha: float):
        self.gamma = check_number("gamma", gamma, 0)
        self.alpha = check_number("alpha", alpha, 0, 1)

    def on_model(self, model: nn.Module) -> nn.Module:
        set_slot(model, "cls_loss", SoftmaxFocalLoss(self.gamma, self.alpha))
        return model
