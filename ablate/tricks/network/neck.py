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

M2Det's SFAM (sfam) is the exception: it concatenates, at each scale, the maps of MLFPN's TUMs and
re-weights their channels; on torchvision's FPN, one map per scale, it would be a mere SE block. So
sfam replaces the FPN by M2Det's MLFPN with SFAM (MLFPNNeck), on the body's finest and deepest
levels, with the scales the FPN gave the heads (its extra levels included) under the same keys."""
from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ...models.necks import ASFF, MLFPN, NASFPN, BiFPN, BalancedFeaturePyramid, NeckFPN, PANPath
from ..base import Trick, TrickArgumentError, body_features, check_choice, check_number, feature_pyramid

# kind: (its arguments, whether the path runs after the extra block; None: it replaces the FPN)
KINDS = {"pan": ({"relu"}, False),
         "bifpn": ({"num_layers", "eps"}, True),
         "balanced_fpn": ({"refine_level"}, True),
         "asff": ({"compress_channels"}, False),
         "nas_fpn": ({"stack_times"}, True),
         "sfam": ({"num_tums", "smooth", "reduction"}, None)}
# The integer arguments and their lowest value.
INTEGER_ARGS = {"num_layers": 1, "refine_level": 0, "stack_times": 1, "num_tums": 1, "reduction": 1,
                "compress_channels": 1}
# The kinds built by a subclass of Neck (the others: Neck itself).
BUILDERS = {"nas_fpn": "NASFPNNeck", "sfam": "MLFPNNeck"}


def pyramid_levels(model: nn.Module) -> list[int]:
    """The pyramid levels L (stride 2^L) the detector's heads get, finest first: the backbone's, from
    a dummy forward of the body, then one more per extra level."""
    fpn, feats = model.backbone.fpn, body_features(model)
    levels = [(64 // f.shape[-1]).bit_length() - 1 for f in feats.values()]
    return levels + [levels[-1] + k for k in range(1, len(extra_names(fpn)) + 1)]


def extra_names(fpn: nn.Module) -> list[str]:
    """The keys of the levels the FPN's extra block adds (torchvision's names)."""
    names = {LastLevelP6P7: ["p6", "p7"], LastLevelMaxPool: ["pool"], type(None): []}.get(type(fpn.extra_blocks))
    if names is None:
        raise ValueError(f"model.backbone.fpn.extra_blocks is a {type(fpn.extra_blocks).__name__}: the neck "
                         "tricks know torchvision's LastLevelP6P7 and LastLevelMaxPool")
    return names


class Neck(Trick):
    """The neck `kind` (a key of KINDS, with its arguments) on the detector's FPN."""
    claims = ("neck",)

    def __init__(self, kind: str, **args: Any):
        check_choice("kind", kind, tuple(KINDS))
        builder = BUILDERS.get(kind, "Neck")
        if type(self).__name__ != builder:
            raise TrickArgumentError({"kind": kind}, f"{kind} is built by ablate.tricks.network.neck.{builder}")
        names, self.after_extra = KINDS[kind]
        if set(args) != names:
            raise TrickArgumentError(args, f"{kind} takes {sorted(names)}")
        for key in ("relu", "smooth"):
            if key in args and not isinstance(args[key], bool):
                raise TrickArgumentError({key: args[key]}, "must be true or false")
        for key, low in INTEGER_ARGS.items():
            if key in args:
                args[key] = check_number(key, args[key], low, integer=True)
        if "eps" in args:
            args["eps"] = check_number("eps", args["eps"], 0, low_open=True)
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
        if self.kind == "pan" and getattr(model, "heads_use_finest_level_only", False):
            from ..base import TrickConflictError

            raise TrickConflictError(f"trick '{self.name}' does not fit {type(model).__name__}: its heads use only the "
                                     "finest pyramid level, which PAN's bottom-up path leaves as the FPN gave it")
        model.backbone.fpn = NeckFPN(feature_pyramid(model, self.name), self.path(model), self.after_extra)
        return model


class NASFPNNeck(Neck):
    """The NAS-FPN neck: the published cell is defined on P3-P7, the one-stage detectors' pyramid."""
    fits = ("one_stage",)


class MLFPNNeck(Neck):
    """M2Det's MLFPN with SFAM in place of the FPN: its base feature from the body's finest and deepest
    levels, TUMs of as many scales as the FPN gave the heads, each scale at the FPN's key and width."""

    def on_model(self, model: nn.Module) -> nn.Module:
        fpn, feats = feature_pyramid(model, self.name), list(body_features(model).items())
        channels = model.backbone.out_channels
        if channels % 2 or (self.args["num_tums"] * channels) // self.args["reduction"] < 1:
            raise ValueError(f"tricks.{self.name}: the FPN's {channels} channels give no M2Det planes / 2 or no "
                             f"SFAM width (num_tums x channels / reduction)")
        names = [name for name, _ in feats] + extra_names(fpn)
        model.backbone.fpn = MLFPN(feats[0][1].shape[1], feats[-1][1].shape[1], channels, channels, names,
                                   self.args["num_tums"], self.args["smooth"], self.args["reduction"])
        return model
