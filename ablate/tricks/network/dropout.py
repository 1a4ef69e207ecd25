"""Dropout on the detection heads' features (Srivastava et al., JMLR 2014), off in eval.

Where:
- Faster R-CNN: after each fully connected layer (and its activation) of the RoI box head, as Fast
  R-CNN's VGG16 head had dropout 0.5 after fc6 and fc7 (Girshick 2015). torchvision's TwoMLPHead
  calls F.relu, so it is swapped for an equivalent module with the dropout (same parameters, same
  state-dict keys); an activation trick's head (ActTwoMLPHead: `act6`, `act7`) keeps its activations. A 4conv1fc box head
  (group_norm) gets the dropout after its fully connected layer.
- R-FCN: its RoI path has no fully connected layer (the paper has no dropout); channel dropout, as
  on the one-stage towers, on the features its score-map convs read (after its 1x1 conv and ReLU).
- FCOS and RetinaNet: channel dropout (nn.Dropout2d: whole feature maps, Tompson et al. 2015) at
  the end of each tower, i.e. on the features the final prediction convs read (classification
  logits; box regression and FCOS's centerness); YOLOv3 at the end of each level's detection block
  (the tip its output conv reads). No one-stage detector paper uses dropout in its head; the rate
  is our choice, said in the YAML.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead

from ...models.rfcn import PositionSensitivePool
from ...models.yolo import YOLOv3Head
from ..base import Trick, check_fraction, head_towers


class DropoutTwoMLPHead(nn.Module):
    """torchvision's TwoMLPHead (or an activation trick's ActTwoMLPHead) with dropout after each fully
    connected layer's activation; the activations are modules, so an activation trick applied later
    swaps them."""

    def __init__(self, old: nn.Module, p: float):
        super().__init__()
        self.fc6, self.fc7 = old.fc6, old.fc7
        self.act6 = getattr(old, "act6", None) or nn.ReLU()
        self.act7 = getattr(old, "act7", None) or nn.ReLU()
        self.dropout = nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.act6(self.fc6(x.flatten(start_dim=1))))
        return self.dropout(self.act7(self.fc7(x)))


class Dropout(Trick):
    def __init__(self, fc_p: float, conv_p: float):
        self.fc_p = check_fraction("fc_p", fc_p)
        self.conv_p = check_fraction("conv_p", conv_p)

    def on_model(self, model: nn.Module) -> nn.Module:
        if isinstance(getattr(getattr(model, "roi_heads", None), "box_roi_pool", None), PositionSensitivePool):
            # R-FCN has no fully connected layer: channel dropout on what its score-map convs read
            model.roi_heads.box_roi_pool.reduce.append(nn.Dropout2d(self.conv_p))
        elif hasattr(model, "roi_heads"):
            head = model.roi_heads.box_head
            if isinstance(head, FastRCNNConvFCHead):
                for i in reversed(range(1, len(head))):
                    if isinstance(head[i - 1], nn.Linear):
                        head.insert(i + 1, nn.Dropout(self.fc_p))
            elif hasattr(head, "fc6") and hasattr(head, "fc7"):
                model.roi_heads.box_head = DropoutTwoMLPHead(head, self.fc_p)
            else:
                from ..base import TrickConflictError

                raise TrickConflictError(f"trick '{self.name}' does not fit this detector: its RoI box head "
                                         f"{type(head).__name__} has no fc6/fc7 layers to put dropout after")
        elif isinstance(getattr(model, "head", None), YOLOv3Head):  # the end of each detection block
            for block in model.head.blocks:
                block.append(nn.Dropout2d(self.conv_p))
        else:
            for branch in head_towers(model, self.name):
                branch.conv.append(nn.Dropout2d(self.conv_p))
        return model
