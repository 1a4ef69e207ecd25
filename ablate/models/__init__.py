"""Detector builders. cfg.model._target_ names the builder; it reads the rest of cfg.model."""
from __future__ import annotations

from hydra.utils import get_method
from torch import nn


# The detector families (cfg.model.family) tricks declare they fit, each with whether its classifier
# keeps index 0 for the background: softmax heads (Faster R-CNN and R-FCN, SSD) do; sigmoid heads
# (FCOS, RetinaNet, RepPoints, YOLOv3's class scores, CenterNet's and CornerNet's heatmaps) score each
# class on its own.
FAMILIES = {"one_stage": False, "two_stage": True, "yolo": False, "ssd": True, "centernet": False,
            "cornernet": False}


def label_offset(family: str) -> int:
    """What to subtract from a dataset label (1..K) to get the model's class index: 0 where the
    family keeps index 0 for the background, else 1 (classes 0..K-1)."""
    if family not in FAMILIES:
        raise ValueError(f"model.family={family!r}: choose one of {', '.join(FAMILIES)} (ablate/models/__init__.py)")
    return 0 if FAMILIES[family] else 1


def build_model(cfg_model, num_classes: int, image_size: int) -> nn.Module:
    """The detector of `cfg_model` for a dataset of num_classes classes (labels 1..K)."""
    outputs = num_classes + 1 - label_offset(cfg_model.family)
    return get_method(cfg_model._target_)(cfg_model, outputs, image_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
