"""CenterNet, "Objects as Points" (Zhou et al. 2019): each object is the peak of a class heatmap at
stride 4, with its size and the sub-pixel offset of its centre regressed at that peak.

Compared line by line with the authors' code (github xingyizhou/CenterNet, src/lib/): targets as
datasets/sample/ctdet.py builds them (utils/image.py gaussian_radius, gaussian2D,
draw_umich_gaussian), losses as trains/ctdet.py CtdetLoss computes them (models/losses.py _neg_loss
and RegL1Loss, models/utils.py _sigmoid), decoding as models/decode.py ctdet_decode, defaults from
opts.py; and with mmdetection's CenterNetHead (mmdet/models/dense_heads/centernet_head.py,
mmdet/models/utils/gaussian_target.py). docs/heads.md lists the deviations.

The features at stride 4 come from build_backbone's FPN over the taps in model.levels: its finest
level, upsampled (bilinear) when coarser than stride 4. The paper's ResNet variant instead upsamples
C5 by three deconvolutions, its DLA-34 by iterative aggregation; an FPN's P2 is the form every
backbone here offers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserInputError
from .backbones import build_backbone
from .detectors import NoResizeTransform
from .losses import L1BoxLoss, LossSlots, ScaledLoss

# The authors' models/utils.py _sigmoid clamps the heatmap to [1e-4, 1 - 1e-4], so the log of the
# focal loss stays finite.
HEATMAP_CLAMP = 1e-4


def radius_quadratics(height: float, width: float, min_overlap: float) -> list[tuple[float, float, float]]:
    """The (a, b, c) of CornerNet's three quadratics in r (sample/utils.py gaussian_radius), one per
    way a box whose corners move by r can keep IoU >= min_overlap with a true box of height x width:
    one corner inside and one outside, both inside, both outside."""
    return [(1.0, height + width, width * height * (1 - min_overlap) / (1 + min_overlap)),
            (4.0, 2 * (height + width), (1 - min_overlap) * width * height),
            (4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height)]


def gaussian_radius(height: float, width: float, min_overlap: float) -> float:
    """The authors' gaussian_radius (utils/image.py, from CornerNet): the smallest of three roots,
    one per case of radius_quadratics.

    Reproduced with its known quirks (CornerNet issue #110, CenterNet issue #110 and others): each
    root is (b + sqrt(b^2 - 4ac)) / 2 whatever a is (so r2 and r3 are not divided by 2a: r2 is 4x,
    r3 is 4 min_overlap x the root of its quadratic), r1 and r2 take the larger root rather than the
    smaller, and the cases are about corners moving, not the centre. The result is what CenterNet
    trained with, so that is what the heatmap here is drawn with (CornerNet's own, with the roots
    as its authors take them, is models/cornernet.py corner_gaussian_radius)."""
    return min((b + math.sqrt(b ** 2 - 4 * a * c)) / 2 for a, b, c in radius_quadratics(height, width, min_overlap))


@lru_cache(maxsize=256)
def gaussian_kernel(radius: int) -> Tensor:
    """The authors' gaussian2D of a (2r+1)^2 window with sigma = diameter / 6, in float64 as numpy
    computes it, values below float64 eps x max set to 0. Cached: read, never written."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    h = torch.exp(-(r[None, :] ** 2 + r[:, None] ** 2) / (2 * sigma * sigma))
    h[h < torch.finfo(h.dtype).eps * h.max()] = 0
    return h


def draw_gaussian(heatmap: Tensor, x: int, y: int, radius: int) -> None:
    """draw_umich_gaussian: the kernel centred at (x, y), cut at the map's edges, written into
    `heatmap` [H, W] (in place) as the element-wise max with what is there (objects of one class)."""
    kernel = gaussian_kernel(radius).to(heatmap)
    height, width = heatmap.shape
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    region = heatmap[y - top:y + bottom, x - left:x + right]
    cut = kernel[radius - top:radius + bottom, radius - left:radius + right]
    if min(region.shape) > 0 and min(cut.shape) > 0:
        torch.maximum(region, cut, out=region)


@dataclass
class CenterTargets:
    """The training targets of a batch: the class heatmaps, and per object (N of the batch, those
    whose box is not empty once clipped) where its peak is and what to regress there."""
    heatmap: Tensor       # [B, K, H, W], Gaussian peaks of 1 at the object centres
    peak_weights: Tensor  # [B, K, H, W], 1 except at a peak: the (largest) per-box weight of its objects
    batch: Tensor         # [N] image index of each object
    ys: Tensor            # [N] row of its peak (the integer part of its centre, output units)
    xs: Tensor            # [N] column
    sizes: Tensor         # [N, 2] its (w, h) in output units (stride-4 pixels), as the authors' `wh`
    offsets: Tensor       # [N, 2] centre minus its integer part, the authors' `reg`
    boxes: Tensor         # [N, 4] its clipped box (x1, y1, x2, y2) in input pixels
    weights: Tensor       # [N] its per-box weight (MixUp's; 1 without)


def image_map_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The cells of the output map that an image of this size covers (its part of a padded batch)."""
    return math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)


def centernet_targets(targets: list[dict], image_sizes: list[tuple[int, int]], map_size: tuple[int, int],
                      num_classes: int, stride: int, min_overlap: float) -> CenterTargets:
    """ctdet.py's targets for each image: its boxes in output units, clipped to [0, out - 1] with
    out = image side // stride; empty boxes dropped; radius = max(0, int(gaussian_radius(ceil(h),
    ceil(w)))); the Gaussian drawn at the integer part of the centre (truncated, as astype(int32))."""
    device = targets[0]["boxes"].device if targets else torch.device("cpu")
    heatmap = torch.zeros((len(targets), num_classes, *map_size), dtype=torch.float32)
    peak_weights = torch.ones_like(heatmap)
    peaks: dict[tuple[int, int, int, int], float] = {}
    rows: list[list[float]] = []
    for i, (t, (h_img, w_img)) in enumerate(zip(targets, image_sizes)):
        out_h, out_w = h_img // stride, w_img // stride
        boxes = t["boxes"].detach().to("cpu", torch.float32) / stride
        weights = t["weights"].detach().to("cpu", torch.float32) if "weights" in t else torch.ones(len(boxes))
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, out_w - 1)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, out_h - 1)
        for box, label, weight in zip(boxes.tolist(), t["labels"].tolist(), weights.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            if not (h > 0 and w > 0):
                continue
            radius = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w), min_overlap)))
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            x, y = int(cx), int(cy)
            draw_gaussian(heatmap[i, label, :out_h, :out_w], x, y, radius)
            key = (i, label, y, x)
            peaks[key] = max(peaks.get(key, weight), weight)
            rows.append([i, y, x, w, h, cx - x, cy - y, *(v * stride for v in box), weight])
    for (i, label, y, x), weight in peaks.items():
        peak_weights[i, label, y, x] = weight
    table = torch.tensor(rows, dtype=torch.float64).reshape(-1, 12)
    index = table[:, :3].long().to(device)
    return CenterTargets(heatmap.to(device), peak_weights.to(device), index[:, 0], index[:, 1], index[:, 2],
                         table[:, 3:5].float().to(device), table[:, 5:7].float().to(device),
                         table[:, 7:11].float().to(device), table[:, 11].float().to(device))


def penalty_reduced_focal_loss(logits: Tensor, heatmap: Tensor, peak_weights: Tensor, alpha: float,
                               beta: float) -> Tensor:
    """The authors' _neg_loss (CornerNet's focal loss with penalty reduction, the paper's eq. 1):
    p = clamp(sigmoid(logits), 1e-4, 1 - 1e-4); at a peak (heatmap == 1) (1 - p)^alpha log p, elsewhere
    (1 - Y)^beta p^alpha log(1 - p); minus their sum divided by the number of peaks (not divided when
    there is none). A peak's term is multiplied by its objects' per-box weight (peak_weights)."""
    p = torch.sigmoid(logits.float()).clamp(HEATMAP_CLAMP, 1 - HEATMAP_CLAMP)
    positive = heatmap.eq(1)
    pos = torch.log(p) * (1 - p).pow(alpha) * peak_weights
    neg = torch.log(1 - p) * p.pow(alpha) * (1 - heatmap).pow(beta)
    loss = torch.where(positive, pos, neg).sum()
    return -loss / max(int(positive.sum()), 1)


def local_peaks(heat: Tensor, kernel: int) -> Tensor:
    """decode.py _nms: the heatmap where it equals the max of its kernel x kernel neighbourhood, else 0."""
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    return heat * (hmax == heat)


def top_peaks(scores_map: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """decode.py _topk: the k best of a [K, H, W] score map over classes and places, as (scores,
    classes, rows, columns)."""
    _, height, width = scores_map.shape
    scores, index = scores_map.flatten().topk(min(k, scores_map.numel()))
    classes = torch.div(index, height * width, rounding_mode="floor")
    pixel = index % (height * width)
    return scores, classes, torch.div(pixel, width, rounding_mode="floor"), pixel % width


def head_branch(in_channels: int, channels: int, num_convs: int, out_channels: int) -> nn.Sequential:
    """The authors' head: 3x3 conv + ReLU (num_convs of them; they use 1), then a 1x1 conv."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(channels if num_convs else in_channels, out_channels, 1))
    return nn.Sequential(*layers)


class KeypointHead(LossSlots, nn.Module):
    """What CenterNet's and CornerNet's heads share: one box_loss slot taking "deltas" losses only
    (each head says why in box_spaces_reason), and the settings of their Gaussian heatmaps (the
    penalty-reduced focal loss on them, the local peaks kept when decoding)."""

    slot_attrs = {"box_loss": "box_loss"}
    box_spaces = ("deltas",)

    def __init__(self, num_classes: int, cfg):
        super().__init__()
        self.num_classes = num_classes
        self.stride = int(cfg.down_ratio)
        self.min_overlap = float(cfg.min_overlap)
        self.focal_alpha, self.focal_beta = float(cfg.focal_alpha), float(cfg.focal_beta)
        self.heatmap_weight = float(cfg.heatmap_weight)
        self.nms_kernel, self.detections_per_img = int(cfg.nms_kernel), int(cfg.detections_per_img)


class CenterNetHead(KeypointHead):
    """The three heads on the stride-4 features (heatmap of K classes, size, offset), their losses
    and the decoding. Its box_loss slot is the size regression: by default L1 on (w, h) in output
    units, times size_weight; a trick may put another loss on (w, h) there ("deltas" form, called
    with pred and target [N, 2], the normaliser 2N + 1e-4 of RegL1Loss)."""

    detector = "centernet"
    box_spaces_reason = (
        "its size head is unconstrained and starts at 0 (the authors' init), where IoU-type losses on the "
        "decoded box have no useful gradient (measured: the IoU loss stays at -ln eps, GIoU drives sizes "
        "negative); TTFNet and CenterNet+, which train with GIoU, change the head for it (ReLU distances)")

    def __init__(self, in_channels: int, num_classes: int, cfg):
        super().__init__(num_classes, cfg)
        self.size_weight, self.offset_weight = float(cfg.size_weight), float(cfg.offset_weight)
        self.heatmap = head_branch(in_channels, cfg.head_channels, cfg.head_convs, num_classes)
        self.size = head_branch(in_channels, cfg.head_channels, cfg.head_convs, 2)
        self.offset = head_branch(in_channels, cfg.head_channels, cfg.head_convs, 2)
        # The authors' init (msra_resnet.py, pose_dla_dcn.py): heatmap bias -2.19 (a prior of 0.1);
        # the size and offset heads' convs normal(0, 0.001) with zero bias (fill_fc_weights).
        nn.init.constant_(self.heatmap[-1].bias, float(cfg.heatmap_bias))
        for branch in (self.size, self.offset):
            for m in branch.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.001)
                    nn.init.zeros_(m.bias)

    def default_loss(self, slot: str) -> nn.Module:
        if slot != "box_loss":
            raise KeyError(slot)
        return ScaledLoss(L1BoxLoss(), self.size_weight)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {"heatmap": self.heatmap(features), "size": self.size(features), "offset": self.offset(features)}

    def compute_loss(self, outputs: dict[str, Tensor], targets: list[dict], image_sizes) -> dict[str, Tensor]:
        logits = outputs["heatmap"]
        t = centernet_targets(targets, image_sizes, tuple(logits.shape[-2:]), self.num_classes, self.stride,
                              self.min_overlap)
        loss_heatmap = penalty_reduced_focal_loss(logits, t.heatmap, t.peak_weights, self.focal_alpha,
                                                  self.focal_beta)
        size = outputs["size"][t.batch, :, t.ys, t.xs].float()      # [N, 2]
        offset = outputs["offset"][t.batch, :, t.ys, t.xs].float()  # [N, 2]
        # RegL1Loss divides by the mask expanded to both coordinates, 2N, plus 1e-4.
        per_coordinate = size.new_full((len(size),), 2 * len(size) + 1e-4)
        levels = torch.zeros(len(size), dtype=torch.long, device=size.device)
        box_fn = self.slot_loss("box_loss")
        loss_size = box_fn(size, t.sizes, t.weights, per_coordinate, levels)
        loss_offset = self.offset_weight * L1BoxLoss()(offset, t.offsets, t.weights, per_coordinate, levels)
        return {"heatmap": self.heatmap_weight * loss_heatmap, "size": loss_size, "offset": loss_offset}

    @torch.no_grad()
    def decode(self, outputs: dict[str, Tensor], image_sizes) -> list[dict[str, Tensor]]:
        """ctdet_decode: the 3x3 local maxima of the sigmoid heatmap, the top detections_per_img
        over all classes and places of the image, boxes (x + offset ± w / 2) x stride, clipped to
        the image, a negative size read as 0; no score threshold (the authors keep all 100 for COCO)."""
        heat = local_peaks(torch.sigmoid(outputs["heatmap"].float()), self.nms_kernel)
        results = []
        for i, (h_img, w_img) in enumerate(image_sizes):
            # the image's own part of the padded batch's map
            out_h, out_w = image_map_size((h_img, w_img), self.stride)
            scores, labels, ys, xs = top_peaks(heat[i, :, :out_h, :out_w], self.detections_per_img)
            # a negative regressed side is an empty box, not an inverted one (x2 < x1 would read as
            # a negative COCO width); the authors decode it as is, which only an untrained head does
            size = outputs["size"][i, :, ys, xs].float().T.clamp(min=0)
            offset = outputs["offset"][i, :, ys, xs].float().T
            centre = torch.stack([xs, ys], dim=1).to(size) + offset
            boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1) * self.stride
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w_img)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h_img)
            results.append({"boxes": boxes, "scores": scores, "labels": labels})
        return results


class CenterNet(nn.Module):
    """Images (float, [0, 1], already sized) -> the FPN's stride-4 features -> its head (CenterNetHead;
    CornerNetHead in the CornerNet subclass). Training: the dict of losses; eval: torchvision-style
    detections."""

    # Only the FPN's finest level reaches the heads: a neck that changes the other levels alone
    # (PAN's bottom-up path) changes nothing here (ablate/tricks/network/neck.py reads this).
    heads_use_finest_level_only = True

    def __init__(self, transform: NoResizeTransform, backbone: nn.Module, head: CenterNetHead, upsample: int):
        super().__init__()
        self.transform, self.backbone, self.head, self.upsample = transform, backbone, head, upsample

    def features(self, x: Tensor) -> Tensor:
        finest = next(iter(self.backbone(x).values()))
        if self.upsample > 1:
            finest = F.interpolate(finest, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return finest

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError(f"{type(self).__name__} in training mode needs targets")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        outputs = self.head(self.features(batch.tensors))
        if self.training:
            return self.head.compute_loss(outputs, targets, batch.image_sizes)
        detections = self.head.decode(outputs, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def build_on_finest_level(cfg, image_size: int, make_head, detector=CenterNet) -> nn.Module:
    """`detector` (CenterNet, or CornerNet: a head on one map at stride model.down_ratio) with the
    head make_head(channels) on the FPN's finest level, upsampled to that stride when coarser."""
    levels = list(cfg.levels)
    stride = int(cfg.down_ratio)
    if levels != sorted(levels) or not levels:
        raise UserInputError(f"model.levels={levels}: list the FPN levels finest first (level L has stride 2^L)")
    if stride < 1 or stride & (stride - 1) or stride > 2 ** levels[0]:
        raise UserInputError(f"model.down_ratio={stride}: a power of two no larger than the finest level's stride "
                             f"({2 ** levels[0]}, model.levels={levels}); the paper's is 4")
    backbone = build_backbone(cfg.backbone, levels, 0, cfg.fpn_channels, two_stage=False)
    head = make_head(backbone.out_channels)
    transform = NoResizeTransform(image_size, image_size, list(cfg.image_mean), list(cfg.image_std))
    return detector(transform, backbone, head, upsample=2 ** levels[0] // stride)


def build_centernet(cfg, num_classes: int, image_size: int) -> CenterNet:
    return build_on_finest_level(cfg, image_size, lambda channels: CenterNetHead(channels, num_classes, cfg))
