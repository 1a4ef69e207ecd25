"""Deformable convolution for CPU training, through `grid_sample` and a matmul.

torchvision's CPU `deform_conv2d` backward is a single-threaded scatter loop: profiled on a RepPoints
training step here it took 70% of the step (plus 10% in its autograd wrapper; `benchmarks/README.md`).
A deformable convolution is bilinear sampling of the input at K = kh x kw moved points per output
place, then a convolution whose kernel is those K samples: one `F.grid_sample` (zeros outside, as
torchvision's bilinear_interpolate) and one matmul with the weight as [C_out, C_in x K], both with
fast, multi-threaded CPU backwards. Same offset layout as torchvision ([B, 2K, H_out, W_out], a (dy, dx)
pair per tap, taps row by row), same values and gradients (tests/test_deform_conv.py). On CUDA
torchvision's kernel is used.

Exactness. grid_sample takes normalised coordinates and turns them back into pixels inside; for a
size S - 1 that is a power of two both conversions only scale by powers of two, so integer points
(where bilinear weights are exactly 0 and 1, and the offset gradient switches neighbours) stay exactly
integer. The input is therefore zero-padded at the bottom and right to such a size (zeros are what
torchvision reads past the edge). torchvision's bilinear_interpolate returns 0 at y <= -1, y >= H,
x <= -1 or x >= W, which is what bilinear sampling with zeros outside gives there anyway, and its
offset gradient (get_coordinate_weight) has no such cut: it is the zero-padded bilinear derivative
with the floor's neighbours, grid_sample's (on the line y = -1 too: v(0, x), not 0).
A point within float rounding (~1e-6 px) of a whole pixel, but not on it, can land on the other side
of it after the two conversions: its offset gradient is then the other one-sided derivative at that
kink (both are subgradients there; values and the other gradients are unchanged). Measured on a
[4, 64, 40, 40] input with offsets of std 3: 1 of 115,200 offset-gradient entries, at a distance of
4.8e-7 from an integer; torchvision's CPU and CUDA kernels (H200) agree with each other there.

Supported: groups 1, one offset group, no mask (modulated DCNv2), any stride, padding and dilation;
the rest is refused. FLOPs: torch's counter counts the matmul, 2 x C_out x C_in x K per output place,
the count of a convolution of the same shapes (what ablate/evaluate.py counts for torchvision's op);
the bilinear sampling is counted by neither path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair
from torchvision.ops import DeformConv2d


def _power_of_two_plus_one(size: int) -> int:
    """The smallest S >= max(size, 2) with S - 1 a power of two."""
    return 1 + (1 << max(size - 2, 0).bit_length())


def deform_conv2d_grid(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                       stride=1, padding=0, dilation=1) -> Tensor:
    """torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation) for
    groups 1, one offset group and no mask."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    b, c, h, w = input.shape
    c_out, c_w, kh, kw = weight.shape
    k = kh * kw
    if c_w != c:
        raise ValueError(f"deform_conv2d_grid supports groups=1 only: weight takes {c_w} input channels, "
                         f"the input has {c}")
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if tuple(offset.shape) != (b, 2 * k, h_out, w_out):
        raise ValueError(f"deform_conv2d_grid supports one offset group only: offset {tuple(offset.shape)}, "
                         f"expected {(b, 2 * k, h_out, w_out)}")
    # torchvision's autocast runs the op in float32 and returns the input's dtype: the same here.
    dtype = torch.promote_types(input.dtype, torch.float32)
    with torch.autocast(input.device.type, enabled=False):
        # tap (i, j) of output (r, q) reads (r sh - ph + i dh + dy, q sw - pw + j dw + dx): an integer plus
        # the offset, one rounding, as torchvision computes it
        taps_y = torch.arange(kh, device=input.device).repeat_interleave(kw) * dh
        taps_x = torch.arange(kw, device=input.device).repeat(kh) * dw
        rows = torch.arange(h_out, device=input.device) * sh - ph
        cols = torch.arange(w_out, device=input.device) * sw - pw
        off = offset.to(dtype).reshape(b, k, 2, h_out, w_out)
        y = (taps_y[:, None, None] + rows[:, None]).to(dtype) + off[:, :, 0]  # [B, K, H_out, W_out]
        x = (taps_x[:, None, None] + cols[None, :]).to(dtype) + off[:, :, 1]
        size_h, size_w = _power_of_two_plus_one(h), _power_of_two_plus_one(w)
        padded = F.pad(input.to(dtype), (0, size_w - w, 0, size_h - h))
        # align_corners=True: pixel p at p / ((S - 1) / 2) - 1
        grid = torch.stack([x / ((size_w - 1) / 2) - 1, y / ((size_h - 1) / 2) - 1], dim=-1)
        sampled = F.grid_sample(padded, grid.view(b, k * h_out, w_out, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=True)  # [B, C, K H_out, W_out]
        out = torch.matmul(weight.to(dtype).reshape(c_out, c * k), sampled.view(b, c * k, h_out * w_out))
        out = out.view(b, c_out, h_out, w_out)
        if bias is not None:
            out = out + bias.to(dtype)[:, None, None]
    return out.to(input.dtype)


class GridDeformConv2d(DeformConv2d):
    """torchvision's DeformConv2d (same parameters and state_dict keys), computed by
    :func:`deform_conv2d_grid` on CPU and by torchvision's kernel elsewhere. groups 1 only; no mask."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise ValueError(f"GridDeformConv2d supports groups=1 only, not {self.groups}")

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            raise ValueError("GridDeformConv2d takes no mask (modulated deformable convolution is not supported)")
        if input.device.type == "cpu":
            return deform_conv2d_grid(input, offset, self.weight, self.bias, self.stride, self.padding,
                                      self.dilation)
        return super().forward(input, offset)
