"""Stochastic depth (Huang, Sun, Liu, Sedra and Weinberger, ECCV 2016, "Deep Networks with
Stochastic Depth"): in training, each residual block's branch is dropped for a whole image with
probability p_l, leaving the identity (torchvision.ops.StochasticDepth, mode "row": per image, the
kept branches scaled by 1 / (1 - p_l)). Off in eval.

Schedule (the paper's linear decay rule, sec. 3): block l of L (counted from 1, input to output over
the whole backbone) is dropped with p_l = l / L * max_drop_prob, so the last block has
max_drop_prob. (timm's drop_path_rate spaces them from 0 at the first block instead.)

Where: at the end of the residual branch, just before the addition: after the last normalisation of
torchvision's ResNet BasicBlock (bn2) and Bottleneck (bn3), and after the module a block names in
its `residual_branch_end` attribute (the frn trick's FRNResidualBlock: its last FRN); at the end of
MobileNetV3's inverted residual blocks that have an identity shortcut (use_res_connect; the others
have no shortcut to fall back on). Blocks of frozen stages of a pretrained backbone are included (one
schedule over all blocks). The tiny backbone has no residual blocks: selecting the trick with it
stops the run as not fitting (TrickConflictError: n/a in a sweep).
"""
from __future__ import annotations

from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import StochasticDepth

from ..base import Trick, check_number


def residual_blocks(body: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of the last module of each residual branch of `body`, input to output."""
    ends = []
    for module in body.modules():
        if isinstance(module, BasicBlock):
            ends.append((module, "bn2"))
        elif isinstance(module, Bottleneck):
            ends.append((module, "bn3"))
        elif isinstance(getattr(module, "residual_branch_end", None), str):  # e.g. frn's FRNResidualBlock
            ends.append((module, module.residual_branch_end))
        elif isinstance(module, InvertedResidual) and module.use_res_connect:
            ends.append((module.block, str(len(module.block) - 1)))
    return ends


class DropPath(Trick):
    def __init__(self, max_drop_prob: float):
        self.max_drop_prob = check_number("max_drop_prob", max_drop_prob, 0, 1, high_open=True)
        self.rates: list[float] = []

    def on_model(self, model: nn.Module) -> nn.Module:
        from ..base import TrickConflictError

        ends = residual_blocks(model.backbone.body)
        if not ends:
            raise TrickConflictError(f"trick '{self.name or 'droppath'}' does not fit this backbone: it has no "
                                     "residual blocks to drop (the tiny backbone is plain conv-BN-ReLU); use "
                                     "model/backbone=resnet18, resnet50, resnet101, resnext50 or mobilenet_v3")
        self.rates = [self.max_drop_prob * (i + 1) / len(ends) for i in range(len(ends))]
        for (parent, attr), p in zip(ends, self.rates):
            setattr(parent, attr, nn.Sequential(getattr(parent, attr), StochasticDepth(p, "row")))
        return model
