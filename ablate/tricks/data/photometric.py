"""SSD-style photometric distortion (Liu et al. 2016, "SSD", sec. 3.6, after Howard 2013), as
mmdetection's PhotoMetricDistortion applies it: random brightness, contrast before or after the HSV
step, random saturation and hue, and a random channel swap, each with probability 1/2."""
from __future__ import annotations

import torch

from ..base import BatchContext, Images, Targets, Trick, check_interval, check_number, same_shape_groups


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """OpenCV's float conversion (cv2.COLOR_RGB2HSV on float32): H in degrees [0, 360), S = (V − min)
    / V (0 where V is 0), V = max of the channels, on any value range."""
    r, g, b = img.unbind(-3)
    v = img.amax(dim=-3)
    lo = img.amin(dim=-3)
    delta = v - lo
    s = rgb_to_hsv_saturation(img, v)
    safe = torch.where(delta != 0, delta, torch.ones_like(delta))
    h = torch.where(v == r, 60 * (g - b) / safe, torch.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    h = torch.where(h < 0, h + 360, h)
    return torch.stack([h, s, v], dim=-3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """The inverse (OpenCV's HSV2RGB for floats: sector i = floor(H / 60), f its fraction,
    p = V(1 − S), q = V(1 − S f), t = V(1 − S (1 − f))), in its closed form: channel n (5 red,
    3 green, 1 blue) is V − V S clamp(min(k, 4 − k), 0, 1) with k = (n + H / 60) mod 6, which is the
    same piecewise-linear function of H without building the six candidates per channel."""
    h, s, v = hsv.unbind(-3)
    h6 = (h % 360) / 60
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(3, 1, 1)
    k = (n + h6.unsqueeze(-3)) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return v.unsqueeze(-3) * (1 - s.unsqueeze(-3) * ramp)


def scaled_saturation(s: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """HSV saturation times `factor` (a number, or one per image broadcast against s), clipped to
    [0, 1] where the factor is above 1 (mmdetection)."""
    factor = torch.as_tensor(factor, dtype=s.dtype, device=s.device)
    return torch.where(factor > 1, (s * factor).clamp(0, 1), s * factor)


def saturate(img: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """The HSV round trip with only the saturation scaled, without converting: every channel c of a
    pixel is V (1 - S k_c) with k_c set by the hue, so scaling S to S' moves each channel towards V
    by S' / S: c' = V - (V - c) S' / S (a gray pixel, S = 0, stays). The same numbers as
    hsv_to_rgb(rgb_to_hsv(img) with S scaled), at a fraction of the cost."""
    v = img.amax(dim=-3)
    s = rgb_to_hsv_saturation(img, v)
    ratio = scaled_saturation(s, factor) / torch.where(s != 0, s, torch.ones_like(s))
    ratio = torch.where(s != 0, ratio, torch.zeros_like(ratio))
    return v.unsqueeze(-3) - (v.unsqueeze(-3) - img) * ratio.unsqueeze(-3)


def rgb_to_hsv_saturation(img: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """S of rgb_to_hsv: (V - min) / V, 0 where V is 0."""
    lo = img.amin(dim=-3)
    return torch.where(v != 0, (v - lo) / torch.where(v != 0, v, torch.ones_like(v)), torch.zeros_like(v))


class Photometric(Trick):
    claims = ("batch_color",)

    def __init__(self, brightness_delta: float, contrast_low: float, contrast_high: float, saturation_low: float,
                 saturation_high: float, hue_delta: float, swap_channels: bool):
        self.brightness_delta = check_number("brightness_delta", brightness_delta, 0, 1)
        self.contrast = check_interval("contrast_low", contrast_low, "contrast_high", contrast_high)
        self.saturation = check_interval("saturation_low", saturation_low, "saturation_high", saturation_high)
        self.hue_delta = check_number("hue_delta", hue_delta, 0, 180)
        self.swap_channels = bool(swap_channels)

    def draws(self, rng) -> tuple:
        """mmdetection's _random_flags, in its order: mode, the five flags, then the four values and
        the permutation (all drawn every time)."""
        flags = [int(rng.integers(0, 2)) for _ in range(6)]  # mode, brightness, contrast, saturation, hue, swap
        values = (rng.uniform(-self.brightness_delta, self.brightness_delta), rng.uniform(*self.contrast),
                  rng.uniform(*self.saturation), rng.uniform(-self.hue_delta, self.hue_delta))
        return (*flags, *values, rng.permutation(3))

    def distort(self, img: torch.Tensor, rng) -> torch.Tensor:
        return self.apply(img[None], [self.draws(rng)])[0]

    def apply(self, images: torch.Tensor, draws: list[tuple]) -> torch.Tensor:
        """Images [N, 3, H, W] of one size, each distorted by its draws, in whole-batch tensor ops
        (the same numbers as one image at a time, a fraction of the calls)."""
        x = images.float().clone()

        def per_image(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        # draws: mode, brightness, contrast, saturation, hue, swap, delta, alpha, sat, hue_shift, order
        x += per_image([d[6] if d[1] else 0.0 for d in draws])
        x *= per_image([d[7] if d[0] == 1 and d[2] else 1.0 for d in draws])
        # mmdetection converts to HSV and back every time; the round trip alone changes nothing (but
        # for a pixel whose largest channel is exactly 0 while another is negative, which it blacks
        # out), so it is skipped without a saturation or hue change, and a saturation change alone
        # takes the same numbers' shortcut (saturate).
        hue = [k for k, d in enumerate(draws) if d[4]]
        if hue:
            hsv = rgb_to_hsv(x[hue])
            sat = per_image([draws[k][8] if draws[k][3] else 1.0 for k in hue])[:, 0]
            hsv[:, 1] = scaled_saturation(hsv[:, 1], sat)
            hsv[:, 0] = (hsv[:, 0] + per_image([draws[k][9] for k in hue])[:, 0]) % 360
            x[hue] = hsv_to_rgb(hsv)
        sat_only = [k for k, d in enumerate(draws) if d[3] and not d[4]]
        if sat_only:
            x[sat_only] = saturate(x[sat_only], per_image([draws[k][8] for k in sat_only])[:, 0])
        x *= per_image([d[7] if d[0] == 0 and d[2] else 1.0 for d in draws])
        if self.swap_channels:
            for k, d in enumerate(draws):
                if d[5]:
                    x[k] = x[k][torch.as_tensor(d[10])]
        return x

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        draws = [self.draws(ctx.rng) for _ in images]  # in image order, as one image at a time drew them
        out = list(images)
        for idx in same_shape_groups(images):
            done = self.apply(torch.stack([images[i] for i in idx]), [draws[i] for i in idx])
            for k, i in enumerate(idx):
                out[i] = done[k]
        return out, targets
