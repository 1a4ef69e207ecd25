"""A block on the backbone's last pyramid level (C5, the deepest level the FPN takes): SPP, ASPP,
RFB or YOLOv4's SAM (ablate/models/blocks.py), between the backbone stage and the FPN's lateral
conv, channels unchanged. The detectors' extra levels (P6/P7 from P5, the max-pooled level) are
built from the FPN's outputs as before, so they see the block too."""
from __future__ import annotations

from typing import Any

from torch import nn

from ...models.blocks import ASPP, RFB, SAM, SPP
from ..base import Trick, TrickArgumentError, body_features, check_choice, check_number

BLOCKS = {"spp": ({"kernels"}, lambda c, kernels: SPP(c, kernels)),
          "aspp": ({"dilations"}, lambda c, dilations: ASPP(c, dilations)),
          "rfb": ({"scale", "visual"}, lambda c, scale, visual: RFB(c, scale, visual)),
          "sam": (set(), lambda c: SAM(c))}


class LastLevelBlock(Trick):
    """The block `kind` (a key of BLOCKS, with its arguments) after the backbone stage of the
    deepest pyramid level."""
    claims = ("last_level_block",)

    def __init__(self, kind: str, **args: Any):
        check_choice("kind", kind, tuple(BLOCKS))
        names, self.build = BLOCKS[kind]
        if set(args) != names:
            raise TrickArgumentError(args, f"{kind} takes {sorted(names) or 'no arguments'}")
        for key in ("kernels", "dilations"):
            if key in args:
                values = list(args[key])
                if not values or not all(isinstance(v, int) and v >= 1 for v in values):
                    raise TrickArgumentError({key: values}, "must be a list of integers >= 1")
                if key == "kernels" and any(v % 2 == 0 for v in values):
                    raise TrickArgumentError({key: values}, "must be odd (a stride-1 pool keeps the size)")
                if key == "dilations" and (len(values) < 2 or values[-1] != 1):
                    raise TrickArgumentError({key: values}, "needs two or more, the last 1 (the image-level branch)")
                args[key] = values
        if "scale" in args:
            check_number("scale", args["scale"], 0, low_open=True)
        if "visual" in args:
            check_number("visual", args["visual"], 1, integer=True)
        self.kind, self.args = kind, args

    def on_model(self, model: nn.Module) -> nn.Module:
        body = model.backbone.body  # torchvision's IntermediateLayerGetter: the stages up to the last level
        last = list(body.return_layers)[-1]
        channels = list(body_features(model).values())[-1].shape[1]  # whatever neck follows
        setattr(body, last, nn.Sequential(getattr(body, last), self.build(channels, **self.args)))
        return model
