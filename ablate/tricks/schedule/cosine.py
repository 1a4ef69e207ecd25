"""Cosine annealing of the learning rate in place of the baseline's step schedule (Loshchilov and
Hutter 2017, SGDR without restarts), as the Bag of Freebies (Zhang et al. 2019, sec. 3.4) and
YOLOv4 count it: a trick, not the baseline."""
from __future__ import annotations

from ..base import LRFactor, Trick, check_fraction, cosine_annealing


class Cosine(Trick):
    claims = ("lr_schedule",)

    def __init__(self, min_factor: float):
        self.min_factor = check_fraction("min_factor", min_factor)

    def on_lr_factor(self, factor: LRFactor, total_steps: int) -> LRFactor:
        return cosine_annealing(total_steps, self.min_factor)
