"""The neck tricks (pan, bifpn, balanced_fpn, asff, nas_fpn) against hand-computed cases of their papers'
definitions, their outputs on each detector against the baseline FPN's, and a few training steps."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablate.models.necks import (ASFFLevel, BalancedFeaturePyramid, BiFPNLayer, FastFusion, MergingCell, NASFPNCell,
                                 NeckFPN, NonLocal2d, PANPath, max_pool_same, resize_to)
from ablate.testing import build_trick, model_config, really_on, tiny_batch, tiny_model, trick_config
from ablate.tricks import TrickConfigError, TrickConflictError, build_tricks

pytestmark = pytest.mark.usefixtures("single_thread")

KINDS = ["pan", "bifpn", "balanced_fpn", "asff", "nas_fpn"]
MODELS = ["fcos", "retinanet", "faster_rcnn"]
# (kind, model) pairs the trick fits: NAS-FPN's published cell is on P3-P7, the one-stage pyramid
FITTING = [(k, m) for k in KINDS for m in MODELS if not (k == "nas_fpn" and m == "faster_rcnn")]


def centre(conv: nn.Conv2d, value: float, bias: float = 0.0) -> None:
    """A 1-channel 3x3 (or 1x1) conv that multiplies each input cell by `value`, plus `bias`."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = value
        if conv.bias is not None:
            conv.bias.fill_(bias)


def test_pan_bottom_up_path_by_hand():
    pan = PANPath(1, 3, relu=True)
    centre(pan.down[0], 2.0)
    centre(pan.down[1], 2.0)
    centre(pan.fuse[0], 3.0)
    centre(pan.fuse[1], 3.0, bias=-1.0)
    p2 = torch.arange(16.0).view(1, 1, 4, 4) - 5
    p3 = torch.tensor([[1.0, -20.0], [0.5, 2.0]]).view(1, 1, 2, 2)
    p4 = torch.tensor([[-3.0]]).view(1, 1, 1, 1)
    n2, n3, n4 = pan([p2, p3, p4])
    assert torch.equal(n2, p2)  # N2 = P2
    # a 3x3 stride-2 conv (padding 1) centred on (2i, 2j): down(N2)[i, j] = 2 N2[2i, 2j]
    sub = p2[..., ::2, ::2]  # [[-5, -3], [3, 5]]
    assert torch.allclose(n3, torch.relu(3 * (p3 + torch.relu(2 * sub))))  # [[3, 0], [19.5, 36]]
    assert torch.allclose(n3, torch.tensor([[3.0, 0.0], [19.5, 36.0]]).view(1, 1, 2, 2))
    # N4 from N3 after its fusing conv (the paper), not from the pre-conv sum (mmdetection's PAFPN)
    assert torch.allclose(n4, torch.relu(3 * (p4 + torch.relu(2 * n3[..., :1, :1])) - 1))  # 3 (-3 + 6) - 1 = 8
    assert n4.item() == 8.0
    no_relu = PANPath(1, 2, relu=False)
    centre(no_relu.down[0], 2.0)
    centre(no_relu.fuse[0], 1.0)
    assert torch.allclose(no_relu([p2, p3])[1], p3 + 2 * sub)


def test_bifpn_fusion_weights_are_non_negative_and_normalised():
    fusion = FastFusion(3, eps=1e-4)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([2.0, -1.0, 1.0]))
    w = fusion.weights()
    assert (w >= 0).all() and w[1] == 0  # ReLU'd: a negative weight fuses nothing
    assert torch.allclose(w, torch.tensor([2.0, 0.0, 1.0]) / (3 + 1e-4))
    assert abs(float(w.detach().sum()) - 1) < 1e-4
    xs = [torch.full((1, 1, 2, 2), v) for v in (3.0, 100.0, 6.0)]
    assert torch.allclose(fusion(xs), torch.full((1, 1, 2, 2), (2 * 3 + 1 * 6) / (3 + 1e-4)))
    assert torch.allclose(FastFusion(2, 1e-4).weights(), torch.full((2,), 1 / (2 + 1e-4)))  # initialised to 1


def test_bifpn_same_padding_max_pool():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # even side: TensorFlow's SAME pads one cell after only, windows start at 0 and 2
    assert torch.equal(max_pool_same(x), torch.tensor([[10.0, 11.0], [14.0, 15.0]]).view(1, 1, 2, 2))
    assert max_pool_same(torch.zeros(1, 1, 5, 3)).shape == (1, 1, 3, 2)  # ceil(H / 2)


def test_bifpn_nodes_by_hand():
    layer = BiFPNLayer(1, 2, eps=1e-4).eval()
    for conv in [*layer.td_conv, *layer.out_conv]:
        centre(conv.depthwise, 1.0)
        centre(conv.pointwise, 1.0)
    with torch.no_grad():
        layer.td_fusion[0].weight.copy_(torch.tensor([1.0, 3.0]))
        layer.out_fusion[0].weight.copy_(torch.tensor([0.5, 0.5]))
    p3 = torch.arange(16.0).view(1, 1, 4, 4) / 8
    p4 = torch.tensor([[1.0, -2.0], [0.0, 4.0]]).view(1, 1, 2, 2)
    node = lambda fused: F.silu(fused) / (1 + 1e-3) ** 0.5  # noqa: E731  swish, identity convs, BN at its init
    up = p4.repeat_interleave(2, -1).repeat_interleave(2, -2)
    td3 = node((1 * p3 + 3 * up) / (4 + 1e-4))
    out3, out4 = layer([p3, p4])
    assert torch.allclose(out3, td3, atol=1e-6)  # the finest output is its top-down node
    # the coarsest: its input and the level below, max-pooled (no top-down node of its own)
    assert torch.allclose(out4, node((0.5 * p4 + 0.5 * max_pool_same(td3)) / (1 + 1e-4)), atol=1e-6)
    assert len(BiFPNLayer(1, 5, 1e-4).out_fusion[1].weight) == 3  # a middle level fuses three inputs


def test_balanced_fpn_integrate_refine_strengthen_by_hand():
    bfp = BalancedFeaturePyramid(1, refine_index=1)
    c2 = torch.arange(64.0).view(1, 1, 8, 8)
    c3 = torch.full((1, 1, 4, 4), 2.0)
    c4 = torch.tensor([[4.0, -8.0], [0.0, 12.0]]).view(1, 1, 2, 2)
    integrated = bfp.integrate([c2, c3, c4])
    pooled = c2[..., 1::2, 1::2]  # adaptive max-pool 8 -> 4: each 2x2 block's bottom-right cell
    upsampled = c4.repeat_interleave(2, -1).repeat_interleave(2, -2)  # nearest 2 -> 4
    assert torch.allclose(integrated, (pooled + c3 + upsampled) / 3)
    out = bfp.strengthen([c2, c3, c4], integrated)
    assert torch.allclose(out[0], c2 + integrated.repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert torch.allclose(out[1], c3 + integrated)
    assert torch.allclose(out[2], c4 + F.max_pool2d(integrated, 2))
    assert [o.shape for o in out] == [c2.shape, c3.shape, c4.shape]
    # the non-local refine: x + W (softmax(theta^T phi) g); with theta = 0 every position attends to all
    # evenly (the softmax rows sum to 1), so with g and W the identity it adds the mean over positions
    nl = NonLocal2d(1)
    centre(nl.theta, 0.0)
    centre(nl.g, 1.0)
    centre(nl.out, 1.0)
    assert torch.allclose(nl(integrated), integrated + integrated.mean())
    with torch.no_grad():
        assert torch.allclose(bfp([c2, c3, c4])[1], c3 + bfp.refine(integrated))


def test_asff_weights_sum_to_one_per_position_and_fuse():
    torch.manual_seed(0)
    asff = ASFFLevel(4, 3, level=1, compress=16).eval()
    levels = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 2, 2)]
    with torch.no_grad():
        resized = asff.resized(levels)
        assert [r.shape for r in resized] == [(2, 4, 4, 4)] * 3  # every level at level 1's size
        alpha = asff.weights(resized)
        assert alpha.shape == (2, 3, 4, 4) and (alpha >= 0).all()
        assert torch.allclose(alpha.sum(1), torch.ones(2, 4, 4))
        assert torch.allclose(asff(levels), asff.expand(sum(alpha[:, j:j + 1] * resized[j] for j in range(3))))
        asff.weight_logits.weight.zero_()  # logits (0, 50, 0) everywhere: level 1 alone
        asff.weight_logits.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
        assert torch.allclose(asff(levels), asff.expand(levels[1]), atol=1e-5)
    # resizing by hand: the finer level by a 3x3 stride-2 conv; the level 4x finer max-pooled first
    coarse = ASFFLevel(4, 3, level=2, compress=16).eval()
    with torch.no_grad():
        r = coarse.resized(levels)
        assert torch.allclose(r[0], coarse.resize[0](F.max_pool2d(levels[0], 3, 2, 1)))
        assert torch.allclose(r[1], coarse.resize[1](levels[1]))
        # a coarser level of the same channels: nearest up and nothing else, as the authors' ASFF takes
        # level 1 (256 channels) to level 2 (256); their 1x1 compress is only where channels differ
        fine = ASFFLevel(4, 3, level=0, compress=16).eval()
        r = fine.resized(levels)
        assert torch.equal(r[1], F.interpolate(levels[1], size=(8, 8)))
        assert torch.equal(r[2], F.interpolate(levels[2], size=(8, 8)))
        assert torch.equal(coarse.resized(levels)[2], levels[2])
        assert [sum(p.numel() for p in m.parameters()) for m in fine.resize] == [0, 0, 0]


@pytest.mark.parametrize("kind,model", FITTING)
def test_the_neck_keeps_the_pyramid_and_runs_in_training(kind, model):
    net = tiny_model(model, tricks=[build_trick(kind, model)])
    base = tiny_model(model)
    fpn = net.backbone.fpn
    assert isinstance(fpn, NeckFPN)
    assert set(base.backbone.fpn.state_dict()) < set(fpn.state_dict())  # the FPN's own keys kept
    images, targets = tiny_batch(model)
    net.eval()
    base.eval()
    with torch.no_grad():
        feats, ref = net.backbone(images[0][None]), base.backbone(images[0][None])
    assert list(feats) == list(ref)
    assert [f.shape for f in feats.values()] == [f.shape for f in ref.values()]
    assert any(not torch.allclose(a, b) for a, b in zip(feats.values(), ref.values()))
    calls = []
    fpn.path.register_forward_hook(lambda *_: calls.append(1))
    net.train()
    net(images, targets)
    assert calls == [1]
    assert sum(p.numel() for p in net.parameters()) > sum(p.numel() for p in base.parameters())  # a special


def test_extra_levels_are_built_from_the_path_or_fused_by_it():
    # pan, asff: the detector's P6 is the extra block's conv on the path's P5
    net = tiny_model("fcos", tricks=[build_trick("pan")]).eval()
    fpn = net.backbone.fpn
    assert len(fpn.path.down) == 2  # P3-P5 only
    seen = {}
    fpn.path.register_forward_hook(lambda m, i, o: seen.update(p5=o[-1]))
    with torch.no_grad():
        feats = net.backbone(torch.rand(1, 3, 96, 96))
        assert torch.allclose(feats["p6"], fpn.extra_blocks.p6(seen["p5"]))
    # bifpn, balanced_fpn: over every level the heads use (P2-P6 on Faster R-CNN, refine at P4: index 2)
    assert len(tiny_model("faster_rcnn", tricks=[build_trick("bifpn", "faster_rcnn")]).backbone.fpn.path[0].td_conv) == 4
    assert tiny_model("faster_rcnn", tricks=[build_trick("balanced_fpn", "faster_rcnn")]).backbone.fpn.path.refine_index == 2
    assert tiny_model("retinanet", tricks=[build_trick("balanced_fpn", "retinanet")]).backbone.fpn.path.refine_index == 1


@pytest.mark.parametrize("kind,model", FITTING)
def test_neck_trains(kind, model):
    really_on(kind, model=model)


def test_nas_fpn_merging_cells_and_resampling_by_hand():
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    x2 = torch.tensor([[0.0, 2.0], [-2.0, 4.0]]).view(1, 1, 2, 2)
    # global pooling: x2 + sigmoid(mean of x2 per channel) * x1 (Fig. 4); mean 1
    assert torch.allclose(MergingCell("gp", None)(x1, x2, (2, 2)), x2 + torch.sigmoid(torch.tensor(1.0)) * x1)
    assert torch.allclose(MergingCell("sum", None)(x1, x2, (4, 4)),
                          (x1 + x2).repeat_interleave(2, -1).repeat_interleave(2, -2))  # nearest up
    cell = MergingCell("sum", 1).eval()  # then ReLU, 3x3 conv, BN
    centre(cell.conv[1], 2.0)
    assert torch.allclose(cell(x1, -x2, (2, 2)), 2 * torch.relu(x1 - x2) / (1 + 1e-5) ** 0.5)
    # down: max-pooled by the integer ratio, after zero padding to a multiple (10 -> 3: 1 before, 1 after)
    x = torch.arange(100.0).view(1, 1, 10, 10) - 50
    assert torch.equal(resize_to(x, (5, 5)), F.max_pool2d(x, 2))
    padded = F.pad(x, (1, 1, 1, 1))
    assert torch.equal(resize_to(x, (3, 3)), F.max_pool2d(padded, 4))
    assert resize_to(x, (3, 3))[0, 0, 0, 0] == 0  # the zero padding wins over the negative corner


def test_nas_fpn_cell_wiring():
    """The published cell's graph: which inputs reach which outputs (a hook records each merge's inputs)."""
    cell = NASFPNCell(2).eval()
    order = []
    for name, merge in cell.cells.items():
        merge.register_forward_hook(lambda m, i, o, n=name: order.append((n, tuple(i[2]))))
    levels = [torch.randn(1, 2, s, s) for s in (16, 8, 4, 2, 1)]
    with torch.no_grad():
        out = cell(levels)
    assert [o.shape for o in out] == [x.shape for x in levels]
    assert order == [("gp_64_4", (8, 8)), ("sum_44_4", (8, 8)), ("sum_43_3", (16, 16)), ("sum_34_4", (8, 8)),
                     ("gp_43_5", (4, 4)), ("sum_55_5", (4, 4)), ("gp_54_7", (1, 1)), ("sum_77_7", (1, 1)),
                     ("gp_75_6", (2, 2))]
    assert cell.cells["gp_43_5"].conv is None and cell.cells["gp_54_7"].conv is None


def test_two_necks_conflict_and_arguments_are_checked():
    with pytest.raises(TrickConflictError, match="neck"):
        build_tricks(trick_config("pan", "balanced_fpn"), model_config("faster_rcnn"))
    with pytest.raises(TrickConfigError, match=r"tricks.bifpn.num_layers=0"):
        build_trick("bifpn", num_layers=0)
    with pytest.raises(TrickConfigError, match=r"tricks.pan.*pan takes \['relu'\]"):
        build_trick("pan", eps=1.0)
    with pytest.raises(TrickConflictError, match="nas_fpn' does not fit model=faster_rcnn"):
        build_trick("nas_fpn", "faster_rcnn")
    with pytest.raises(ValueError, match="refine_level=9"):
        tiny_model("fcos", tricks=[build_trick("balanced_fpn", refine_level=9)])


def test_libra_rcnn_components_train_together():
    from ablate.testing import loss_history

    tricks = build_tricks(trick_config("iou_balanced", "balanced_fpn", "balanced_l1"), model_config("faster_rcnn"))
    losses = loss_history("faster_rcnn", tricks, steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))
