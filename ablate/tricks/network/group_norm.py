"""Group Normalization (Wu and He, ECCV 2018): each BatchNorm replaced by, and each
normalisation-free convolution of the neck and heads followed by, nn.GroupNorm with `num_groups`
groups (32, the paper's and mmdetection's GN configs). A layer of C channels that 32 does not
divide gets the largest divisor of C below 32 (C = 16: 16 groups of one channel, as InstanceNorm;
C = 48: 24 groups); mmcv and Detectron assert divisibility instead, which the tiny backbone's 8-128
channels would fail.

parts:
- backbone: every trainable nn.BatchNorm2d of the body. A pretrained body has FrozenBatchNorm2d
  with ImageNet statistics (ablate/models/backbones.py, as torchvision): those stay, since GN
  there would throw away the pretrained normalisation (the paper and mmdetection use backbones
  pretrained with GN for that, which torchvision does not have).
- neck: GN after each FPN convolution (lateral 1x1, output 3x3) and RetinaNet/FCOS's P6/P7 convs,
  as mmdetection's FPN with norm_cfg (ConvModule: conv, norm).
- head: RetinaNet's tower convs get GN before their ReLU. torchvision's FCOS head already has
  GroupNorm(32) in both towers (the FCOS paper's head), so on FCOS this part changes nothing.
  Faster R-CNN's RoI box head: torchvision's TwoMLPHead has no convolution, and GN on its fully
  connected outputs is in no reference, so it is replaced by the head the paper and mmdetection's
  GN configs use, 4conv1fc (Shared4Conv1FCBBoxHead; torchvision's FastRCNNConvFCHead): four 3x3
  convs of the FPN's width, each conv-GN-ReLU, then one FC of the same representation size. This
  changes the head's architecture too, as in the paper: the measured effect is GN with 4conv1fc.
  R-FCN's RoI path has convs only: GN after each of its 1x1 convs before the score maps (conv-GN-ReLU,
  as RetinaNet's towers), the score-map convs themselves left as the final prediction convs are.
  YOLOv3: the BatchNorms of its detection blocks become GroupNorm.
- rpn: GN in Faster R-CNN's RPN conv. Not in the defaults: mmdetection's and Detectron's GN
  configs leave the RPN head without normalisation.
"""
from __future__ import annotations

import logging
from functools import partial

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.ops import Conv2dNormActivation
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ...models.rfcn import PositionSensitivePool
from ...models.yolo import YOLOv3Head
from ..base import Trick, TrickArgumentError, check_number, feature_pyramid, head_towers, with_its_activation

log = logging.getLogger("ablate.tricks")
PARTS = ("backbone", "neck", "head", "rpn")


def groups_for(channels: int, num_groups: int) -> int:
    """num_groups when it divides `channels`, else the largest divisor of `channels` below it."""
    return max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)


def replace_batchnorms(module: nn.Module, num_groups: int) -> int:
    """Every nn.BatchNorm2d under `module` (not FrozenBatchNorm2d) replaced by GroupNorm (followed by
    its activation where it is timm's BatchNormAct2d); how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                norm = nn.GroupNorm(groups_for(child.num_features, num_groups), child.num_features, eps=child.eps)
                setattr(parent, name, with_its_activation(child, norm))
                count += 1
    return count


def norm_after_conv(block: nn.Sequential, num_groups: int) -> None:
    """A conv block (Conv2dNormActivation: conv[, activation]) with GroupNorm right after its conv."""
    conv = block[0]
    block.insert(1, nn.GroupNorm(groups_for(conv.out_channels, num_groups), conv.out_channels))


class GroupNorm(Trick):
    claims = ("normalization",)

    def __init__(self, num_groups: int, parts: list[str]):
        self.num_groups = check_number("num_groups", num_groups, 1, integer=True)
        unknown = [p for p in parts if p not in PARTS]
        if unknown or not parts:
            raise TrickArgumentError({"parts": list(parts)}, f"choose among {list(PARTS)}")
        self.parts = list(parts)

    def gn(self, channels: int) -> nn.GroupNorm:
        return nn.GroupNorm(groups_for(channels, self.num_groups), channels)

    def on_model(self, model: nn.Module) -> nn.Module:
        changed = 0
        if "backbone" in self.parts:
            n = replace_batchnorms(model.backbone.body, self.num_groups)
            if n == 0:
                log.info("tricks.%s: the backbone has no trainable BatchNorm (pretrained: FrozenBatchNorm2d "
                         "with ImageNet statistics), left as it is", self.name)
            changed += n
        if "neck" in self.parts:
            fpn = feature_pyramid(model, self.name, "its neck part")
            for block in [*fpn.inner_blocks, *fpn.layer_blocks]:
                norm_after_conv(block, self.num_groups)
                changed += 1
            if isinstance(fpn.extra_blocks, LastLevelP6P7):
                for attr in ("p6", "p7"):
                    conv = getattr(fpn.extra_blocks, attr)
                    setattr(fpn.extra_blocks, attr, nn.Sequential(conv, self.gn(conv.out_channels)))
                    changed += 1
        if "head" in self.parts:
            changed += self.head(model)
        if "rpn" in self.parts:
            if not hasattr(model, "rpn"):
                raise ValueError(f"tricks.{self.name}.parts={self.parts}: 'rpn' needs a two-stage detector "
                                 "(model=faster_rcnn)")
            for block in model.rpn.head.conv:
                norm_after_conv(block, self.num_groups)
                changed += 1
        if changed == 0:
            from ..base import TrickConflictError

            raise TrickConflictError(f"trick '{self.name or 'group_norm'}' with parts={self.parts} changes nothing on "
                                     "this detector (FCOS's head already has GroupNorm; a pretrained backbone keeps "
                                     "its frozen BatchNorm)")
        return model

    def head(self, model: nn.Module) -> int:
        pool = getattr(getattr(model, "roi_heads", None), "box_roi_pool", None)
        if isinstance(pool, PositionSensitivePool):  # R-FCN: conv-GN-ReLU for its 1x1 convs
            layers = []
            for layer in pool.reduce:
                layers.append(layer)
                if isinstance(layer, nn.Conv2d):
                    layers.append(self.gn(layer.out_channels))
            pool.reduce = nn.Sequential(*layers)
            return sum(isinstance(m, nn.GroupNorm) for m in layers)
        if hasattr(model, "roi_heads"):
            old = model.roi_heads.box_head
            if type(old) is not TwoMLPHead:
                from ..base import TrickConflictError

                raise TrickConflictError(f"tricks.{self.name}: the RoI box head is {type(old).__name__}, not torchvision's "
                                 "TwoMLPHead; select group_norm before the tricks that change the box head")
            channels = model.backbone.out_channels
            size = model.roi_heads.box_roi_pool.output_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            model.roi_heads.box_head = FastRCNNConvFCHead(
                (channels, *size), [channels] * 4, [old.fc7.out_features],
                norm_layer=partial(lambda c, g: nn.GroupNorm(groups_for(c, g), c), g=self.num_groups))
            return 4
        if isinstance(getattr(model, "head", None), YOLOv3Head):  # YOLOv3: its detection blocks' BatchNorms
            return replace_batchnorms(model.head.blocks, self.num_groups)
        count = 0
        for branch in head_towers(model, self.name):
            for block in branch.conv:
                if isinstance(block, Conv2dNormActivation) and not any(isinstance(m, nn.GroupNorm) for m in block):
                    norm_after_conv(block, self.num_groups)
                    count += 1
        return count
