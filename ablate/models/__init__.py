"""Detector builders. cfg.model._target_ names the builder; it reads the rest of cfg.model."""
from __future__ import annotations

from hydra.utils import get_method
from torch import nn


def label_offset(family: str) -> int:
    """What to subtract from a dataset label (1..K) to get the model's class index.

    Two-stage heads keep index 0 for the background (softmax); one-stage heads score each class
    with its own sigmoid and have no background channel, so their classes are 0..K-1."""
    return 0 if family == "two_stage" else 1


def build_model(cfg_model, num_classes: int, image_size: int) -> nn.Module:
    """The detector of `cfg_model` for a dataset of num_classes classes (labels 1..K)."""
    outputs = num_classes + 1 - label_offset(cfg_model.family)
    return get_method(cfg_model._target_)(cfg_model, outputs, image_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
