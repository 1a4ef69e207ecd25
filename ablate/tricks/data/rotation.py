"""A small random rotation of each training image about its centre (the rotation part of
mmdetection's RandomAffine, as YOLOX trains); each box becomes the axis-aligned bounds of its rotated
corners, clipped to the image, and boxes left too small or too thin are dropped as mmdetection does."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..base import (BatchContext, Images, Targets, Trick, check_fraction, check_number, clip_and_filter,
                   same_shape_groups)


def rotated_bounds(boxes: torch.Tensor, degrees: float, cx: float, cy: float) -> torch.Tensor:
    """The axis-aligned bounds of each box's four corners rotated by `degrees` (counter-clockwise as
    seen on the image) about (cx, cy)."""
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    x = boxes[:, [0, 2, 2, 0]] - cx
    y = boxes[:, [1, 1, 3, 3]] - cy
    # image y points down: a counter-clockwise turn on screen is x' = x cos + y sin, y' = -x sin + y cos
    xr, yr = x * cos + y * sin + cx, -x * sin + y * cos + cy
    return torch.stack([xr.min(1).values, yr.min(1).values, xr.max(1).values, yr.max(1).values], dim=1)


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, [N, C, h, w], align_corners=False) by broadcasting: each output pixel's
    normalised centre (x, y) = ((2j + 1) / w - 1, (2i + 1) / h - 1) mapped by theta [N, 2, 3]. The
    same grid, without the batched matrix product over every pixel (which cost as much as the
    sampling itself)."""
    xs = (torch.arange(w, dtype=theta.dtype, device=theta.device) * 2 + 1) / w - 1
    ys = (torch.arange(h, dtype=theta.dtype, device=theta.device) * 2 + 1) / h - 1
    t = theta[:, :, :, None, None]  # [N, 2, 3, 1, 1]
    gx = t[:, 0, 0] * xs + (t[:, 0, 1] * ys[:, None] + t[:, 0, 2])  # [N, h, w]
    gy = t[:, 1, 0] * xs + (t[:, 1, 1] * ys[:, None] + t[:, 1, 2])
    return torch.stack([gx, gy], dim=-1)  # [N, h, w, 2]: (x, y) of each output pixel's source


class Rotation(Trick):
    claims = ("batch_geometry",)

    def __init__(self, p: float, max_degrees: float, fill: float, min_size: float, min_area_ratio: float,
                 max_aspect_ratio: float):
        self.p = check_fraction("p", p)
        self.max_degrees = check_number("max_degrees", max_degrees, 0, 45)
        self.fill = check_fraction("fill", fill)
        self.min_size = check_number("min_size", min_size, 0)
        self.min_area_ratio = check_fraction("min_area_ratio", min_area_ratio)
        self.max_aspect_ratio = check_number("max_aspect_ratio", max_aspect_ratio, 1)

    def theta(self, degrees: float, h: int, w: int) -> torch.Tensor:
        """grid_sample's map of each output pixel to its source: the inverse rotation, in normalised
        coordinates scaled by the aspect ratio so the turn is a true rotation in pixels."""
        a = math.radians(degrees)
        return torch.tensor([[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]])

    def rotate_images(self, images: torch.Tensor, degrees: list[float]) -> torch.Tensor:
        """Images [N, C, H, W] of one size, each rotated by its angle, in one grid_sample call (the
        same numbers as one image at a time, a fraction of the calls)."""
        h, w = images.shape[-2:]
        theta = torch.stack([self.theta(d, h, w) for d in degrees]).to(images)
        grid = affine_grid(theta, h, w)
        return F.grid_sample(images - self.fill, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + self.fill

    def rotate_target(self, tgt: dict, degrees: float, h: int, w: int) -> dict:
        boxes = tgt["boxes"].reshape(-1, 4)
        return clip_and_filter(tgt, rotated_bounds(boxes, degrees, w / 2, h / 2), boxes, w, h, self.min_size,
                               self.min_area_ratio, self.max_aspect_ratio)

    def rotate(self, img: torch.Tensor, tgt: dict, degrees: float) -> tuple[torch.Tensor, dict]:
        h, w = img.shape[1:]
        return self.rotate_images(img[None], [degrees])[0], self.rotate_target(tgt, degrees, h, w)

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        angles = [ctx.rng.uniform(-self.max_degrees, self.max_degrees) if ctx.rng.random() < self.p else None
                  for _ in images]
        out_images, out_targets = list(images), list(targets)
        for idx in same_shape_groups(images, [a is not None for a in angles]):  # one grid_sample per image size
            rotated = self.rotate_images(torch.stack([images[i] for i in idx]), [angles[i] for i in idx])
            for k, i in enumerate(idx):
                h, w = images[i].shape[1:]
                out_images[i], out_targets[i] = rotated[k], self.rotate_target(targets[i], angles[i], h, w)
        return out_images, out_targets
