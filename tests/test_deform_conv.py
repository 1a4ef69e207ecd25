"""The CPU deformable convolution (grid_sample + matmul, ablate/models/deform_conv.py) against
torchvision's kernel: same values, same gradients, same parameters, same FLOP count."""
import pytest
import torch
from torchvision.ops import DeformConv2d, deform_conv2d

from ablate.models.deform_conv import GridDeformConv2d, deform_conv2d_grid

pytestmark = pytest.mark.usefixtures("single_thread")


def out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def offsets(kind: str, shape: tuple[int, ...], h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """'integer': whole-pixel offsets over [-size - 2, size + 2], so taps land exactly on pixels (bilinear
    weights 0 and 1), on the lines y = -1, x = -1, y = H, x = W and beyond; 'near_edges': within a pixel of
    those lines, either side; 'wide': continuous offsets of about the map's size, inside, across the
    border and far outside."""
    if kind == "integer":
        return torch.randint(-max(h, w) - 2, max(h, w) + 3, shape, generator=g).float()
    if kind == "near_edges":
        edges = torch.tensor([-1.0, float(h), float(w), 0.0])  # relative to the tap, so any tap gets near
        pick = edges[torch.randint(0, 4, shape, generator=g)]
        return pick + (torch.rand(shape, generator=g) - 0.5) * 0.2
    return torch.randn(shape, generator=g) * max(h, w)


@pytest.mark.parametrize("kind", ["integer", "near_edges", "wide"])
@pytest.mark.parametrize("h,w,k,stride,padding,dilation", [
    (40, 40, 3, 1, 1, 1),  # P3 of a 320 px image; 40 - 1 is no power of two (the input is padded)
    (7, 9, 3, 1, 1, 1),
    (5, 3, 3, 1, 1, 1),
    (1, 6, 3, 1, 1, 1),   # a one-row map (P7 of a wide image)
    (11, 13, 3, 2, 2, 2),  # stride and dilation, which RepPoints does not use
    (6, 6, 1, 1, 0, 1),
])
def test_values_and_gradients_equal_torchvision(kind, h, w, k, stride, padding, dilation):
    g = torch.Generator().manual_seed(h * 100 + w)
    b, c, c_out = 2, 5, 4
    ho, wo = out_size(h, k, stride, padding, dilation), out_size(w, k, stride, padding, dilation)
    x = torch.randn(b, c, h, w, generator=g, requires_grad=True)
    offset = offsets(kind, (b, 2 * k * k, ho, wo), h, w, g).requires_grad_(True)
    weight = torch.randn(c_out, c, k, k, generator=g, requires_grad=True)
    bias = torch.randn(c_out, generator=g, requires_grad=True)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation)
    got = deform_conv2d_grid(x, offset, weight, bias, stride, padding, dilation)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    upstream = torch.randn(ref.shape, generator=g)
    grads_ref = torch.autograd.grad((ref * upstream).sum(), [x, offset, weight, bias])
    grads_got = torch.autograd.grad((got * upstream).sum(), [x, offset, weight, bias])
    for name, a, r in zip(["input", "offset", "weight", "bias"], grads_got, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    if kind == "integer":
        # the offset gradient switches neighbours at whole pixels: the points must stay exactly there
        assert grads_ref[1].abs().sum() > 0
        torch.testing.assert_close(grads_got[1], grads_ref[1], rtol=1e-5, atol=1e-5)


def test_hand_computed_samples():
    # f(y, x) = 10 y + x + 1 on a 3 x 4 map, a 1 x 1 kernel of weight 1: the output is f at
    # (row + dy, col + dx), bilinear inside, with zeros read outside the map.
    f = (10 * torch.arange(3.0)[:, None] + torch.arange(4.0)[None, :] + 1)[None, None]
    offset = torch.zeros(1, 2, 3, 4)
    offset[0, :, 0, 0] = torch.tensor([0.5, 1.25])  # (0.5, 1.25): 10 x 0.5 + 1.25 + 1
    offset[0, :, 0, 1] = torch.tensor([-0.5, 0.0])  # (-0.5, 1): half of f(0, 1) = 2, half a zero row
    offset[0, :, 0, 2] = torch.tensor([-1.0, 0.0])  # on the line y = -1: 0
    offset[0, :, 2, 3] = torch.tensor([0.0, 0.5])  # (2, 3.5): half of f(2, 3) = 24
    out = deform_conv2d_grid(f, offset, torch.ones(1, 1, 1, 1))[0, 0]
    assert out[0, 0].item() == pytest.approx(7.25)
    assert out[0, 1].item() == pytest.approx(1.0)
    assert out[0, 2].item() == 0.0
    assert out[2, 3].item() == pytest.approx(12.0)
    assert out[1, 1].item() == f[0, 0, 1, 1].item()  # no offset: the pixel itself


def test_module_is_torchvisions_on_cpu_without_its_kernel(monkeypatch):
    torch.manual_seed(0)
    reference = DeformConv2d(6, 8, 3, padding=1, bias=False)
    module = GridDeformConv2d(6, 8, 3, padding=1, bias=False)
    # the same parameters and state_dict keys: checkpoints of either load into the other
    assert list(module.state_dict()) == list(reference.state_dict()) == ["weight"]
    module.load_state_dict(reference.state_dict())
    x, offset = torch.randn(2, 6, 9, 10), torch.randn(2, 18, 9, 10) * 3
    expected = reference(x, offset)
    # on CPU torchvision's kernel is not called
    monkeypatch.setattr("torchvision.ops.deform_conv.deform_conv2d",
                        lambda *a, **k: pytest.fail("torchvision's kernel called on CPU"))
    torch.testing.assert_close(module(x, offset), expected, rtol=1e-5, atol=1e-5)


def test_unsupported_forms_are_refused():
    with pytest.raises(ValueError, match="groups=1"):
        GridDeformConv2d(4, 4, 3, groups=2)
    module = GridDeformConv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="no mask"):
        module(x, torch.zeros(1, 18, 5, 5), mask=torch.ones(1, 9, 5, 5))
    with pytest.raises(ValueError, match="one offset group"):
        module(x, torch.zeros(1, 36, 5, 5))  # two offset groups
    with pytest.raises(ValueError, match="groups=1"):
        deform_conv2d_grid(x, torch.zeros(1, 18, 5, 5), torch.randn(4, 2, 3, 3), padding=1)


def test_bf16_input_is_convolved_in_float32():
    """torchvision's CPU kernel has no bf16; the grid path computes in float32 (as torchvision's
    autocast does on CUDA) and returns the input's dtype, also under CPU autocast."""
    torch.manual_seed(0)
    module = GridDeformConv2d(4, 6, 3, padding=1, bias=False)
    x, offset = torch.randn(1, 4, 8, 8), torch.randn(1, 18, 8, 8)
    exact = module(x, offset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(module(x, offset), exact)  # float32 in: not cast to bf16 by autocast
    half = module(x.bfloat16(), offset.bfloat16())
    assert half.dtype == torch.bfloat16
    assert (half.float() - exact).abs().max() < 0.1  # bf16's rounding of the inputs and output only


def test_flops_are_the_conv_of_its_shapes():
    """ablate's FLOP count of the grid path (torch's counter sees the matmul) equals that of
    torchvision's op (counted as the convolution of its shapes) and of a plain conv."""
    from ablate.evaluate import count_flops

    class OneConv(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, images):
            x = images[0][None]
            return self.conv(x, torch.zeros(1, 18, *x.shape[-2:]))

    image = torch.zeros(3, 10, 12, dtype=torch.uint8)
    grid = count_flops(OneConv(GridDeformConv2d(3, 16, 3, padding=1)), image, torch.device("cpu"))
    torchvision = count_flops(OneConv(DeformConv2d(3, 16, 3, padding=1)), image, torch.device("cpu"))
    assert grid == torchvision == 2 * 16 * 3 * 9 * 10 * 12
