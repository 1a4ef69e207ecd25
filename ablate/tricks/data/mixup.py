"""Detection MixUp (Zhang et al. 2019, "Bag of Freebies for Training Object Detection Neural
Networks", sec. 3.1): two images are blended with a ratio lambda ~ Beta(alpha, alpha) on a
canvas large enough for both, placed at the top-left corner so no box moves (geometry
preserving), and the boxes of both images are kept. Each box carries the weight of its image
(lambda or 1 - lambda) in target["weights"]. Compared with GluonCV's code for the paper
(dmlc/gluon-cv gluoncv/data/mixup/detection.py, MixupDetection: the same canvas, each box's label
row extended by its image's ratio).

``loss_weights`` = true: every loss term of a mixed box is weighted by its ratio: classification,
box regression and FCOS centerness of the locations / anchors matched to it, RPN objectness and
RPN box regression of the anchors matched to it, RoI-head classification and box regression of
the proposals matched to it (ablate/models/losses/). That is what GluonCV's YOLOv3 does: the
target generator writes the box's ratio as the objectness target of its anchor
(gluoncv/model_zoo/yolo/yolo_target.py, ``objectness[b, index, match, 0] = np_gt_mixratios[b, m, 0]``),
and YOLOV3Loss (gluoncv/loss.py) uses it as the sample weight of the objectness loss and multiplies
the center, scale and class losses' masks by it. Background samples weigh 1.
``loss_weights`` = false drops target["weights"] from mixed images (every box then weighs 1).

``off_last_fraction`` = f turns MixUp off for the final share f of training: for epochs
ctx.epoch >= ctx.num_epochs - round_half_up(f * ctx.num_epochs) (:func:`base.off_at_end`), drawing
nothing from ctx.rng then. GluonCV's scripts/detection/yolo/train_yolo3.py turns mixup off for
its last ``--no-mixup-epochs 20`` of ``--epochs 200`` (``if epoch >= args.epochs -
args.no_mixup_epochs: ...set_mixup(None)``): f = 0.1.
"""
from __future__ import annotations

import torch

from ..base import (BatchContext, Images, Targets, Trick, check_fraction, check_number, mix_with_partners,
                   off_at_end)


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

    def __init__(self, alpha: float, prob: float, off_last_fraction: float, loss_weights: bool):
        self.alpha = check_number("alpha", alpha, 0, low_open=True)
        self.prob = check_fraction("prob", prob)
        self.off_last_fraction = check_fraction("off_last_fraction", off_last_fraction)
        self.loss_weights = bool(loss_weights)

    def on_batch(self, images: Images, targets: Targets, ctx: BatchContext) -> tuple[Images, Targets]:
        if off_at_end(self.off_last_fraction, ctx.epoch, ctx.num_epochs):
            return images, targets

        def mix(i: int, j: int):
            lam = float(ctx.rng.beta(self.alpha, self.alpha))
            img, tgt = mix_pair(images[i], targets[i], images[j], targets[j], lam)
            if not self.loss_weights:
                del tgt["weights"]
            return img, tgt

        return mix_with_partners(images, targets, ctx, self.prob, mix)
