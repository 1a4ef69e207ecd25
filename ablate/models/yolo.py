"""YOLOv3 (Redmon and Farhadi 2018) as GluonCV implements it for the Bag of Freebies paper (Zhang et
al. 2019): gluoncv/model_zoo/yolo/yolo3.py (YOLOV3, YOLODetectionBlockV3, YOLOOutputV3),
yolo_target.py (YOLOV3PrefetchTargetGenerator, YOLOV3DynamicTargetGeneratorSimple, YOLOV3TargetMerger)
and gluoncv/loss.py (YOLOV3Loss). conf/model/yolov3.yaml says what was compared and where this
differs.

Three levels (strides 8, 16, 32) from the project's FPN, on each a detection block (1x1 and 3x3
conv-BN-LeakyReLU(0.1), a 3x3 tip) and a 1x1 output of 3 anchors x (tx, ty, tw, th, objectness,
K classes). Training targets: each ground-truth box goes to the one anchor of the nine whose shape
(both centred) overlaps it most, at the cell of that anchor's level holding the box's centre
(a later box in the same cell and anchor replaces an earlier one, as GluonCV's loop does). Every
other prediction is a negative for the objectness loss unless its decoded box overlaps some
ground-truth box by more than ignore_thresh: then it is ignored.

Losses, each summed over the predictions of an image and averaged over the images (GluonCV's
train_yolo3.py: trainer.step(batch_size) divides the batch's summed gradient by its size):
- objectness: sigmoid BCE, target 1 at the positives (weighted by their box's weight, MixUp's
  ratio), 0 at the negatives, none at the ignored;
- classification (cls_loss slot): sigmoid BCE over the K classes of each positive, by default
  losses.SigmoidBCELoss (label smoothing smooths its targets);
- box (box_loss slot): by default YOLOv3BoxLoss on the encoded (tx, ty, tw, th): BCE of
  sigmoid(tx, ty) against the centre's place in its cell, L1 of (tw, th) against log(w / anchor_w,
  h / anchor_h), each positive weighted by 2 - w h / (W H) (its box's share of the image area);
  an IoU-type loss instead takes the decoded boxes, weighted by the boxes' weights alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from ..errors import UserInputError
from .backbones import build_backbone
from .detectors import NoResizeTransform
from .losses import LossSlots, SigmoidBCELoss, box_weights_of

# torchvision's BoxCoder clamp of exp's argument (log(1000 / 16)): exp(tw) of an untrained head
# cannot overflow a decoded box.
SCALE_CLAMP = math.log(1000.0 / 16)


def conv_bn_leaky(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Darknet's convolution: conv (no bias), BatchNorm, LeakyReLU(0.1) (GluonCV's _conv2d)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.1, inplace=True))


def detection_block(channels: int, convs: int) -> nn.Sequential:
    """YOLODetectionBlockV3 on a `channels`-wide level: `convs` convolutions alternating 1x1 to
    channels / 2 and 3x3 back to channels (the paper's 5), then the 3x3 tip."""
    layers, cin = [], channels
    for i in range(convs):
        cout, kernel = (channels // 2, 1) if i % 2 == 0 else (channels, 3)
        layers.append(conv_bn_leaky(cin, cout, kernel))
        cin = cout
    layers.append(conv_bn_leaky(cin, channels, 3))
    return nn.Sequential(*layers)


def shape_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """[M, A]: the IoU of each box (w, h) with each anchor (w, h), both centred at one point (GluonCV's
    prefetch target generator: zero-centre boxes through box_iou)."""
    inter = torch.min(wh[:, None, 0], anchors[None, :, 0]) * torch.min(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter)


class YOLOv3BoxLoss(nn.Module):
    """YOLOv3's box loss (GluonCV YOLOV3Loss): on each positive, sigmoid BCE of the raw (tx, ty)
    against the centre's offset in its cell plus L1 of the raw (tw, th) against log(w / anchor_w),
    log(h / anchor_h), the four summed, times the sample's weight (its box's weight times
    2 - w h / (W H)), divided by the normalizer (the number of images) and summed."""
    space = "deltas"

    def forward(self, pred: Tensor, target: Tensor, box_weights: Tensor, normalizer: Tensor,
                levels: Tensor | None = None) -> Tensor:
        centre = F.binary_cross_entropy_with_logits(pred[:, :2], target[:, :2], reduction="none").sum(dim=1)
        scale = (pred[:, 2:] - target[:, 2:]).abs().sum(dim=1)
        return ((centre + scale) * box_weights / normalizer).sum()


class YOLOv3Head(LossSlots, nn.Module):
    """The detection blocks and outputs of each level, YOLOv3's targets, losses and decoding."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss"}
    detector = "yolov3"

    def __init__(self, channels: int, num_classes: int, anchors: Tensor, strides: list[int], convs: int,
                 ignore_thresh: float):
        super().__init__()
        self.num_classes = num_classes
        self.per_level = anchors.shape[0] // len(strides)
        self.register_buffer("anchors", anchors)  # [levels x per_level, 2] (w, h) in pixels, finest first
        self.strides = list(strides)
        self.ignore_thresh = ignore_thresh
        self.blocks = nn.ModuleList(detection_block(channels, convs) for _ in strides)
        self.outputs = nn.ModuleList(nn.Conv2d(channels, self.per_level * (5 + num_classes), 1) for _ in strides)

    def default_loss(self, slot: str) -> nn.Module:
        return {"cls_loss": SigmoidBCELoss, "box_loss": YOLOv3BoxLoss}[slot]()

    @torch.no_grad()
    def prior_biases(self, image_size: int, objects_per_image: float, class_prior: float) -> None:
        """Output biases from priors (ultralytics/yolov3 models/yolo.py _initialize_biases, mmyolo's
        YOLOv5HeadModule.init_weights): objectness ln(objects_per_image / cells of the level at
        image_size), each class ln(class_prior / (K - 0.99)), so the first steps do not spend
        themselves pushing thousands of 0.5 objectness scores down."""
        for output, stride in zip(self.outputs, self.strides):
            bias = output.bias.view(self.per_level, 5 + self.num_classes)
            bias[:, 4] += math.log(objects_per_image / (image_size / stride) ** 2)
            bias[:, 5:] += math.log(class_prior / (self.num_classes - 0.99))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Per level [N, H, W, anchors, 5 + K]: (tx, ty, tw, th, objectness, classes), raw."""
        out = []
        for x, block, output in zip(features, self.blocks, self.outputs):
            y = output(block(x))
            n, _, h, w = y.shape
            out.append(y.view(n, self.per_level, 5 + self.num_classes, h, w).permute(0, 3, 4, 1, 2))
        return out

    def grid(self, raw: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """For the flattened predictions (level, y, x, anchor): each one's cell (x, y) [S, 2], anchor
        (w, h) [S, 2] and stride [S]."""
        cells, anchors, strides = [], [], []
        for level, r in enumerate(raw):
            h, w, a = r.shape[1:4]
            ys, xs = torch.meshgrid(torch.arange(h, device=r.device), torch.arange(w, device=r.device), indexing="ij")
            cells.append(torch.stack([xs, ys], -1)[:, :, None].expand(h, w, a, 2).reshape(-1, 2))
            level_anchors = self.anchors[level * self.per_level:(level + 1) * self.per_level]
            anchors.append(level_anchors.expand(h * w, a, 2).reshape(-1, 2))
            strides.append(torch.full((h * w * a,), self.strides[level], device=r.device))
        return torch.cat(cells).float(), torch.cat(anchors).float(), torch.cat(strides).float()

    @staticmethod
    def decode(deltas: Tensor, cells: Tensor, anchors: Tensor, strides: Tensor) -> Tensor:
        """(tx, ty, tw, th) -> x1, y1, x2, y2 in pixels: centre (sigmoid(t) + cell) x stride, size
        exp(t) x anchor (YOLOOutputV3)."""
        centre = (deltas[:, :2].sigmoid() + cells) * strides[:, None]
        size = deltas[:, 2:].clamp(max=SCALE_CLAMP).exp() * anchors
        return torch.cat([centre - size / 2, centre + size / 2], dim=1)

    def level_offsets(self, raw: list[Tensor]) -> list[int]:
        sizes = [r.shape[1] * r.shape[2] * r.shape[3] for r in raw]
        return [sum(sizes[:i]) for i in range(len(sizes))]

    def assign(self, boxes: Tensor, raw: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Each ground-truth box's prediction index (in the flattened order) and best anchor of the
        nine: the anchor of largest shape IoU, the cell of its level holding the box's centre."""
        wh = boxes[:, 2:] - boxes[:, :2]
        best = shape_iou(wh, self.anchors.to(wh.dtype)).argmax(dim=1)
        level = torch.div(best, self.per_level, rounding_mode="floor")
        offsets = torch.tensor(self.level_offsets(raw), device=boxes.device)
        heights = torch.tensor([r.shape[1] for r in raw], device=boxes.device)
        widths = torch.tensor([r.shape[2] for r in raw], device=boxes.device)
        stride = torch.tensor(self.strides, device=boxes.device, dtype=boxes.dtype)[level]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        gx = torch.minimum((centre[:, 0] / stride).floor().long(), widths[level] - 1).clamp(min=0)
        gy = torch.minimum((centre[:, 1] / stride).floor().long(), heights[level] - 1).clamp(min=0)
        index = offsets[level] + (gy * widths[level] + gx) * self.per_level + best % self.per_level
        return index, best

    def compute_loss(self, raw: list[Tensor], targets: list[dict], image_sizes: list[tuple[int, int]]
                     ) -> dict[str, Tensor]:
        # in float32 under autocast too: box coordinates in bf16 are 2 px apart at 300 px
        flat = torch.cat([r.flatten(1, 3) for r in raw], dim=1).float()  # [N, S, 5 + K]
        cells, anchors, strides = self.grid(raw)
        dtype, n_images = flat.dtype, len(targets)
        cls_fn = self.slot_loss("cls_loss")
        box_fn = self.slot_loss("box_loss")
        obj_loss = flat.new_zeros(())
        parts = {k: [] for k in ("logits", "cls_targets", "pred", "target", "box_weights", "cls_weights", "levels")}
        level_of = torch.repeat_interleave(torch.arange(len(raw), device=flat.device),
                                           torch.tensor([r[0].numel() // r.shape[-1] for r in raw], device=flat.device))
        for preds, t, (height, width) in zip(flat, targets, image_sizes):
            boxes = t["boxes"].to(dtype)
            obj_target = torch.zeros(len(preds), dtype=dtype, device=preds.device)
            obj_weight = torch.ones_like(obj_target)
            if len(boxes):
                with torch.no_grad():
                    decoded = self.decode(preds[:, :4].detach(), cells, anchors, strides)
                    obj_weight[box_iou(decoded, boxes).max(dim=1).values > self.ignore_thresh] = 0
                index, best = self.assign(boxes, raw)
                # one box per prediction, the last one written wins (GluonCV's loop)
                owner = {int(i): m for m, i in enumerate(index.tolist())}
                pos = torch.tensor(list(owner), device=preds.device, dtype=torch.long)
                matched = torch.tensor(list(owner.values()), device=preds.device, dtype=torch.long)
                weights = box_weights_of(t, matched, torch.ones_like(matched, dtype=torch.bool), dtype)
                obj_target[pos], obj_weight[pos] = 1.0, weights
                cls_targets = torch.zeros((len(pos), self.num_classes), dtype=dtype, device=preds.device)
                cls_targets[torch.arange(len(pos)), t["labels"][matched]] = 1.0
                parts["logits"].append(preds[pos, 5:])
                parts["cls_targets"].append(cls_targets)
                parts["cls_weights"].append(weights)
                parts["levels"].append(level_of[pos])
                gt = boxes[matched]
                if box_fn.space == "boxes":
                    parts["pred"].append(self.decode(preds[pos, :4], cells[pos], anchors[pos], strides[pos]))
                    parts["target"].append(gt)
                    parts["box_weights"].append(weights)
                else:
                    gt_wh = gt[:, 2:] - gt[:, :2]
                    centre = (gt[:, :2] + gt[:, 2:]) / 2 / strides[pos, None] - cells[pos]
                    scale = torch.log(gt_wh / self.anchors[best[matched]].to(dtype))
                    parts["pred"].append(preds[pos, :4])
                    parts["target"].append(torch.cat([centre, scale], dim=1))
                    size_weight = 2.0 - gt_wh[:, 0] * gt_wh[:, 1] / (height * width)
                    parts["box_weights"].append(weights * size_weight)
            bce = F.binary_cross_entropy_with_logits(preds[:, 4], obj_target, reduction="none")
            obj_loss = obj_loss + (bce * obj_weight).sum() / n_images
        if parts["logits"]:
            logits, cls_targets, pred, target, box_weights, cls_weights, levels = (
                torch.cat(parts[k]) for k in ("logits", "cls_targets", "pred", "target", "box_weights",
                                              "cls_weights", "levels"))
        else:  # no box in the batch: zero losses that still reach the parameters
            logits, cls_targets = flat[:0, 0, 5:], flat.new_zeros((0, self.num_classes))
            pred, target = flat[:0, 0, :4], flat.new_zeros((0, 4))
            box_weights = cls_weights = flat.new_zeros((0,))
            levels = torch.zeros(0, dtype=torch.long, device=flat.device)
        normalizer = cls_weights.new_full(cls_weights.shape, n_images)
        return {"objectness": obj_loss,
                "classification": cls_fn(logits, cls_targets, cls_weights, normalizer, levels),
                "bbox_regression": box_fn(pred, target, box_weights, normalizer, levels)}

    @torch.no_grad()
    def detect(self, raw: list[Tensor], image_sizes: list[tuple[int, int]], score_thresh: float,
               nms_thresh: float, topk_candidates: int, detections_per_img: int) -> list[dict[str, Tensor]]:
        """Score sigmoid(objectness) x sigmoid(class) of every prediction and class, those above
        score_thresh, the topk_candidates best of them, class-wise NMS, the detections_per_img best."""
        flat = torch.cat([r.flatten(1, 3) for r in raw], dim=1).float()
        cells, anchors, strides = self.grid(raw)
        results = []
        for preds, size in zip(flat, image_sizes):
            boxes = clip_boxes_to_image(self.decode(preds[:, :4], cells, anchors, strides), size)
            scores = (preds[:, 4:5].sigmoid() * preds[:, 5:].sigmoid()).flatten()
            keep = torch.where(scores > score_thresh)[0]
            scores, best = scores[keep].topk(min(topk_candidates, len(keep)))
            keep = keep[best]
            box_idx, labels = torch.div(keep, self.num_classes, rounding_mode="floor"), keep % self.num_classes
            boxes = boxes[box_idx]
            kept = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
            results.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
        return results


class YOLOv3(nn.Module):
    """Backbone with FPN (P3-P5), YOLOv3's head; torchvision's detector interface: a list of images
    (and targets in training) in, a dict of losses or a list of detections out."""

    def __init__(self, backbone: nn.Module, head: YOLOv3Head, transform: NoResizeTransform, cfg):
        super().__init__()
        self.backbone, self.head, self.transform = backbone, head, transform
        self.score_thresh, self.nms_thresh = float(cfg.score_thresh), float(cfg.nms_thresh)
        self.topk_candidates, self.detections_per_img = int(cfg.topk_candidates), int(cfg.detections_per_img)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("YOLOv3 needs targets in training mode")
        image_list, targets = self.transform(images, targets)
        raw = self.head(list(self.backbone(image_list.tensors).values()))
        if self.training:
            return self.head.compute_loss(raw, targets, image_list.image_sizes)
        return self.head.detect(raw, image_list.image_sizes, self.score_thresh, self.nms_thresh,
                                self.topk_candidates, self.detections_per_img)


def build_yolov3(cfg, num_classes: int, image_size: int) -> YOLOv3:
    """YOLOv3 of cfg.model: the FPN over levels 3-5, the nine anchors scaled from anchor_image_size
    to image_size, three per level (smallest on the finest)."""
    levels = list(cfg.levels)
    anchors = torch.tensor([list(a) for a in cfg.anchors], dtype=torch.float32) * (image_size / cfg.anchor_image_size)
    if anchors.ndim != 2 or anchors.shape[1] != 2 or len(anchors) % len(levels):
        raise UserInputError(f"model.anchors: {len(cfg.anchors)} (w, h) pairs, not the same number per level of "
                             f"model.levels={levels}")
    if cfg.head_convs < 0:
        raise UserInputError(f"model.head_convs={cfg.head_convs}: the detection block's convolutions, 0 or more")
    backbone = build_backbone(cfg.backbone, levels, 0, cfg.fpn_channels, two_stage=False)
    head = YOLOv3Head(backbone.out_channels, num_classes, anchors, [2 ** lv for lv in levels], int(cfg.head_convs),
                      float(cfg.ignore_thresh))
    if cfg.bias_prior is not None:
        head.prior_biases(image_size, float(cfg.bias_prior.objects_per_image), float(cfg.bias_prior.class_prior))
    transform = NoResizeTransform(image_size, image_size, list(cfg.image_mean), list(cfg.image_std),
                                  size_divisible=2 ** levels[-1])
    return YOLOv3(backbone, head, transform, cfg)
