"""Normalisation and skip-connection tricks of issue 11, part 2: sync_bn, weighted_residual, cbn, csp."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

import ablate.tricks.network.sync_bn as sync_bn
from ablate.testing import build_trick, model_config, really_on, tiny_batch, tiny_model, trick_config
from ablate.tricks import TrickConflictError, build_tricks
from ablate.tricks.network.cbn import CrossIterationBatchNorm2d
from ablate.tricks.network.csp import CSPStage
from ablate.tricks.network.weighted_residual import WeightedResidualBlock, normalized
# the shared helpers and the resnet18 fixture (detectors on resnet18 from scratch, not the tiny backbone)
from test_tricks_norm_reg import MODELS, count, detects, resnet18  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def calls_in_training(model, name, kind):
    """How many times modules of type `kind` ran in one training forward of the detector."""
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules() if isinstance(m, kind)]
    images, targets = tiny_batch(name)
    model.train()
    model(images, targets)
    for h in handles:
        h.remove()
    return len(calls)


# ---------------------------------------------------------------- SyncBatchNorm

def test_sync_bn_is_not_applicable_in_one_process():
    with pytest.raises(TrickConflictError, match=r"'sync_bn' is not applicable: sync_bn needs a run on several "
                                                 r"processes \(torch.distributed, world size > 1\); this run trains in one"):
        build_trick("sync_bn").on_model(tiny_model("fcos"))


def test_sync_bn_is_not_applicable_in_a_process_group_of_one(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert sync_bn.world_size() == 1
        with pytest.raises(TrickConflictError, match="world size > 1"):
            build_trick("sync_bn").on_model(tiny_model("fcos"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("name", MODELS)
def test_sync_bn_converts_every_trainable_batchnorm_with_several_processes(name, monkeypatch):
    before = tiny_model(name)
    monkeypatch.setattr(sync_bn, "world_size", lambda: 2)
    trick = build_trick("sync_bn", name)
    model = trick.on_model(tiny_model(name))
    body = model.backbone.body
    assert trick.converted == 9 and count(model, nn.SyncBatchNorm) == 9 and count(body, nn.BatchNorm2d) == 0
    assert torch.equal(body.layer1[0][1].weight, before.backbone.body.layer1[0][1].weight)
    assert model.state_dict().keys() == before.state_dict().keys()


def test_sync_bn_conversion_keeps_statistics():
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    net, n = sync_bn.to_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), bn))
    assert n == 1 and isinstance(net[1], nn.SyncBatchNorm) and torch.equal(net[1].running_mean, torch.full((3,), 0.5))


def test_sync_bn_claims_normalization():
    with pytest.raises(TrickConflictError, match="'group_norm' and 'sync_bn' both claim the 'normalization' slot"):
        build_tricks(trick_config("group_norm", "sync_bn"), model_config("fcos"))


# ---------------------------------------------------------------- weighted residual connections

def identity_block() -> BasicBlock:
    """A one-channel BasicBlock whose convs are the identity and BNs (eval) divide by sqrt(1 + eps)."""
    block = BasicBlock(1, 1)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
    return block.eval()


def test_weighted_residual_is_w_f_times_the_branch_plus_w_s_times_the_shortcut():
    block = identity_block()
    x = torch.tensor([1.0, 2.0, -3.0, 4.0]).view(1, 1, 2, 2)
    s = 1 / math.sqrt(1 + 1e-5)  # each eval BN: x / sqrt(1 + eps)
    branch = torch.relu(x * s) * s  # F(x) = bn2(conv2(relu(bn1(conv1 x))))
    wrapped = WeightedResidualBlock(block, 1, "per_feature", "none")
    assert torch.allclose(wrapped(x), torch.relu(branch + x))  # weights start at 1: the plain block
    assert torch.allclose(wrapped(x), block(x))
    with torch.no_grad():
        wrapped.weight.copy_(torch.tensor([2.0, 0.5]))
    expected = [max(2 * b + 0.5 * v, 0.0) for b, v in zip(branch.flatten().tolist(), x.flatten().tolist())]
    assert wrapped(x).flatten().tolist() == pytest.approx(expected, abs=1e-6)  # [2.5, 5, -1.5 -> 0, 10]
    assert expected[2] == 0.0 and expected[3] == pytest.approx(2 * 4 * s * s + 2)


def test_weighted_residual_normalisations_are_darknets():
    w = torch.tensor([3.0, 1.0])
    assert normalized(w, "relu").tolist() == pytest.approx([3 / 4.0001, 1 / 4.0001])
    assert normalized(torch.tensor([-1.0, 1.0]), "relu").tolist() == pytest.approx([0.0, 1 / 1.0001])
    # softmax: exp(w - max) / (1e-4 + sum): [0, ln 3] -> [1/3, 1] / (4/3 + 1e-4)
    assert normalized(torch.tensor([0.0, math.log(3)]), "softmax").tolist() == pytest.approx(
        [1 / 3 / (4 / 3 + 1e-4), 1 / (4 / 3 + 1e-4)])
    per_channel = normalized(torch.tensor([[1.0, 0.0], [1.0, 2.0]]), "relu")  # [2 inputs, 2 channels]
    assert per_channel.flatten().tolist() == pytest.approx([1 / 2.0001, 0.0, 1 / 2.0001, 2 / 2.0001])


def test_weighted_residual_per_channel_weights_each_channel():
    block = BasicBlock(2, 2).eval()
    wrapped = WeightedResidualBlock(block, 2, "per_channel", "none")
    assert wrapped.weight.shape == (2, 2)
    x = torch.rand(1, 2, 3, 3)
    with torch.no_grad():
        wrapped.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 3.0]]))  # branch off, shortcut x1 and x3
        assert torch.allclose(wrapped(x), x * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1))


@pytest.mark.usefixtures("resnet18")
def test_weighted_residual_wraps_every_block_of_resnet18():
    model = tiny_model("retinanet", tricks=[build_trick("weighted_residual", "retinanet")])
    blocks = [m for m in model.backbone.body.modules() if isinstance(m, WeightedResidualBlock)]
    assert len(blocks) == 8 and all(isinstance(b.block, BasicBlock) and b.weight.tolist() == [1, 1] for b in blocks)
    assert all(b.weight.requires_grad for b in blocks)
    assert calls_in_training(model, "retinanet", WeightedResidualBlock) == 8


def test_weighted_residual_on_a_backbone_without_residual_blocks_says_so():
    with pytest.raises(TrickConflictError, match="'weighted_residual' does not fit this backbone.*resnet18"):
        build_trick("weighted_residual", "fcos").on_model(tiny_model("fcos"))


@pytest.mark.usefixtures("resnet18")
def test_weighted_residual_with_frn_and_droppath():
    model = tiny_model("fcos", tricks=[build_trick("weighted_residual", "fcos"), build_trick("frn", "fcos"),
                                       build_trick("droppath", "fcos")])
    assert count(model.backbone.body, WeightedResidualBlock) == 8
    detects(model, "fcos")


@pytest.mark.usefixtures("resnet18")
@pytest.mark.parametrize("name", MODELS)
def test_weighted_residual_trains_on_each_detector(name):
    model = tiny_model(name, tricks=[build_trick("weighted_residual", name, weights_normalization="softmax")])
    detects(model, name)
    spy = really_on("weighted_residual", model=name, weights_normalization="softmax")
    assert spy.calls["on_model"] == 1


def test_weighted_residual_on_mobilenet_v3_weights_the_identity_shortcut_blocks():
    from torchvision.models.mobilenetv3 import InvertedResidual

    from ablate.models import build_model

    torch.manual_seed(0)
    model = build_model(model_config("fcos", backbone="mobilenet_v3"), num_classes=2, image_size=96)
    residual = sum(isinstance(m, InvertedResidual) and m.use_res_connect for m in model.backbone.body.modules())
    build_trick("weighted_residual", "fcos").on_model(model)
    assert residual == 10 and count(model.backbone.body, WeightedResidualBlock) == residual
    x = torch.rand(1, 40, 6, 6)
    block = next(m for m in model.backbone.body.modules() if isinstance(m, WeightedResidualBlock)
                 and m.block.out_channels == 40).eval()
    with torch.no_grad():
        block.weight.copy_(torch.tensor([0.5, 2.0]))
        assert torch.allclose(block(x), 0.5 * block.block.block(x) + 2 * x)
    detects(model, "fcos")


# ---------------------------------------------------------------- cross-iteration BatchNorm

def cbn_layer(window: int = 2):
    conv = nn.Conv2d(1, 1, 1, bias=False)
    layer = CrossIterationBatchNorm2d(nn.BatchNorm2d(1), conv, window).train()
    return conv, layer


def test_cbn_compensates_the_last_iterations_statistics_by_hand():
    conv, layer = cbn_layer(window=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x1 = torch.ones(1, 1, 2, 2)  # iteration 1, W = 1: mu = 1, nu = E[x^2] = 1; dmu/dW = 1, dnu/dW = 2 W E[in^2] = 2
    layer(conv(x1))
    with torch.no_grad():
        conv.weight.fill_(3.0)  # an optimizer step: W 1 -> 3
    x2 = torch.tensor([0.0, 2.0, 4.0, 6.0]).view(1, 1, 2, 2)  # iteration 2: conv out 0, 6, 12, 18
    out = layer(conv(x2))
    # iteration 1 compensated to W = 3: mu = 1 + 1 * 2 = 3, nu = 1 + 2 * 2 = 5 < mu^2 = 9 -> max: 9
    # iteration 2: mu = 9, nu = E[(3 x2)^2] = 9 * 14 = 126
    mean, nu = (3 + 9) / 2, (9 + 126) / 2  # 6, 67.5
    var = nu - mean ** 2  # 31.5
    expected = [(v - mean) / math.sqrt(var + 1e-5) for v in (0.0, 6.0, 12.0, 18.0)]
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-5)
    plain = nn.BatchNorm2d(1).train()(conv(x2))  # BN: mean 9, variance 45
    assert not torch.allclose(out, plain, atol=1e-2)
    assert len(layer.past) == 1  # window 2: the current iteration and one before


def test_cbn_gradient_flows_through_the_current_batch_only():
    conv, layer = cbn_layer(window=3)
    for w in (1.0, 2.0):
        with torch.no_grad():
            conv.weight.fill_(w)
        x = torch.rand(2, 1, 3, 3)
        layer(conv(x)).square().sum().backward()
    assert all(not t.requires_grad for entry in layer.past for t in entry) and len(layer.past) == 2
    assert conv.weight.grad is not None and layer.weight.grad is not None


def test_cbn_is_plain_batchnorm_during_the_burn_in_and_in_eval():
    conv, layer = cbn_layer(window=4)
    layer.burnin_steps = 2
    bn = nn.BatchNorm2d(1).train()
    for step in range(2):
        layer.step = step
        x = conv(torch.rand(2, 1, 3, 3))
        assert torch.allclose(layer(x), bn(x), atol=1e-6) and layer.past == []
    assert torch.allclose(layer.running_mean, bn.running_mean) and torch.allclose(layer.running_var, bn.running_var)
    layer.step = 2
    x = conv(torch.rand(2, 1, 3, 3))
    layer(x), bn(x)  # the running statistics (for eval) follow the current batch, as BN's
    assert len(layer.past) == 1
    layer.eval()
    x = conv(torch.rand(2, 1, 3, 3))
    assert torch.allclose(layer(x), bn.eval()(x), atol=1e-6)


def test_cbn_defaults_and_burn_in_from_the_run_length():
    trick = build_trick("cbn")
    assert trick.window == 4 and trick.burnin_fraction == pytest.approx(0.667)
    tiny_model("fcos", tricks=[trick])
    trick.on_lr_factor(lambda s: 1.0, 120)
    assert {layer.burnin_steps for layer in trick.layers} == {80}
    trick.on_step(None, 81)
    assert {layer.step for layer in trick.layers} == {81} and trick.state_dict() == {"step": 81}


@pytest.mark.parametrize("name", MODELS)
def test_cbn_replaces_each_bn_after_a_conv_of_the_tiny_backbone(name):
    trick = build_trick("cbn", name, burnin_fraction=0.0)
    model = tiny_model(name, tricks=[trick])
    assert len(trick.layers) == 9 and count(model.backbone.body, nn.BatchNorm2d) == 0
    assert calls_in_training(model, name, CrossIterationBatchNorm2d) == 9
    calls_in_training(model, name, CrossIterationBatchNorm2d)
    assert all(len(layer.past) == 2 for layer in trick.layers)  # two training forwards at step 0
    detects(model, name)


@pytest.mark.usefixtures("resnet18")
def test_cbn_on_resnet18_covers_the_stem_blocks_and_shortcuts():
    trick = build_trick("cbn", "fcos", burnin_fraction=0.0)
    model = tiny_model("fcos", tricks=[trick])
    body = model.backbone.body
    assert len(trick.layers) == 1 + 8 * 2 + 3 and count(body, nn.BatchNorm2d) == 0
    assert body.layer2[0].bn1.conv_weight is body.layer2[0].conv1.weight
    assert body.layer2[0].downsample[1].conv_weight is body.layer2[0].downsample[0].weight
    detects(model, "fcos")


def test_cbn_refuses_a_pretrained_backbone():
    from test_tricks_norm_reg import frozen

    with pytest.raises(TrickConflictError, match="'cbn' does not fit a pretrained backbone.*pretrained=false"):
        build_trick("cbn", "fcos").on_model(frozen(tiny_model("fcos")))


@pytest.mark.parametrize("name", MODELS)
def test_cbn_trains_on_each_detector(name):
    really_on("cbn", model=name, burnin_fraction=0.0)


# ---------------------------------------------------------------- cross stage partial stages

def test_csp_splits_runs_the_blocks_on_one_part_and_concatenates():
    stage = nn.Sequential(BasicBlock(8, 16, stride=2, downsample=nn.Sequential(nn.Conv2d(8, 16, 1, 2), nn.BatchNorm2d(16))),
                          BasicBlock(16, 16), BasicBlock(16, 16))
    csp = CSPStage(stage, 0.5).eval()
    assert csp.split == (8, 8) and csp.down is stage[0]
    assert len(csp.blocks) == 2 and all(b.conv1.in_channels == 8 and b.conv2.out_channels == 8 for b in csp.blocks)
    seen = {}
    csp.transition.register_forward_hook(lambda m, i, o: seen.update(cat=i[0], out=o))
    x = torch.rand(2, 8, 8, 8)
    with torch.no_grad():
        out = csp(x)
        down = stage[0](x)
        part = csp.transition_b(csp.blocks(down[:, 8:]))
    assert out.shape == (2, 16, 4, 4) and seen["cat"].shape == (2, 16, 4, 4)
    assert torch.equal(seen["cat"][:, :8], down[:, :8])  # the first part goes straight on
    assert torch.allclose(seen["cat"][:, 8:], part)  # the second through the blocks and transition_b
    assert torch.equal(out, seen["out"])


def test_csp_bottleneck_stage_widths():
    from torchvision.models.resnet import Bottleneck

    stage = nn.Sequential(Bottleneck(64, 64, downsample=nn.Sequential(nn.Conv2d(64, 256, 1), nn.BatchNorm2d(256))),
                          Bottleneck(256, 64), Bottleneck(256, 64))
    csp = CSPStage(stage, 0.5)
    assert [(b.conv1.in_channels, b.conv1.out_channels, b.conv3.out_channels) for b in csp.blocks] == [(128, 32, 128)] * 2
    assert csp(torch.rand(1, 64, 8, 8)).shape == (1, 256, 8, 8)


@pytest.mark.usefixtures("resnet18")
@pytest.mark.parametrize("name", MODELS)
def test_csp_on_resnet18_each_detector(name):
    before = tiny_model(name)
    model = tiny_model(name, tricks=[build_trick("csp", name)])
    body = model.backbone.body
    assert [n for n, c in body.named_children() if isinstance(c, CSPStage)] == ["layer1", "layer2", "layer3", "layer4"]
    x = torch.rand(1, 3, 96, 96)
    model.eval(), before.eval()
    with torch.no_grad():  # same pyramid shapes as the plain ResNet's
        assert [v.shape for v in model.backbone(x).values()] == [v.shape for v in before.backbone(x).values()]
    assert calls_in_training(model, name, CSPStage) == 4
    detects(model, name)
    really_on("csp", model=name)


def test_csp_needs_resnet_stages():
    with pytest.raises(TrickConflictError, match="'csp' does not fit this backbone.*resnet18"):
        build_trick("csp", "fcos").on_model(tiny_model("fcos"))


@pytest.mark.usefixtures("resnet18")
def test_csp_refuses_a_pretrained_backbone():
    from test_tricks_norm_reg import frozen

    with pytest.raises(TrickConflictError, match="'csp' does not fit a pretrained backbone"):
        build_trick("csp", "fcos").on_model(frozen(tiny_model("fcos")))
