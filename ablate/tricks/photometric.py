"""SSD-style photometric distortion (Liu et al. 2016, "SSD", sec. 3.6, after Howard 2013), as
mmdetection's PhotoMetricDistortion applies it: random brightness, contrast before or after the HSV
step, random saturation and hue, and a random channel swap, each with probability 1/2."""
from __future__ import annotations

import torch

from .base import BatchContext, Images, Targets, Trick, check_interval, check_number


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """OpenCV's float conversion (cv2.COLOR_RGB2HSV on float32): H in degrees [0, 360), S = (V − min)
    / V (0 where V is 0), V = max of the channels, on any value range."""
    r, g, b = img.unbind(0)
    v, _ = img.max(dim=0)
    lo, _ = img.min(dim=0)
    delta = v - lo
    s = rgb_to_hsv_saturation(img, v)
    safe = torch.where(delta != 0, delta, torch.ones_like(delta))
    h = torch.where(v == r, 60 * (g - b) / safe, torch.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    h = torch.where(h < 0, h + 360, h)
    return torch.stack([h, s, v])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """The inverse (OpenCV's HSV2RGB for floats): sector i = floor(H / 60), f its fraction,
    p = V(1 − S), q = V(1 − S f), t = V(1 − S (1 − f))."""
    h, s, v = hsv.unbind(0)
    h6 = (h % 360) / 60
    i = torch.floor(h6)
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v]).gather(0, i[None])[0]
    g = torch.stack([t, v, v, q, p, p]).gather(0, i[None])[0]
    b = torch.stack([p, p, t, v, v, q]).gather(0, i[None])[0]
    return torch.stack([r, g, b])


def scaled_saturation(s: torch.Tensor, factor: float) -> torch.Tensor:
    """HSV saturation times `factor`, clipped to [0, 1] when the factor is above 1 (mmdetection)."""
    return (s * factor).clamp(0, 1) if factor > 1 else s * factor


def saturate(img: torch.Tensor, factor: float) -> torch.Tensor:
    """The HSV round trip with only the saturation scaled, without converting: every channel c of a
    pixel is V (1 - S k_c) with k_c set by the hue, so scaling S to S' moves each channel towards V
    by S' / S: c' = V - (V - c) S' / S (a gray pixel, S = 0, stays). The same numbers as
    hsv_to_rgb(rgb_to_hsv(img) with S scaled), at a fraction of the cost."""
    v, _ = img.max(dim=0)
    s = rgb_to_hsv_saturation(img, v)
    ratio = scaled_saturation(s, factor) / torch.where(s != 0, s, torch.ones_like(s))
    return v - (v - img) * torch.where(s != 0, ratio, torch.zeros_like(ratio))


def rgb_to_hsv_saturation(img: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """S of rgb_to_hsv: (V - min) / V, 0 where V is 0."""
    lo, _ = img.min(dim=0)
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
        mode, brightness, contrast, saturation, hue, swap, delta, alpha, sat, hue_shift, order = self.draws(rng)
        img = img.float().clone()
        if brightness:
            img += delta
        if mode == 1 and contrast:
            img *= alpha
        # mmdetection converts to HSV and back every time; the round trip alone changes nothing (but
        # for a pixel whose largest channel is exactly 0 while another is negative, which it blacks
        # out), so it is skipped without a saturation or hue change, and a saturation change alone
        # takes the same numbers' shortcut (saturate): together a third of the hook's cost.
        if hue:
            hsv = rgb_to_hsv(img)
            if saturation:
                hsv[1] = scaled_saturation(hsv[1], sat)
            hsv[0] = (hsv[0] + hue_shift) % 360
            img = hsv_to_rgb(hsv)
        elif saturation:
            img = saturate(img, sat)
        if mode == 0 and contrast:
            img *= alpha
        if swap and self.swap_channels:
            img = img[torch.as_tensor(order)]
        return img

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        return [self.distort(img, ctx.rng) for img in images], targets
