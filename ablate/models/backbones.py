"""Backbones with a feature pyramid, built on torchvision.

Every backbone exposes its stages so that a pyramid can take any level L (stride 2^L) from
it: level 2 is stride 4, level 5 stride 32. Extra levels above the last are added by
torchvision's LastLevelP6P7 (one-stage detectors) or LastLevelMaxPool (two-stage).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.models.detection.backbone_utils import BackboneWithFPN

log = logging.getLogger("ablate.models")


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def tiny_body(width: int) -> nn.Sequential:
    """Four stages of two 3x3 conv-BN-ReLU, each halving the resolution: small enough to train
    from scratch on a CPU. Stage names follow ResNet (layer1 has stride 4, layer4 stride 32)."""
    w = width
    return nn.Sequential(OrderedDict(
        stem=conv_bn_relu(3, w, 2),
        layer1=nn.Sequential(conv_bn_relu(w, 2 * w, 2), conv_bn_relu(2 * w, 2 * w)),
        layer2=nn.Sequential(conv_bn_relu(2 * w, 4 * w, 2), conv_bn_relu(4 * w, 4 * w)),
        layer3=nn.Sequential(conv_bn_relu(4 * w, 8 * w, 2), conv_bn_relu(8 * w, 8 * w)),
        layer4=nn.Sequential(conv_bn_relu(8 * w, 16 * w, 2), conv_bn_relu(16 * w, 16 * w)),
    ))


def _load_pretrained(weights) -> dict:
    """torchvision's ImageNet weights, with an error that says what to do when offline."""
    try:
        return weights.get_state_dict(progress=False)
    except (URLError, OSError, RuntimeError) as e:
        hub = torch.hub.get_dir()
        name = weights.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"model.backbone.pretrained=true needs torchvision's {weights} weights, and "
            f"downloading {weights.url} failed ({e}). If this machine is offline, copy that file "
            f"to {hub}/checkpoints/{name} (or set TORCH_HOME), or train from scratch with "
            "model.backbone.pretrained=false.") from e


def _resnet(name: str, pretrained: bool) -> nn.Module:
    builders = {"resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
                "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1)}
    build, weights = builders[name]
    # Frozen BN for fine-tuning from ImageNet (as torchvision does); trainable BN from scratch.
    net = build(weights=None, norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    if pretrained:
        net.load_state_dict(_load_pretrained(weights))
    return net


def _mobilenet(pretrained: bool) -> nn.Module:
    weights = tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    net = tvm.mobilenet_v3_large(weights=None, norm_layer=norm)
    if pretrained:
        net.load_state_dict(_load_pretrained(weights))
    return net.features


def _freeze(body: nn.Sequential, trainable_layers: int) -> None:
    """Leave the last `trainable_layers` children of the body trainable, freeze the others."""
    children = list(body.children())
    for child in children[: max(0, len(children) - trainable_layers)]:
        child.requires_grad_(False)


def _probe_stages(body: nn.Sequential) -> tuple[dict[str, int], dict[str, int]]:
    """Output stride and channels of each child of a sequential body, from a dummy forward."""
    strides, channels, x = {}, {}, torch.zeros(1, 3, 64, 64)
    was_training = body.training
    body.eval()
    with torch.no_grad():
        for name, child in body.named_children():
            x = child(x)
            strides[name], channels[name] = 64 // x.shape[-1], x.shape[1]
    body.train(was_training)
    return strides, channels


def build_backbone(cfg, levels: list[int], extra_levels: int, fpn_channels: int, two_stage: bool) -> BackboneWithFPN:
    """A body with an FPN over `levels` (stride 2^L), plus `extra_levels` on top."""
    name = cfg.name
    pretrained = bool(cfg.pretrained)
    if name == "tiny":
        if pretrained:
            raise ValueError("model.backbone=tiny has no pretrained weights; set model.backbone.pretrained=false")
        body = tiny_body(int(cfg.width))
    elif name in ("resnet18", "resnet50"):
        net = _resnet(name, pretrained)
        body = nn.Sequential(OrderedDict(
            stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
            layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4))
    elif name == "mobilenet_v3":
        body = nn.Sequential(OrderedDict((f"block{i}", m) for i, m in enumerate(_mobilenet(pretrained))))
    else:
        raise ValueError(f"model.backbone.name={name!r}: choose tiny, resnet18, resnet50 or mobilenet_v3")
    strides, channels = _probe_stages(body)
    # A level's output is the last child of the body at its stride.
    stage_of_level = {stride.bit_length() - 1: child for child, stride in strides.items()}

    missing = [lv for lv in levels if lv not in stage_of_level]
    if missing:
        raise ValueError(f"model.levels={list(levels)}: backbone {name} has no level {missing} "
                         f"(available: {sorted(stage_of_level)})")
    if pretrained:
        _freeze(body, int(cfg.trainable_layers))

    return_layers = {stage_of_level[lv]: str(i) for i, lv in enumerate(levels)}
    in_channels = [channels[stage_of_level[lv]] for lv in levels]
    if extra_levels == 0:
        extra = None
    elif two_stage:
        if extra_levels != 1:
            raise ValueError(f"model.extra_levels={extra_levels}: a two-stage pyramid adds 0 or 1 (max-pooled) level")
        extra = LastLevelMaxPool()
    else:
        if extra_levels != 2:
            raise ValueError(f"model.extra_levels={extra_levels}: a one-stage pyramid adds 0 or 2 levels (P6, P7)")
        extra = LastLevelP6P7(fpn_channels, fpn_channels)
    return BackboneWithFPN(body, return_layers, in_channels, fpn_channels, extra_blocks=extra)
