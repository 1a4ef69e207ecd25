"""The CPU RoIAlign (grid_sample) against torchvision's kernel: same values, same gradients."""
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from ablate.models.roi_align import GridMultiScaleRoIAlign, roi_align_grid


def random_rois(k: int, images: int, width: float, height: float, seed: int = 0) -> torch.Tensor:
    """k boxes inside a width x height image, sorted by image index, some touching the far edges
    and some smaller than a feature pixel."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.sort(torch.randint(0, images, (k,), generator=g))[0].double()
    xy1 = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([width, height]) * 0.9
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * 0.7 * torch.tensor([width, height]) + 0.3
    xy2 = torch.minimum(xy1 + wh, torch.tensor([width, height], dtype=torch.float64))
    return torch.cat([batch[:, None], xy1, xy2], dim=1)


@pytest.mark.parametrize("scale,size,sr", [(0.25, (7, 7), 2), (0.125, (7, 7), 2), (0.5, (3, 5), 3)])
def test_values_and_gradients_equal_torchvision(scale, size, sr):
    torch.manual_seed(0)
    h, w = 20, 24
    features = torch.randn(3, 8, h, w, dtype=torch.float64, requires_grad=True)
    rois = random_rois(50, 3, w / scale, h / scale)
    ref = roi_align(features, rois, size, spatial_scale=scale, sampling_ratio=sr, aligned=False)
    got = roi_align_grid(features, rois, size, scale, sr)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    weight = torch.randn_like(ref)
    (grad_ref,) = torch.autograd.grad((ref * weight).sum(), features)
    (grad_got,) = torch.autograd.grad((got * weight).sum(), features)
    torch.testing.assert_close(grad_got, grad_ref, atol=1e-10, rtol=0)


def test_hand_computed_single_bin():
    # A 2x2 RoI over a 4x4 ramp f(y, x) = 10y + x, one output bin, 2x2 samples: the samples sit
    # at x, y in {0.5, 1.5}, so bilinear values are 10y + x and their mean is 10 + 1 = 11.
    f = (10 * torch.arange(4.0)[:, None] + torch.arange(4.0)[None, :])[None, None]
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]])
    out = roi_align_grid(f, rois, (1, 1), 1.0, 2)
    assert out.item() == pytest.approx(11.0)


def test_images_without_rois_and_empty_input():
    features = torch.randn(3, 4, 10, 10)
    rois = torch.tensor([[2.0, 1.0, 1.0, 8.0, 6.0]])  # only the third image has one
    ref = roi_align(features, rois, (7, 7), spatial_scale=1.0, sampling_ratio=2)
    torch.testing.assert_close(roi_align_grid(features, rois, (7, 7), 1.0, 2), ref)
    assert roi_align_grid(features, rois[:0], (7, 7), 1.0, 2).shape == (0, 4, 7, 7)


def test_multiscale_pooler_matches_torchvision():
    torch.manual_seed(0)
    # Strides 4, 8, 16 on a 512 px image: the level mapper (canonical 224 px at level 4) sends
    # boxes under 112 px to the first level, 112-224 px to the second, larger ones to the third.
    feats = {str(i): torch.randn(2, 4, 512 // 2 ** (i + 2), 512 // 2 ** (i + 2), dtype=torch.float64,
                                 requires_grad=True) for i in range(3)}
    boxes = [random_rois(30, 1, 512.0, 512.0, seed=s)[:, 1:] for s in (1, 2)]
    shapes = [(512, 512), (512, 512)]
    ref = MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, shapes)
    got = GridMultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, shapes)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    weight = torch.randn_like(ref)
    grads_ref = torch.autograd.grad((ref * weight).sum(), list(feats.values()), allow_unused=True)
    grads_got = torch.autograd.grad((got * weight).sum(), list(feats.values()), allow_unused=True)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads_ref) == 3
    for a, b, f in zip(grads_got, grads_ref, feats.values()):
        # A level no box maps to gets no gradient (None) or a zero one.
        torch.testing.assert_close(a if a is not None else torch.zeros_like(f),
                                   b if b is not None else torch.zeros_like(f), atol=1e-10, rtol=0)


def test_bf16_features_are_sampled_at_float32_points():
    """Under CPU bf16 autocast the features come in bf16; the sampling points must not be rounded
    to bf16 with them (a 40-pixel map: bf16 keeps 8 bits, so coordinates near 40 were off by up to
    0.125 px). Pooled bf16 features then differ from float32 pooling by bf16's rounding only."""
    torch.manual_seed(0)
    features = torch.randn(1, 8, 40, 40)
    rois = torch.tensor([[0, 3.3, 5.1, 37.7, 31.9], [0, 20.2, 1.7, 39.1, 38.3]])
    exact = roi_align_grid(features, rois, (7, 7), 1.0, 2)
    half = roi_align_grid(features.bfloat16(), rois, (7, 7), 1.0, 2)
    assert half.dtype == torch.bfloat16
    # bf16's own rounding of the inputs and output: a few thousandths on unit-variance features
    assert (half.float() - exact).abs().max() < 0.03
