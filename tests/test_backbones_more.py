"""The backbones beyond the default ones (issue 12): each one's pyramid taps have the documented
strides and channels (docs/backbones.md), a level a backbone lacks is refused by name, pretrained
weights load from a local file. Random weights, 128-px inputs, one CPU thread."""
import math

import pytest
import torch
from torch import nn
from torchvision import models as tvm
from torchvision.ops import FrozenBatchNorm2d

from ablate.models import build_model
from ablate.models.backbones import build_backbone, build_body, pyramid_taps
from ablate.models.darknet import darknet19_layers
from ablate.testing import model_config

# {level L (stride 2^L): channels} of every tap each backbone offers, as docs/backbones.md lists them.
TAPS = {
    "resnet18": {2: 64, 3: 128, 4: 256, 5: 512},
    "resnet50": {2: 256, 3: 512, 4: 1024, 5: 2048},
    "resnet101": {2: 256, 3: 512, 4: 1024, 5: 2048},
    "resnext50": {2: 256, 3: 512, 4: 1024, 5: 2048},
    "mobilenet_v3": {1: 16, 2: 24, 3: 40, 4: 112, 5: 960},
    "mobilenet_v2": {1: 16, 2: 24, 3: 32, 4: 96, 5: 1280},
    "vgg16": {0: 64, 1: 128, 2: 256, 3: 512, 4: 512, 5: 512},
    "squeezenet": {1: 64, 2: 128, 3: 256, 4: 512},
    "densenet121": {1: 64, 2: 256, 3: 512, 4: 1024, 5: 1024},
    "shufflenet_v2": {1: 24, 2: 24, 3: 116, 4: 232, 5: 1024},
    "efficientnet": {1: 16, 2: 24, 3: 40, 4: 112, 5: 1280},
    "efficientnet size=b2": {1: 16, 2: 24, 3: 48, 4: 120, 5: 1408},
    "darknet19": {0: 32, 1: 64, 2: 128, 3: 256, 4: 512, 5: 1024},
}


def backbone_config(spec: str, **overrides):
    """model.backbone of conf/model/backbone/<name>.yaml; "name key=value" sets a key."""
    name, *pairs = spec.split()
    overrides.update(pair.split("=", 1) for pair in pairs)
    return model_config("fcos", name, **overrides).backbone


def stride_levels(body: nn.Sequential, size: int = 128) -> dict[str, int]:
    """log2 of each child's output stride, rounded, from a forward of a size x size image."""
    levels, x = {}, torch.zeros(1, 3, size, size)
    body.eval()
    with torch.no_grad():
        for name, child in body.named_children():
            x = child(x)
            levels[name] = round(math.log2(size / x.shape[-1]))
    return levels


def check_documented_taps(spec: str, documented: dict[int, int]) -> nn.Sequential:
    """The body of backbone `spec`, after checking that its taps are `documented` ({level: channels})
    and that each tap's output has stride 2^level on a 128-px image (not only on the 64-px probe)."""
    torch.manual_seed(0)
    body = build_body(backbone_config(spec))
    taps = pyramid_taps(body)
    assert {lv: c for lv, (_, c) in taps.items()} == documented
    levels = stride_levels(body)
    assert {lv: levels[child] for lv, (child, _) in taps.items()} == {lv: lv for lv in taps}
    return body


@pytest.mark.parametrize("spec", TAPS)
def test_taps_have_the_documented_strides_and_channels(spec):
    check_documented_taps(spec, TAPS[spec])


def test_stages_are_named_by_level():
    assert list(build_body(backbone_config("mobilenet_v2"))._modules) == ["c1", "c2", "c3", "c4", "c5"]


def test_a_level_the_backbone_lacks_is_refused_naming_both():
    cfg = model_config("fcos", "squeezenet")  # FCOS's levels [3, 4, 5]; squeezenet stops at stride 16
    with pytest.raises(ValueError, match=r"model.levels=\[3, 4, 5\]: backbone squeezenet has no level \[5\]; "
                                         r"it offers levels 1 \(stride 2, 64 channels\).*4 \(stride 16, 512"):
        build_model(cfg, num_classes=2, image_size=128)


def test_squeezenet_detects_with_the_levels_it_has():
    cfg = model_config("fcos", "squeezenet")
    cfg.levels = [2, 3, 4]
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=2, image_size=128).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])
    assert set(out[0]) >= {"boxes", "scores", "labels"}


def test_efficientnet_size_picks_torchvisions_model_and_an_unknown_size_is_refused():
    assert sum(p.numel() for p in build_body(backbone_config("efficientnet size=b1")).parameters()) == 6_513_184
    with pytest.raises(ValueError, match=r"model.backbone.size='b9': choose one of b0, b1"):
        build_body(backbone_config("efficientnet size=b9"))


def test_mobilenet_v3_keeps_torchvisions_detection_batchnorm():
    """As before this change: plain BatchNorm2d (eps 1e-5, momentum 0.1) from scratch."""
    bn = next(m for m in build_body(backbone_config("mobilenet_v3")).modules() if isinstance(m, nn.BatchNorm2d))
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)


def test_pretrained_densenet_loads_torchvisions_file_with_its_old_key_names(tmp_path, monkeypatch):
    """Offline here: the 'download' is a file put where torchvision looks first, with the key names
    of torchvision's real densenet121 file ("norm.1" for "norm1")."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = tvm.DenseNet121_Weights.IMAGENET1K_V1
    torch.manual_seed(1)
    reference = tvm.densenet121().state_dict()
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv1.", ".conv.1."): v for k, v in reference.items()
           if not k.endswith("num_batches_tracked")}  # a file older than that buffer
    assert old != reference
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(old, tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    body = build_backbone(backbone_config("densenet121", pretrained=True), [3, 4, 5], 0, 16, False).body
    block = body.c2.denseblock1.denselayer1
    assert torch.equal(block.conv1.weight, reference["features.denseblock1.denselayer1.conv1.weight"])
    assert isinstance(block.norm1, FrozenBatchNorm2d)
    assert torch.equal(block.norm1.running_var, reference["features.denseblock1.denselayer1.norm1.running_var"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    # trainable_layers=3 counts stages: c3-c5 (strides 8-32) train
    trainable = [name for name, stage in body.named_children() if any(p.requires_grad for p in stage.parameters())]
    assert trainable == ["c3", "c4", "c5"]


def test_darknet19_is_yolov2s_table_6():
    """Table 6 (YOLO9000): conv filters/size and max-pools in order, down to the last 3x3 conv; with
    the classifier's 1x1 conv to 1000 classes its 224-px forward is the paper's "5.58 billion
    operations" (multiply-adds counted as two)."""
    table = ["32 3", "M", "64 3", "M", "128 3", "64 1", "128 3", "M", "256 3", "128 1", "256 3", "M",
             "512 3", "256 1", "512 3", "256 1", "512 3", "M", "1024 3", "512 1", "1024 3", "512 1", "1024 3"]
    layers = darknet19_layers()
    rows = ["M" if isinstance(m, nn.MaxPool2d) else f"{m[0].out_channels} {m[0].kernel_size[0]}" for _, m in layers]
    assert rows == table
    pools = [m for _, m in layers if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (2, 2) for p in pools)
    convs = [m for _, m in layers if not isinstance(m, nn.MaxPool2d)]
    assert all(type(m[1]) is nn.BatchNorm2d and m[2].negative_slope == 0.1 and m[0].bias is None for m in convs)
    assert all(m[0].padding[0] == m[0].kernel_size[0] // 2 for m in convs)
    ops, side = 2 * 1024 * 1000 * 7 * 7, 224  # the classifier's conv on the 7x7 map
    for _, m in layers:
        if isinstance(m, nn.MaxPool2d):
            side //= 2
        else:
            ops += 2 * m[0].in_channels * m[0].out_channels * m[0].kernel_size[0] ** 2 * side ** 2
    assert round(ops / 1e9, 2) == 5.58
    body = build_body(backbone_config("darknet19"))
    assert [len([m for m in stage if not isinstance(m, nn.MaxPool2d)]) for stage in body] == [1, 1, 3, 3, 5, 5]
    with pytest.raises(ValueError, match="darknet19 has no pretrained weights"):
        build_body(backbone_config("darknet19", pretrained=True))
