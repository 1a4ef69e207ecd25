"""Filter Response Normalization with TLU (Singh and Krishnan, CVPR 2020): every BatchNorm of the
backbone and the ReLU that follows it replaced by FRN+TLU (FilterResponseNorm2d below), which normalises
each image's channel by its own mean square over H x W, with no batch statistics.

Where: the detector's BatchNorms are all in the backbone (the FPN has none; FCOS's towers have
GroupNorm, RetinaNet's and the RPN's none), so the trick changes the body:
- a BN directly followed by a ReLU (or ReLU6) in a sequence (the tiny backbone's conv-BN-ReLU,
  ResNet's stem, MobileNetV3's blocks): FRN+TLU, the ReLU removed;
- a BN followed by anything else (MobileNetV3's Hardswish blocks, its linear projections): FRN
  without TLU, the next layer kept;
- ResNet's BasicBlock/Bottleneck: FRNResidualBlock (FRN+TLU inside the branch, FRN alone before the
  addition and on the projection shortcut, a TLU after the addition: every ReLU becomes a TLU, as
  the paper's ResNet-50 replaces BN+ReLU throughout).

FRN itself is y = gamma * x / sqrt(nu2 + eps) + beta with nu2 = mean(x^2 over H, W), per image and
channel, then the TLU z = max(y, tau); gamma starts at 1, beta and tau at 0 (the paper's appendix
code; timm's FilterResponseNormTlu2d). eps is a fixed constant: the paper's learned eps
(eps + |eps_l|) is for 1x1 activation maps (fully connected layers), which the backbones' maps are not.
The layers live here, not in ablate/models/, so that only the runs using FRN depend on this file
(ablate/fingerprint.py).
A pretrained backbone has frozen ImageNet BatchNorm (FrozenBatchNorm2d), which FRN would discard:
that does not fit (TrickConflictError: n/a in a sweep; train from scratch, model.backbone.pretrained=false).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from ...models.backbones import frozen_norm_types

from ..base import Trick, check_number, norm_with_activation, with_its_activation


class FilterResponseNorm2d(nn.Module):
    """FRN over each image's channel, followed by the TLU unless `tlu` is False."""

    def __init__(self, num_features: int, eps: float, tlu: bool):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.tau = nn.Parameter(torch.zeros(num_features)) if tlu else None

    def forward(self, x: Tensor) -> Tensor:
        nu2 = x.float().square().mean(dim=(2, 3), keepdim=True)
        x = (x.float() * torch.rsqrt(nu2 + self.eps)).to(x.dtype)
        y = x * self.weight.view(1, -1, 1, 1).to(x.dtype) + self.bias.view(1, -1, 1, 1).to(x.dtype)
        return y if self.tau is None else torch.maximum(y, self.tau.view(1, -1, 1, 1).to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, tlu={self.tau is not None}"


class TLU(nn.Module):
    """The TLU alone, max(x, tau) with a learned tau per channel (starting at 0: a ReLU), for the
    activation after a residual addition."""

    def __init__(self, num_features: int):
        super().__init__()
        self.tau = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return torch.maximum(x, self.tau.view(1, -1, 1, 1).to(x.dtype))


class FRNResidualBlock(nn.Module):
    """A torchvision ResNet BasicBlock or Bottleneck with FRN: each BN followed by a ReLU becomes
    FRN+TLU, the branch's last BN (followed by the addition) and the projection shortcut's BN
    become FRN alone, and the ReLU after the addition a TLU. torchvision's blocks apply one ReLU
    module at each of those places, which cannot hold a threshold per place, hence this block.
    The convolutions are the old block's; the normalisations keep its names (bn1, bn2[, bn3]).
    `residual_branch_end` names the branch's last module (stochastic depth goes after it)."""

    def __init__(self, block: nn.Module, eps: float):
        super().__init__()
        self.depth = 3 if hasattr(block, "conv3") else 2
        self.residual_branch_end = f"bn{self.depth}"
        names = [f"bn{i}" for i in range(1, self.depth + 1)]
        wrapped = [n for n in names if not isinstance(getattr(block, n), nn.BatchNorm2d)]
        if wrapped:
            kind = type(getattr(block, wrapped[0])).__name__
            raise ValueError(f"FRN: {type(block).__name__}.{wrapped[0]} is {kind}, "
                             "not BatchNorm2d (a trick changed it before FRN: select frn first)")
        for i in range(1, self.depth + 1):
            conv = getattr(block, f"conv{i}")
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", FilterResponseNorm2d(conv.out_channels, eps, tlu=i < self.depth))
        self.downsample = None
        if block.downsample is not None:
            conv = block.downsample[0]
            self.downsample = nn.Sequential(conv, FilterResponseNorm2d(conv.out_channels, eps, tlu=False))
        self.act = TLU(getattr(block, f"conv{self.depth}").out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for i in range(1, self.depth + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.act(out + identity)


RELUS = (nn.ReLU, nn.ReLU6)


def replace_with_frn(module: nn.Module, eps: float) -> int:
    """Each BatchNorm2d under `module` replaced by FRN (with TLU where a ReLU follows it); how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, (BasicBlock, Bottleneck)):
            setattr(module, name, FRNResidualBlock(child, eps))
            count += child.downsample is not None
            count += 3 if isinstance(child, Bottleneck) else 2
        elif norm_with_activation(child):
            # timm's BatchNormAct2d, normalisation and activation in one layer: FRN+TLU in place of
            # BN+ReLU, FRN followed by the activation where it is another one
            tlu = isinstance(child.act, RELUS)
            frn = FilterResponseNorm2d(child.num_features, eps, tlu=tlu)
            setattr(module, name, nn.Sequential(frn, child.drop) if tlu else with_its_activation(child, frn))
            count += 1
        elif isinstance(child, nn.BatchNorm2d):
            children = list(module.named_children())
            index = [n for n, _ in children].index(name)
            follower = children[index + 1] if index + 1 < len(children) else None
            tlu = isinstance(module, nn.Sequential) and follower is not None and isinstance(follower[1], RELUS)
            setattr(module, name, FilterResponseNorm2d(child.num_features, eps, tlu=tlu))
            if tlu:
                setattr(module, follower[0], nn.Identity())
            count += 1
        else:
            count += replace_with_frn(child, eps)
    return count


def refuse_frozen_bn(body: nn.Module, trick: str, what: str) -> None:
    """TrickConflictError (n/a) when `body` is a pretrained backbone's, with frozen ImageNet BatchNorm
    that a normalisation trick replacing BN (`what`) would discard."""
    from ..base import TrickConflictError

    frozen = frozen_norm_types()
    if any(isinstance(m, frozen) for m in body.modules()):
        raise TrickConflictError(f"trick '{trick}' does not fit a pretrained backbone (frozen ImageNet "
                                 f"BatchNorm, which {what} would discard); train it from scratch with "
                                 "model.backbone.pretrained=false")


class FRN(Trick):
    claims = ("normalization",)

    def __init__(self, eps: float):
        self.eps = check_number("eps", eps, 0, low_open=True)

    def on_model(self, model: nn.Module) -> nn.Module:
        body = model.backbone.body
        refuse_frozen_bn(body, self.name or "frn", "FRN")
        if replace_with_frn(body, self.eps) == 0:
            raise ValueError(f"tricks.{self.name}: the backbone has no BatchNorm2d to replace")
        return model
