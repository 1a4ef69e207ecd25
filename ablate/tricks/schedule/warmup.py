"""Learning-rate warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD", sec. 2.2, gradual
warmup): the LR rises from start_factor x lr to lr over the first n iterations, multiplying the
main schedule.

The length n is a share of the run or a fixed count, exactly one of the two set:
  fraction:  n = round_half_up(fraction * total_steps), total_steps being the run's iterations
             (Goyal et al. warm up 5 of 90 epochs: fraction 0.056);
  iters:     n = iters (mmdetection's configs: 500 iterations of a ~90k-iteration 1x schedule).
A run too short for one warmup iteration (fraction * total_steps < 0.5) gets none (a warning says so).

linear:       w(t) = start_factor + (1 - start_factor) * t / n
exponential:  w(t) = start_factor ** (1 - t / n)
and w(t) = 1 from t = n on (t counts iterations from 0). Both are mmcv's LrUpdaterHook warmups
('linear', 'exp'; mmcv/runner/hooks/lr_updater.py, get_warmup_lr), whose warmup_ratio is start_factor.
"""
from __future__ import annotations

import logging

from ..base import LRFactor, Trick, TrickArgumentError, check_choice, check_number, round_half_up

log = logging.getLogger(__name__)


class Warmup(Trick):
    claims = ("lr_warmup",)

    def __init__(self, fraction: float | None, iters: int | None, start_factor: float, mode: str):
        if (fraction is None) == (iters is None):
            raise TrickArgumentError(
                {"fraction": fraction, "iters": iters},
                "set exactly one of them (a share of the run's iterations, or a number of iterations; the other "
                "null), e.g. {prefix}fraction=null {prefix}iters=500")
        self.fraction = None if fraction is None else check_number("fraction", fraction, 0, 1, low_open=True)
        self.iters = None if iters is None else check_number("iters", iters, 1, integer=True)
        self.start_factor = check_number("start_factor", start_factor, 0, 1, low_open=True)
        self.mode = check_choice("mode", mode, ("linear", "exponential"))

    def length(self, total_steps: int) -> int:
        """The number of warmup iterations in a run of total_steps iterations."""
        if self.iters is not None:
            return self.iters
        return round_half_up(self.fraction * total_steps)

    def factor(self, step: int, length: int) -> float:
        """w(step) for a warmup of `length` iterations."""
        if step >= length:
            return 1.0
        progress = step / length
        if self.mode == "linear":
            return self.start_factor + (1.0 - self.start_factor) * progress
        return self.start_factor ** (1.0 - progress)

    def on_lr_factor(self, factor: LRFactor, total_steps: int) -> LRFactor:
        length = self.length(total_steps)
        if length == 0:
            log.warning("tricks.warmup.fraction=%s of %d iterations rounds to 0: no warmup in this run",
                        self.fraction, total_steps)
        return lambda step: factor(step) * self.factor(step, length)
