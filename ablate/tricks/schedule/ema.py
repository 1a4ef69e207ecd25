"""An exponential moving average of the weights, evaluated in place of the trained ones (Polyak and
Juditsky 1992; as YOLOv5/ultralytics and YOLOX train detectors): after every optimizer step each
floating-point entry of the state (parameters and buffers: BatchNorm statistics too) becomes
d·ema + (1 − d)·current, with the ramp d = decay·(1 − exp(−updates / tau)) so the first updates
follow the model closely."""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..base import Trick, check_number


class EMA(Trick):
    claims = ("weight_average",)

    def __init__(self, decay: float, tau: float):
        self.decay = check_number("decay", decay, 0, 1, low_open=True, high_open=True)
        self.tau = check_number("tau", tau, 0, low_open=True)
        self.ema: nn.Module | None = None
        self.updates = 0
        self._resumed: dict[str, Any] | None = None

    def ramp(self, updates: int) -> float:
        return self.decay * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def on_step(self, model: nn.Module, step: int) -> None:
        if self.ema is None:
            # The average starts at the weights after the first step (ultralytics' at the initial
            # ones, which weigh 1 − d(1) ≈ 0.05% in it after that step): the copy is made here,
            # once every trick has changed the model and it sits on its device.
            self.ema = copy.deepcopy(model).eval().requires_grad_(False)
            if self._resumed is None:
                self.updates = 1
                return
            self.ema.load_state_dict(self._resumed["ema"])
            self.updates = int(self._resumed["updates"])
        self.updates += 1
        d = self.ramp(self.updates)
        current = model.state_dict()
        for key, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[key].detach(), alpha=1 - d)

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.ema if self.ema is not None else model

    def state_dict(self) -> dict[str, Any]:
        if self.ema is None:
            return {}
        return {"updates": self.updates, "ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resumed = state or None
