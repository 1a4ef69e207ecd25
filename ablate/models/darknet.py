"""Darknet-19, YOLOv2's backbone (Redmon and Farhadi 2017, "YOLO9000", Table 6), written from the
paper's layer table: neither torchvision nor timm has it.

Table 6 is the whole network: 19 convolutional layers (3x3, or 1x1 to halve the channels between
3x3s) and 5 max-pools (2x2, stride 2). Every conv is followed by batch normalization and a leaky
ReLU of slope 0.1 (sec. 2 "Batch Normalization"; darknet's darknet19.cfg: batch_normalize=1,
activation=leaky) and keeps the resolution (padding k // 2). As a backbone it stops at the last 3x3
conv: the 19th conv (1x1 to the 1000 ImageNet classes), the global average pool and the softmax
are the classifier. No ImageNet weights in PyTorch's format: trained from scratch here.
"""
from __future__ import annotations

from torch import nn

# Table 6 down to the last 3x3 conv: (filters, kernel size) of each conv, "M" a 2x2/2 max-pool.
DARKNET19 = [
    (32, 3), "M",
    (64, 3), "M",
    (128, 3), (64, 1), (128, 3), "M",
    (256, 3), (128, 1), (256, 3), "M",
    (512, 3), (256, 1), (512, 3), (256, 1), (512, 3), "M",
    (1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3),
]


def conv_bn_leaky(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


def darknet19_layers() -> list[tuple[str, nn.Module]]:
    """Darknet-19's layers in order, named conv1..conv18 and pool1..pool5 as Table 6 counts them."""
    layers, cin, convs, pools = [], 3, 0, 0
    for row in DARKNET19:
        if row == "M":
            pools += 1
            layers.append((f"pool{pools}", nn.MaxPool2d(2, 2)))
        else:
            cout, kernel = row
            convs += 1
            layers.append((f"conv{convs}", conv_bn_leaky(cin, cout, kernel)))
            cin = cout
    return layers
