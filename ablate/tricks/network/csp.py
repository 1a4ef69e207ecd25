"""Cross Stage Partial stages (CSPNet: Wang, Liao, Wu, Chen, Hsieh and Yeh, CVPRW 2020): each
stage's feature map split in two along the channels, one part through the stage's blocks and a
transition, the other straight on, the two concatenated and fused by a second transition.

Compared with the authors' CSPResNet (WongKinYiu/CrossStagePartialNetworks, csresnet50/cspresnet50
cfgs) and timm's timm/models/cspnet.py (CrossStage.forward: conv_down, conv_exp, split, blocks,
conv_transition_b, cat, conv_transition; cspresnet50: expand_ratio 2, bottle_ratio 0.5). What this
trick builds from a torchvision ResNet stage (CSPStage below):
- down: the stage's first residual block, as it is (its stride and projection shortcut), in place
  of CSPResNet's plain conv_down (3x3, stride 2) + conv_exp (1x1);
- split: its C output channels in two halves (CSPNet's part ratio 0.5); the first half goes straight
  to the concatenation, the second through the stage's other blocks, rebuilt at half width
  (BasicBlock C/2 -> C/2; Bottleneck C/2 -> C/2 with C/8 planes), then transition_b (1x1 conv-BN-ReLU,
  C/2 -> C/2);
- transition: 1x1 conv-BN-ReLU on the concatenation, C -> C.
Differences from the published CSPResNet-50: the channel widths are torchvision ResNet's (the stage
keeps its output width C, so the FPN is unchanged; CSPResNet-50's stages are 128-256-512-1024 wide
with depths 3-3-5-2), the first residual block downsamples in place of a plain conv, and the
rebuilt blocks start from scratch (kaiming_normal fan_out, as torchvision's ResNet initialises its
convs; BN weight 1, bias 0). Each stage needs at least two blocks (resnet18: 2, resnet50: 3-6).

A pretrained backbone would lose its ImageNet weights in the rebuilt blocks (and torchvision has no
CSPResNet weights): not applicable, as a backbone without ResNet stages (tiny, mobilenet_v3).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..base import Trick, check_fraction
from .frn import refuse_frozen_bn


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """A 1x1 conv-BN-ReLU transition (CSPNet's transition layer; timm's ConvNormAct, kernel 1)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def init_like_resnet(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: convs kaiming_normal (fan_out, relu), BN weight 1 bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CSPStage(nn.Module):
    """A ResNet stage as a cross stage partial stage: down (the first block), split, the other
    blocks at the width of their part, transition_b, concatenation, transition."""

    def __init__(self, stage: nn.Sequential, part_ratio: float):
        super().__init__()
        first, rest = stage[0], list(stage)[1:]
        channels = (first.conv3 if isinstance(first, Bottleneck) else first.conv2).out_channels
        self.split = (channels - round(channels * part_ratio), round(channels * part_ratio))  # (straight, blocks)
        width = self.split[1]
        self.down = first
        if isinstance(first, Bottleneck):
            blocks = [Bottleneck(width, width // Bottleneck.expansion) for _ in rest]
        else:
            blocks = [BasicBlock(width, width) for _ in rest]
        self.blocks = nn.Sequential(*blocks)
        self.transition_b = conv_bn_relu(width, width)
        self.transition = conv_bn_relu(channels, channels)
        init_like_resnet(nn.ModuleList([self.blocks, self.transition_b, self.transition]))

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        xs, xb = x.split(self.split, dim=1)
        xb = self.transition_b(self.blocks(xb))
        return self.transition(torch.cat([xs, xb], dim=1))


def resnet_stages(body: nn.Module) -> list[str]:
    """The names of the body's children that are ResNet stages (sequences of BasicBlock/Bottleneck)."""
    return [name for name, child in body.named_children()
            if isinstance(child, nn.Sequential) and len(child) > 0
            and all(isinstance(b, (BasicBlock, Bottleneck)) for b in child)]


class CSP(Trick):
    def __init__(self, part_ratio: float):
        self.part_ratio = check_fraction("part_ratio", part_ratio)
        if not 0 < self.part_ratio < 1:
            from ..base import TrickArgumentError

            raise TrickArgumentError({"part_ratio": part_ratio}, "must be in (0, 1): both parts need channels")

    def on_model(self, model: nn.Module) -> nn.Module:
        from ..base import TrickConflictError

        body = model.backbone.body
        stages = resnet_stages(body)
        if not stages:
            raise TrickConflictError(f"trick '{self.name or 'csp'}' does not fit this backbone: it has no ResNet "
                                     "stages to make cross stage partial (the tiny backbone is plain conv-BN-ReLU, "
                                     "MobileNetV3 has inverted-residual blocks); use model.backbone=resnet18 or "
                                     "resnet50")
        refuse_frozen_bn(body, self.name or "csp", "CSP's rebuilt stages")
        short = [s for s in stages if len(getattr(body, s)) < 2]
        if short:
            raise TrickConflictError(f"trick '{self.name or 'csp'}': stage(s) {short} have a single block, nothing to "
                                     "run on a part")
        for name in stages:
            setattr(body, name, CSPStage(getattr(body, name), self.part_ratio))
        return model
