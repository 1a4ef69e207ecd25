"""Synchronized BatchNorm (torch.nn.SyncBatchNorm; Peng et al., CVPR 2018, "MegDet"): the batch
statistics of every trainable BatchNorm computed over the whole batch of all processes that train
together, not over each process's share of it.

It applies only where a run trains on several GPU processes: torch.distributed initialised with a
world size above 1 (torchrun, or several SLURM tasks: ablate/distributed.py) and a GPU backend. In
one process, and on a gloo (CPU) process group, whose tensors torch.nn.SyncBatchNorm does not take
(its forward raises ValueError on CPU input, torch 2.x), the trick is not applicable
(TrickConflictError: n/a in a sweep, the reason in the record), never a silent copy of the
baseline nor a crash at the first step. Where it applies, every nn.BatchNorm2d of the
detector is converted with torch.nn.SyncBatchNorm.convert_sync_batchnorm (the statistics and affine
parameters kept); torchvision's FrozenBatchNorm2d (a pretrained backbone's) is no _BatchNorm and
stays, as it has no batch statistics to synchronise.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import Trick

NOT_APPLICABLE = ("sync_bn needs a run on several processes (torch.distributed, world size > 1); "
                  "this run trains in one")
CPU_GROUP = ("torch.nn.SyncBatchNorm synchronises GPU tensors only (its forward raises on CPU input); this run's "
             "process group is gloo, on the CPU: train on GPUs (nccl)")


def world_size() -> int:
    """The number of processes training together: 1 unless torch.distributed is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def backend() -> str | None:
    """The process group's backend (gloo, nccl...), None unless torch.distributed is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_backend()
    return None


def to_sync_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """The model with each trainable BatchNorm converted to SyncBatchNorm (timm's BatchNormAct2d to
    timm's SyncBatchNormAct, activation kept), and how many were."""
    count = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
                for m in model.modules())
    try:  # a timm backbone's BatchNormAct2d: torch's conversion would drop its activation, timm's keeps it
        from timm.layers import convert_sync_batchnorm
    except ImportError:
        convert_sync_batchnorm = nn.SyncBatchNorm.convert_sync_batchnorm
    return convert_sync_batchnorm(model), count


class SyncBN(Trick):
    claims = ("normalization",)

    def __init__(self):
        self.converted = 0

    def on_model(self, model: nn.Module) -> nn.Module:
        from ..base import TrickConflictError

        if world_size() <= 1:
            raise TrickConflictError(f"trick '{self.name or 'sync_bn'}' is not applicable: {NOT_APPLICABLE}")
        if backend() == "gloo":
            raise TrickConflictError(f"trick '{self.name or 'sync_bn'}' is not applicable: {CPU_GROUP}")
        model, self.converted = to_sync_batchnorm(model)
        if self.converted == 0:
            raise TrickConflictError(f"trick '{self.name or 'sync_bn'}' is not applicable: the detector has no "
                                     "trainable BatchNorm (a pretrained backbone's is frozen); train from scratch "
                                     "with model.backbone.pretrained=false")
        return model
