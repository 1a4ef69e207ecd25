"""The slot machinery: `LossSlots` (the mixin of a module that holds loss slots), `set_slot`,
`current_slot` and the checks around them, and what the slots' callables get (`RoIOutputs`,
`PositiveSamples`) and per-box weights. The table of which detector has which slot is the
package's docstring (ablate/models/losses/__init__.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn


@dataclass
class RoIOutputs:
    """What a sampler with `uses_outputs = True` gets (OHEM, PISA's score-HLR): the box head's outputs
    on every candidate RoI of each image (the ground-truth boxes added), under the current weights,
    without gradient. It is called sampler(labels, outputs) with each image's labels (>= 1 positive,
    0 negative, -1 ignored) and returns the positive and negative masks per image, and optionally
    per image a weight for each candidate's classification loss (ScoreHLRSampler's label weights)."""
    logits: list[Tensor]          # per image [N, C], class 0 the background
    box_regression: list[Tensor]  # per image [N, C * 4], the class-specific deltas
    proposals: list[Tensor]       # per image [N, 4]
    box_coder: Any                # torchvision's BoxCoder of the head (decode_single)
    cls_loss: Callable[[Tensor, Tensor, Tensor], Tensor]  # the head's classification loss (logits, labels, weights)


@dataclass
class PositiveSamples:
    """What the sample_weighting slot gets (PISA's ISR-P and CARL): the positive samples of a batch.
    The slot returns (the new classification-loss weight of each sample [P], extra loss terms by
    name); the detector multiplies nothing else."""
    logits: Tensor        # [P, K] sigmoid logits (one-stage) or [P, C] softmax logits (two-stage), with gradient
    labels: Tensor        # [P] the column of `logits` of each sample's class
    sigmoid: bool         # whether the scores are sigmoid (one-stage) or softmax (two-stage)
    gt_ids: Tensor        # [P] the ground-truth box each sample is matched to, unique across the batch
    pred_boxes: Tensor    # [P, 4] the predicted boxes, decoded (x1, y1, x2, y2), without gradient
    target_boxes: Tensor  # [P, 4] the regression targets, decoded: the matched ground-truth boxes
    cls_weights: Tensor   # [P] each sample's weight in the classification loss so far
    box_weights: Tensor   # [P] each sample's weight in the box loss (its box's, MixUp's)
    cls_loss: Callable[[Tensor], Tensor]  # the detector's classification loss of these samples, given weights, logits detached
    box_loss: Callable[[Tensor], Tensor]  # the detector's box loss of these samples, given weights, normalised as the detector's


def weigh_positives(weighting, samples: PositiveSamples, cls_weights: Tensor, pos: Tensor
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """cls_weights with the entries `pos` (the positives, in samples' order) replaced by what the
    sample_weighting slot gives them, and the slot's extra loss terms."""
    if len(pos) == 0:
        return cls_weights, {}
    new, extra = weighting(samples)
    return cls_weights.index_put((pos,), new.to(cls_weights.dtype)), extra


def has_box_weights(targets) -> bool:
    return targets is not None and any("weights" in t for t in targets)


def box_weights_of(target: dict, matched: Tensor, positive: Tensor, dtype) -> Tensor:
    """Per sample: the weight of the box it is matched to where `positive`, else 1."""
    weights = torch.ones(len(matched), dtype=dtype, device=matched.device)
    if "weights" in target and positive.any():
        weights[positive] = target["weights"][matched[positive]].to(dtype)
    return weights


BOX_SPACES = ("deltas", "boxes")


class LossSlotError(AttributeError):
    """A loss slot the detector does not have, or a loss that does not fit the slot."""


class LossSlots:
    """Mixin of the modules that hold loss slots: `slot_attrs` maps each slot this module holds to
    its attribute; `default_loss(slot)` is the baseline's loss of the slot. Setting an attribute
    that looks like a slot (…_loss, …_sampler) but is none raises: a trick cannot set it in vain."""

    slot_attrs: dict[str, str] = {}
    detector = ""
    # The forms of box loss this module's box_loss slot takes, and why, where it does not take both.
    box_spaces: tuple[str, ...] = BOX_SPACES
    box_spaces_reason = ""
    # Whether its cls_loss takes the two-stage form (softmax over K + 1 classes, the RoI heads').
    softmax_cls = False
    # Whether the reference head calls its losses once per pyramid level (mmdetection's AnchorHead and
    # RepPointsHead: loss_by_feat -> multi_apply over the levels) or once over all levels concatenated
    # (mmdetection's FCOSHead). A loss whose value depends on how its samples are grouped (GHM's
    # histograms) follows this; the others do not care.
    loss_per_level = False

    def __init__(self, *args, **kwargs):
        # Cooperative: the module's own __init__ (torchvision's head, nn.Module) runs first, then every
        # slot starts empty (None: the baseline's default_loss) unless that __init__ set its attribute
        # already (RoIHeads' fg_bg_sampler is the roi_sampler slot's baseline).
        super().__init__(*args, **kwargs)
        for attr in self.slot_attrs.values():
            if not hasattr(self, attr):
                setattr(self, attr, None)

    def __setattr__(self, name, value):
        if ((name.endswith("_loss") or name.endswith("_sampler")) and name not in self.slot_attrs.values()
                and not hasattr(self, name)):
            raise LossSlotError(f"{self.detector} has no loss slot '{name}' on {type(self).__name__}; its slots: "
                                f"{describe_slots(self)} (set one with ablate.models.losses.set_slot)")
        super().__setattr__(name, value)

    def default_loss(self, slot: str) -> nn.Module:
        raise NotImplementedError

    def slot_loss(self, slot: str):
        """What `slot` computes now: the loss a trick set there, else the baseline's (default_loss)."""
        value = getattr(self, self.slot_attrs[slot])
        return value if value is not None else self.default_loss(slot)


def describe_slots(holder: LossSlots) -> str:
    return ", ".join(f"{slot} (.{attr})" for slot, attr in holder.slot_attrs.items())


def slot_holders(model: nn.Module) -> dict[str, LossSlots]:
    """Slot name -> the module of `model` that holds it (its head or RoI heads)."""
    holders = {}
    for module in (getattr(model, "head", None), getattr(model, "roi_heads", None)):
        if isinstance(module, LossSlots):
            holders.update({slot: module for slot in module.slot_attrs})
    return holders


def _holder(model: nn.Module, slot: str) -> LossSlots:
    holders = slot_holders(model)
    if slot not in holders:
        name = next((h.detector for h in holders.values()), type(model).__name__)
        have = ", ".join(holders) or "none (build it with ablate.models.build_model)"
        raise LossSlotError(f"{name} has no '{slot}' slot; its slots: {have}")
    return holders[slot]


def set_slot(model: nn.Module, slot: str, value) -> None:
    """Put `value` (a loss, or a sampler) in the detector's `slot` (cls_loss, box_loss, roi_sampler;
    see the table above). A box loss must say which form it takes (space = "deltas" or "boxes")."""
    holder = _holder(model, slot)
    if slot == "box_loss":
        if getattr(value, "space", None) not in BOX_SPACES:
            raise LossSlotError(f"a box loss must declare space = 'deltas' or 'boxes' (the form of box it takes); "
                                f"{type(value).__name__} has space={getattr(value, 'space', None)!r}")
        check_box_space(model, value.space)
    setattr(holder, holder.slot_attrs[slot], value)


def check_box_space(model: nn.Module, space: str) -> None:
    """LossSlotError, with the detector's reason, unless its box_loss slot takes losses of `space`."""
    holder = _holder(model, "box_loss")
    if space not in holder.box_spaces:
        raise LossSlotError(f"{holder.detector}'s box_loss takes only {' or '.join(holder.box_spaces)} losses, "
                            f"not {space}: {holder.box_spaces_reason}")


def detector_name(model: nn.Module) -> str:
    """The detector a model is (fcos, retinanet, faster_rcnn, rfcn), from the modules holding its slots."""
    holders = slot_holders(model)
    if not holders:
        raise LossSlotError(f"{type(model).__name__} has no loss slots; build it with ablate.models.build_model")
    return next(iter(holders.values())).detector


def current_slot(model: nn.Module, slot: str):
    """What the detector's `slot` computes now: the loss a trick set there, else the baseline's."""
    return _holder(model, slot).slot_loss(slot)


def set_cls_loss(model: nn.Module, one_stage: nn.Module | None, two_stage: nn.Module | None) -> None:
    """Set the classification loss of whichever kind of detector `model` is: a one-stage form
    (sigmoid, K classes) or a two-stage one (softmax over K + 1)."""
    roi_heads = getattr(model, "roi_heads", None)
    two_stage_model = isinstance(roi_heads, LossSlots) and roi_heads.softmax_cls
    loss = two_stage if two_stage_model else one_stage
    if loss is None:
        raise LossSlotError(f"this loss has no {'two' if two_stage_model else 'one'}-stage form")
    set_slot(model, "cls_loss", loss)
