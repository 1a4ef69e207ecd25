"""Cross-Iteration Batch Normalization (CBN; Yao, Cao, Zheng, Huang and Lin, CVPR 2021,
arXiv:2002.05712): BatchNorm whose statistics in training are those of the last k iterations,
each past iteration's compensated for the change of the weights since, by a first-order Taylor
expansion in the weights of the convolution the BN follows:

    mu_{t-tau}(theta_t) ~ mu_{t-tau}(theta_{t-tau}) + dmu_{t-tau}/dtheta . (theta_t - theta_{t-tau})

and the same for nu = E[x^2]. Then (the paper's eq. 8-9)

    mu_bar = 1/k sum_tau mu_{t-tau}(theta_t)
    nu_bar = 1/k sum_tau max(nu_{t-tau}(theta_t), mu_{t-tau}(theta_t)^2)
    sigma_bar^2 = nu_bar - mu_bar^2,   y = gamma (x - mu_bar) / sqrt(sigma_bar^2 + eps) + beta.

Compared line by line with the authors' code (Howal/Cross-iterationBatchNorm,
mmdet/models/utils/CBN.py, CBatchNorm2d, and its configs/cbn/*_cbn_buffer3_burnin8_1x.py and
tools/train.py): the Jacobians dmu/dW and dnu/dW of the current batch w.r.t. the preceding conv's
weight W by autograd (grad of the channel sum, which gives each channel's row since channel c's
statistics depend on W[c] alone), a buffer of the last k-1 iterations' mu, nu, Jacobians and
weights, newest first; the compensation uses the current weights without gradient, so the
gradient flows through the current batch's statistics only; no window during the burn-in (plain
BN), the full window after it (the code's two_stage=True); the running statistics for evaluation
updated from the current batch alone (momentum 0.1, unbiased variance), as BN. Differences from the
code, each the paper's form where they differ:
- nu's compensation is clipped by max(nu, mu^2) (the paper); the code instead leaves out of the
  average every past iteration whose compensated variance is negative;
- normalisation by sqrt(sigma^2 + eps) (the paper, BN); the code's default divides by sqrt(sigma^2) + eps;
- burn-in in plain BN is torch's BatchNorm (biased variance in the normalisation; the code's plain
  path divides by the unbiased one);
- the code's rho (a factor on the compensation, 1.0 by default) is left out (always 1);
- the step count comes from the harness (on_step), so a resumed run keeps its burn-in; the buffer
  itself is not checkpointed and refills in k-1 iterations after a resume.

Where: every trainable nn.BatchNorm2d of the backbone that directly follows a convolution: in a
sequence conv -> BN (the tiny backbone's conv-BN-ReLU, ResNet's stem and projection shortcuts,
MobileNetV3's Conv2dNormActivation), and bn{i} after conv{i} in ResNet's BasicBlock/Bottleneck. The
authors put CBN in the FPN and the 4conv1fc box head with the ImageNet backbone's BN frozen; a
pretrained backbone here has frozen BN too (FrozenBatchNorm2d), which CBN would discard:
TrickConflictError (n/a), as frn does; train from scratch (model.backbone.pretrained=false).
The FPN and heads of these detectors have no BatchNorm to replace.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..base import LRFactor, Trick, check_fraction, check_number, norm_with_activation, with_its_activation
from .frn import refuse_frozen_bn


class CrossIterationBatchNorm2d(nn.Module):
    """BatchNorm2d with CBN's statistics over the last `window` iterations in training, after
    `burnin_steps` optimizer steps (set by the trick); `conv` is the convolution before it."""

    def __init__(self, bn: nn.BatchNorm2d, conv: nn.Conv2d, window: int):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.window = bn.num_features, bn.eps, bn.momentum, window
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self._conv = [conv]  # not a submodule: the conv is its parent's
        self.step, self.burnin_steps = 0, 0
        # The past iterations, newest first: (mu, nu, dmu/dW, dnu/dW, W), all detached.
        self.past: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = []

    @property
    def conv_weight(self) -> Tensor:
        return self._conv[0].weight

    def statistics(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, variance) over the window for y [C, N*H*W] of the current iteration, the buffer
        updated with its statistics."""
        w = self.conv_weight
        mu, nu = y.mean(1), y.square().mean(1)
        ones = torch.ones_like(mu)
        dmu = torch.autograd.grad(mu, w, ones, retain_graph=True)[0]
        dnu = torch.autograd.grad(nu, w, ones, retain_graph=True)[0]
        w_now = w.detach().float()
        mus, nus = [mu], [nu]
        for mu_p, nu_p, dmu_p, dnu_p, w_p in self.past:
            shift = w_now - w_p
            mu_c = mu_p + (dmu_p * shift).flatten(1).sum(1)
            nu_c = nu_p + (dnu_p * shift).flatten(1).sum(1)
            mus.append(mu_c)
            nus.append(torch.maximum(nu_c, mu_c.square()))
        mean = torch.stack(mus).mean(0)
        var = torch.stack(nus).mean(0) - mean.square()
        self.past = [(mu.detach(), nu.detach(), dmu.detach().float(), dnu.detach().float(), w_now.clone()),
                     *self.past][: self.window - 1]
        return mean, var

    def forward(self, x: Tensor) -> Tensor:
        cross = (self.training and self.window > 1 and self.step >= self.burnin_steps and torch.is_grad_enabled()
                 and self.conv_weight.requires_grad)
        if not cross:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                                self.momentum, self.eps)
        y = x.float().transpose(0, 1).reshape(x.shape[1], -1)
        mean, var = self.statistics(y)
        with torch.no_grad():  # evaluation's running statistics: the current batch's, as BN
            self.running_mean.lerp_(y.mean(1).detach(), self.momentum)
            self.running_var.lerp_(y.var(1).detach(), self.momentum)
        scale = self.weight.float() * torch.rsqrt(var.clamp(min=0) + self.eps)
        shift = self.bias.float() - mean * scale
        return (x.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, window={self.window}"


def conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d]]:
    """(parent, attribute, conv) of each nn.BatchNorm2d (or timm's BatchNormAct2d) under `module`
    directly after a conv."""
    pairs = []
    for parent in module.modules():
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            # a trainable BatchNorm2d, or timm's BatchNormAct2d (BN with its activation, kept after CBN)
            if not (type(child) is nn.BatchNorm2d or norm_with_activation(child)):
                continue
            conv = None
            if isinstance(parent, (BasicBlock, Bottleneck)) and name.startswith("bn"):
                conv = getattr(parent, "conv" + name[2:], None)
            elif isinstance(parent, nn.Sequential) and i > 0:
                conv = children[i - 1][1]
            elif name == "bn":  # timm's ConvNormAct: conv, then bn
                conv = getattr(parent, "conv", None)
            if isinstance(conv, nn.Conv2d):
                pairs.append((parent, name, conv))
    return pairs


class CBN(Trick):
    claims = ("normalization",)

    def __init__(self, window: int, burnin_fraction: float):
        self.window = check_number("window", window, 1, integer=True)
        self.burnin_fraction = check_fraction("burnin_fraction", burnin_fraction)
        self.layers: list[CrossIterationBatchNorm2d] = []
        self.step = 0

    def on_model(self, model: nn.Module) -> nn.Module:
        body = model.backbone.body
        refuse_frozen_bn(body, self.name or "cbn", "CBN")
        pairs = conv_bn_pairs(body)
        if not pairs:
            raise ValueError(f"tricks.{self.name}: the backbone has no BatchNorm2d after a convolution to replace")
        self.layers = []
        for parent, name, conv in pairs:
            old = getattr(parent, name)
            layer = CrossIterationBatchNorm2d(old, conv, self.window)
            setattr(parent, name, with_its_activation(old, layer))
            self.layers.append(layer)
        return model

    def on_lr_factor(self, factor: LRFactor, total_steps: int) -> LRFactor:
        # Only to learn the run's length: the burn-in is a fraction of it. The schedule is unchanged.
        burnin = round(self.burnin_fraction * total_steps)
        for layer in self.layers:
            layer.burnin_steps = burnin
        return factor

    def on_step(self, model: nn.Module, step: int) -> None:
        self.step = step
        for layer in self.layers:
            layer.step = step

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "step" in state:
            self.on_step(None, int(state["step"]))
