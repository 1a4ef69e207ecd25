"""Detection MixUp (Zhang et al. 2019, "Bag of Freebies for Training Object Detection Neural
Networks", sec. 3.1): two images are blended with a ratio lambda ~ Beta(alpha, alpha) on a
canvas large enough for both, placed at the top-left corner so no box moves (geometry
preserving), and the boxes of both images are kept. Each box carries the weight of its image
(lambda or 1 - lambda) in target["weights"], for losses that can weight boxes.
``loss_weights`` = false drops target["weights"] from mixed images (every box then weighs 1).
``off_last_epochs`` = N turns MixUp off for the last N epochs (ctx.epoch >= ctx.num_epochs - N).
"""
from __future__ import annotations

import torch

from .base import BatchContext, Images, Targets, Trick, mix_with_partners


def mix_pair(img_a: torch.Tensor, tgt_a: dict, img_b: torch.Tensor, tgt_b: dict, lam: float):
    """lam * a + (1 - lam) * b on a canvas of the larger height and width; boxes of both."""
    h = max(img_a.shape[1], img_b.shape[1])
    w = max(img_a.shape[2], img_b.shape[2])
    mixed = img_a.new_zeros((img_a.shape[0], h, w))
    mixed[:, : img_a.shape[1], : img_a.shape[2]] += lam * img_a
    mixed[:, : img_b.shape[1], : img_b.shape[2]] += (1.0 - lam) * img_b
    weights_a = tgt_a.get("weights", torch.ones(len(tgt_a["boxes"]), device=img_a.device))
    weights_b = tgt_b.get("weights", torch.ones(len(tgt_b["boxes"]), device=img_b.device))
    target = dict(tgt_a)
    target["boxes"] = torch.cat([tgt_a["boxes"], tgt_b["boxes"]])
    target["labels"] = torch.cat([tgt_a["labels"], tgt_b["labels"]])
    target["weights"] = torch.cat([lam * weights_a, (1.0 - lam) * weights_b])
    return mixed, target


class MixUp(Trick):
    claims = ("batch_mix",)

    def __init__(self, alpha: float, prob: float, off_last_epochs: int, loss_weights: bool):
        if alpha <= 0:
            raise ValueError(f"tricks.mixup.alpha={alpha}: must be > 0")
        if not 0 <= prob <= 1:
            raise ValueError(f"tricks.mixup.prob={prob}: must be in [0, 1]")
        if int(off_last_epochs) != off_last_epochs or off_last_epochs < 0:
            raise ValueError(f"tricks.mixup.off_last_epochs={off_last_epochs}: must be an integer >= 0")
        self.off_last_epochs = int(off_last_epochs)
        self.alpha, self.prob = alpha, prob
        self.loss_weights = bool(loss_weights)

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        if ctx.epoch >= ctx.num_epochs - self.off_last_epochs:
            return images, targets

        def mix(i: int, j: int):
            lam = float(ctx.rng.beta(self.alpha, self.alpha))
            img, tgt = mix_pair(images[i], targets[i], images[j], targets[j], lam)
            if not self.loss_weights:
                del tgt["weights"]
            return img, tgt

        return mix_with_partners(images, targets, ctx, self.prob, mix)
