"""The trick contract: what a trick may change, and when the harness calls it.

A trick is built by Hydra from conf/tricks/<name>.yaml (its `_target_` and arguments). It
overrides only the hooks it needs; the others leave things as they are. It declares the slots
it claims (two tricks may not claim one slot) and the detector families it fits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn
from torchvision.ops import clip_boxes_to_image

from ..errors import UserInputError
from ..models import FAMILIES as _FAMILIES
from ..models.backbones import tap_features

# What a trick fits unless it says otherwise (`fits`): every detector family.
FAMILIES = tuple(_FAMILIES)

# The slots a trick may claim: what it changes, one owner per run. Declared here, in one place, so
# a typo ("box-loss") is an error rather than a new slot that conflicts with nothing. The loss
# slots are also places on the detector (ablate/models/losses/: its docstring says which detector
# has which). A trick that changes something no slot names adds its slot here, with one line.
SLOTS = {
    "lr_warmup": "the warm-up ramp multiplied into the LR schedule (on_lr_factor)",
    "lr_schedule": "the main LR schedule's shape (on_lr_factor)",
    "batch_mix": "images of a batch mixed with each other (on_batch: MixUp, CutMix)",
    "batch_mosaic": "several training images tiled into one (on_batch: Mosaic)",
    "batch_erase": "regions of each training image erased (on_batch: Cutout, random erasing)",
    "batch_color": "the training images' colours changed (on_batch: photometric distortion, grayscale)",
    "batch_scale": "the size training batches are seen at (on_batch: multi-scale training, scale jitter)",
    "batch_crop": "a part of each training image cropped out (on_batch: SSD's random crop)",
    "batch_geometry": "each training image warped, its boxes with it (on_batch: rotation)",
    "cls_loss": "the detector's classification loss (on_model, models/losses/)",
    "box_loss": "the detector's box-regression loss (on_model, models/losses/)",
    "roi_sampler": "the sampler of RoIs for the two-stage box head (on_model, models/losses/)",
    "sample_weighting": "the classification-loss weights of positive samples by importance, and loss terms "
                        "added for it (on_model, models/losses/: PISA's ISR-P and CARL)",
    "backbone_dropout": "structured dropout inserted in the backbone (on_model: DropBlock)",
    "activation": "the network's activation function (on_model: Mish)",
    "last_level_block": "a block added on the backbone's last pyramid level, C5 (on_model: SPP, ASPP, RFB, SAM)",
    "normalization": "the network's normalisation layers (on_model: frozen BN, GN, FRN)",
    "neck": "the feature pyramid itself, replaced or extended (on_model: PAN, BiFPN, balanced FPN, ASFF, NAS-FPN, SFAM)",
    "weight_average": "the weights evaluated: an average of the trained ones (on_step, eval_model: EMA)",
}
# What to select instead when a trick does not fit the detector.
FAMILY_EXAMPLES = {"one_stage": "model=fcos or model=retinanet or model=reppoints",
                   "two_stage": "model=faster_rcnn or model=rfcn", "yolo": "model=yolov3", "ssd": "model=ssd",
                   "centernet": "model=centernet", "cornernet": "model=cornernet"}

Images = list[torch.Tensor]
Targets = list[dict[str, torch.Tensor]]
LRFactor = Callable[[int], float]


@dataclass
class BatchContext:
    """What a batch hook may use: where training is, and a random generator seeded from the
    run's seed and the epoch, so a resumed run draws the same numbers."""
    epoch: int
    num_epochs: int
    step: int
    total_steps: int
    rng: np.random.Generator


class TrickConfigError(UserInputError):
    """A trick's config its class cannot be built from: an argument out of range, unknown or missing."""


class TrickConflictError(UserInputError):
    """Two tricks claim one slot, a trick claims a slot that does not exist, or a trick does not fit
    the detector."""


def round_half_up(x: float) -> int:
    """x rounded to the nearest integer, halves up (0.5 -> 1, 2.5 -> 3; Python's round goes to the
    even one), after rounding away float noise (0.7 * 45 = 31.499999999999996 counts as 31.5)."""
    return math.floor(round(x, 9) + 0.5)


class TrickArgumentError(ValueError):
    """A trick's argument that its class cannot take. The class names the argument(s) alone, as its
    __init__ knows them; build_tricks re-raises it as tricks.<name>.<arg>, the key a user types
    (one class may serve several trick files, e.g. GHM-C and GHM-R, or a family of activations)."""

    def __init__(self, args: dict[str, Any], requirement: str):
        self.values, self.requirement = dict(args), requirement  # not .args: BaseException's
        super().__init__(self.message())

    def message(self, prefix: str = "") -> str:
        named = " and ".join(f"{prefix}{k}={v!r}" for k, v in self.values.items())
        return f"{named}: {self.requirement.replace('{prefix}', prefix)}"


def check_number(arg: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> float | int:
    """`value` as a number (an int when `integer`) within [low, high] (an open end where said),
    else TrickArgumentError naming `arg`; None for low or high leaves that side unbounded."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and integer:
        ok = int(value) == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        if low is not None and high is not None:
            where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f" {'<' if high_open else '<='} {high:g}"
        else:
            where = ""
        raise TrickArgumentError({arg: value}, f"must be {kind}{where}")
    return int(value) if integer else float(value)


# The per-box entries of a target: what a data trick that drops boxes must drop together.
PER_BOX_KEYS = ("labels", "weights")


def with_boxes(target: dict, boxes: torch.Tensor, keep: torch.Tensor) -> dict:
    """A copy of the target with these boxes (already transformed, one per kept box) and the other
    per-box entries (labels, MixUp's weights) of the boxes `keep` selects."""
    out = dict(target)
    out["boxes"] = boxes
    for key in PER_BOX_KEYS:
        if key in target:
            out[key] = target[key][keep]
    return out


def clip_and_filter(target: dict, boxes: torch.Tensor, before: torch.Tensor, width: float, height: float,
                    min_size: float, min_area_ratio: float, max_aspect_ratio: float) -> dict:
    """The target with `boxes` (the transformed boxes, one per box of the target) clipped to the
    image and filtered as ultralytics/yolov5's box_candidates and mmdetection 2.x RandomAffine's
    filter_gt_bboxes (the same formula; each trick's YAML gives its thresholds): both sides above
    min_size, area above min_area_ratio of `before`'s (the boxes before the transform), aspect ratio
    below max_aspect_ratio."""
    clipped = clip_boxes_to_image(boxes, (height, width))
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area_before = (before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1])
    aspect = torch.maximum(bw / bh.clamp(min=1e-12), bh / bw.clamp(min=1e-12))
    keep = (bw > min_size) & (bh > min_size) & (bw * bh > min_area_ratio * area_before) & (aspect < max_aspect_ratio)
    return with_boxes(target, clipped[keep], keep)


def check_fraction(arg: str, value: Any) -> float:
    """`value` as a float when 0 <= value <= 1, else TrickArgumentError naming `arg`."""
    return check_number(arg, value, 0, 1)


def check_interval(low_arg: str, low: Any, high_arg: str, high: Any) -> tuple[float, float]:
    """(low, high) as positive numbers with low <= high, else TrickArgumentError naming both."""
    low, high = check_number(low_arg, low, 0, low_open=True), check_number(high_arg, high, 0, low_open=True)
    if high < low:
        raise TrickArgumentError({low_arg: low, high_arg: high}, f"need {low_arg} <= {high_arg}")
    return low, high


def check_choice(arg: str, value: Any, choices: tuple | list) -> Any:
    """`value` when it is one of `choices`, else TrickArgumentError listing them."""
    if value not in choices:
        raise TrickArgumentError({arg: value}, f"choose one of {', '.join(map(str, choices))}")
    return value


def cosine_annealing(total_steps: int, min_factor: float) -> LRFactor:
    """The LR factor of cosine annealing per iteration: min + (1 − min)·(1 + cos(π·step/total))/2,
    1 at step 0, `min_factor` from the last step on (Loshchilov and Hutter 2017, without restarts;
    mmcv's CosineAnnealing with min_lr_ratio, by iteration)."""
    return lambda step: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps)
                                                                          / total_steps))


def off_at_end(off_last_fraction: float, epoch: int, num_epochs: int) -> bool:
    """Whether a trick that is off for the final `off_last_fraction` of training is off in `epoch`
    (counted from 0): it is off for epoch >= num_epochs - round_half_up(off_last_fraction * num_epochs),
    so 0.1 of 9 epochs turns it off for the last 1 (epoch 8), of 200 for the last 20 (epochs 180-199),
    of 4 for none (0.4 rounds to 0); 0 keeps it on throughout and 1 turns it off throughout."""
    return epoch >= num_epochs - round_half_up(off_last_fraction * num_epochs)


def feature_pyramid(model: nn.Module, trick: str, part: str = "") -> nn.Module:
    """The detector's FPN (model.backbone.fpn); where it has none (SSD predicts from the backbone's
    taps and its extra layers), TrickConflictError: the trick is not applicable, and says why."""
    fpn = getattr(model.backbone, "fpn", None)
    if fpn is None:
        raise TrickConflictError(f"trick '{trick}'{f' ({part})' if part else ''} works on the feature pyramid "
                                 f"network (model.backbone.fpn), and this detector has none ({type(model).__name__} "
                                 "predicts from the backbone's taps and its extra layers): not applicable")
    return fpn


def norm_with_activation(module: nn.Module) -> bool:
    """Whether `module` is a BatchNorm that applies its own activation after normalising (timm's
    BatchNormAct2d, the norm layer of the timm backbones: a BatchNorm2d with `.act` and `.drop`)."""
    return isinstance(module, nn.BatchNorm2d) and isinstance(getattr(module, "act", None), nn.Module)


def with_its_activation(old: nn.Module, new: nn.Module) -> nn.Module:
    """`new`, to stand where the normalisation layer `old` stood. timm's BatchNormAct2d (the norm layer
    of the timm backbones, a BatchNorm2d subclass) applies its dropout and activation itself after
    normalising: a bare replacement would silently remove every activation of such a backbone, so
    they follow `new` here. Any other `old` is replaced by `new` alone."""
    if not norm_with_activation(old):
        return new
    return nn.Sequential(new, getattr(old, "drop", nn.Identity()), old.act)


def body_features(model: nn.Module, size: int = 64) -> dict[str, torch.Tensor]:
    """The detector backbone body's features (torchvision's IntermediateLayerGetter, finest first)
    on a dummy image, in eval mode and without gradients: their channels and strides
    (ablate/models/backbones.py's stride probe, `tap_features`)."""
    return tap_features(model.backbone.body, size)


def same_shape_groups(images: Images, which: list[bool] | None = None) -> list[list[int]]:
    """The indices of the images (those with which[i], all by default) grouped by shape, dtype and
    device, in image order: a batch-level op runs once per group on the stacked images."""
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        if which is None or which[i]:
            groups.setdefault((tuple(img.shape), img.dtype, img.device), []).append(i)
    return list(groups.values())


def plan_partners(n: int, ctx: BatchContext, prob: float, draw: Callable[[int, int], Any]) -> list[Any]:
    """For batch-mixing tricks (MixUp, CutMix): for each image i of a batch of n, with probability
    `prob`, `draw(i, j)` with its partner j (what the trick draws for the pair, or the mixed pair
    itself); None for an image left as it is. Partners come from a random permutation shifted by
    one, which has no fixed point, so no image is mixed with itself. The draws from ctx.rng are
    the permutation, then per image: the coin, then whatever `draw` takes."""
    if n < 2:
        return [None] * n
    order = ctx.rng.permutation(n)
    partner = {int(order[k]): int(order[(k + 1) % n]) for k in range(n)}
    return [draw(i, partner[i]) if ctx.rng.random() < prob else None for i in range(n)]


def mix_with_partners(images: Images, targets: Targets, ctx: BatchContext, prob: float,
                      mix: Callable[[int, int], tuple[torch.Tensor, dict]]) -> tuple[Images, Targets]:
    """Each image, with probability `prob`, replaced by `mix(i, j)` with its partner j (see
    :func:`plan_partners`)."""
    mixed = plan_partners(len(images), ctx, prob, mix)
    return ([m[0] if m is not None else img for m, img in zip(mixed, images)],
            [m[1] if m is not None else tgt for m, tgt in zip(mixed, targets)])


class Trick:
    #: Slots this trick changes: names from SLOTS, e.g. "lr_warmup", "batch_mix", "cls_loss".
    claims: ClassVar[tuple[str, ...]] = ()
    #: Detector families (cfg.model.family) or models (cfg.model.name) this trick applies to.
    fits: ClassVar[tuple[str, ...]] = FAMILIES
    #: Why it does not fit a family where the reason is more than the family's name (family -> reason),
    #: added to the not_applicable message.
    unfit_reasons: ClassVar[dict[str, str]] = {}
    #: The config name (conf/tricks/<name>.yaml), set when the trick is built.
    name: str = ""

    def on_model(self, model: nn.Module) -> nn.Module:
        """Called once on the built detector, before the optimizer sees its parameters."""
        return model

    def on_lr_factor(self, factor: LRFactor, total_steps: int) -> LRFactor:
        """Called once with the main schedule's LR factor per iteration; returns the new one."""
        return factor

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        """Called on each training batch (float images in [0, 1] on the device, targets beside)."""
        return images, targets

    def on_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step (`step` steps taken so far), e.g. to update an average."""

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model to evaluate (each val pass and the final one): the trained one, or another."""
        return model

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of this trick (saved in each checkpoint); nothing by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what state_dict gave, when a run resumes from its checkpoint."""


def head_towers(model: nn.Module, trick: str) -> tuple[nn.Module, nn.Module]:
    """The classification and regression towers of a one-stage head (FCOS, RetinaNet), or
    TrickConflictError where the head has none (YOLOv3, SSD, CenterNet): n/a, not a crash."""
    head = getattr(model, "head", None)
    if not all(hasattr(getattr(head, name, None), "conv") for name in ("classification_head", "regression_head")):
        raise TrickConflictError(f"trick '{trick}' does not fit this detector: its head ({type(head).__name__}) has no "
                                 "classification and regression conv towers (FCOS's and RetinaNet's): not applicable")
    return head.classification_head, head.regression_head
