"""The blocks on the backbone's last pyramid level (spp, aspp, rfb, sam) against hand-computed
cases of their papers' definitions, their place in each detector, and a few training steps."""
import pytest
import torch
from torch import nn

from ablate.models.blocks import ASPP, RFB, SAM, SPP
from ablate.testing import build_trick, really_on, tiny_batch, tiny_model
from ablate.tricks import TrickConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

KINDS = {"spp": SPP, "aspp": ASPP, "rfb": RFB, "sam": SAM}


def test_spp_concatenates_the_map_and_its_same_size_max_pools():
    spp = SPP(2, [5, 9, 13])
    x = torch.full((1, 2, 15, 15), -1.0)
    x[0, 0, 2, 2] = 3.0
    pooled = spp.pooled(x)
    assert pooled.shape == (1, 8, 15, 15)  # (1 + 3) x C channels, same size
    assert torch.equal(pooled[:, :2], x)
    # channel 0 pooled with k = 5: 3 where (2, 2) is within 2 cells, -1 elsewhere (padding never wins)
    assert pooled[0, 2, 0, 0] == 3 and pooled[0, 2, 4, 4] == 3 and pooled[0, 2, 5, 5] == -1
    assert pooled[0, 4, 6, 6] == 3 and pooled[0, 4, 7, 7] == -1  # k = 9: within 4
    assert pooled[0, 6, 8, 8] == 3 and pooled[0, 6, 9, 9] == -1  # k = 13: within 6
    assert (pooled[0, 3] == -1).all()  # channel 1 had no peak
    assert spp(x).shape == (1, 2, 15, 15)  # the 1x1 conv brings it back to C


def test_aspp_branches_see_their_dilation_and_the_image_branch_is_constant():
    aspp = ASPP(8, [1, 3, 6, 1])
    for conv in aspp.branches:
        nn.init.ones_(conv.weight)
        nn.init.zeros_(conv.bias)
    x = torch.zeros(1, 8, 15, 15)
    x[0, 0, 7, 7] = 1.0
    out = aspp(x)
    assert out.shape == (1, 8, 15, 15)  # 4 branches of C / 4
    hit = lambda ch: {(int(i), int(j)) for i, j in torch.nonzero(out[0, ch])}  # noqa: E731
    assert hit(0) == {(7, 7)}  # 1x1
    assert hit(2) == {(7 + a, 7 + b) for a in (-3, 0, 3) for b in (-3, 0, 3)}  # 3x3 of dilation 3
    assert hit(4) == {(7 + a, 7 + b) for a in (-6, 0, 6) for b in (-6, 0, 6)}  # dilation 6
    assert torch.allclose(out[0, 6], torch.full((15, 15), 1 / 225))  # the mean over the map, everywhere
    with pytest.raises(ValueError, match="the last 1"):
        ASPP(8, [1, 3, 6, 12])


def test_rfb_dilations_and_its_scaled_sum_with_the_shortcut():
    rfb = RFB(16, scale=0.0, visual=1).eval()
    assert rfb.branch0[-1][0].dilation == (1, 1) and rfb.branch1[-1][0].dilation == (2, 2)
    assert rfb.branch2[-1][0].dilation == (3, 3)
    assert rfb.linear[0].in_channels == 6 * 2  # three branches of 2 x C / 8
    x = torch.randn(1, 16, 9, 9)
    with torch.no_grad():  # scale 0: only the shortcut, then ReLU
        assert torch.allclose(rfb(x), torch.relu(rfb.shortcut(x)))
        rfb.scale = 1.0
        full = torch.relu(rfb.linear(torch.cat([rfb.branch0(x), rfb.branch1(x), rfb.branch2(x)], 1)) + rfb.shortcut(x))
        assert torch.allclose(rfb(x), full)


def test_sam_multiplies_each_position_and_channel_by_its_own_sigmoid():
    sam = SAM(3).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        nn.init.zeros_(sam.attention[0].weight)
        assert torch.allclose(sam(x), x * 0.5)  # sigmoid(0): half of every value
        sam.attention[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        assert torch.allclose(sam(x), x * torch.sigmoid(x / (1 + 1e-5) ** 0.5), atol=1e-6)  # point-wise


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("model", ["fcos", "retinanet", "faster_rcnn"])
def test_the_block_sits_after_the_last_levels_stage_and_keeps_the_shapes(kind, model):
    net = tiny_model(model, tricks=[build_trick(kind, model)])
    base = tiny_model(model)
    last = list(net.backbone.body.return_layers)[-1]
    stage = getattr(net.backbone.body, last)
    assert isinstance(stage, nn.Sequential) and isinstance(stage[-1], KINDS[kind])
    images, _ = tiny_batch(model)
    with torch.no_grad():
        feats, ref = net.backbone(images[0][None]), base.backbone(images[0][None])
    assert [f.shape for f in feats.values()] == [f.shape for f in ref.values()]  # the pyramid is unchanged
    calls = []
    stage[-1].register_forward_hook(lambda *_: calls.append(1))
    net.train()
    net(*tiny_batch(model))
    assert calls == [1]


@pytest.mark.parametrize("kind", list(KINDS))
def test_block_trains(kind):
    really_on(kind, model="fcos")


def test_arguments_are_checked():
    with pytest.raises(TrickConfigError, match=r"tricks.spp.kernels=\[5, 8\]: must be odd"):
        build_trick("spp", kernels=[5, 8])
    with pytest.raises(TrickConfigError, match=r"tricks.sam.*sam takes no arguments"):
        build_trick("sam", kernels=[5])
