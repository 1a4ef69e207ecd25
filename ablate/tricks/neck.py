"""Path-aggregation necks on the detector's FPN (ablate/models/necks.py): PANet's bottom-up path
(pan), EfficientDet's BiFPN (bifpn), Libra R-CNN's balanced feature pyramid (balanced_fpn), ASFF
(asff) and NAS-FPN's published cell (nas_fpn, one-stage detectors only: the cell is defined on
P3-P7, Faster R-CNN's pyramid is P2-P6). Each replaces model.backbone.fpn by a NeckFPN: torchvision's
FPN, its modules kept, with the path run on its levels, so the heads get the same keys, count,
channels and strides.

Extra levels: pan and asff run on the levels taken from the backbone, and the detector's extra block
then builds P6/P7 (one-stage: conv on P5, torchvision's use_P5 since the FPN's in and out channels
are equal) or the max-pooled level (Faster R-CNN) from the path's P5, as mmdetection's PAFPN does
(max-pool of its output, or add_extra_convs='on_output'). bifpn, balanced_fpn and nas_fpn run on every
level the heads use, the extra ones included: EfficientDet's BiFPN and NAS-FPN run over P3-P7, Libra
R-CNN's BFP over the FPN's five outputs (num_levels=5 after FPN num_outs=5 in its configs).

Not here: M2Det's SFAM (scale-wise feature aggregation). SFAM concatenates, at each scale, the
features of that scale from M2Det's eight TUMs (thin U-shaped modules of increasing depth, fed by its
FFMs) and re-weights the channels by squeeze-excitation; its input is MLFPN's multi-level,
multi-scale stack. torchvision's FPN gives one feature map per scale, so SFAM on it would be only
an SE block per level, not the published module, and building MLFPN (FFMv1, eight TUMs, FFMv2) means
replacing the FPN and its six-scale output, not a path on it."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..models.necks import ASFF, NASFPN, BiFPN, BalancedFeaturePyramid, NeckFPN, PANPath
from .base import Trick, TrickArgumentError, check_choice, check_number

# kind: (its arguments, whether the path runs after the extra block)
KINDS = {"pan": ({"relu"}, False),
         "bifpn": ({"num_layers", "eps"}, True),
         "balanced_fpn": ({"refine_level"}, True),
         "asff": ({"compress_channels"}, False),
         "nas_fpn": ({"stack_times"}, True)}


def pyramid_levels(model: nn.Module) -> list[int]:
    """The pyramid levels L (stride 2^L) the detector's heads get, finest first: the backbone's, from
    a dummy forward of the body, then one more per extra level."""
    body, fpn = model.backbone.body, model.backbone.fpn
    was_training = body.training
    body.eval()
    with torch.no_grad():
        feats = body(torch.zeros(1, 3, 64, 64))
    body.train(was_training)
    levels = [(64 // f.shape[-1]).bit_length() - 1 for f in feats.values()]
    extra = {LastLevelP6P7: 2, LastLevelMaxPool: 1, type(None): 0}.get(type(fpn.extra_blocks))
    if extra is None:
        raise ValueError(f"model.backbone.fpn.extra_blocks is a {type(fpn.extra_blocks).__name__}: the neck "
                         "tricks know torchvision's LastLevelP6P7 and LastLevelMaxPool")
    return levels + [levels[-1] + k for k in range(1, extra + 1)]


class Neck(Trick):
    """The neck `kind` (a key of KINDS, with its arguments) on the detector's FPN."""
    claims = ("neck",)

    def __init__(self, kind: str, **args: Any):
        check_choice("kind", kind, tuple(KINDS))
        if (kind == "nas_fpn") != isinstance(self, NASFPNNeck):
            raise TrickArgumentError({"kind": kind}, "nas_fpn is built by ablate.tricks.neck.NASFPNNeck (one-stage "
                                     "only), the other necks by ablate.tricks.neck.Neck")
        names, self.after_extra = KINDS[kind]
        if set(args) != names:
            raise TrickArgumentError(args, f"{kind} takes {sorted(names)}")
        if "relu" in args and not isinstance(args["relu"], bool):
            raise TrickArgumentError({"relu": args["relu"]}, "must be true or false")
        if "num_layers" in args:
            args["num_layers"] = check_number("num_layers", args["num_layers"], 1, integer=True)
        if "eps" in args:
            args["eps"] = check_number("eps", args["eps"], 0, low_open=True)
        if "refine_level" in args:
            args["refine_level"] = check_number("refine_level", args["refine_level"], 0, integer=True)
        if "stack_times" in args:
            args["stack_times"] = check_number("stack_times", args["stack_times"], 1, integer=True)
        if "compress_channels" in args:
            args["compress_channels"] = check_number("compress_channels", args["compress_channels"], 1, integer=True)
        self.kind, self.args = kind, args

    def path(self, model: nn.Module) -> nn.Module:
        channels = model.backbone.out_channels
        levels = pyramid_levels(model)
        n = len(levels) if self.after_extra else len(model.backbone.fpn.inner_blocks)
        if self.kind == "pan":
            return PANPath(channels, n, self.args["relu"])
        if self.kind == "bifpn":
            return BiFPN(channels, n, self.args["num_layers"], self.args["eps"])
        if self.kind == "asff":
            return ASFF(channels, n, self.args["compress_channels"])
        if self.kind == "nas_fpn":
            if levels != [3, 4, 5, 6, 7]:
                raise ValueError(f"tricks.{self.name}: the NAS-FPN cell is published for P3-P7, this detector's "
                                 f"pyramid has levels {levels}")
            return NASFPN(channels, self.args["stack_times"])
        refine = self.args["refine_level"]
        if refine not in levels:
            raise ValueError(f"tricks.{self.name}.refine_level={refine}: this detector's pyramid has levels "
                             f"{levels} (stride 2^L)")
        return BalancedFeaturePyramid(channels, levels.index(refine))

    def on_model(self, model: nn.Module) -> nn.Module:
        model.backbone.fpn = NeckFPN(model.backbone.fpn, self.path(model), self.after_extra)
        return model


class NASFPNNeck(Neck):
    """The NAS-FPN neck: the published cell is defined on P3-P7, the one-stage detectors' pyramid."""
    fits = ("one_stage",)
