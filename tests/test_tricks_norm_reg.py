"""Normalisation and regularisation tricks of issue 11: group_norm, frn, droppath, dropout."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.ops import FrozenBatchNorm2d, StochasticDepth

import ablate.testing
from ablate.models import build_model
from ablate.testing import build_trick, model_config, really_on, tiny_batch, tiny_model, trick_config
from ablate.tricks import TrickConflictError, build_tricks
from ablate.tricks.network.dropout import DropoutTwoMLPHead
from ablate.tricks.network.frn import FRN, FilterResponseNorm2d, FRNResidualBlock
from ablate.tricks.network.group_norm import groups_for

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = ["fcos", "retinanet", "faster_rcnn"]


def count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


def detects(model, name):
    """Training losses finite and eval detections for each image: shapes through the detector."""
    images, targets = tiny_batch(name)
    model.train()
    losses = model(images, targets)
    assert losses and all(math.isfinite(float(v.detach())) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(o["boxes"].shape[1:] == (4,) for o in out)


def frozen(model):
    """The model with its body's BatchNorms frozen, as a pretrained backbone has them."""
    body = model.backbone.body
    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, FrozenBatchNorm2d(child.num_features))
    return model


@pytest.fixture
def resnet18(monkeypatch):
    """ablate.testing's detectors built on resnet18 (from scratch) instead of the tiny backbone."""
    plain = ablate.testing.model_config
    monkeypatch.setattr(ablate.testing, "model_config", lambda name, backbone="resnet18", **kw: plain(name, backbone, **kw))


# ---------------------------------------------------------------- GroupNorm

def test_group_norm_has_32_groups_or_the_largest_divisor_below():
    assert [groups_for(c, 32) for c in (256, 64, 32, 16, 8, 48, 96)] == [32, 32, 32, 16, 8, 24, 32]


@pytest.mark.parametrize("name", MODELS)
def test_group_norm_placement(name):
    before = tiny_model(name)
    model = tiny_model(name, tricks=[build_trick("group_norm", name)])
    body, fpn = model.backbone.body, model.backbone.fpn
    assert count(body, nn.BatchNorm2d) == 0 and count(body, nn.GroupNorm) == 9  # stem + 4 stages x 2
    # tiny body 8..128 channels: 8 and 16 channels get one channel per group, 32 and up 32 groups
    assert [m.num_groups for m in body.modules() if isinstance(m, nn.GroupNorm)] == [8, 16, 16, 32, 32, 32, 32, 32, 32]
    for block in [*fpn.inner_blocks, *fpn.layer_blocks]:
        assert isinstance(block[1], nn.GroupNorm) and block[1].num_groups == 32
    if name == "faster_rcnn":
        box = model.roi_heads.box_head
        assert isinstance(box, FastRCNNConvFCHead) and count(box, nn.GroupNorm) == 4
        assert count(box, nn.Linear) == 1 and box[-2].out_features == 256  # 4conv1fc, same representation
        assert count(model.rpn.head, nn.GroupNorm) == 0  # not in the defaults (no reference has it)
    else:
        assert count(fpn.extra_blocks, nn.GroupNorm) == 2  # P6, P7
        for branch in ("classification_head", "regression_head"):
            # FCOS: torchvision's towers already had GroupNorm(32) (2 convs here): unchanged; RetinaNet: one per conv
            had = count(getattr(before.head, branch).conv, nn.GroupNorm)
            assert had == (2 if name == "fcos" else 0)
            assert count(getattr(model.head, branch).conv, nn.GroupNorm) == (had if name == "fcos" else 4)
    detects(model, name)


def test_group_norm_leaves_a_pretrained_backbones_frozen_bn_and_rpn_on_request():
    trick = build_trick("group_norm", "faster_rcnn", parts=["backbone", "neck", "rpn"])
    model = trick.on_model(frozen(tiny_model("faster_rcnn")))
    assert count(model.backbone.body, FrozenBatchNorm2d) == 9 and count(model.backbone.body, nn.GroupNorm) == 0
    assert count(model.rpn.head, nn.GroupNorm) == 1
    with pytest.raises(TrickConflictError, match="changes nothing"):
        build_trick("group_norm", "fcos", parts=["head"]).on_model(tiny_model("fcos"))


def test_group_norm_and_frn_both_claim_normalization():
    with pytest.raises(TrickConflictError, match="'group_norm' and 'frn' both claim the 'normalization' slot"):
        build_tricks(trick_config("group_norm", "frn"), model_config("fcos"))


# ---------------------------------------------------------------- FRN

def test_frn_and_tlu_by_hand():
    frn = FilterResponseNorm2d(1, eps=1e-6, tlu=True)
    with torch.no_grad():
        frn.weight.fill_(2.0), frn.bias.fill_(0.5), frn.tau.fill_(1.5)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    # nu2 = (1 + 4 + 9 + 16) / 4 = 7.5; y = 2 x / sqrt(7.5 + 1e-6) + 0.5; z = max(y, 1.5)
    y = [2 * v / math.sqrt(7.5 + 1e-6) + 0.5 for v in (1, 2, 3, 4)]
    assert y[0] == pytest.approx(1.23030, abs=1e-5)
    assert frn(x).flatten().tolist() == pytest.approx([1.5, y[1], y[2], y[3]], abs=1e-6)
    no_tlu = FilterResponseNorm2d(1, eps=1e-6, tlu=False)
    assert no_tlu(x).flatten().tolist() == pytest.approx([v / math.sqrt(7.5 + 1e-6) for v in (1, 2, 3, 4)])
    # per image: another image in the batch changes nothing (no batch statistics)
    batch = torch.cat([x, 10 * torch.rand(1, 1, 2, 2)])
    assert torch.allclose(frn(batch)[:1], frn(x))


@pytest.mark.parametrize("name", MODELS)
def test_frn_replaces_every_bn_relu_pair_of_the_tiny_backbone(name):
    model = tiny_model(name, tricks=[build_trick("frn", name)])
    body = model.backbone.body
    frns = [m for m in body.modules() if isinstance(m, FilterResponseNorm2d)]
    assert len(frns) == 9 and all(f.tau is not None and f.eps == 1e-6 for f in frns)
    assert count(body, nn.BatchNorm2d) == 0 and count(body, nn.ReLU) == 0
    detects(model, name)


def test_frn_on_resnet_blocks_has_tlu_inside_the_branch_and_after_the_addition():
    torch.manual_seed(0)
    model = FRN(1e-6).on_model(build_model(model_config("fcos", backbone="resnet18"), num_classes=2, image_size=96))
    blocks = [m for m in model.backbone.body.modules() if isinstance(m, FRNResidualBlock)]
    assert len(blocks) == 8 and count(model.backbone.body, nn.BatchNorm2d) == 0
    first_down = blocks[2]  # layer2's first block: projection shortcut
    assert first_down.bn1.tau is not None and first_down.bn2.tau is None and first_down.downsample[1].tau is None
    x = torch.rand(1, 64, 8, 8)
    assert torch.equal(blocks[0](x), blocks[0].act(blocks[0].bn2(blocks[0].conv2(blocks[0].bn1(blocks[0].conv1(x)))) + x))
    detects(model, "fcos")


def test_frn_refuses_a_pretrained_backbone():
    with pytest.raises(TrickConflictError, match="does not fit a pretrained backbone.*pretrained=false"):
        build_trick("frn", "fcos").on_model(frozen(tiny_model("fcos")))


# ---------------------------------------------------------------- stochastic depth

def test_droppath_survival_falls_linearly_with_depth(resnet18):
    trick = build_trick("droppath", "faster_rcnn")
    model = tiny_model("faster_rcnn", tricks=[trick])
    drops = [m for m in model.backbone.body.modules() if isinstance(m, StochasticDepth)]
    # resnet18: 8 blocks; block l of 8 dropped with l / 8 x 0.1 (survival 1 - that)
    assert [d.p for d in drops] == pytest.approx([0.1 * lv / 8 for lv in range(1, 9)])
    assert all(d.mode == "row" for d in drops)
    assert isinstance(model.backbone.body.layer4[1].bn2[1], StochasticDepth)  # after the branch's last BN


def test_droppath_drops_whole_branches_in_training_and_nothing_in_eval(resnet18):
    before = tiny_model("fcos")
    model = tiny_model("fcos", tricks=[build_trick("droppath", "fcos", max_drop_prob=0.5)])
    x = torch.rand(2, 3, 96, 96)
    before.eval(), model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.backbone(x).values(), before.backbone(x).values()))
        model.train(), before.train()
        torch.manual_seed(0)
        assert not torch.equal(model.backbone(x)["2"], before.backbone(x)["2"])
    block = model.backbone.body.layer4[1]
    block.train()
    torch.manual_seed(1)
    y = torch.ones(64, 512, 1, 1)
    out = block.bn2[1](y)  # per image: 0 or 1 / (1 - p), p = 0.5 for the last block
    assert set(out.flatten().tolist()) <= {0.0, 2.0} and 0 < (out[:, 0] == 0).sum() < 64
    assert all(torch.unique(out[i]).numel() == 1 for i in range(64))


def test_droppath_on_a_backbone_without_residual_blocks_says_so():
    with pytest.raises(TrickConflictError, match="'droppath' does not fit this backbone.*resnet18"):
        build_trick("droppath", "fcos").on_model(tiny_model("fcos"))


def test_droppath_after_frn_drops_the_frn_blocks_branch(resnet18):
    model = tiny_model("retinanet", tricks=[build_trick("frn", "retinanet"), build_trick("droppath", "retinanet")])
    assert count(model.backbone.body, StochasticDepth) == 8
    assert isinstance(model.backbone.body.layer1[0].bn2[0], FilterResponseNorm2d)


# ---------------------------------------------------------------- dropout

@pytest.mark.parametrize("name", MODELS)
def test_dropout_placement_and_off_in_eval(name):
    before = tiny_model(name)
    model = tiny_model(name, tricks=[build_trick("dropout", name)])
    if name == "faster_rcnn":
        head = model.roi_heads.box_head
        assert isinstance(head, DropoutTwoMLPHead) and head.dropout.p == 0.5
        x = torch.rand(4, 64 * 7 * 7)
        head.train()
        torch.manual_seed(0)
        assert (head(x) == 0).float().mean() > 0.5  # ReLU zeros and half of the rest
    else:
        for branch in (model.head.classification_head, model.head.regression_head):
            assert isinstance(branch.conv[-1], nn.Dropout2d) and branch.conv[-1].p == 0.1
            assert count(branch.conv, nn.Dropout2d) == 1
    model.load_state_dict(before.state_dict())  # no parameter added or renamed
    images, _ = tiny_batch(name)
    model.eval(), before.eval()
    with torch.no_grad():
        out, ref = model(images), before(images)
    assert all(torch.equal(a["scores"], b["scores"]) for a, b in zip(out, ref))
    detects(model, name)


def test_dropout_after_group_norm_goes_after_the_4conv1fc_heads_fc():
    model = tiny_model("faster_rcnn", tricks=[build_trick("group_norm", "faster_rcnn"),
                                              build_trick("dropout", "faster_rcnn")])
    head = model.roi_heads.box_head
    assert isinstance(head[-1], nn.Dropout) and isinstance(head[-2], nn.ReLU) and isinstance(head[-3], nn.Linear)


# ---------------------------------------------------------------- a few training steps

@pytest.mark.parametrize("trick", ["group_norm", "frn", "dropout"])
@pytest.mark.parametrize("name", MODELS)
def test_trick_trains_on_each_detector(trick, name):
    really_on(trick, model=name)


@pytest.mark.parametrize("name", MODELS)
def test_droppath_trains_on_each_detector(name, resnet18):
    really_on("droppath", model=name)


@pytest.mark.parametrize("trick", ["dropout", "group_norm"])
def test_head_tower_tricks_are_not_applicable_on_a_head_without_towers(trick):
    # CenterNet's heads are single conv pairs, no classification/regression towers: n/a with a reason
    # (recorded not_applicable in a sweep), never an AttributeError that fails the run.
    overrides = {"parts": ["head"]} if trick == "group_norm" else {}
    with pytest.raises(TrickConflictError, match="no classification and regression conv towers"):
        build_trick(trick, "centernet", **overrides).on_model(tiny_model("centernet"))
