"""RoIAlign for CPU training, through `grid_sample`, and the multi-scale pooler that uses it.

torchvision's CPU `roi_align` backward is a single-threaded scatter loop: profiled on a
Faster R-CNN training step here it took 58% of the step (`benchmarks/README.md`). RoIAlign is
bilinear sampling at a regular grid of points per bin followed by a mean over each bin's points,
which is exactly `F.grid_sample` (align_corners=True, border padding) plus `F.avg_pool2d`, and
both have fast, multi-threaded CPU backwards. The values are the same as torchvision's
(`aligned=False`, fixed `sampling_ratio`) for boxes inside the image, which is what the RPN gives
(tests/test_roi_align.py checks forward and gradients). On CUDA torchvision's kernel is used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def roi_align_grid(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                   sampling_ratio: int) -> Tensor:
    """torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
    aligned=False) for rois (K x [batch index, x1, y1, x2, y2]) inside the image, sorted by batch
    index (as MultiScaleRoIAlign makes them)."""
    n, c, h, w = features.shape
    ph, pw = output_size
    k = rois.shape[0]
    if k == 0:
        return features.new_zeros((0, c, ph, pw))
    if sampling_ratio <= 0:
        raise ValueError("roi_align_grid needs a fixed sampling_ratio > 0")
    sr = sampling_ratio
    batch = rois[:, 0].long()
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale).unbind(1)
    # torchvision (aligned=False): each RoI is at least 1x1 feature pixels.
    roi_w, roi_h = (x2 - x1).clamp(min=1.0), (y2 - y1).clamp(min=1.0)
    # Sample point j of a row sits at (j + 0.5) / sr bins from the RoI's start.
    tx = (torch.arange(pw * sr, device=rois.device, dtype=rois.dtype) + 0.5) / sr
    ty = (torch.arange(ph * sr, device=rois.device, dtype=rois.dtype) + 0.5) / sr
    xs = x1[:, None] + roi_w[:, None] / pw * tx
    ys = y1[:, None] + roi_h[:, None] / ph * ty
    # Pixel i at normalised 2i/(size-1) - 1 (align_corners=True); border padding clamps to the
    # edge as torchvision's bilinear_interpolate does.
    gx = 2 * xs / max(w - 1, 1) - 1
    gy = 2 * ys / max(h - 1, 1) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [K, ph*sr, pw*sr, 2]
    # grid_sample samples image b with grid b: lay each image's RoIs out in its own grid rows.
    counts = torch.bincount(batch, minlength=n)
    slots = torch.arange(k, device=rois.device) - (torch.cumsum(counts, 0) - counts)[batch]
    per_image = int(counts.max())
    full = grid.new_zeros((n, per_image, ph * sr, pw * sr, 2))
    full[batch, slots] = grid.to(full.dtype)
    # Sampling in at least float32: under CPU autocast the features are bf16, and a bf16 grid would
    # put the sampling points up to a few hundredths of the map off (pooled values off by up to 0.19).
    dtype = torch.promote_types(features.dtype, torch.float32)
    sampled = F.grid_sample(features.to(dtype), full.view(n, per_image * ph * sr, pw * sr, 2).to(dtype),
                            mode="bilinear", padding_mode="border", align_corners=True)
    # Mean over each bin's sr x sr points (a RoI's rows are a block of ph*sr, so bins never mix
    # RoIs), then pick the RoIs out of their images' rows.
    pooled = F.avg_pool2d(sampled, sr).view(n, c, per_image, ph, pw)
    return pooled.permute(0, 2, 1, 3, 4)[batch, slots].to(features.dtype)


class GridMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (same level mapping, same values), pooling with
    :func:`roi_align_grid` on CPU and torchvision's kernel elsewhere."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = (self.map_levels(boxes) if len(features) > 1
                  else torch.zeros(len(rois), dtype=torch.int64)).to(rois.device)
        c = features[0].shape[1]
        result = features[0].new_zeros((len(rois), c, *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            if feature.device.type == "cpu":
                pooled = roi_align_grid(feature, rois[idx], self.output_size, scale, self.sampling_ratio)
            else:
                pooled = roi_align(feature, rois[idx], self.output_size, spatial_scale=scale,
                                   sampling_ratio=self.sampling_ratio)
            result[idx] = pooled.to(result.dtype)
        return result
