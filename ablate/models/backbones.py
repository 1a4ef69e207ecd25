"""Backbones with a feature pyramid: the tiny CNN and Darknet-19 (darknet.py), torchvision's models,
and timm's (an optional extra) with features_only=True. docs/backbones.md lists them.

Every backbone is a sequential body of stages so that a pyramid can take any level L (stride 2^L)
it offers (`pyramid_taps`): level 2 is stride 4, level 5 stride 32. Extra levels above the last
are added by torchvision's LastLevelP6P7 (one-stage detectors) or LastLevelMaxPool (two-stage).
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from ..errors import MissingExtraError, UserInputError, WeightsError
from .darknet import darknet19_layers

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
        raise WeightsError(
            f"model.backbone.pretrained=true needs torchvision's {weights} weights, and "
            f"downloading {weights.url} failed ({e}). If this machine is offline, copy that file "
            f"to {hub}/checkpoints/{name} (or set TORCH_HOME), or train from scratch with "
            "model.backbone.pretrained=false.") from e


# model.backbone.name -> torchvision's model name ({size}: model.backbone.size, efficientnet's b0-b7).
TORCHVISION = {
    "resnet18": "resnet18", "resnet50": "resnet50", "resnet101": "resnet101", "resnext50": "resnext50_32x4d",
    "mobilenet_v3": "mobilenet_v3_large", "mobilenet_v2": "mobilenet_v2", "vgg16": "vgg16",
    "squeezenet": "squeezenet1_1", "densenet121": "densenet121", "shufflenet_v2": "shufflenet_v2_x1_0",
    "efficientnet": "efficientnet_{size}",
}
EFFICIENTNET_SIZES = [f"b{k}" for k in range(8)]
# DenseNet's ImageNet file predates torchvision's module names ("norm.1" for "norm1"): torchvision's
# densenet._load_state_dict renames them so; the same here.
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def frozen_norm_types() -> tuple[type, ...]:
    """The layer types of a pretrained body's frozen ImageNet BatchNorm: torchvision's
    FrozenBatchNorm2d, and where timm is installed its FrozenBatchNormAct2d
    (timm.layers.freeze_batch_norm_2d makes it of a timm body's BatchNormAct2d; of a plain
    BatchNorm2d it makes torchvision's)."""
    try:
        from timm.layers import FrozenBatchNormAct2d
    except ImportError:
        return (FrozenBatchNorm2d,)
    return (FrozenBatchNorm2d, FrozenBatchNormAct2d)


def frozen_batch_norm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d replaced by a FrozenBatchNorm2d of the same statistics, affine
    parameters and eps: torchvision's convention for fine-tuning a pretrained backbone."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, key).copy_(getattr(module, key).detach())
        return frozen
    for name, child in module.named_children():
        new = frozen_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _torchvision_net(arch: str, pretrained: bool) -> nn.Module:
    """torchvision's `arch` with ImageNet weights and frozen BatchNorm when pretrained (as in
    torchvision's detection models), with random weights and trainable BatchNorm from scratch."""
    # MobileNetV3 as torchvision's detection builders make it (fasterrcnn_mobilenet_v3_large_fpn):
    # plain BatchNorm2d from scratch, FrozenBatchNorm2d (eps 1e-5) pretrained, in place of the
    # classifier's eps 1e-3 and momentum 0.01; the others keep their classifier's BatchNorm.
    norm = {"norm_layer": FrozenBatchNorm2d if pretrained else nn.BatchNorm2d} if arch == "mobilenet_v3_large" else {}
    net = tvm.get_model(arch, weights=None, **norm)
    if pretrained:
        state = _load_pretrained(tvm.get_model_weights(arch).IMAGENET1K_V1)
        if arch.startswith("densenet"):
            state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
        net.load_state_dict(state)
        net = frozen_batch_norm(net)
    return net


def _stages(layers: list[tuple[str, nn.Module]], ends: set[str] | None = None) -> nn.Sequential:
    """Consecutive layers grouped into stages named c<L> after the stride 2^L of their output (C2-C5
    in the FPN paper's naming). Each stage ends at the last layer at its stride, so the downsampling
    layer opens the next one (as a ResNet stage's first block), or at each layer of `ends` (the
    layers after the last of them left out)."""
    strides, _ = probe_stages(nn.Sequential(OrderedDict(layers)))
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    current = nn.Sequential()
    for i, (name, layer) in enumerate(layers):
        current.add_module(name, layer)
        last = i + 1 == len(layers) or strides[layers[i + 1][0]] != strides[name]
        if (name in ends) if ends is not None else last:
            stage = f"c{strides[name].bit_length() - 1}"
            if stage in stages:
                raise ValueError(f"two stages end at stride {strides[name]} ({stage}): not a feature pyramid")
            stages[stage], current = current, nn.Sequential()
    return nn.Sequential(stages)


def _torchvision_body(arch: str, pretrained: bool) -> nn.Sequential:
    """The feature layers of torchvision's `arch` (the network up to its global pooling and
    classifier) as a sequential body of stages."""
    net = _torchvision_net(arch, pretrained)
    if arch.startswith(("resnet", "resnext")):
        return nn.Sequential(OrderedDict(
            stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
            layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4))
    if arch.startswith("mobilenet_v3"):
        return nn.Sequential(OrderedDict((f"block{i}", m) for i, m in enumerate(net.features)))
    if arch.startswith("shufflenet"):
        return _stages([(n, getattr(net, n)) for n in ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")])
    return _stages(list(net.features.named_children()))


def _timm_body(cfg, pretrained: bool) -> nn.Sequential:
    """timm's model `cfg.name` with features_only=True, its layers grouped into stages c<L> that end
    where timm's feature_info taps it (the last tap at each stride)."""
    try:
        import timm
    except ImportError as e:
        raise MissingExtraError(f"model.backbone={cfg.name} is built by timm, which is not installed: "
                          "pip install -e '.[timm]'") from e
    if not timm.is_model(cfg.name):
        raise UserInputError(f"model.backbone.name={cfg.name!r} (model.backbone.library=timm) is no timm model; "
                         "timm.list_models() lists them")
    weights_file = cfg.weights_file if pretrained else None
    try:
        net = timm.create_model(cfg.name, pretrained=pretrained, features_only=True,
                                pretrained_cfg_overlay={"file": str(weights_file)} if weights_file else None)
    except Exception as e:  # a failed download raises what huggingface_hub's version raises
        if not pretrained:
            raise
        raise WeightsError(_timm_weights_error(timm, cfg, e)) from e
    if pretrained:
        net = timm.layers.freeze_batch_norm_2d(net)
    ends = {info["reduction"]: info["module"].replace(".", "_") for info in net.feature_info.get_dicts()}
    return _stages(list(net.items()), ends=set(ends.values()))


def _timm_weights_error(timm, cfg, e: Exception) -> str:
    """What to do when timm's ImageNet weights of cfg.name cannot be loaded: the file to put where."""
    fallback = "or train from scratch with model.backbone.pretrained=false."
    if cfg.weights_file:
        return (f"model.backbone.weights_file={cfg.weights_file}: timm could not load it into {cfg.name} ({e}). "
                f"It must be timm's {cfg.name} weights (.safetensors or .pth); {fallback}")
    weights = timm.models.get_pretrained_cfg(cfg.name)
    if weights is not None and weights.hf_hub_id:
        file = weights.hf_hub_filename or "model.safetensors"
        url = f"https://huggingface.co/{weights.hf_hub_id}/resolve/main/{file}"
        local = f"{weights.hf_hub_id.split('/')[-1]}.{file.rsplit('.', 1)[-1]}"
    elif weights is not None and weights.url:
        url = weights.url
        local = url.rsplit("/", 1)[-1]
    else:
        return f"model.backbone.pretrained=true: timm has no pretrained weights for {cfg.name}; {fallback}"
    dest = f"{torch.hub.get_dir()}/checkpoints/{local}"
    return (f"model.backbone.pretrained=true needs timm's {cfg.name} weights, and loading them failed ({e}). "
            f"If this machine is offline, download {url}, copy it to {dest} (or any path) and set "
            f"model.backbone.weights_file={dest}; {fallback}")


def _freeze(body: nn.Sequential, trainable_layers: int) -> None:
    """Leave the last `trainable_layers` children of the body trainable, freeze the others."""
    children = list(body.children())
    for child in children[: max(0, len(children) - trainable_layers)]:
        child.requires_grad_(False)


def probe(body: nn.Module, size: int = 64) -> dict[str, torch.Tensor]:
    """The one stride probe: the output of each child of a body whose children run in order (a
    sequential body of stages, or a detector's torchvision IntermediateLayerGetter, model.backbone.body)
    on a dummy size x size image, in eval mode and without gradients (the body's state is left as it
    was). Strides, channels and pyramid levels are read from it (`probe_stages`, `pyramid_taps`,
    `tap_features`)."""
    outputs, x = {}, torch.zeros(1, 3, size, size)
    was_training = body.training
    body.eval()
    with torch.no_grad():
        for name, child in body.named_children():
            x = outputs[name] = child(x)
    body.train(was_training)
    return outputs


def probe_stages(body: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """Output stride and channels of each child of a body (see `probe`)."""
    outputs = probe(body)
    return {name: 64 // x.shape[-1] for name, x in outputs.items()}, {name: x.shape[1] for name, x in outputs.items()}


def tap_features(body: nn.Module, size: int = 64) -> dict[str, torch.Tensor]:
    """The features a detector's body (torchvision's IntermediateLayerGetter) hands its FPN, by
    their output names, finest first, on a dummy image (see `probe`): their channels and strides."""
    return {body.return_layers[child]: x for child, x in probe(body, size).items() if child in body.return_layers}


def pyramid_taps(body: nn.Sequential) -> dict[int, tuple[str, int]]:
    """{level L: (child, channels)} of a sequential body: a level's output is the last child of the
    body at its stride 2^L."""
    strides, channels = probe_stages(body)
    return {stride.bit_length() - 1: (child, channels[child]) for child, stride in strides.items()}


def build_body(cfg) -> nn.Sequential:
    """The backbone of `cfg` (model.backbone) as a sequential body of stages, pretrained or not."""
    name = cfg.name
    pretrained = bool(cfg.pretrained)
    if name in ("tiny", "darknet19"):
        if pretrained:
            raise UserInputError(f"model.backbone={name} has no pretrained weights; set model.backbone.pretrained=false")
        return tiny_body(int(cfg.width)) if name == "tiny" else _stages(darknet19_layers())
    if cfg.get("library") == "timm":
        return _timm_body(cfg, pretrained)
    if name in TORCHVISION:
        arch = TORCHVISION[name]
        if name == "efficientnet":
            if cfg.size not in EFFICIENTNET_SIZES:
                raise UserInputError(f"model.backbone.size={cfg.size!r}: choose one of {', '.join(EFFICIENTNET_SIZES)}")
            arch = arch.format(size=cfg.size)
        return _torchvision_body(arch, pretrained)
    raise UserInputError(f"model.backbone.name={name!r}: choose tiny, darknet19, one of torchvision's {', '.join(TORCHVISION)}, "
                     "or a timm model with model.backbone.library=timm")


def build_backbone(cfg, levels: list[int], extra_levels: int, fpn_channels: int, two_stage: bool) -> BackboneWithFPN:
    """A body with an FPN over `levels` (stride 2^L), plus `extra_levels` on top."""
    body = build_body(cfg)
    taps = pyramid_taps(body)
    missing = [lv for lv in levels if lv not in taps]
    if missing:
        offered = ", ".join(f"{lv} (stride {2 ** lv}, {c} channels)" for lv, (_, c) in sorted(taps.items()))
        raise UserInputError(f"model.levels={list(levels)}: backbone {cfg.name} has no level {missing}; it offers "
                         f"levels {offered}. Choose model.levels among them (level L has stride 2^L).")
    if bool(cfg.pretrained):
        _freeze(body, int(cfg.trainable_layers))

    return_layers = {taps[lv][0]: str(i) for i, lv in enumerate(levels)}
    in_channels = [taps[lv][1] for lv in levels]
    if extra_levels == 0:
        extra = None
    elif two_stage:
        if extra_levels != 1:
            raise UserInputError(f"model.extra_levels={extra_levels}: a two-stage pyramid adds 0 or 1 (max-pooled) level")
        extra = LastLevelMaxPool()
    else:
        if extra_levels != 2:
            raise UserInputError(f"model.extra_levels={extra_levels}: a one-stage pyramid adds 0 or 2 levels (P6, P7)")
        extra = LastLevelP6P7(fpn_channels, fpn_channels)
    return BackboneWithFPN(body, return_layers, in_channels, fpn_channels, extra_blocks=extra)
