"""Weighted residual connections (WRC; in YOLOv4's bag of specials, Bochkovskiy, Wang and Liao 2020,
sec. 3.2 / Table "BoS for backbone"): the sum at the end of each residual block of the backbone
made a learned weighted sum, out = act(w_f * F(x) + w_s * shortcut(x)).

The form follows darknet's (AlexeyAB/darknet, the YOLOv4 reference code) [shortcut] layer with
weights (src/shortcut_layer.c make_shortcut_layer, src/blas.c shortcut_multilayer_cpu):
- weights_type: per_feature, one scalar per input of the sum (here 2: the branch F(x) and the
  shortcut); per_channel, one weight per input and channel ([2, C]);
- weights_normalization: none (the weights as they are), relu (w_i = relu(w_i) / (eps + sum_j
  relu(w_j))) or softmax (w_i = exp(w_i - max) / (eps + sum_j exp(w_j - max))), eps = 1e-4 as darknet;
- every weight starts at 1 (darknet's make_shortcut_layer), so with normalization none a block
  starts as the baseline's, and with relu/softmax as the average of its two inputs.
In darknet the branch input is the previous layer's output (`in`, weights[0]) and the shortcut the
layer named by from= (weights[1]); the same order here: weight[0] multiplies F(x), weight[1] the
shortcut.

Where: torchvision's ResNet BasicBlock and Bottleneck (the shortcut is the identity or the
projection, downsample), also after frn (its FRNResidualBlock: TLU after the sum), and
MobileNetV3's inverted residual blocks with an identity shortcut (use_res_connect). Each such block
is wrapped by WeightedResidualBlock (the original block a submodule, `block`, whose parameters keep
their values). The tiny backbone has no residual blocks: TrickConflictError (n/a in a sweep).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..base import Trick, check_choice
from .frn import FRNResidualBlock

WEIGHTS_TYPES = ("per_feature", "per_channel")
NORMALIZATIONS = ("none", "relu", "softmax")
EPS = 1e-4  # darknet's, in the normalisations' denominators


def normalized(weights: Tensor, normalization: str) -> Tensor:
    """The weights of the sum ([2] or [2, C]) as darknet normalises them over the inputs (dim 0)."""
    if normalization == "relu":
        w = weights.relu()
        return w / (EPS + w.sum(0, keepdim=True))
    if normalization == "softmax":
        w = (weights - weights.max(0, keepdim=True).values).exp()
        return w / (EPS + w.sum(0, keepdim=True))
    return weights


class WeightedResidualBlock(nn.Module):
    """A residual block whose final sum F(x) + shortcut(x) is w[0] F(x) + w[1] shortcut(x)."""

    def __init__(self, block: nn.Module, channels: int, weights_type: str, normalization: str):
        super().__init__()
        self.block, self.normalization = block, normalization
        shape = (2,) if weights_type == "per_feature" else (2, channels)
        # darknet: every weight starts at 1. droppath finds the wrapped block itself (a submodule).
        self.weight = nn.Parameter(torch.ones(shape))

    def weights(self) -> tuple[Tensor, Tensor]:
        w = normalized(self.weight, self.normalization)
        if w.dim() == 2:
            w = w[:, None, :, None, None]  # [2, 1, C, 1, 1]
        return w[0], w[1]

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        w_f, w_s = self.weights()
        if isinstance(b, InvertedResidual):
            return w_f * b.block(x) + w_s * x
        frn = isinstance(b, FRNResidualBlock)
        depth = 3 if hasattr(b, "conv3") else 2
        out = x
        for i in range(1, depth + 1):
            out = getattr(b, f"bn{i}")(getattr(b, f"conv{i}")(out))
            if i < depth and not frn:  # FRN's TLU is inside its norm
                out = b.relu(out)
        identity = x if b.downsample is None else b.downsample(x)
        out = w_f * out + w_s * identity
        return b.act(out) if frn else b.relu(out)


def out_channels(block: nn.Module) -> int:
    if isinstance(block, InvertedResidual):
        return block.out_channels
    return getattr(block, f"conv{3 if hasattr(block, 'conv3') else 2}").out_channels


def wrap_residual_blocks(module: nn.Module, weights_type: str, normalization: str) -> int:
    """Each residual block under `module` wrapped by WeightedResidualBlock; how many."""
    count = 0
    for name, child in list(module.named_children()):
        residual = (isinstance(child, (BasicBlock, Bottleneck, FRNResidualBlock))
                    or (isinstance(child, InvertedResidual) and child.use_res_connect))
        if residual:
            setattr(module, name, WeightedResidualBlock(child, out_channels(child), weights_type, normalization))
            count += 1
        elif not isinstance(child, WeightedResidualBlock):
            count += wrap_residual_blocks(child, weights_type, normalization)
    return count


class WeightedResidual(Trick):
    def __init__(self, weights_type: str, weights_normalization: str):
        self.weights_type = check_choice("weights_type", weights_type, WEIGHTS_TYPES)
        self.weights_normalization = check_choice("weights_normalization", weights_normalization, NORMALIZATIONS)

    def on_model(self, model: nn.Module) -> nn.Module:
        from ..base import TrickConflictError

        if wrap_residual_blocks(model.backbone.body, self.weights_type, self.weights_normalization) == 0:
            raise TrickConflictError(f"trick '{self.name or 'weighted_residual'}' does not fit this backbone: it "
                                     "has no residual blocks to weight (the tiny backbone is plain conv-BN-ReLU); "
                                     "use model/backbone=resnet18, resnet50, resnet101, resnext50 or mobilenet_v3")
        return model
