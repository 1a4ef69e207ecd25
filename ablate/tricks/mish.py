"""Mish activation (Misra 2019, "Mish: A Self Regularized Non-Monotonic Activation Function"):
mish(x) = x * tanh(softplus(x)) (torch.nn.Mish) in place of every activation of the chosen parts.

parts: backbone (the body: every ReLU, ReLU6, LeakyReLU, SiLU, Hardswish, GELU, ELU, CELU or SELU
module; gates such as the Hardsigmoid of MobileNetV3's squeeze-excitation stay), neck (the
pyramid: torchvision's FPN has no activation but RetinaNet/FCOS's P6->P7 ReLU) and head (the
detection heads: FCOS/RetinaNet's conv towers; Faster R-CNN's RPN conv and the RoI box head's two
fully connected layers). torchvision's P6P7 block and box head call F.relu, so they are swapped
for equivalent modules with a Mish (same parameters, same state-dict keys).
YOLOv4 (Bochkovskiy et al. 2020), the detector that made Mish known, uses it in the backbone only.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from .base import Trick, TrickArgumentError

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.ELU, nn.CELU, nn.SELU)
PARTS = ("backbone", "neck", "head")


class MishP6P7(ExtraFPNBlock):
    """torchvision's LastLevelP6P7 with Mish between P6 and P7."""

    def __init__(self, old: LastLevelP6P7):
        super().__init__()
        self.p6, self.p7, self.use_P5 = old.p6, old.p7, old.use_P5
        self.act = nn.Mish()

    def forward(self, p, c, names):
        x = p[-1] if self.use_P5 else c[-1]
        p6 = self.p6(x)
        p7 = self.p7(self.act(p6))
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


class MishTwoMLPHead(nn.Module):
    """torchvision's TwoMLPHead with Mish after each fully connected layer."""

    def __init__(self, old: TwoMLPHead):
        super().__init__()
        self.fc6, self.fc7 = old.fc6, old.fc7
        self.act = nn.Mish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.fc7(self.act(self.fc6(x.flatten(start_dim=1)))))


def swap_activations(module: nn.Module) -> int:
    """Replace every activation module under `module` with nn.Mish; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ACTIVATIONS):
                setattr(parent, name, nn.Mish())
                count += 1
    return count


class Mish(Trick):
    claims = ("activation",)

    def __init__(self, parts: list[str]):
        unknown = [p for p in parts if p not in PARTS]
        if unknown or not parts:
            raise TrickArgumentError({"parts": list(parts)}, f"choose among {list(PARTS)}")
        self.parts = list(parts)

    def on_model(self, model: nn.Module) -> nn.Module:
        if "backbone" in self.parts:
            swap_activations(model.backbone.body)
        if "neck" in self.parts:
            fpn = model.backbone.fpn
            swap_activations(fpn)
            if type(fpn.extra_blocks) is LastLevelP6P7:
                fpn.extra_blocks = MishP6P7(fpn.extra_blocks)
        if "head" in self.parts:
            if hasattr(model, "roi_heads"):  # two-stage: RPN head and RoI box head
                swap_activations(model.rpn.head)
                swap_activations(model.roi_heads)
                if type(model.roi_heads.box_head) is TwoMLPHead:
                    model.roi_heads.box_head = MishTwoMLPHead(model.roi_heads.box_head)
            else:
                swap_activations(model.head)
        return model
