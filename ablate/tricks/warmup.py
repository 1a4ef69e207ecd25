"""Learning-rate warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): the LR rises from
start_factor x lr to lr over the first `iters` iterations, multiplying the main schedule.

linear:       w(t) = start_factor + (1 - start_factor) * t / iters
exponential:  w(t) = start_factor ** (1 - t / iters)
and w(t) = 1 from t = iters on.
"""
from __future__ import annotations

from .base import LRFactor, Trick


class Warmup(Trick):
    claims = ("lr_warmup",)

    def __init__(self, iters: int, start_factor: float, mode: str):
        if iters < 1:
            raise ValueError(f"tricks.warmup.iters={iters}: must be at least 1")
        if not 0 < start_factor <= 1:
            raise ValueError(f"tricks.warmup.start_factor={start_factor}: must be in (0, 1]")
        if mode not in ("linear", "exponential"):
            raise ValueError(f"tricks.warmup.mode={mode!r}: choose linear or exponential")
        self.iters, self.start_factor, self.mode = iters, start_factor, mode

    def factor(self, step: int) -> float:
        if step >= self.iters:
            return 1.0
        progress = step / self.iters
        if self.mode == "linear":
            return self.start_factor + (1.0 - self.start_factor) * progress
        return self.start_factor ** (1.0 - progress)

    def on_lr_factor(self, factor: LRFactor, total_steps: int) -> LRFactor:
        return lambda step: factor(step) * self.factor(step)
