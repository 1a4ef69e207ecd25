"""Activation functions swapped into the detector (one class, one YAML per activation in
conf/tricks/): every activation module of the chosen parts replaced by the trick's.

parts: backbone (the body: every ReLU, ReLU6, LeakyReLU, PReLU, SiLU, Hardswish, GELU, ELU, CELU,
SELU or Mish module; gates such as the Hardsigmoid of MobileNetV3's squeeze-excitation stay), neck
(the pyramid: torchvision's FPN has no activation but RetinaNet/FCOS's P6->P7 ReLU) and head (the
detection heads: FCOS/RetinaNet's conv towers; Faster R-CNN's RPN conv and the RoI box head's two
fully connected layers). torchvision's P6P7 block and box head call F.relu, so they are swapped for
equivalent modules with the new activation (same parameters, same state-dict keys, plus the
activation's own parameters where it has some: PReLU's slope).

Each place gets its own module (a PReLU slope per layer, as He et al.'s layer-wise "channel-shared"
variant).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from ..base import Trick, TrickArgumentError, check_choice, check_number

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.ELU, nn.CELU,
               nn.SELU, nn.Mish)
PARTS = ("backbone", "neck", "head")

# Each activation: its arguments (checked: name -> (low, high)) and the module built from them.
KINDS: dict[str, tuple[dict[str, tuple[float | None, float | None]], Callable[..., nn.Module]]] = {
    "mish": ({}, nn.Mish),
    "leaky_relu": ({"negative_slope": (0.0, 1.0)}, lambda negative_slope: nn.LeakyReLU(negative_slope)),
    "prelu": ({"init": (0.0, 1.0)}, lambda init: nn.PReLU(num_parameters=1, init=init)),
    "relu6": ({}, nn.ReLU6),
    "selu": ({}, nn.SELU),
    "swish": ({}, nn.SiLU),
    "hard_swish": ({}, nn.Hardswish),
}


class ActP6P7(ExtraFPNBlock):
    """torchvision's LastLevelP6P7 with the given activation between P6 and P7 (F.relu there)."""

    def __init__(self, old: LastLevelP6P7, act: nn.Module):
        super().__init__()
        self.p6, self.p7, self.use_P5 = old.p6, old.p7, old.use_P5
        self.act = act

    def forward(self, p, c, names):
        x = p[-1] if self.use_P5 else c[-1]
        p6 = self.p6(x)
        p7 = self.p7(self.act(p6))
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


class ActTwoMLPHead(nn.Module):
    """torchvision's TwoMLPHead with the given activations after its fully connected layers (F.relu there)."""

    def __init__(self, old: TwoMLPHead, act6: nn.Module, act7: nn.Module):
        super().__init__()
        self.fc6, self.fc7 = old.fc6, old.fc7
        self.act6, self.act7 = act6, act7

    def forward(self, x: Tensor) -> Tensor:
        return self.act7(self.fc7(self.act6(self.fc6(x.flatten(start_dim=1)))))


def swap_activations(module: nn.Module, make: Callable[[], nn.Module]) -> int:
    """Replace every activation module under `module` with a new `make()`; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ACTIVATIONS):
                setattr(parent, name, make())
                count += 1
    return count


class Activation(Trick):
    """The activation `kind` (a key of KINDS, with its arguments) in the chosen parts."""
    claims = ("activation",)

    def __init__(self, kind: str, parts: list[str], **args: Any):
        check_choice("kind", kind, tuple(KINDS))
        unknown = [p for p in parts if p not in PARTS]
        if unknown or not parts:
            raise TrickArgumentError({"parts": list(parts)}, f"choose among {list(PARTS)}")
        bounds, build = KINDS[kind]
        if set(args) != set(bounds):
            raise TrickArgumentError(args, f"{kind} takes {sorted(bounds) or 'no arguments'}")
        self.args = {k: check_number(k, v, *bounds[k]) for k, v in args.items()}
        self.kind, self.parts, self.build = kind, list(parts), build

    def make(self) -> nn.Module:
        return self.build(**self.args)

    def on_model(self, model: nn.Module) -> nn.Module:
        if "backbone" in self.parts:
            swap_activations(model.backbone.body, self.make)
        if "neck" in self.parts and not hasattr(model.backbone, "fpn"):
            swap_activations(model.backbone.extras, self.make)  # SSD: its extra layers are its neck
        elif "neck" in self.parts:
            fpn = model.backbone.fpn
            swap_activations(fpn, self.make)
            if type(fpn.extra_blocks) is LastLevelP6P7:
                fpn.extra_blocks = ActP6P7(fpn.extra_blocks, self.make())
        if "head" in self.parts:
            if hasattr(model, "roi_heads"):  # two-stage: RPN head and RoI box head
                swap_activations(model.rpn.head, self.make)
                swap_activations(model.roi_heads, self.make)
                if type(model.roi_heads.box_head) is TwoMLPHead:
                    model.roi_heads.box_head = ActTwoMLPHead(model.roi_heads.box_head, self.make(), self.make())
            else:
                swap_activations(model.head, self.make)
        return model
