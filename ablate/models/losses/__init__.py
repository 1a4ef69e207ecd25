"""Loss plumbing: per-model places (slots) where a trick sets the classification loss, the box loss
or the RoI sampler, and per-box weights honoured by every loss term, without touching torchvision's
module-level functions.

torchvision's heads compute their losses with module-level functions (`sigmoid_focal_loss` in
fcos.py and retinanet.py, `fastrcnn_loss` in roi_heads.py). Patching those names would change
every model in the process, and several runs of a sweep share one process. So the builders in
detectors.py use the small subclasses below. A trick sets a slot with `set_slot(model, slot, value)`,
which raises LossSlotError naming the detector and its slots when it has no such slot; setting a
loss-like attribute that is not a slot (`model.head.bbox_loss = ...`) raises too, so no setting is
silently ignored. `current_slot(model, slot)` is what the slot computes now (the baseline's loss
until a trick sets one), for a trick that wraps it.

| slot        | fcos                        | retinanet                   | faster_rcnn                          |
|-------------|-----------------------------|-----------------------------|--------------------------------------|
| cls_loss    | model.head (focal loss)     | model.head (focal loss)     | model.roi_heads (softmax CE)         |
| box_loss    | model.head (GIoU, boxes)    | model.head (L1, deltas)     | model.roi_heads (smooth L1, deltas)  |
| roi_sampler | -                           | -                           | model.roi_heads.fg_bg_sampler        |
| sample_     | -                           | model.head                  | model.roi_heads                      |
|  weighting  |                             |                             |                                      |
| loss keys   | classification,             | classification,             | loss_objectness, loss_rpn_box_reg    |
|             | bbox_regression,            | bbox_regression             | (RPN), loss_classifier, loss_box_reg |
|             | bbox_ctrness                |                             | (RoI head)                           |

R-FCN (rfcn, ablate/models/rfcn.py) has faster_rcnn's slots and loss keys: its RoI heads are this
module's LossRoIHeads (RFCNRoIHeads, named rfcn) with a position-sensitive box path.

yolov3 (models/yolo.py, model.head holds both slots): cls_loss is SigmoidBCELoss over the K classes of
each positive, box_loss YOLOv3BoxLoss on the deltas (raw tx, ty, tw, th against the centre's offset
in its cell and log(w / anchor_w), log(h / anchor_h)); in the deltas form each positive's weight is
its box's times GluonCV's 2 - w h / (W H), in the boxes form its box's alone. The normalizer is the
number of images (losses summed per image, averaged over images). Loss keys: objectness (no slot),
classification, bbox_regression. sample_weighting and roi_sampler: none.

sample_weighting re-weights the classification loss of each positive sample and may add loss terms
(PISA's ISR-P and CARL): it gets a PositiveSamples and returns the new weights and the terms. A
roi_sampler with `uses_outputs` gets the box head's outputs on every candidate (RoIOutputs) and may
return a classification-loss weight per candidate. Both are described where they are defined.

centernet (models/centernet.py) has one slot, box_loss: its size regression, L1 on (w, h) at each
object's peak (loss key `size`), in the "deltas" form only (its box_spaces_reason says why); its
heatmap loss takes Gaussian targets, not K-class targets, so it has no cls_loss slot.

cornernet (models/cornernet.py) has one slot too, box_loss: the SmoothL1 regression of the sub-pixel
offset of both corners of each object (loss key `offset`; pred and target [2N, 2], the top-left rows
then the bottom-right ones), "deltas" form only: it regresses no box (its box_spaces_reason). Its
heatmap loss (Gaussian targets) and the pull/push embedding losses are no slot.

reppoints (models/reppoints.py, model.head holds both slots): cls_loss is the focal loss on the refine
stage's labels (the one-stage interface, normalised by the refine stage's positives); box_loss is the
loss of both point stages (keys points_init, points_refine), each stage's term times its weight (0.5,
1.0): in the deltas form the pseudo boxes and their targets divided by 4 x the level's stride (smooth
L1, beta 0.11, by default), in the boxes form the pseudo boxes in pixels.

box_loss is the loss under `bbox_regression` / `loss_box_reg`: the final head's, not the RPN's
(as mmdetection's bbox_head.loss_bbox). FCOS's centerness loss and the RPN's losses are no slot.

With no slot set and no target["weights"] in the batch, each subclass calls torchvision's own
code: the baseline's losses are exactly torchvision's.

Per-box weights (target["weights"], put there by MixUp): every loss term of a sample matched to a
ground-truth box is multiplied by that box's weight, as the Bag of Freebies code does (GluonCV's
YOLOV3Loss weights objectness, centre, scale and class losses by the mix ratio): FCOS's
classification, box and centerness loss of a positive location; RetinaNet's classification and box
loss of a positive anchor; Faster R-CNN's RPN objectness and box loss of a positive anchor and the
RoI head's classification and box loss of a positive RoI. Background samples weigh 1; the
normalizers stay torchvision's (counts of samples, not sums of weights).

Loss interfaces (P samples of the whole batch; `levels` [P] is each sample's pyramid level 0..L-1,
for losses computed per level as the GHM authors' code does; zeros for Faster R-CNN's RoIs):
- one-stage classification: loss(logits [P, K], targets [P, K] in {0, 1}, box_weights [P],
  normalizer [P], levels [P]) -> scalar over the valid locations/anchors. `normalizer` is
  torchvision's: the number of foreground samples (FCOS: of the batch; RetinaNet: of the sample's
  image, times the number of images, as RetinaNet averages per-image losses).
- two-stage classification: loss(logits [R, C], labels [R], box_weights [R]) -> scalar, over the
  sampled RoIs of the batch (label 0 is the background).
- box (every detector): loss(pred [P, 4], target [P, 4], box_weights [P], normalizer [P],
  levels [P]) -> scalar over the positive samples. The loss says which form it takes with its
  class attribute `space`: "deltas" (the head's encoded regression: RetinaNet's and Faster R-CNN's
  box coder, FCOS's distances to the sides in units of the anchor size) or "boxes" (decoded
  x1, y1, x2, y2 in pixels, prediction and its matched ground-truth box: IoU-type losses). Every
  detector gives both. `normalizer` is the detector's own (FCOS and RetinaNet as above; Faster
  R-CNN: the number of sampled RoIs, positive and negative, of the batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import box_iou, generalized_box_iou_loss


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


def smooth_binary_targets(targets: Tensor, epsilon: float) -> Tensor:
    """Label smoothing for K independent sigmoid targets: each binary target is smoothed as a
    two-way softmax (Szegedy et al. 2016 with K = 2): y' = y (1 - eps) + eps / 2, on the rows of
    positive (foreground) samples only; background rows keep their all-zero targets, as the
    objectness of YOLO-style detectors is not smoothed (ultralytics `smooth_BCE`, GluonCV's
    YOLOv3 for the Bag of Freebies paper smooth only the class targets of positives)."""
    if epsilon == 0:
        return targets
    positive = (targets > 0).any(dim=1, keepdim=True)
    return torch.where(positive, targets * (1 - epsilon) + epsilon / 2, targets)


def soft_focal_loss(logits: Tensor, hard: Tensor, soft: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss on soft targets: alpha_t |soft - p|^gamma BCE(p, soft).

    On hard targets (soft == hard) it is torchvision's sigmoid_focal_loss exactly: |y - p| is
    1 - p_t. On soft targets it is the Quality Focal Loss form (Li et al. 2020, "Generalized Focal
    Loss", eq. 5), whose minimum over p is p = soft: the focal factor (1 - p_t)^gamma of the hard
    label would move the minimum away from a smoothed target (for 0.95, to p = 0.995). alpha_t is
    chosen by the hard label (alpha for a foreground class target), so it scales a sample's loss
    without moving its minimum either."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    loss = ce * (soft - p).abs().pow(gamma)
    if alpha >= 0:
        loss = torch.where(hard > 0, alpha * loss, (1 - alpha) * loss)
    return loss


class FocalLoss(nn.Module):
    """The one-stage baseline's loss: torchvision's sigmoid_focal_loss with its defaults (alpha
    0.25, gamma 2, as FCOS and RetinaNet call it); with label smoothing, on the smoothed targets in
    the soft-target form whose minimum is the smoothed target (see soft_focal_loss)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, targets: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        soft = smooth_binary_targets(targets, self.label_smoothing)
        per_sample = soft_focal_loss(logits, targets, soft).sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class CrossEntropyLoss(nn.Module):
    """The two-stage baseline's loss: softmax cross-entropy averaged over the sampled RoIs, with
    torch's label smoothing q = (1 - eps) one_hot + eps / C over the C classes (background too),
    whose minimum over the softmax is q itself."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor, box_weights: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        return (ce * box_weights).mean()


class SigmoidBCELoss(nn.Module):
    """A one-stage classification loss without the focal term: sigmoid binary cross-entropy summed
    over the K classes of each valid sample, weighted by its box, divided by the foreground count
    (the normalizer the focal loss gets, as mmdetection v3 normalises a sigmoid CrossEntropyLoss in
    its one-stage heads). YOLOv3's classification loss (GluonCV's YOLOV3Loss) is this form, normalised
    by the number of images; with label smoothing, on the smoothed targets (smooth_binary_targets:
    GluonCV's label_smooth of YOLOV3TargetMerger)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, targets: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        soft = smooth_binary_targets(targets, self.label_smoothing)
        per_sample = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class SoftmaxFocalLoss(nn.Module):
    """The focal loss over a softmax of the C classes (background 0 included), as Detectron's
    SoftmaxFocalLoss op (Lin et al. 2017's softmax variant): −z (1 − p_t)^γ ln p_t per sampled RoI,
    z = α for a foreground RoI and 1 − α for a background one, summed and divided by the number
    of foreground RoIs (at least 1); each RoI's term weighted by its box."""

    def __init__(self, gamma: float, alpha: float):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: Tensor, labels: Tensor, box_weights: Tensor) -> Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None])[:, 0]
        z = torch.where(labels > 0, self.alpha, 1 - self.alpha)
        per_roi = -z * (1 - log_p.exp()).pow(self.gamma) * log_p
        return (per_roi * box_weights).sum() / max(int((labels > 0).sum()), 1)


class L1BoxLoss(nn.Module):
    """RetinaNet's box loss as torchvision computes it (l1 on the encoded deltas, summed per image
    and divided by its foreground count, averaged over images), with per-box weights."""
    space = "deltas"

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = (pred - target).abs().sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class GIoUBoxLoss(nn.Module):
    """FCOS's box loss as torchvision computes it: the GIoU loss of each positive location's
    decoded box against its ground-truth box, summed and divided by the foreground count."""
    space = "boxes"

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = generalized_box_iou_loss(pred, target, reduction="none")
        return (per_sample * box_weights / normalizer).sum()


class SmoothL1BoxLoss(nn.Module):
    """Faster R-CNN's RoI box loss as torchvision's fastrcnn_loss computes it: smooth L1 (beta 1/9)
    on the encoded deltas of the positive RoIs, summed and divided by the number of sampled RoIs
    (the RPN's box loss is the same term over its sampled anchors). CornerNet's offset loss is this
    form with beta 1 (models/cornernet.py); RepPoints takes it with its config's beta (0.11) on its
    boxes divided by the level's base scale (models/reppoints.py)."""
    space = "deltas"

    def __init__(self, beta: float = 1 / 9):
        super().__init__()
        self.beta = beta

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = F.smooth_l1_loss(pred, target, beta=self.beta, reduction="none").sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


def _overlap_and_areas(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per pair of boxes a[..., :], b[..., :] (x1, y1, x2, y2; the leading dims broadcast): the area
    of their intersection, and each one's area."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    return (wh[..., 0] * wh[..., 1], (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]),
            (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """The IoU of each pair a[i], b[i], the union floored at eps (mmdetection's bbox_overlaps with
    is_aligned=True)."""
    overlap, area_a, area_b = _overlap_and_areas(a, b)
    return overlap / (area_a + area_b - overlap).clamp(min=eps)


def pairwise_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU [len(a), len(b)] of every pair, the union floored at eps (mmdetection's bbox_overlaps): a
    box of zero size has IoU 0, where torchvision's box_iou gives NaN."""
    return aligned_iou(a[:, None, :], b[None, :, :], eps)


def iou_type_loss(pred: Tensor, target: Tensor, kind: str, eps: float) -> Tensor:
    """Per box [P]: the IoU-type loss of decoded boxes (x1, y1, x2, y2) against their targets, as
    mmdetection v3 computes it (mmdet/models/losses/iou_loss.py with bbox_overlaps):
    - iou: −ln IoU (UnitBox), IoU clamped at eps (no gradient where boxes do not overlap);
    - giou: 1 − GIoU, union and enclosing area floored at eps;
    - diou: 1 − IoU + ρ²/c², eps added to the union and to c²;
    - ciou: 1 − clamp(IoU − ρ²/c² − αv, −1, 1), v = 4/π² (atan(w_gt/h_gt) − atan(w/h))², eps added
      to the heights, α = v / (1 − IoU + v) without gradient and 0 unless IoU > 0.5 (the CIoU paper's
      TCYB version; torchvision's complete_box_iou_loss has no such gate)."""
    overlap, area_p, area_t = _overlap_and_areas(pred, target)
    enclose = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    if kind in ("iou", "giou"):
        union = (area_p + area_t - overlap).clamp(min=eps)
        ious = overlap / union
        if kind == "iou":
            return -ious.clamp(min=eps).log()
        enclose_area = (enclose[:, 0] * enclose[:, 1]).clamp(min=eps)
        return 1 - (ious - (enclose_area - union) / enclose_area)
    ious = overlap / (area_p + area_t - overlap + eps)
    c2 = enclose[:, 0] ** 2 + enclose[:, 1] ** 2 + eps
    rho2 = (((target[:, 0] + target[:, 2]) - (pred[:, 0] + pred[:, 2])) ** 2
            + ((target[:, 1] + target[:, 3]) - (pred[:, 1] + pred[:, 3])) ** 2) / 4
    if kind == "diou":
        return 1 - (ious - rho2 / c2)
    if kind != "ciou":
        raise ValueError(f"IoU-type loss {kind!r}: choose iou, giou, diou or ciou")
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = (ious > 0.5).to(v.dtype) * v / (1 - ious + v)
    return 1 - (ious - (rho2 / c2 + alpha * v)).clamp(min=-1.0, max=1.0)


class IoUTypeLoss(nn.Module):
    """A box loss on decoded boxes: iou_type_loss per positive sample, weighted by its box and
    divided by the detector's normalizer."""
    space = "boxes"

    def __init__(self, kind: str, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = iou_type_loss(pred.float(), target.float(), self.kind, self.eps)
        return (per_sample * box_weights / normalizer).sum()


def balanced_l1(diff: Tensor, alpha: float, gamma: float, beta: float) -> Tensor:
    """Libra R-CNN's balanced L1 of |x| (Pang et al. 2019, eq. 8; mmdetection balanced_l1_loss.py):
    α/b (b|x| + 1) ln(b|x|/β + 1) − α|x| below β, γ|x| + γ/b − αβ above, b = e^(γ/α) − 1 (so that
    α ln(b + 1) = γ and the two pieces meet at β)."""
    b = math.e ** (gamma / alpha) - 1
    return torch.where(diff < beta, alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff,
                       gamma * diff + gamma / b - alpha * beta)


class BalancedL1Loss(nn.Module):
    """Balanced L1 on the encoded deltas, summed over the 4 coordinates of each positive sample,
    weighted by its box and divided by the detector's normalizer (as its smooth-L1/L1 baseline)."""
    space = "deltas"

    def __init__(self, alpha: float, gamma: float, beta: float):
        super().__init__()
        self.alpha, self.gamma, self.beta = alpha, gamma, beta

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        per_sample = balanced_l1((pred - target).abs(), self.alpha, self.gamma, self.beta).sum(dim=1)
        return (per_sample * box_weights / normalizer).sum()


class ScaledLoss(nn.Module):
    """A slot's loss times a constant factor (a loss weight), in the same form (`space`) as the
    loss it wraps."""

    def __init__(self, inner: nn.Module, factor: float):
        super().__init__()
        self.inner, self.factor = inner, float(factor)
        if hasattr(inner, "space"):
            self.space = inner.space

    def forward(self, *args: Tensor) -> Tensor:
        return self.factor * self.inner(*args)


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
    # Whether the reference head calls its losses once per pyramid level (mmdetection's AnchorHead and
    # RepPointsHead: loss_by_feat -> multi_apply over the levels) or once over all levels concatenated
    # (mmdetection's FCOSHead). A loss whose value depends on how its samples are grouped (GHM's
    # histograms) follows this; the others do not care.
    loss_per_level = False

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


def _one_stage_samples(targets, matched_idxs, num_classes: int, dtype, ignore: int | None):
    """Per image: one-hot class targets [A, K], matched box weights [A], foreground and valid masks [A]."""
    out = []
    for t, matched in zip(targets, matched_idxs):
        fg = matched >= 0
        valid = matched != ignore if ignore is not None else torch.ones_like(fg)
        cls_targets = torch.zeros((len(matched), num_classes), dtype=dtype, device=matched.device)
        if fg.any():
            cls_targets[fg, t["labels"][matched[fg]]] = 1.0
        out.append((cls_targets, box_weights_of(t, matched, fg, dtype), fg, valid))
    return out


class _LevelSizes:
    """Remembers, from the head's forward, how many samples each pyramid level contributes, so
    the losses can tell each sample's level (torchvision concatenates the levels)."""

    level_sizes: list[int] = []

    def remember_levels(self, x: list[Tensor], per_location: int) -> None:
        self.level_sizes = [int(f.shape[-2] * f.shape[-1]) * per_location for f in x]

    def sample_levels(self, device) -> Tensor:
        sizes = torch.tensor(self.level_sizes, device=device)
        return torch.repeat_interleave(torch.arange(len(self.level_sizes), device=device), sizes)


class FCOSLossHead(LossSlots, _LevelSizes, FCOSHead):
    """torchvision's FCOS head with settable classification and box losses and per-box weights on
    all three losses (see the module docstring)."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss"}
    detector = "fcos"
    loss_per_level = False  # mmdetection FCOSHead.loss_by_feat: the levels flattened and concatenated, one call

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cls_loss: nn.Module | None = None
        self.box_loss: nn.Module | None = None

    def default_loss(self, slot: str) -> nn.Module:
        return {"cls_loss": FocalLoss, "box_loss": GIoUBoxLoss}[slot]()

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        self.remember_levels(x, self.classification_head.num_anchors)
        return super().forward(x)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        if self.cls_loss is None and self.box_loss is None and not has_box_weights(targets):
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        logits = head_outputs["cls_logits"]  # [N, A, K]
        samples = _one_stage_samples(targets, matched_idxs, logits.shape[-1], logits.dtype, ignore=None)
        cls_targets = torch.cat([s[0] for s in samples])
        weights = torch.cat([s[1] for s in samples])
        fg = torch.cat([s[2] for s in samples])
        num_foreground = max(1, int(fg.sum()))
        levels = self.sample_levels(logits.device).repeat(len(targets))
        normalizer = weights.new_full(weights.shape, num_foreground)
        cls_fn = self.slot_loss("cls_loss")
        loss_cls = cls_fn(logits.flatten(0, 1), cls_targets, weights, normalizer, levels)

        # the box loss (torchvision's GIoU by default) and torchvision's centerness loss, each
        # positive location weighted by its box
        gt_boxes = torch.cat([t["boxes"][m.clip(min=0)] if len(t["boxes"]) else t["boxes"].new_zeros((len(m), 4))
                              for t, m in zip(targets, matched_idxs)])
        flat_anchors = torch.cat(anchors)
        reg = head_outputs["bbox_regression"].flatten(0, 1)
        reg_targets = self.box_coder.encode(flat_anchors[fg], gt_boxes[fg])
        box_fn = self.slot_loss("box_loss")
        if box_fn.space == "boxes":
            pred, target = self.box_coder.decode(reg[fg], flat_anchors[fg]), gt_boxes[fg]
        else:
            pred, target = reg[fg], reg_targets
        loss_box = box_fn(pred, target, weights[fg], normalizer[fg], levels[fg])
        lr, tb = reg_targets[:, [0, 2]], reg_targets[:, [1, 3]]
        ctr_targets = torch.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))
        ctr = F.binary_cross_entropy_with_logits(head_outputs["bbox_ctrness"].flatten(0, 1)[fg, 0], ctr_targets,
                                                 reduction="none")
        return {"classification": loss_cls,
                "bbox_regression": loss_box,
                "bbox_ctrness": (ctr * weights[fg]).sum() / num_foreground}


class RetinaNetLossHead(LossSlots, _LevelSizes, RetinaNetHead):
    """torchvision's RetinaNet head with a settable classification loss and box loss, and per-box
    weights on both."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss", "sample_weighting": "sample_weighting"}
    detector = "retinanet"
    loss_per_level = True  # mmdetection AnchorHead.loss_by_feat: multi_apply(loss_by_feat_single) per level

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cls_loss: nn.Module | None = None
        self.box_loss: nn.Module | None = None
        self.sample_weighting = None

    def default_loss(self, slot: str) -> nn.Module | None:
        if slot == "sample_weighting":
            return None
        return {"cls_loss": FocalLoss, "box_loss": L1BoxLoss}[slot]()

    def forward(self, x):
        self.remember_levels(x, self.classification_head.num_anchors)
        return super().forward(x)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        if (self.cls_loss is None and self.box_loss is None and self.sample_weighting is None
                and not has_box_weights(targets)):
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        ignore = self.classification_head.BETWEEN_THRESHOLDS
        cls_logits = head_outputs["cls_logits"]
        samples = _one_stage_samples(targets, matched_idxs, cls_logits.shape[-1], cls_logits.dtype, ignore)
        levels = self.sample_levels(cls_logits.device)
        coder = self.regression_head.box_coder
        box_fn = self.slot_loss("box_loss")
        cls_parts = {k: [] for k in ("logits", "targets", "weights", "normalizer", "levels")}
        box_parts = {k: [] for k in ("pred", "target", "weights", "normalizer", "levels")}
        pos_parts = {k: [] for k in ("in_cls", "labels", "gt_ids", "pred_boxes", "target_boxes")}
        gt_offset = 0
        for t, logits_i, reg_i, anchors_i, matched, (targets_i, weights_i, fg, valid) in zip(
                targets, cls_logits, head_outputs["bbox_regression"], anchors, matched_idxs, samples):
            # torchvision: per image, sum / max(1, foreground), then the mean over images
            norm = max(1, int(fg.sum())) * len(targets)
            cls_parts["logits"].append(logits_i[valid])
            cls_parts["targets"].append(targets_i[valid])
            cls_parts["weights"].append(weights_i[valid])
            cls_parts["normalizer"].append(weights_i.new_full((int(valid.sum()),), norm))
            cls_parts["levels"].append(levels[valid])
            if box_fn.space == "boxes":
                box_parts["pred"].append(coder.decode_single(reg_i[fg], anchors_i[fg]))
                box_parts["target"].append(t["boxes"][matched[fg]])
            else:
                box_parts["pred"].append(reg_i[fg])
                box_parts["target"].append(coder.encode_single(t["boxes"][matched[fg]], anchors_i[fg]))
            box_parts["weights"].append(weights_i[fg])
            box_parts["normalizer"].append(weights_i.new_full((int(fg.sum()),), norm))
            box_parts["levels"].append(levels[fg])
            if self.sample_weighting is not None:
                pos_parts["in_cls"].append(fg[valid])
                pos_parts["labels"].append(t["labels"][matched[fg]])
                pos_parts["gt_ids"].append(matched[fg] + gt_offset)
                pos_parts["pred_boxes"].append(coder.decode_single(reg_i[fg].detach(), anchors_i[fg]))
                pos_parts["target_boxes"].append(t["boxes"][matched[fg]])
                gt_offset += len(t["boxes"])
        cls_fn = self.slot_loss("cls_loss")
        if self.box_loss is None and self.regression_head._loss_type != "l1":
            raise ValueError(f"per-box weights need RetinaNet's l1 box loss; this head uses "
                             f"{self.regression_head._loss_type!r}")
        logits, cls_targets, cls_weights, cls_norm, cls_levels = (torch.cat(v) for v in cls_parts.values())
        pred, target, box_weights, box_norm, box_levels = (torch.cat(v) for v in box_parts.values())
        extra = {}
        if self.sample_weighting is not None:
            pos = torch.where(torch.cat(pos_parts["in_cls"]))[0]
            ones = cls_norm.new_ones(len(pos))
            samples = PositiveSamples(
                logits=logits[pos], labels=torch.cat(pos_parts["labels"]), sigmoid=True,
                gt_ids=torch.cat(pos_parts["gt_ids"]), pred_boxes=torch.cat(pos_parts["pred_boxes"]),
                target_boxes=torch.cat(pos_parts["target_boxes"]), cls_weights=cls_weights[pos],
                box_weights=box_weights,
                # mmdetection's ratio sums the per-sample losses: no normalizer
                cls_loss=lambda w: cls_fn(logits[pos].detach(), cls_targets[pos], w, ones, cls_levels[pos]),
                box_loss=lambda w: box_fn(pred, target, w, box_norm, box_levels))
            cls_weights, extra = weigh_positives(self.sample_weighting, samples, cls_weights, pos)
        return {"classification": cls_fn(logits, cls_targets, cls_weights, cls_norm, cls_levels),
                "bbox_regression": box_fn(pred, target, box_weights, box_norm, box_levels), **extra}


class LossRPN(RegionProposalNetwork):
    """torchvision's RPN with per-box weights on the objectness and box losses of the anchors
    matched to a weighted box (torchvision's code when the batch has no weights)."""

    anchor_weights: list[Tensor] | None = None

    @classmethod
    def adopt(cls, rpn: RegionProposalNetwork) -> "LossRPN":
        """The same RPN (same modules and settings) with this class's losses."""
        rpn.__class__ = cls
        return rpn

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        self.anchor_weights = None
        if has_box_weights(targets):
            self.anchor_weights = []
            for anchors_i, t, labels_i in zip(anchors, targets, labels):
                positive = labels_i == 1
                matched = (self.proposal_matcher(self.box_similarity(t["boxes"], anchors_i)).clamp(min=0)
                           if len(t["boxes"]) else torch.zeros(len(anchors_i), dtype=torch.int64,
                                                                device=anchors_i.device))
                self.anchor_weights.append(box_weights_of(t, matched, positive, torch.float32))
        return labels, matched_gt_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        if self.anchor_weights is None:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        # torchvision's, each sampled anchor's terms multiplied by its weight
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        weights = torch.cat(self.anchor_weights).to(objectness.dtype)
        labels, regression_targets = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
        box_loss = SmoothL1BoxLoss()(pred_bbox_deltas[sampled_pos], regression_targets[sampled_pos],
                                     weights[sampled_pos], weights.new_full((len(sampled_pos),), sampled.numel()))
        bce = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled], reduction="none")
        return (bce * weights[sampled]).mean(), box_loss


class LossRoIHeads(LossSlots, RoIHeads):
    """torchvision's RoI heads (boxes only) with settable classification and box losses, per-box
    weights on both RoI losses, and a sampler that may take each proposal's largest IoU with the
    ground truth."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss", "roi_sampler": "fg_bg_sampler",
                  "sample_weighting": "sample_weighting"}
    detector = "faster_rcnn"

    @classmethod
    def from_roi_heads(cls, old: RoIHeads) -> "LossRoIHeads":
        if old.has_mask() or old.has_keypoint():
            raise ValueError("LossRoIHeads supports box heads only (no mask or keypoint branch)")
        new = cls(old.box_roi_pool, old.box_head, old.box_predictor,
                  old.proposal_matcher.high_threshold, old.proposal_matcher.low_threshold,
                  old.fg_bg_sampler.batch_size_per_image, old.fg_bg_sampler.positive_fraction,
                  old.box_coder.weights, old.score_thresh, old.nms_thresh, old.detections_per_img)
        new.proposal_matcher.allow_low_quality_matches = old.proposal_matcher.allow_low_quality_matches
        new.box_coder = old.box_coder
        return new

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cls_loss: nn.Module | None = None
        self.box_loss: nn.Module | None = None
        self.sample_weighting = None

    def default_loss(self, slot: str) -> nn.Module | None:
        if slot == "roi_sampler":
            return self.fg_bg_sampler
        if slot == "sample_weighting":
            return None
        return {"cls_loss": CrossEntropyLoss, "box_loss": SmoothL1BoxLoss}[slot]()

    def select_training_samples(self, proposals, targets, features=None, image_shapes=None):
        return self.sample_rois(proposals, targets, features, image_shapes)[:4]

    def sample_rois(self, proposals, targets, features=None, image_shapes=None):
        """torchvision's select_training_samples, giving the sampler what it declares it uses: each
        proposal's largest IoU with the ground truth (uses_iou) or the box head's outputs on every
        proposal (uses_outputs); plus, per sampled RoI, a weight of its classification loss where
        the sampler gives one (else None)."""
        uses_iou = getattr(self.fg_bg_sampler, "uses_iou", False)
        uses_outputs = getattr(self.fg_bg_sampler, "uses_outputs", False)
        if not (uses_iou or uses_outputs):
            return (*super().select_training_samples(proposals, targets), None)
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if uses_outputs:
            sampled = self.fg_bg_sampler(labels, self.roi_outputs(features, proposals, image_shapes))
        else:
            max_ious = [box_iou(g, p).max(dim=0).values if g.numel() else p.new_zeros(len(p))
                        for g, p in zip(gt_boxes, proposals)]
            sampled = self.fg_bg_sampler(labels, max_ious)
        pos_masks, neg_masks = sampled[:2]
        label_weights = sampled[2] if len(sampled) > 2 else None
        matched_gt_boxes, kept_weights = [], []
        for i in range(len(proposals)):
            keep = torch.where(pos_masks[i] | neg_masks[i])[0]
            proposals[i], labels[i], matched_idxs[i] = proposals[i][keep], labels[i][keep], matched_idxs[i][keep]
            gt = gt_boxes[i] if gt_boxes[i].numel() else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(gt[matched_idxs[i]])
            if label_weights is not None:
                kept_weights.append(label_weights[i][keep])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets, (kept_weights or None)

    @torch.no_grad()
    def roi_outputs(self, features, proposals, image_shapes) -> RoIOutputs:
        """The box head's outputs on every proposal of each image under the current weights, without
        gradient: what a sampler of hard or prime examples ranks by (mmdetection's OHEMSampler and
        ScoreHLRSampler forward the candidates through the box head the same way)."""
        logits, box_regression = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        sizes = [len(p) for p in proposals]
        return RoIOutputs(list(logits.float().split(sizes)), list(box_regression.float().split(sizes)), proposals,
                          self.box_coder, self.slot_loss("cls_loss"))

    def forward(self, features, proposals, image_shapes, targets=None):
        weighted = has_box_weights(targets)
        own_sampler = getattr(self.fg_bg_sampler, "uses_outputs", False)
        if not self.training or (self.cls_loss is None and self.box_loss is None and self.sample_weighting is None
                                 and not weighted and not own_sampler):
            return super().forward(features, proposals, image_shapes, targets)
        # Training with a loss of our own, weighted boxes, a sampler that runs the head or samples
        # re-weighted by importance: torchvision's box branch, our losses.
        proposals, matched_idxs, labels, regression_targets, label_weights = self.sample_rois(
            proposals, targets, features, image_shapes)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        weights = torch.cat([box_weights_of(t, m, l > 0, class_logits.dtype)
                             for t, m, l in zip(targets, matched_idxs, labels)])
        cls_weights = weights if label_weights is None else weights * torch.cat(label_weights).to(weights.dtype)
        loss_fn = self.slot_loss("cls_loss")
        labels_cat = torch.cat(labels)
        extra = {}
        if self.sample_weighting is not None:
            pos = torch.where(labels_cat > 0)[0]
            offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets][:-1], device=pos.device).cumsum(0)
            gt_ids = torch.cat([m + o for m, o in zip(matched_idxs, offsets)])[pos]
            num_classes = class_logits.shape[-1]
            deltas = box_regression.reshape(len(labels_cat), num_classes, 4)[pos, labels_cat[pos]]
            all_proposals = torch.cat(proposals)[pos]
            samples = PositiveSamples(
                logits=class_logits[pos], labels=labels_cat[pos], sigmoid=False, gt_ids=gt_ids,
                pred_boxes=self.box_coder.decode_single(deltas.detach(), all_proposals),
                target_boxes=self.box_coder.decode_single(torch.cat(regression_targets)[pos], all_proposals),
                cls_weights=cls_weights[pos], box_weights=weights[pos],
                cls_loss=lambda w: loss_fn(class_logits[pos].detach(), labels_cat[pos], w),
                box_loss=lambda w: self.box_loss_of(box_regression, proposals, matched_idxs, labels,
                                                    regression_targets, targets, weights.index_put((pos,), w)))
            cls_weights, extra = weigh_positives(self.sample_weighting, samples, cls_weights, pos)
        loss_box_reg = self.box_loss_of(box_regression, proposals, matched_idxs, labels, regression_targets,
                                        targets, weights)
        loss_classifier = loss_fn(class_logits, labels_cat, cls_weights)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, **extra}

    def box_loss_of(self, box_regression, proposals, matched_idxs, labels, regression_targets, targets,
                    weights) -> Tensor:
        """The box loss over the positive RoIs (fastrcnn_loss's smooth L1 by default), each
        weighted by its box, on the class-specific deltas of the RoI's label or on the boxes they
        decode to, normalised by the number of sampled RoIs as fastrcnn_loss does."""
        box_fn = self.slot_loss("box_loss")
        sampled = sum(len(x) for x in labels)
        labels_cat = torch.cat(labels)
        pos = torch.where(labels_cat > 0)[0]
        box_regression = box_regression.reshape(sampled, box_regression.size(-1) // 4, 4)
        pred = box_regression[pos, labels_cat[pos]]
        if box_fn.space == "boxes":
            pred = self.box_coder.decode_single(pred, torch.cat(proposals)[pos])
            target = torch.cat([t["boxes"][m] if len(t["boxes"]) else t["boxes"].new_zeros((len(m), 4))
                                for t, m in zip(targets, matched_idxs)])[pos].to(pred.dtype)
        else:
            target = torch.cat(regression_targets)[pos]
        normalizer = pred.new_full((len(pos),), sampled)
        return box_fn(pred, target, weights[pos], normalizer, torch.zeros_like(pos))


def one_stage_head(model: nn.Module) -> FCOSLossHead | RetinaNetLossHead:
    head = getattr(model, "head", None)
    if not isinstance(head, (FCOSLossHead, RetinaNetLossHead)):
        raise TypeError(f"{type(model).__name__} has no one-stage loss head (FCOSLossHead or RetinaNetLossHead); "
                        "build it with ablate.models.build_model")
    return head


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
    two_stage_model = isinstance(getattr(model, "roi_heads", None), LossRoIHeads)
    loss = two_stage if two_stage_model else one_stage
    if loss is None:
        raise LossSlotError(f"this loss has no {'two' if two_stage_model else 'one'}-stage form")
    set_slot(model, "cls_loss", loss)
