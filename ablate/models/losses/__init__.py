"""Loss plumbing: per-model places (slots) where a trick sets the classification loss, the box loss
or the RoI sampler, and per-box weights honoured by every loss term, without touching torchvision's
module-level functions.

torchvision's heads compute their losses with module-level functions (`sigmoid_focal_loss` in
fcos.py and retinanet.py, `fastrcnn_loss` in roi_heads.py). Patching those names would change
every model in the process, and several runs of a sweep share one process. So the builders in
detectors.py use the small subclasses of this package: `slots.py` (the slot machinery: LossSlots,
set_slot, current_slot, per-box weights), `terms.py` (the loss terms a slot holds), `iou.py` (the
IoU helpers and IoU-type losses), `one_stage.py` (FCOS's and RetinaNet's heads), `two_stage.py`
(Faster R-CNN's RPN and RoI heads); the other heads' losses live beside their models (yolo.py,
ssd.py, centernet.py, cornernet.py, reppoints.py, rfcn.py). A new head adds its slots to the table below. A trick sets a slot with `set_slot(model, slot, value)`,
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

from .iou import aligned_iou, iou_type_loss, pairwise_iou
from .one_stage import FCOSLossHead, RetinaNetLossHead, one_stage_head
from .slots import (BOX_SPACES, LossSlotError, LossSlots, PositiveSamples, RoIOutputs, box_weights_of, check_box_space,
                    current_slot, describe_slots, detector_name, has_box_weights, set_cls_loss, set_slot, slot_holders,
                    weigh_positives)
from .terms import (BalancedL1Loss, CrossEntropyLoss, FocalLoss, GIoUBoxLoss, IoUTypeLoss, L1BoxLoss, ScaledLoss,
                    SigmoidBCELoss, SmoothL1BoxLoss, SoftmaxFocalLoss, balanced_l1, smooth_binary_targets,
                    soft_focal_loss)
from .two_stage import LossRoIHeads, LossRPN

__all__ = ["BOX_SPACES", "BalancedL1Loss", "CrossEntropyLoss", "FCOSLossHead", "FocalLoss", "GIoUBoxLoss", "IoUTypeLoss",
           "L1BoxLoss", "LossRPN", "LossRoIHeads", "LossSlotError", "LossSlots", "PositiveSamples", "RetinaNetLossHead",
           "RoIOutputs", "ScaledLoss", "SigmoidBCELoss", "SmoothL1BoxLoss", "SoftmaxFocalLoss", "aligned_iou",
           "balanced_l1", "box_weights_of", "check_box_space", "current_slot", "describe_slots", "detector_name",
           "has_box_weights", "iou_type_loss", "one_stage_head", "pairwise_iou", "set_cls_loss", "set_slot",
           "slot_holders", "smooth_binary_targets", "soft_focal_loss", "weigh_positives"]
