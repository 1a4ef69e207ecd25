"""Head variants the baselines use where torchvision's differ from the paper they implement."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOSRegressionHead


class ScaledExpRegressionHead(FCOSRegressionHead):
    """FCOS's box regression as the paper defines it (Tian et al. 2019, sec. 2.2): distances
    exp(s_l x), a trainable scalar s_l per pyramid level (initialised to 1), here in units of the
    level's stride (torchvision's BoxLinearCoder normalises by it).

    torchvision (after the authors' later "improvements" branch) takes ReLU(x) instead. A ReLU
    output that turns negative everywhere passes no gradient and never recovers: with AdamW, whose
    first steps move every weight by about lr whatever the gradient's size, one step without warmup
    can push a whole coordinate channel below zero, and the detector then predicts boxes of zero
    width or height for the rest of the run. exp has a gradient everywhere, so it recovers."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int, num_levels: int):
        super().__init__(in_channels, num_anchors, num_convs)
        self.scales = nn.Parameter(torch.ones(num_levels))

    def forward(self, x: list[Tensor]) -> tuple[Tensor, Tensor]:
        if len(x) != len(self.scales):
            raise ValueError(f"{len(x)} feature levels, but the head has {len(self.scales)} scales")
        all_regression, all_ctrness = [], []
        for scale, features in zip(self.scales, x):
            feature = self.conv(features)
            # exp in float32: under autocast a bf16/fp16 exp loses the box's precision
            regression = torch.exp(scale.float() * self.bbox_reg(feature).float())
            ctrness = self.bbox_ctrness(feature)
            n, _, h, w = regression.shape
            all_regression.append(regression.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            all_ctrness.append(ctrness.view(n, -1, 1, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 1))
        return torch.cat(all_regression, dim=1), torch.cat(all_ctrness, dim=1)
