"""RepPoints, "RepPoints: Point Set Representation for Object Detection" (Yang et al., ICCV 2019): at
every location of P3-P7 a set of 9 points, regressed in two steps (initial, then refined), turned
into a box by the moment transform, and classified from the features a deformable convolution
samples at the initial points.

Compared line by line with the authors' code (github microsoft/RepPoints: src/reppoints_head/
reppoints_head.py, src/reppoints_assigner/point_assigner.py, src/reppoints_generator/
point_generator.py and point_target.py, configs/reppoints_moment_r50_fpn_1x.py) and mmdetection's
mmdet/models/dense_heads/reppoints_head.py with configs/reppoints/
reppoints-moment_r50_fpn-gn_head-gn_1x_coco.py (whose defaults conf/model/reppoints.yaml keeps).
docs/heads.md lists the deviations.

Point sets are stored as the authors do: per location 2 x 9 channels of (dy, dx) pairs in units of the
level's stride, relative to the location (x, y) = (column, row) x stride (no half-cell offset: the
authors' PointGenerator and mmdetection's MlvlPointGenerator(offset=0)). The (dy, dx) layout is also
the offset layout of torchvision's deform_conv2d, so the initial points minus the 3x3 kernel's own
grid are the deformable convolutions' offsets: they sample the features at the initial points. The
deformable convolutions are torchvision's, computed on CPU through grid_sample (deform_conv.py).
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation, DeformConv2d, batched_nms

from ..errors import UserInputError
from .backbones import build_backbone
from .deform_conv import GridDeformConv2d
from .detectors import NoResizeTransform
from .losses import FocalLoss, LossSlots, SmoothL1BoxLoss, box_weights_of, pairwise_iou

# Refine-stage assignment codes besides a box index (mmdetection's MaxIoUAssigner: 0 and -1).
NEGATIVE, IGNORED = -1, -2


def kernel_grid(num_points: int) -> Tensor:
    """The (dy, dx) of a k x k convolution's taps, row by row, flattened [2 k^2] (the authors'
    dcn_base_offset): what deform_conv2d adds an offset to."""
    k = math.isqrt(num_points)
    if k * k != num_points or k % 2 == 0:
        raise UserInputError(f"model.num_points={num_points}: an odd square (the deformable kernel is k x k; "
                             "the paper's 9)")
    r = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], dim=1).flatten()


def moment_boxes(points: Tensor, transfer: Tensor, moment_mul: float) -> Tensor:
    """The moment transform (points2bbox, transform_method='moment'): points [..., n, 2] (x, y) ->
    boxes [..., 4], centre the points' mean, half-sides their standard deviation (unbiased, torch.std)
    times exp(transfer) (a learned (w, h) pair); transfer's gradient is scaled by moment_mul."""
    mean, std = points.mean(dim=-2), points.std(dim=-2)
    scaled = transfer * moment_mul + transfer.detach() * (1 - moment_mul)
    half = std * torch.exp(scaled)
    return torch.cat([mean - half, mean + half], dim=-1)


def point_assign(points: Tensor, point_levels: Tensor, gt_boxes: Tensor, scale: float, pos_num: int) -> Tensor:
    """The authors' PointAssigner: each box goes to the level trunc((log2(w / scale) + log2(h / scale)) / 2),
    clamped to the levels present, and there to the pos_num locations nearest its centre in the
    distance ||(p - c) / (w, h)||; a location claimed by several boxes keeps the one nearest it (a later
    box replaces an earlier only when strictly nearer). points [N, 2] (x, y) in pixels, point_levels
    [N] the level L (stride 2^L). Returns each location's box index, -1 for none."""
    assigned = torch.full((len(points),), -1, dtype=torch.long, device=points.device)
    if len(points) == 0 or len(gt_boxes) == 0:
        return assigned
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    sizes = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)
    levels = torch.trunc((torch.log2(sizes[:, 0] / scale) + torch.log2(sizes[:, 1] / scale)) / 2).long()
    levels = levels.clamp(int(point_levels.min()), int(point_levels.max()))
    best = torch.full((len(points),), math.inf, device=points.device)
    for g in range(len(gt_boxes)):
        on_level = torch.where(point_levels == levels[g])[0]
        distance = ((points[on_level] - centres[g]) / sizes[g]).norm(dim=1)
        nearest, index = distance.topk(min(pos_num, len(on_level)), largest=False)
        index = on_level[index]
        closer = nearest < best[index]
        assigned[index[closer]] = g
        best[index[closer]] = nearest[closer]
    return assigned


def max_iou_assign(boxes: Tensor, gt_boxes: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float) -> Tensor:
    """mmdetection's MaxIoUAssigner (gt_max_assign_all): a box is negative when its largest IoU with
    the ground truth is below neg_iou, positive (that box's index) from pos_iou, ignored between; then
    each ground-truth box takes every box of its own largest IoU as positive, when that IoU is at
    least min_pos_iou and above 0 (a box that overlaps nothing takes none: see docs/heads.md)."""
    if len(gt_boxes) == 0:
        return torch.full((len(boxes),), NEGATIVE, dtype=torch.long, device=boxes.device)
    overlaps = pairwise_iou(gt_boxes, boxes)  # [G, N]
    best, best_gt = overlaps.max(dim=0)
    assigned = torch.full((len(boxes),), IGNORED, dtype=torch.long, device=boxes.device)
    assigned[best < neg_iou] = NEGATIVE
    assigned[best >= pos_iou] = best_gt[best >= pos_iou]
    gt_best = overlaps.max(dim=1).values
    for g in range(len(gt_boxes)):
        if gt_best[g] >= min_pos_iou and gt_best[g] > 0:
            assigned[overlaps[g] == gt_best[g]] = g
    return assigned


class ConvTower(nn.Module):
    """`convs` 3x3 conv-GN-ReLU layers (mmcv's ConvModule with the authors' GN config), kept under
    `.conv` as torchvision's heads keep their towers (the head tricks find them there)."""

    def __init__(self, in_channels: int, channels: int, convs: int, norm_groups: int):
        super().__init__()
        norm = partial(nn.GroupNorm, norm_groups)
        self.conv = nn.Sequential(*[Conv2dNormActivation(in_channels if i == 0 else channels, channels, 3,
                                                         norm_layer=norm) for i in range(convs)])

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class RepPointsHead(LossSlots, nn.Module):
    """The shared head over the pyramid levels, its targets, losses and decoding. Slots: cls_loss (the
    focal loss on the refine stage's labels) and box_loss (both stages' point losses: by default smooth
    L1 on the pseudo boxes divided by point_base_scale x stride, the "deltas" form; a "boxes"-form loss
    takes the pseudo boxes in pixels), each stage's term times its weight (init 0.5, refine 1.0)."""

    slot_attrs = {"cls_loss": "cls_loss", "box_loss": "box_loss"}
    detector = "reppoints"
    loss_per_level = True  # mmdetection RepPointsHead.loss_by_feat: multi_apply(loss_by_feat_single) per level

    def __init__(self, in_channels: int, num_classes: int, strides: list[int], cfg):
        super().__init__()
        self.num_classes, self.strides = num_classes, list(strides)
        self.num_points = int(cfg.num_points)
        self.register_buffer("kernel_offsets", kernel_grid(self.num_points).view(1, -1, 1, 1), persistent=False)
        k = math.isqrt(self.num_points)
        feat, point_feat, convs = int(cfg.feat_channels), int(cfg.point_feat_channels), int(cfg.head_convs)
        if convs and feat % int(cfg.norm_groups):
            raise UserInputError(f"model.feat_channels={feat}: the towers' GroupNorm needs a multiple of "
                                 f"model.norm_groups={cfg.norm_groups}")
        self.classification_head = ConvTower(in_channels, feat, convs, int(cfg.norm_groups))
        self.regression_head = ConvTower(in_channels, feat, convs, int(cfg.norm_groups))
        tower_out = feat if convs else in_channels
        self.cls_dcn = GridDeformConv2d(tower_out, point_feat, k, padding=k // 2, bias=False)
        self.cls_act = nn.ReLU(inplace=True)
        self.cls_out = nn.Conv2d(point_feat, num_classes, 1)
        self.init_conv = nn.Sequential(nn.Conv2d(tower_out, point_feat, 3, padding=1), nn.ReLU(inplace=True))
        self.init_out = nn.Conv2d(point_feat, 2 * self.num_points, 1)
        self.refine_dcn = GridDeformConv2d(tower_out, point_feat, k, padding=k // 2, bias=False)
        self.refine_act = nn.ReLU(inplace=True)
        self.refine_out = nn.Conv2d(point_feat, 2 * self.num_points, 1)
        self.moment_transfer = nn.Parameter(torch.zeros(2))
        # The authors' init_weights: every conv (towers, both deformable ones, the outputs) normal(0, 0.01),
        # biases 0 but the classifier's, -log((1 - p) / p) for a prior p = 0.01.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2d)):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        prior = float(cfg.prior_prob)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))
        self.gradient_mul, self.moment_mul = float(cfg.gradient_mul), float(cfg.moment_mul)
        self.point_base_scale = float(cfg.point_base_scale)
        self.assigner_scale, self.assigner_pos_num = float(cfg.point_assigner.scale), int(cfg.point_assigner.pos_num)
        refine = cfg.refine_assigner
        self.pos_iou, self.neg_iou = float(refine.pos_iou_thr), float(refine.neg_iou_thr)
        self.min_pos_iou = float(refine.min_pos_iou)
        self.smooth_l1_beta = float(cfg.smooth_l1_beta)
        self.init_box_weight, self.refine_box_weight = float(cfg.init_box_weight), float(cfg.refine_box_weight)
        self.score_thresh, self.nms_thresh = float(cfg.score_thresh), float(cfg.nms_thresh)
        self.topk_candidates, self.detections_per_img = int(cfg.topk_candidates), int(cfg.detections_per_img)
        self.min_bbox_size = float(cfg.min_bbox_size)

    def default_loss(self, slot: str) -> nn.Module:
        if slot == "cls_loss":
            return FocalLoss()
        if slot == "box_loss":
            return SmoothL1BoxLoss(self.smooth_l1_beta)
        raise KeyError(slot)

    def forward_level(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cls_feat, pts_feat = self.classification_head(x), self.regression_head(x)
        pts_init = self.init_out(self.init_conv(pts_feat))
        # the classifier and the refinement read the features at the initial points; only gradient_mul of
        # their gradient reaches the initial points (the rest is detached)
        scaled = (1 - self.gradient_mul) * pts_init.detach() + self.gradient_mul * pts_init
        offset = scaled - self.kernel_offsets.to(scaled.dtype)
        cls = self.cls_out(self.cls_act(self.cls_dcn(cls_feat, offset)))
        pts_refine = self.refine_out(self.refine_act(self.refine_dcn(pts_feat, offset))) + pts_init.detach()
        return cls, pts_init, pts_refine

    def forward(self, features: list[Tensor]) -> dict[str, list[Tensor]]:
        cls, init, refine = zip(*(self.forward_level(x) for x in features))
        return {"cls": list(cls), "pts_init": list(init), "pts_refine": list(refine)}

    def grid(self, maps: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Every location of the levels, level by level and row by row: (x, y) in pixels [N, 2], its
        stride [N] and its level L = log2(stride) [N]."""
        points, strides = [], []
        for m, s in zip(maps, self.strides):
            h, w = m.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=m.device), torch.arange(w, device=m.device), indexing="ij")
            points.append(torch.stack([xs.flatten(), ys.flatten()], dim=1).float() * s)
            strides.append(torch.full((h * w,), float(s), device=m.device))
        stride = torch.cat(strides)
        return torch.cat(points), stride, torch.log2(stride).round().long()

    def valid(self, maps: list[Tensor], size: tuple[int, int]) -> Tensor:
        """The locations of an image's own part of the padded batch: ceil(side / stride) per side (the
        authors' valid_flags, on the image's size)."""
        flags = []
        for m, s in zip(maps, self.strides):
            h, w = m.shape[-2:]
            rows = torch.arange(h, device=m.device) < math.ceil(size[0] / s)
            cols = torch.arange(w, device=m.device) < math.ceil(size[1] / s)
            flags.append((rows[:, None] & cols[None, :]).flatten())
        return torch.cat(flags)

    @staticmethod
    def by_location(maps: list[Tensor]) -> Tensor:
        """The levels' maps [B, C, H, W] as one [B, N, C] (float), locations in grid()'s order."""
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1).float()

    def point_sets(self, maps: list[Tensor], points: Tensor, stride: Tensor) -> Tensor:
        """The levels' (dy, dx) maps [B, 2n, H, W] as point sets [B, N, n, 2] of (x, y) in pixels."""
        yx = self.by_location(maps).unflatten(2, (self.num_points, 2))
        return yx.flip(-1) * stride[:, None, None] + points[:, None, :]

    def boxes(self, point_sets: Tensor) -> Tensor:
        return moment_boxes(point_sets, self.moment_transfer, self.moment_mul)

    def compute_loss(self, outputs: dict[str, list[Tensor]], targets: list[dict], image_sizes) -> dict[str, Tensor]:
        maps = outputs["cls"]
        points, stride, level = self.grid(maps)
        level_index = level - level.min()
        logits = self.by_location(maps)
        init_boxes = self.boxes(self.point_sets(outputs["pts_init"], points, stride))
        refine_boxes = self.boxes(self.point_sets(outputs["pts_refine"], points, stride))
        cls_parts: dict[str, list[Tensor]] = {k: [] for k in ("logits", "targets", "weights", "levels")}
        stages = {"init": {k: [] for k in ("pred", "target", "weights", "scale", "levels")},
                  "refine": {k: [] for k in ("pred", "target", "weights", "scale", "levels")}}
        counts = {"init": 0, "refine": 0}
        for i, (t, size) in enumerate(zip(targets, image_sizes)):
            valid = torch.where(self.valid(maps, size))[0]
            gt = t["boxes"].to(init_boxes.dtype)
            with torch.no_grad():
                init_assigned = point_assign(points[valid], level[valid], gt, self.assigner_scale,
                                             self.assigner_pos_num)
                refine_assigned = max_iou_assign(init_boxes[i, valid].detach(), gt, self.pos_iou, self.neg_iou,
                                                 self.min_pos_iou)
            # classification on the refine stage's labels; the ignored (IoU between the thresholds) left out
            kept = refine_assigned != IGNORED
            rows, matched = valid[kept], refine_assigned[kept]
            positive = matched >= 0
            cls_targets = torch.zeros((len(rows), self.num_classes), dtype=logits.dtype, device=logits.device)
            cls_targets[positive, t["labels"][matched[positive]]] = 1.0
            cls_parts["logits"].append(logits[i, rows])
            cls_parts["targets"].append(cls_targets)
            cls_parts["weights"].append(box_weights_of(t, matched.clamp(min=0), positive, logits.dtype))
            cls_parts["levels"].append(level_index[rows])
            for stage, assigned, boxes in (("init", init_assigned, init_boxes), ("refine", refine_assigned,
                                                                                  refine_boxes)):
                pos = valid[assigned >= 0]
                matched_gt = assigned[assigned >= 0]
                parts = stages[stage]
                parts["pred"].append(boxes[i, pos])
                parts["target"].append(gt[matched_gt])
                parts["weights"].append(box_weights_of(t, matched_gt, torch.ones_like(matched_gt, dtype=torch.bool),
                                                       boxes.dtype))
                parts["scale"].append(self.point_base_scale * stride[pos])
                parts["levels"].append(level_index[pos])
                # the authors' normaliser: the positives of each image, at least 1 per image
                counts[stage] += max(len(pos), 1)
        cls_fn = self.slot_loss("cls_loss")
        logits_cat, cls_targets_cat, cls_weights, cls_levels = (torch.cat(v) for v in cls_parts.values())
        losses = {"classification": cls_fn(logits_cat, cls_targets_cat, cls_weights,
                                           cls_weights.new_full(cls_weights.shape, counts["refine"]), cls_levels)}
        box_fn = self.slot_loss("box_loss")
        for stage, weight in (("init", self.init_box_weight), ("refine", self.refine_box_weight)):
            pred, target, weights, scale, levels = (torch.cat(v) for v in stages[stage].values())
            if box_fn.space != "boxes":  # the authors' normalisation: by the level's base scale 4 x stride
                pred, target = pred / scale[:, None], target / scale[:, None]
            normalizer = weights.new_full(weights.shape, counts[stage])
            losses[f"points_{stage}"] = weight * box_fn(pred, target, weights, normalizer, levels)
        return losses

    @torch.no_grad()
    def detect(self, outputs: dict[str, list[Tensor]], image_sizes) -> list[dict[str, Tensor]]:
        """mmdetection's test: per level, the sigmoid scores above score_thresh, the topk_candidates best
        (location, class) pairs, their refine points' boxes clipped to the image; boxes with a side of
        min_bbox_size or less dropped; class-wise NMS at nms_thresh, the detections_per_img best."""
        maps = outputs["cls"]
        points, stride, _ = self.grid(maps)
        scores_all = self.by_location(maps).sigmoid()
        sets = self.point_sets(outputs["pts_refine"], points, stride)
        sizes = [m.shape[-2] * m.shape[-1] for m in maps]
        results = []
        for i, (h_img, w_img) in enumerate(image_sizes):
            valid = self.valid(maps, (h_img, w_img))
            boxes, scores, labels = [sets.new_zeros((0, 4))], [sets.new_zeros(0)], [points.new_zeros(0).long()]
            for rows in torch.arange(len(valid), device=valid.device).split(sizes):
                rows = rows[valid[rows]]
                level_scores = scores_all[i, rows].flatten()
                keep = torch.where(level_scores > self.score_thresh)[0]
                if len(keep) == 0:  # (the moment transform of no point set would warn)
                    continue
                top, best = level_scores[keep].topk(min(self.topk_candidates, len(keep)))
                keep = keep[best]
                where = rows[torch.div(keep, self.num_classes, rounding_mode="floor")]
                box = self.boxes(sets[i, where])
                box[:, 0::2] = box[:, 0::2].clamp(0, w_img)
                box[:, 1::2] = box[:, 1::2].clamp(0, h_img)
                boxes.append(box)
                scores.append(top)
                labels.append(keep % self.num_classes)
            boxes_cat, scores_cat, labels_cat = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            wh = boxes_cat[:, 2:] - boxes_cat[:, :2]
            big = (wh > self.min_bbox_size).all(dim=1)
            boxes_cat, scores_cat, labels_cat = boxes_cat[big], scores_cat[big], labels_cat[big]
            kept = batched_nms(boxes_cat, scores_cat, labels_cat, self.nms_thresh)[:self.detections_per_img]
            results.append({"boxes": boxes_cat[kept], "scores": scores_cat[kept], "labels": labels_cat[kept]})
        return results


class RepPoints(nn.Module):
    """Backbone with FPN (P3-P7), the RepPoints head; torchvision's detector interface: a list of images
    (and targets in training) in, a dict of losses or a list of detections out."""

    def __init__(self, backbone: nn.Module, head: RepPointsHead, transform: NoResizeTransform):
        super().__init__()
        self.backbone, self.head, self.transform = backbone, head, transform

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("RepPoints needs targets in training mode")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        outputs = self.head(list(self.backbone(batch.tensors).values()))
        if self.training:
            return self.head.compute_loss(outputs, targets, batch.image_sizes)
        detections = self.head.detect(outputs, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def build_reppoints(cfg, num_classes: int, image_size: int) -> RepPoints:
    """RepPoints of cfg.model: the FPN over `levels` plus `extra_levels` (P6, P7), the head shared by all."""
    levels = list(cfg.levels)
    if levels != sorted(levels) or not levels:
        raise UserInputError(f"model.levels={levels}: list the FPN levels finest first (level L has stride 2^L)")
    backbone = build_backbone(cfg.backbone, levels, int(cfg.extra_levels), cfg.fpn_channels, two_stage=False)
    all_levels = levels + [levels[-1] + k + 1 for k in range(int(cfg.extra_levels))]
    head = RepPointsHead(backbone.out_channels, num_classes, [2 ** lv for lv in all_levels], cfg)
    transform = NoResizeTransform(image_size, image_size, list(cfg.image_mean), list(cfg.image_std))
    return RepPoints(backbone, head, transform)
