"""CornerNet, "Detecting Objects as Paired Keypoints" (Law and Deng, ECCV 2018): each object is a pair
of keypoints at stride 4, its top-left and its bottom-right corner, each found on a class heatmap
after corner pooling, refined by a sub-pixel offset and paired with the other by a 1-d embedding
(associative embedding: pulled together within an object, pushed apart between objects).

Compared line by line with the authors' code (github princeton-vl/CornerNet): models/CornerNet.py
(the `pool` module, tl_pool/br_pool, the loss weights), models/py_utils/kp.py (heads, their init,
AELoss), models/py_utils/kp_utils.py (make_kp_layer, _neg_loss, _sigmoid, _ae_loss, _regr_loss,
_nms, _topk, _decode), models/py_utils/_cpools (the four corner pools), sample/coco.py and
sample/utils.py (targets, gaussian_radius, draw_gaussian), test/coco.py (decoding, soft-NMS, top
100), config/CornerNet.json and db/detection.py (defaults); and with mmdetection's CornerHead
(mmdet/models/dense_heads/corner_head.py, BiCornerPool), its gaussian_target.py and ae_loss.py, and
mmcv's CornerPool (mmcv/ops/corner_pool.py, the cummax form used here). docs/heads.md lists the
deviations.

The features at stride 4 are the FPN's finest level, as for CenterNet (build_on_finest_level); the
paper's backbone, the two-stack Hourglass-104 with intermediate supervision, is not offered here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou
from torchvision.ops.misc import Conv2dNormActivation

from .centernet import (CenterNet, KeypointHead, build_on_finest_level, draw_gaussian, head_branch, image_map_size,
                        local_peaks, penalty_reduced_focal_loss, radius_quadratics, top_peaks)
from .losses import ScaledLoss, SmoothL1BoxLoss

CORNERS = ("tl", "br")
# Per pooling direction: the axis it runs along (2: rows, 3: columns) and whether it takes the
# running max from the far end. TopPool (the authors' top_pool.cpp) writes at each row the max of
# that row and every row below it; LeftPool the max of the column and every column to its right;
# BottomPool and RightPool look up and left. A top-left corner looks down and right for its object.
POOL_AXES = {"top": (2, True), "left": (3, True), "bottom": (2, False), "right": (3, False)}
CORNER_POOLS = {"tl": ("top", "left"), "br": ("bottom", "right")}


def corner_pool(x: Tensor, direction: str) -> Tensor:
    """Corner pooling of [B, C, H, W] in one direction (top, left, bottom, right): a running max
    (torch.cummax) along the axis, over the flipped axis when it runs from the far end."""
    dim, from_far_end = POOL_AXES[direction]
    if from_far_end:
        return torch.cummax(x.flip(dim), dim).values.flip(dim)
    return torch.cummax(x, dim).values


def corner_gaussian_radius(height: float, width: float, min_overlap: float) -> float:
    """CornerNet's gaussian_radius (sample/utils.py; mmdetection's gaussian_target.py is the same):
    the smallest of the three cases' roots, each divided by 2a, the smaller root in the first two
    cases. CenterNet's copy changed the roots (models/centernet.py gaussian_radius)."""
    (a1, b1, c1), (a2, b2, c2), (a3, b3, c3) = radius_quadratics(height, width, min_overlap)
    r1 = (b1 - math.sqrt(b1 ** 2 - 4 * a1 * c1)) / (2 * a1)
    r2 = (b2 - math.sqrt(b2 ** 2 - 4 * a2 * c2)) / (2 * a2)
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / (2 * a3)
    return min(r1, r2, r3)


class CornerPoolModule(nn.Module):
    """The authors' `pool` module (models/CornerNet.py): two 3x3 conv-BN-ReLU branches, each pooled in
    its direction, summed, a 3x3 conv-BN; plus a 1x1 conv-BN of the input; ReLU; a 3x3 conv-BN-ReLU."""

    def __init__(self, channels: int, pool_channels: int, directions: tuple[str, str]):
        super().__init__()
        self.directions = directions
        self.branches = nn.ModuleList(Conv2dNormActivation(channels, pool_channels, 3) for _ in directions)
        self.merge = Conv2dNormActivation(pool_channels, channels, 3, activation_layer=None)
        self.skip = Conv2dNormActivation(channels, channels, 1, activation_layer=None)
        self.relu = nn.ReLU(inplace=True)
        self.out = Conv2dNormActivation(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        pooled = sum(corner_pool(branch(x), d) for branch, d in zip(self.branches, self.directions))
        return self.out(self.relu(self.merge(pooled) + self.skip(x)))


@dataclass
class CornerTargets:
    """The training targets of a batch: the two corner heatmaps, and per object (N of the batch, those
    whose box is not empty once clipped) where its corners are and their sub-pixel offsets."""
    heatmaps: dict[str, Tensor]      # tl, br: [B, K, H, W], Gaussian peaks of 1 at the corners
    peak_weights: dict[str, Tensor]  # tl, br: [B, K, H, W], 1 except at a peak: the (largest) weight of its objects
    batch: Tensor                    # [N] image index of each object
    ys: dict[str, Tensor]            # tl, br: [N] row of the corner (the integer part, output units)
    xs: dict[str, Tensor]            # tl, br: [N] column
    offsets: dict[str, Tensor]       # tl, br: [N, 2] the corner minus its integer part (x, y)
    weights: Tensor                  # [N] per-box weight (MixUp's; 1 without)


def corner_targets(targets: list[dict], image_sizes: list[tuple[int, int]], map_size: tuple[int, int],
                   num_classes: int, stride: int, min_overlap: float) -> CornerTargets:
    """sample/coco.py kp_detection's targets: each box clipped to the image ([0, side - 1] pixels),
    empty ones dropped; corners in output units (/ stride), truncated to their cell; radius =
    max(0, int(corner_gaussian_radius(ceil(h), ceil(w)))) of the box in output units, one Gaussian
    at each corner on its class's map (element-wise max); offset = corner - its cell."""
    device = targets[0]["boxes"].device if targets else torch.device("cpu")
    heatmaps = {c: torch.zeros((len(targets), num_classes, *map_size)) for c in CORNERS}
    peaks: dict[tuple[str, int, int, int, int], float] = {}
    rows: list[list[float]] = []
    for i, (t, (h_img, w_img)) in enumerate(zip(targets, image_sizes)):
        out_h, out_w = image_map_size((h_img, w_img), stride)
        boxes = t["boxes"].detach().to("cpu", torch.float32).clone()
        weights = t["weights"].detach().to("cpu", torch.float32) if "weights" in t else torch.ones(len(boxes))
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w_img - 1)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h_img - 1)
        for box, label, weight in zip((boxes / stride).tolist(), t["labels"].tolist(), weights.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            if not (h > 0 and w > 0):
                continue
            radius = max(0, int(corner_gaussian_radius(math.ceil(h), math.ceil(w), min_overlap)))
            cells = [int(v) for v in box]  # x_tl, y_tl, x_br, y_br, truncated as int() does
            for corner, (x, y) in zip(CORNERS, (cells[:2], cells[2:])):
                draw_gaussian(heatmaps[corner][i, label, :out_h, :out_w], x, y, radius)
                key = (corner, i, label, y, x)
                peaks[key] = max(peaks.get(key, weight), weight)
            rows.append([i, *cells, *(v - c for v, c in zip(box, cells)), weight])
    peak_weights = {c: torch.ones_like(heatmaps[c]) for c in CORNERS}
    for (corner, i, label, y, x), weight in peaks.items():
        peak_weights[corner][i, label, y, x] = weight
    table = torch.tensor(rows, dtype=torch.float64).reshape(-1, 10)
    cells = table[:, :5].long().to(device)
    offsets = table[:, 5:9].float().to(device)
    return CornerTargets({c: m.to(device) for c, m in heatmaps.items()},
                         {c: m.to(device) for c, m in peak_weights.items()}, cells[:, 0],
                         {"tl": cells[:, 2], "br": cells[:, 4]}, {"tl": cells[:, 1], "br": cells[:, 3]},
                         {"tl": offsets[:, :2], "br": offsets[:, 2:]}, table[:, 9].float().to(device))


def associative_embedding_loss(tl: Tensor, br: Tensor, batch: Tensor, weights: Tensor, num_images: int,
                               margin: float) -> tuple[Tensor, Tensor]:
    """The pull and push losses (paper eq. 4 and 5, the authors' _ae_loss) of the objects' corner
    embeddings tl, br [N], per image with n objects: pull = sum_k [(e_tk - e_k)^2 + (e_bk - e_k)^2] / n,
    e_k the mean of the two; push = sum over ordered pairs j != k of max(0, margin - |e_j - e_k|)
    / (n (n - 1)), 0 below two objects; each summed over the images. A per-box weight multiplies its
    object's pull term and, for a pair, the product of the two weights its push term."""
    pull = push = tl.sum() * 0  # a zero that keeps the graph when the batch has no object
    for i in range(num_images):
        mine = batch == i
        n = int(mine.sum())
        if n == 0:
            continue
        a, b, w = tl[mine], br[mine], weights[mine]
        mean = (a + b) / 2
        pull = pull + (((a - mean) ** 2 + (b - mean) ** 2) * w).sum() / n
        if n > 1:
            gap = F.relu(margin - (mean[:, None] - mean[None, :]).abs()) * (w[:, None] * w[None, :])
            push = push + (gap.sum() - gap.diagonal().sum()) / (n * (n - 1))
    return pull, push


def gaussian_soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, sigma: float,
                      score_thresh: float) -> tuple[Tensor, Tensor]:
    """Gaussian soft-NMS within each class (Bodla et al. 2017; the authors' external/nms.pyx soft_nms,
    method 2): repeatedly keep the best remaining box and multiply the scores of the others of its
    class by exp(-IoU^2 / sigma), dropping those that fall below score_thresh. The kept indices, in
    the order kept, and their decayed scores."""
    if len(scores) == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device), scores
    # boxes of different classes moved apart, so they never overlap: one loop for all classes
    shifted = boxes + labels[:, None].to(boxes) * (boxes.max() + 1)
    scores = scores.clone()
    remaining = torch.arange(len(scores), device=scores.device)
    kept: list[Tensor] = []
    while remaining.numel():
        best = int(scores[remaining].argmax())
        top, remaining = remaining[best], torch.cat([remaining[:best], remaining[best + 1:]])
        kept.append(top)
        if remaining.numel():
            iou = box_iou(shifted[top][None], shifted[remaining])[0]
            scores[remaining] *= torch.exp(-iou ** 2 / sigma)
            remaining = remaining[scores[remaining] >= score_thresh]
    index = torch.stack(kept)
    return index, scores[index]


class CornerNetHead(KeypointHead):
    """The corner pools and, per corner (tl, br), the heatmap of K classes, the 1-d embedding and the
    2-d offset, on the stride-4 features; their losses and the decoding. Its box_loss slot is the
    offset regression: by default SmoothL1 (beta 1) on both corners' offsets, "deltas" form (pred and
    target [2N, 2], tl rows then br rows, normaliser N + 1e-4 per row: _regr_loss per corner, summed)."""

    detector = "cornernet"
    box_spaces_reason = (
        "it regresses no box: a box is two corner peaks paired by their embeddings, and its only regression "
        "is each corner's sub-pixel offset, so an IoU-type loss has no predicted box to compare with the "
        "ground truth")

    def __init__(self, in_channels: int, num_classes: int, cfg):
        super().__init__(num_classes, cfg)
        self.pull_weight, self.push_weight = float(cfg.pull_weight), float(cfg.push_weight)
        self.push_margin = float(cfg.push_margin)
        self.offset_weight, self.offset_beta = float(cfg.offset_weight), float(cfg.offset_beta)
        self.corner_topk, self.candidates = int(cfg.corner_topk), int(cfg.candidates)
        self.ae_threshold = float(cfg.ae_threshold)
        self.soft_nms = cfg.soft_nms
        self.pools = nn.ModuleDict({c: CornerPoolModule(in_channels, int(cfg.pool_channels), CORNER_POOLS[c])
                                    for c in CORNERS})

        def branches(out_channels: int) -> nn.ModuleDict:
            return nn.ModuleDict({c: head_branch(in_channels, cfg.head_channels, cfg.head_convs, out_channels)
                                  for c in CORNERS})
        self.heatmaps, self.embeddings, self.offsets = branches(num_classes), branches(1), branches(2)
        # The authors' init (kp.py): the heatmaps' last bias -2.19, everything else torch's default.
        for branch in self.heatmaps.values():
            nn.init.constant_(branch[-1].bias, float(cfg.heatmap_bias))

    def default_loss(self, slot: str) -> nn.Module:
        if slot != "box_loss":
            raise KeyError(slot)
        return ScaledLoss(SmoothL1BoxLoss(self.offset_beta), self.offset_weight)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        out = {}
        for c in CORNERS:
            pooled = self.pools[c](features)
            out.update({f"{c}_heatmap": self.heatmaps[c](pooled), f"{c}_embedding": self.embeddings[c](pooled),
                        f"{c}_offset": self.offsets[c](pooled)})
        return out

    def compute_loss(self, outputs: dict[str, Tensor], targets: list[dict], image_sizes) -> dict[str, Tensor]:
        t = corner_targets(targets, image_sizes, tuple(outputs["tl_heatmap"].shape[-2:]), self.num_classes,
                           self.stride, self.min_overlap)
        # AELoss: the two corners' focal losses summed, each divided by its own number of peaks
        heatmap = sum(penalty_reduced_focal_loss(outputs[f"{c}_heatmap"], t.heatmaps[c], t.peak_weights[c],
                                                 self.focal_alpha, self.focal_beta) for c in CORNERS)
        embedding = {c: outputs[f"{c}_embedding"][t.batch, 0, t.ys[c], t.xs[c]].float() for c in CORNERS}
        pull, push = associative_embedding_loss(embedding["tl"], embedding["br"], t.batch, t.weights,
                                                len(targets), self.push_margin)
        offset = torch.cat([outputs[f"{c}_offset"][t.batch, :, t.ys[c], t.xs[c]].float() for c in CORNERS])
        offset_target = torch.cat([t.offsets[c] for c in CORNERS])
        n = len(t.batch)
        normalizer = offset.new_full((2 * n,), n + 1e-4)  # _regr_loss: the number of objects, + 1e-4
        levels = torch.zeros(2 * n, dtype=torch.long, device=offset.device)
        box_fn = self.slot_loss("box_loss")
        loss_offset = box_fn(offset, offset_target, t.weights.repeat(2), normalizer, levels)
        return {"heatmap": self.heatmap_weight * heatmap, "pull": self.pull_weight * pull,
                "push": self.push_weight * push, "offset": loss_offset}

    def top_corners(self, outputs: dict[str, Tensor], corner: str, i: int, map_size: tuple[int, int]):
        """_topk of one image's corner heatmap (sigmoid, local peaks): the top corner_topk over classes
        and places, as (scores, classes, x, y with the offset added, embeddings)."""
        out_h, out_w = map_size
        heat = torch.sigmoid(outputs[f"{corner}_heatmap"][i:i + 1, :, :out_h, :out_w].float())
        scores, classes, ys, xs = top_peaks(local_peaks(heat, self.nms_kernel)[0], self.corner_topk)
        offset = outputs[f"{corner}_offset"][i, :, ys, xs].float()
        embedding = outputs[f"{corner}_embedding"][i, 0, ys, xs].float()
        return scores, classes, xs + offset[0], ys + offset[1], embedding

    @torch.no_grad()
    def decode(self, outputs: dict[str, Tensor], image_sizes) -> list[dict[str, Tensor]]:
        """_decode, then test/coco.py: every pair of a top-left and a bottom-right corner of the top K
        each, kept where both are of one class, their embeddings differ by at most ae_threshold and the
        bottom-right is not left of or above the top-left; scored by the mean of the two corners'
        scores; the best `candidates` pairs, soft-NMS per class (when soft_nms is set), the best
        detections_per_img; boxes x stride, clipped to the image."""
        results = []
        for i, (h_img, w_img) in enumerate(image_sizes):
            map_size = image_map_size((h_img, w_img), self.stride)
            tl_s, tl_c, tl_x, tl_y, tl_e = self.top_corners(outputs, "tl", i, map_size)
            br_s, br_c, br_x, br_y, br_e = self.top_corners(outputs, "br", i, map_size)
            scores = (tl_s[:, None] + br_s[None, :]) / 2
            valid = ((tl_c[:, None] == br_c[None, :]) & ((tl_e[:, None] - br_e[None, :]).abs() <= self.ae_threshold)
                     & (br_x[None, :] >= tl_x[:, None]) & (br_y[None, :] >= tl_y[:, None]))
            pair_tl, pair_br = valid.nonzero(as_tuple=True)
            scores = scores[pair_tl, pair_br]
            best = scores.topk(min(self.candidates, len(scores))).indices
            pair_tl, pair_br, scores = pair_tl[best], pair_br[best], scores[best]
            boxes = torch.stack([tl_x[pair_tl], tl_y[pair_tl], br_x[pair_br], br_y[pair_br]], dim=1) * self.stride
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w_img)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h_img)
            labels = tl_c[pair_tl]
            if self.soft_nms is not None:
                keep, scores = gaussian_soft_nms(boxes, scores, labels, float(self.soft_nms.sigma),
                                                 float(self.soft_nms.score_thresh))
                boxes, labels = boxes[keep], labels[keep]
            top = scores.topk(min(self.detections_per_img, len(scores))).indices
            results.append({"boxes": boxes[top], "scores": scores[top], "labels": labels[top]})
        return results


class CornerNet(CenterNet):
    """Images -> the FPN's stride-4 features -> CornerNetHead (CenterNet's forward: only the head differs)."""


def build_cornernet(cfg, num_classes: int, image_size: int) -> CornerNet:
    return build_on_finest_level(cfg, image_size, lambda channels: CornerNetHead(channels, num_classes, cfg),
                                 CornerNet)
