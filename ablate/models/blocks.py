"""Blocks added on a backbone's last pyramid level (C5) by the neck-block tricks: SPP, ASPP, RFB and
YOLOv4's SAM. Each keeps the channel count, so the pyramid above it is unchanged."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0,
            dilation: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias), BN, and a ReLU unless relu=False."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SPP(nn.Module):
    """Spatial pyramid pooling of YOLOv3-SPP / YOLOv4 (darknet cfg/yolov3-spp.cfg, "### SPP ###"): the
    input and its stride-1 max-pools of each kernel size (padding k // 2) concatenated, (1 + K) x C
    channels, then the 1x1 conv-BN-activation that follows the block in the cfg, back to C channels."""

    def __init__(self, channels: int, kernels: list[int]):
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernels)
        self.fuse = conv_bn(channels * (1 + len(kernels)), channels, 1)

    def pooled(self, x: Tensor) -> Tensor:
        """The concatenation [x, pool_k1(x), pool_k2(x), ...] before the 1x1 conv."""
        return torch.cat([x, *(pool(x) for pool in self.pools)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.pooled(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as DetectoRS uses it on detection features (mmdetection
    mmdet/models/necks/rfp.py ASPP): one branch per dilation, a 1x1 conv for dilation 1 and a 3x3
    atrous conv (padding = dilation) otherwise, the last branch a 1x1 conv on the global average
    pool (image-level features, DeepLabv3's), each conv with bias and a ReLU, concatenated: C / K
    channels per branch, so C out."""

    def __init__(self, channels: int, dilations: list[int]):
        super().__init__()
        if len(dilations) < 2 or dilations[-1] != 1:
            raise ValueError(f"ASPP: dilations {list(dilations)} need two or more, the last 1 (the image-level branch)")
        if channels % len(dilations):
            raise ValueError(f"ASPP: {channels} channels do not split into {len(dilations)} branches")
        width = channels // len(dilations)
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, width, 3 if d > 1 else 1, padding=d if d > 1 else 0, dilation=d) for d in dilations)

    def forward(self, x: Tensor) -> Tensor:
        out = [F.relu(branch(x)) for branch in self.branches[:-1]]
        image = F.relu(self.branches[-1](x.mean(dim=(2, 3), keepdim=True)))
        return torch.cat([*out, image.expand_as(out[-1])], dim=1)


class RFB(nn.Module):
    """Receptive Field Block (Liu, Huang and Wang 2018), the authors' BasicRFB (ruinmessi/RFBNet
    models/RFB_Net_vgg.py): three branches of a 1x1 bottleneck (C / 8), 3x3 convs and a 3x3 conv of
    dilation visual, visual + 1, 2 visual + 1, concatenated (6 C / 8), a linear 1x1 conv to C, scaled
    and added to a linear 1x1 shortcut, then ReLU; conv-BN as BasicConv."""

    def __init__(self, channels: int, scale: float, visual: int):
        super().__init__()
        inter = channels // 8
        self.scale = scale
        self.branch0 = nn.Sequential(conv_bn(channels, 2 * inter, 1),
                                     conv_bn(2 * inter, 2 * inter, 3, padding=visual, dilation=visual, relu=False))
        self.branch1 = nn.Sequential(conv_bn(channels, inter, 1), conv_bn(inter, 2 * inter, 3, padding=1),
                                     conv_bn(2 * inter, 2 * inter, 3, padding=visual + 1, dilation=visual + 1,
                                             relu=False))
        self.branch2 = nn.Sequential(conv_bn(channels, inter, 1), conv_bn(inter, inter // 2 * 3, 3, padding=1),
                                     conv_bn(inter // 2 * 3, 2 * inter, 3, padding=1),
                                     conv_bn(2 * inter, 2 * inter, 3, padding=2 * visual + 1, dilation=2 * visual + 1,
                                             relu=False))
        self.linear = conv_bn(6 * inter, channels, 1, relu=False)
        self.shortcut = conv_bn(channels, channels, 1, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear(torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1))
        return F.relu(out * self.scale + self.shortcut(x))


class SAM(nn.Module):
    """YOLOv4's modified spatial attention module (Bochkovskiy et al. 2020, Fig. 5; darknet's [sam]
    layer after a conv with logistic activation): point-wise attention x * sigmoid(BN(conv1x1(x))),
    one weight per position and channel. CBAM's SAM (Woo et al. 2018) instead pools the channels
    (max and mean) into two maps, convolves them 7x7 into one map and scales every channel of a
    position by it; YOLOv4 drops the pooling."""

    def __init__(self, channels: int):
        super().__init__()
        self.attention = conv_bn(channels, channels, 1, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.attention(x))
