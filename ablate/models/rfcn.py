"""R-FCN (Dai et al. 2016, "R-FCN: Object Detection via Region-based Fully Convolutional Networks").

Faster R-CNN's pieces (the backbone with its FPN, the FPN RPN, the RoI heads with their loss slots)
with the RoI box path replaced by the paper's: every computation runs on the whole image, none per
RoI. A 1x1 conv (+ ReLU) reduces the feature map, 1x1 convs make k·k·(C+1) position-sensitive score
maps and k·k·4 class-agnostic box maps, position-sensitive RoI pooling reads bin (i, j) of each RoI
from its own group of maps, and the k·k bins vote by averaging into C+1 class logits and 4 deltas.

Compared with the authors' code (YuwenXiong/py-R-FCN models/pascal_voc/ResNet-101/rfcn_end2end/
train_agnostic.prototxt: conv_new_1 1024-d 1x1 + ReLU, rfcn_cls / rfcn_bbox 1x1 with Gaussian std
0.01 weights and zero biases, PSROIPooling group_size 7 at spatial_scale 0.0625, ave_cls_score_rois /
ave_bbox_pred_rois average pooling; daijifeng001/R-FCN functions/rfcn/rfcn_config_simple.m),
Detectron's modeling/rfcn_heads.py (add_rfcn_outputs) and mmdetection v1's RFCNHead. The pooling
is torchvision.ops.ps_roi_align, whose input channel of output channel c and bin (i, j) is
(c·k + i)·k + j, as the authors' PSROIPooling layer maps them. Where ablate departs from them:
docs/heads.md, section rfcn.

The pieces sit in torchvision's RoIHeads' three places, so the loss slots, samplers (OHEM, PISA's
score-HLR) and post-processing of Faster R-CNN work unchanged:
- box_roi_pool: PositionSensitivePool (the convs on the chosen pyramid level, then ps_roi_align);
- box_head: AverageVote (the mean over the k·k bins);
- box_predictor: RFCNPredictor (logits, and the class-agnostic deltas repeated for every class,
  the per-class layout torchvision's loss and post-processing index by class).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import ps_roi_align

from ..errors import UserInputError
from .detectors import build_two_stage_backbone, two_stage_detector
from .losses import LossRoIHeads


class PositionSensitivePool(nn.Module):
    """The score maps of one pyramid level and their position-sensitive RoI pooling: for each RoI,
    [C+1+4, k, k], bin (i, j) of output channel c read from map (c·k + i)·k + j."""

    def __init__(self, in_channels: int, num_classes: int, feature_key: str, stride: int, k: int,
                 head_convs: int, head_channels: int, sampling_ratio: int):
        super().__init__()
        self.feature_key, self.stride, self.k = feature_key, stride, k
        self.num_classes, self.sampling_ratio = num_classes, sampling_ratio
        self.output_size = k
        layers: list[nn.Module] = []
        for i in range(head_convs):  # the paper's randomly initialised 1024-d 1x1 conv, with ReLU
            layers += [nn.Conv2d(in_channels if i == 0 else head_channels, head_channels, 1), nn.ReLU(inplace=True)]
        self.reduce = nn.Sequential(*layers)
        width = head_channels if head_convs else in_channels
        self.cls_maps = nn.Conv2d(width, k * k * num_classes, 1)
        self.box_maps = nn.Conv2d(width, k * k * 4, 1)
        for conv in [m for m in self.modules() if isinstance(m, nn.Conv2d)]:
            nn.init.normal_(conv.weight, std=0.01)  # the authors' gaussian std 0.01, bias 0
            nn.init.zeros_(conv.bias)

    def score_maps(self, features: dict[str, Tensor]) -> Tensor:
        """[N, k·k·(C+1) + k·k·4, H, W]: the class maps, then the box maps."""
        x = self.reduce(features[self.feature_key])
        return torch.cat([self.cls_maps(x), self.box_maps(x)], dim=1)

    def pool(self, maps: Tensor, proposals: list[Tensor]) -> Tensor:
        """[R, maps' channels / k², k, k]: each RoI's bins, proposals in image pixels (stride: the level's).
        In float32: torchvision's CPU kernel has no bfloat16 (train.amp=always), and it is cheap."""
        pooled = ps_roi_align(maps.float(), [p.float() for p in proposals], self.k, 1.0 / self.stride,
                              self.sampling_ratio)
        return pooled.to(maps.dtype)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes) -> Tensor:
        return self.pool(self.score_maps(features), proposals)


class AverageVote(nn.Module):
    """The paper's voting: each RoI's score of a class (or box delta) is the mean of its k·k bins."""

    def forward(self, pooled: Tensor) -> Tensor:
        return pooled.mean(dim=(2, 3))


class RFCNPredictor(nn.Module):
    """The voted scores split into C+1 class logits and the 4 class-agnostic deltas, repeated for
    each class ([R, (C+1)·4]): torchvision's RoI loss and post-processing read the deltas of a class
    at columns 4c..4c+3, and every class gets the same box, as the paper's class-agnostic regression."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, votes: Tensor) -> tuple[Tensor, Tensor]:
        logits, deltas = votes[:, : self.num_classes], votes[:, self.num_classes:]
        return logits, deltas.repeat(1, self.num_classes)


class RFCNRoIHeads(LossRoIHeads):
    """Faster R-CNN's RoI heads with their loss slots, named rfcn (the per-detector loss weights of
    the loss tricks are looked up under this name)."""

    detector = "rfcn"


def build_rfcn(cfg, num_classes: int, image_size: int) -> nn.Module:
    levels = list(cfg.levels)
    if cfg.score_map_level not in levels:
        raise UserInputError(f"model.score_map_level={cfg.score_map_level}: the score maps must sit on one of the "
                             f"pyramid's levels model.levels={levels}")
    backbone = build_two_stage_backbone(cfg)
    pool = PositionSensitivePool(backbone.out_channels, num_classes, str(levels.index(cfg.score_map_level)),
                                 2 ** cfg.score_map_level, cfg.ps_grid_size, cfg.head_convs, cfg.head_channels,
                                 cfg.sampling_ratio)
    return two_stage_detector(cfg, backbone, image_size, pool, AverageVote(), RFCNPredictor(num_classes),
                              roi_heads_class=RFCNRoIHeads)
