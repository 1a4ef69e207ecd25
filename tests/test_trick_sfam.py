"""sfam: M2Det's MLFPN with SFAM in place of the FPN (conf/tricks/sfam.yaml). The TUM, SFAM's channel
attention and MLFPN's wiring (FFMv1, FFMv2, the per-scale concatenation) against hand-computed
cases of the paper and the authors' code; the pyramid every detector's heads get, unchanged."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablate.models.necks import MLFPN, SFAM, TUM
from ablate.testing import build_trick, really_on, tiny_batch, tiny_model
from ablate.tricks import TrickConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

BN = 1 / (1 + 1e-5) ** 0.5  # an eval-mode BN with fresh running statistics divides by sqrt(1 + eps)


def centre(block: nn.Sequential, value: float) -> None:
    """A 1-channel conv-BN-ReLU whose conv multiplies each (sampled) input cell by `value`."""
    conv = block[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = value


def up(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="nearest")


def test_tum_encoder_decoder_by_hand():
    tum = TUM(1, 1, scales=3, smooth=False).eval()
    for block in [*tum.encoder, tum.top, *tum.lateral]:
        centre(block, 1.0)
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    fine, mid, coarse = tum(x)  # finest first
    # encoder: 3x3 stride-2 convs centred on (2i, 2j): x[::2, ::2] then x[::4, ::4] (each through BN, ReLU)
    e1 = x[..., ::2, ::2] * BN
    e2 = e1[..., ::2, ::2] * BN
    assert torch.allclose(coarse, e2 * BN)  # the top 1x1 conv on the coarsest map
    assert torch.allclose(mid, up(coarse, 2) + e1 * BN)  # nearest up + the lateral 3x3 conv
    assert torch.allclose(fine, up(mid, 4) + x * BN)  # the last lateral reads the TUM's input
    assert [t.shape[-1] for t in (fine, mid, coarse)] == [4, 2, 1]
    # smooth: a 1x1 conv-BN-ReLU on every output but the coarsest (the authors' smoothed_feat[0])
    smooth = TUM(1, 1, scales=3, smooth=True).eval()
    smooth.load_state_dict(tum.state_dict(), strict=False)
    for block in smooth.smooth:
        centre(block, 2.0)
    s_fine, s_mid, s_coarse = smooth(x)
    assert torch.equal(s_coarse, coarse)
    assert torch.allclose(s_mid, 2 * mid * BN) and torch.allclose(s_fine, 2 * fine * BN)


def test_tum_channels_and_a_later_tums_input():
    tum = TUM(2 + 4, 4, scales=5, smooth=True)  # FFMv2: base (C/2 = 2) + the previous TUM's finest (C = 4)
    outs = tum(torch.randn(2, 6, 20, 20))
    assert [tuple(o.shape) for o in outs] == [(2, 4, 20, 20), (2, 4, 10, 10), (2, 4, 5, 5), (2, 4, 3, 3), (2, 4, 2, 2)]
    assert tum.encoder[0][0].in_channels == 6 and tum.lateral[-1][0].in_channels == 6


def test_sfam_channel_attention_by_hand_one_pair_for_every_scale():
    sfam = SFAM(2, reduction=2)
    with torch.no_grad():
        sfam.fc1.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        sfam.fc1.bias.zero_()
        sfam.fc2.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        sfam.fc2.bias.copy_(torch.tensor([0.0, 1.0]))
    # channel means (3, 1): W1 z = 2, ReLU 2, W2 = (4, -2 + 1): weights sigmoid(4), sigmoid(-1)
    a = torch.stack([torch.tensor([[2.0, 4.0], [3.0, 3.0]]), torch.ones(2, 2)])[None]
    # a second scale, means (0, 5): W1 z = -5, ReLU 0, weights sigmoid(0), sigmoid(1): the same W1, W2
    b = torch.stack([torch.zeros(1, 1), torch.full((1, 1), 5.0)])[None]
    out_a, out_b = sfam([a, b])
    assert torch.allclose(out_a, a * torch.sigmoid(torch.tensor([4.0, -1.0])).view(1, 2, 1, 1))
    assert torch.allclose(out_b, b * torch.sigmoid(torch.tensor([0.0, 1.0])).view(1, 2, 1, 1))


def test_mlfpn_wiring_ffmv1_ffmv2_and_the_per_scale_concatenation():
    torch.manual_seed(0)
    m = MLFPN(3, 5, channels=4, out_channels=6, names=["a", "b", "c"], num_tums=3, smooth=True, reduction=2).eval()
    feats = OrderedDict([("0", torch.randn(1, 3, 16, 16)), ("1", torch.randn(1, 7, 8, 8)), ("2", torch.randn(1, 5, 4, 4))])
    seen = {}
    for k, tum in enumerate(m.tums):
        tum.register_forward_hook(lambda mod, i, o, k=k: seen.update({f"in{k}": i[0], f"out{k}": o}))
    m.sfam.register_forward_hook(lambda mod, i, o: seen.update(sfam_in=i[0], sfam_out=o))
    with torch.no_grad():
        out = m(feats)
        # FFMv1: the finest level's 3x3 conv, the deepest's 1x1 conv upsampled to it, concatenated, leach
        base = m.leach(torch.cat([m.reduce(feats["0"]), up(m.up_reduce(feats["2"]), 16)], 1))
        assert base.shape == (1, 2, 16, 16)
        assert torch.allclose(seen["in0"], base)
        for k in (1, 2):  # FFMv2: the base and the previous TUM's finest output
            assert torch.allclose(seen[f"in{k}"], torch.cat([base, seen[f"out{k - 1}"][0]], 1))
        for s in range(3):  # SFAM gets each scale's TUM maps, TUM order, 3 x 4 channels
            assert torch.allclose(seen["sfam_in"][s], torch.cat([seen[f"out{k}"][s] for k in range(3)], 1))
        # the finest scale BN-normalised (the authors' Norm), each projected to the heads' width
        assert torch.allclose(out["a"], m.project[0](m.norm(seen["sfam_out"][0])))
        assert torch.allclose(out["b"], m.project[1](seen["sfam_out"][1]))
    assert [(k, tuple(v.shape)) for k, v in out.items()] == [("a", (1, 6, 16, 16)), ("b", (1, 6, 8, 8)), ("c", (1, 6, 4, 4))]
    assert m.leach[0].in_channels == 12 and m.sfam.fc1.in_channels == 12 and m.sfam.fc1.out_channels == 6


@pytest.mark.parametrize("model", ["fcos", "retinanet", "faster_rcnn"])
def test_sfam_gives_every_detector_its_pyramid(model):
    net = tiny_model(model, tricks=[build_trick("sfam", model)])
    base = tiny_model(model)
    assert isinstance(net.backbone.fpn, MLFPN)
    images, _ = tiny_batch(model)
    net.eval()
    base.eval()
    with torch.no_grad():
        feats, ref = net.backbone(images[0][None]), base.backbone(images[0][None])
    assert list(feats) == list(ref)  # the same keys, extra levels included (p6/p7, pool)
    assert [f.shape for f in feats.values()] == [f.shape for f in ref.values()]
    assert len(net.backbone.fpn.tums[0].encoder) == len(ref) - 1  # as many scales as the heads' levels


@pytest.mark.parametrize("model", ["fcos", "faster_rcnn"])
def test_sfam_trains(model):
    really_on("sfam", model=model)


def test_sfam_arguments_are_checked():
    with pytest.raises(TrickConfigError, match=r"tricks.sfam.num_tums=0"):
        build_trick("sfam", num_tums=0)
    with pytest.raises(TrickConfigError, match=r"tricks.sfam.smooth"):
        build_trick("sfam", smooth="yes")
