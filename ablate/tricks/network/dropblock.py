"""DropBlock (Ghiasi, Lin and Le, NeurIPS 2018, "DropBlock: A regularization method for
convolutional networks"): in training, contiguous block_size x block_size regions of a feature map
are dropped together (and the rest rescaled), in the last backbone stages.

Where: after every normalization layer (BatchNorm, FrozenBatchNorm, GroupNorm) of the backbone
stages at the configured pyramid levels (level L = stride 2^L; 4 and 5 are ResNet's groups 3 and
4, the paper's choice), i.e. after each convolution and each projection shortcut, as the paper's
ResNet code does. Identity shortcuts are not dropped.

Schedule (paper sec. 3, "Scheduled DropBlock"): keep_prob falls linearly from 1 to its target over
training, keep_prob(t) = 1 - (1 - keep_prob) * t / (T - 1) for step t of T, updated on each batch
from ctx.step / ctx.total_steps. The drop probability of torchvision's DropBlock2d is
p = 1 - keep_prob(t); its gamma is the paper's eq. 1. In eval mode nothing is dropped.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import DropBlock2d, drop_block2d

from ...models.backbones import frozen_norm_types, probe_stages
from ..base import BatchContext, Images, Targets, Trick, TrickArgumentError, check_number



class FittedDropBlock2d(DropBlock2d):
    """torchvision's DropBlock2d with its block size cut to the largest odd size that fits the
    feature map (torchvision uses min(block_size, H, W), which it then refuses when even, e.g.
    6 on the 6 x 6 map of a 96 px image at stride 16)."""

    def forward(self, input: Tensor) -> Tensor:
        size = min(self.block_size, input.shape[-2], input.shape[-1])
        if size % 2 == 0:
            size -= 1
        return drop_block2d(input, self.p, size, self.inplace, self.eps, self.training)


class DropBlock(Trick):
    claims = ("backbone_dropout",)

    def __init__(self, keep_prob: float, block_size: int, levels: list[int]):
        self.keep_prob = check_number("keep_prob", keep_prob, 0, 1, low_open=True)
        self.block_size = check_number("block_size", block_size, 1, integer=True)
        if self.block_size % 2 == 0:
            raise TrickArgumentError({"block_size": block_size}, "must be odd (torchvision's DropBlock2d)")
        if not levels:
            raise TrickArgumentError({"levels": levels}, "name at least one backbone level (4 and 5: the last two stages)")
        self.levels = list(levels)
        self.blocks: list[FittedDropBlock2d] = []

    def on_model(self, model: nn.Module) -> nn.Module:
        body = model.backbone.body
        levels = {name: stride.bit_length() - 1 for name, stride in probe_stages(body)[0].items()}
        missing = [lv for lv in self.levels if lv not in levels.values()]
        if missing:
            raise ValueError(f"tricks.{self.name}.levels={self.levels}: the backbone has no level {missing} "
                             f"(available: {sorted(set(levels.values()))})")
        norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, *frozen_norm_types())
        for name, child in body.named_children():
            if levels[name] not in self.levels:
                continue
            for parent in list(child.modules()):
                for attr, sub in list(parent.named_children()):
                    if isinstance(sub, norms):
                        block = FittedDropBlock2d(0.0, self.block_size)
                        setattr(parent, attr, nn.Sequential(sub, block))
                        self.blocks.append(block)
        return model

    def keep_prob_at(self, step: int, total_steps: int) -> float:
        progress = min(1.0, step / max(1, total_steps - 1))
        return 1.0 - (1.0 - self.keep_prob) * progress

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        p = 1.0 - self.keep_prob_at(ctx.step, ctx.total_steps)
        for block in self.blocks:
            block.p = p
        return images, targets
