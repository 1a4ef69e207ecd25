"""Path-aggregation necks on torchvision's FPN, added by the neck tricks (ablate/tricks/network/neck.py).

`NeckFPN` is torchvision's FeaturePyramidNetwork (the same lateral, output and extra-level modules,
so the same state-dict keys) with a `path` module run on its levels, either on the levels taken
from the backbone before the detector's extra block makes P6/P7 or the max-pooled level from them
(`after_extra=False`: PAN, ASFF), or on every level the heads use (`after_extra=True`: BiFPN,
balanced FPN). A path takes the list of levels, finest first, all of C channels, and returns a list
of the same shapes. The paths:

- `PANPath`: PANet's bottom-up path augmentation (Liu et al. 2018, sec. 3.1, Fig. 2).
- `BiFPNLayer`: one EfficientDet BiFPN layer with fast normalised fusion (Tan et al. 2020, sec. 3).
- `BalancedFeaturePyramid`: Libra R-CNN's integrate, refine (non-local), strengthen (Pang et al. 2019, sec. 3.2).
- `ASFF`: adaptively spatial feature fusion (Liu et al. 2019), one fusion per level.
- `NASFPN`: the published NAS-FPN cell over P3-P7, stacked (Ghiasi et al. 2019).

`MLFPN` is not a path: M2Det's multi-level FPN with its scale-wise feature aggregation (SFAM; Zhao
et al. 2019) replaces torchvision's FPN, since SFAM's input is MLFPN's stack of TUM outputs, not
one map per scale. It reads the body's features and returns the same keys, count, channels and
strides as the FPN it replaces.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork


class NeckFPN(FeaturePyramidNetwork):
    """torchvision's FPN `fpn` (its modules, not copies) with `path` on its levels: before its extra
    block (which then builds P6/P7 or the pooled level from the path's output) or after it."""

    def __init__(self, fpn: FeaturePyramidNetwork, path: nn.Module, after_extra: bool):
        nn.Module.__init__(self)  # FeaturePyramidNetwork.__init__ would build new blocks
        self.inner_blocks, self.layer_blocks, self.extra_blocks = fpn.inner_blocks, fpn.layer_blocks, fpn.extra_blocks
        self.path, self.after_extra = path, after_extra

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        names, feats = list(x.keys()), list(x.values())
        # torchvision's top-down pathway (FeaturePyramidNetwork.forward), unchanged
        last_inner = self.get_result_from_inner_blocks(feats[-1], -1)
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.get_result_from_inner_blocks(feats[idx], idx)
            last_inner = lateral + F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        if not self.after_extra:
            results = list(self.path(results))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        if self.after_extra:
            results = list(self.path(results))
        return OrderedDict(zip(names, results))


def _fpn_init(conv: nn.Conv2d, bias: bool = True) -> nn.Conv2d:
    """torchvision's FPN initialisation, kaiming_uniform_(a=1) and zero bias (mmcv's caffe2_xavier_init)."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


class PANPath(nn.Module):
    """PANet's bottom-up path over FPN levels P_2..P_5 (any count, finest first): N_2 = P_2, then
    N_{i+1} = ReLU(conv3x3(P_{i+1} + ReLU(conv3x3_stride2(N_i)))) (Liu et al. 2018, sec. 3.1: "each
    N_i first goes through a 3x3 convolutional layer with stride 2 ... each element of feature map
    P_{i+1} and the down-sampled map are added ... processed by another 3x3 convolutional layer to
    generate N_{i+1}"; every conv followed by a ReLU). relu=False drops the ReLUs (mmdetection's
    PAFPN, act_cfg None)."""

    def __init__(self, channels: int, num_levels: int, relu: bool):
        super().__init__()
        self.down = nn.ModuleList(_fpn_init(nn.Conv2d(channels, channels, 3, 2, 1)) for _ in range(num_levels - 1))
        self.fuse = nn.ModuleList(_fpn_init(nn.Conv2d(channels, channels, 3, 1, 1)) for _ in range(num_levels - 1))
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        out = [levels[0]]
        for i, (down, fuse) in enumerate(zip(self.down, self.fuse)):
            out.append(self.act(fuse(levels[i + 1] + self.act(down(out[-1])))))
        return out


def max_pool_same(x: Tensor) -> Tensor:
    """TensorFlow's 'SAME' 3x3 stride-2 max-pool (EfficientDet's resampling; mmdetection's
    MaxPool2dSamePadding): output ceil(H/2) x ceil(W/2), the padding (by -inf) split with the odd
    cell after, so an even side is padded only after."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class FastFusion(nn.Module):
    """EfficientDet's fast normalised fusion of n inputs: sum_i w_i x_i / (eps + sum_j w_j), w = ReLU
    of trainable weights initialised to 1 (Tan et al. 2020, eq. 3)."""

    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def weights(self) -> Tensor:
        w = F.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        w = self.weights()
        return sum(w[i] * x for i, x in enumerate(inputs))


class SeparableConvBN(nn.Module):
    """EfficientDet's node conv: swish on the fused input, a depthwise 3x3 conv (no bias), a pointwise
    1x1 conv, BN (momentum 0.01, eps 1e-3 as TensorFlow's 0.99 / 1e-3): mmdetection's
    DepthWiseConvBlock after BiFPNStage.combine, automl's (act, SeparableConv2D, BN) per node."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = nn.SiLU()
        self.depthwise = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.pointwise(self.depthwise(self.act(x))))


class BiFPNLayer(nn.Module):
    """One BiFPN layer over n levels (finest first): a top-down pass, P_i^td = node(P_i^in, up(P_{i+1}^td))
    from the coarsest down, then a bottom-up pass, P_i^out = node(P_i^in, P_i^td, down(P_{i-1}^out)),
    the finest output being its top-down node and the coarsest fusing only its input and the level
    below (Tan et al. 2020, Fig. 2d and eq. 4). Each node fuses by FastFusion, then SeparableConvBN;
    up is nearest 2x (to the level's size), down the SAME 3x3 stride-2 max-pool."""

    def __init__(self, channels: int, num_levels: int, eps: float):
        super().__init__()
        n = num_levels
        self.td_fusion = nn.ModuleList(FastFusion(2, eps) for _ in range(n - 1))  # levels 0..n-2
        self.td_conv = nn.ModuleList(SeparableConvBN(channels) for _ in range(n - 1))
        self.out_fusion = nn.ModuleList(FastFusion(3 if i < n - 1 else 2, eps) for i in range(1, n))  # levels 1..n-1
        self.out_conv = nn.ModuleList(SeparableConvBN(channels) for _ in range(n - 1))

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        n = len(levels)
        td = [None] * n
        td[-1] = levels[-1]
        for i in range(n - 2, -1, -1):
            up = F.interpolate(td[i + 1], size=levels[i].shape[-2:], mode="nearest")
            td[i] = self.td_conv[i](self.td_fusion[i]([levels[i], up]))
        out = [td[0]]
        for i in range(1, n):
            down = max_pool_same(out[-1])
            inputs = [levels[i], td[i], down] if i < n - 1 else [levels[i], down]
            out.append(self.out_conv[i - 1](self.out_fusion[i - 1](inputs)))
        return out


class BiFPN(nn.Sequential):
    """`num_layers` BiFPN layers in a row (EfficientDet repeats them: 3 for D0)."""

    def __init__(self, channels: int, num_levels: int, num_layers: int, eps: float):
        super().__init__(*(BiFPNLayer(channels, num_levels, eps) for _ in range(num_layers)))


class NonLocal2d(nn.Module):
    """The embedded-Gaussian non-local block as Libra R-CNN's BFP builds it (mmcv's NonLocal2d with
    reduction 1, use_scale False): y = softmax(theta(x)^T phi(x)) g(x) over all positions, x + W y,
    theta, phi, g and W 1x1 convs of C channels (Wang et al. 2018)."""

    def __init__(self, channels: int):
        super().__init__()
        self.theta, self.phi, self.g, self.out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        theta = self.theta(x).view(n, c, -1).transpose(1, 2)  # [n, hw, c]
        phi = self.phi(x).view(n, c, -1)  # [n, c, hw]
        g = self.g(x).view(n, c, -1).transpose(1, 2)  # [n, hw, c]
        y = torch.softmax(theta @ phi, dim=-1) @ g
        return x + self.out(y.transpose(1, 2).reshape(n, c, h, w))


class BalancedFeaturePyramid(nn.Module):
    """Libra R-CNN's balanced feature pyramid (Pang et al. 2019, sec. 3.2; mmdetection's BFP):
    integrate: every level resized to the level `refine_index` (finer ones by adaptive max-pooling,
    coarser ones by nearest interpolation) and averaged, C = 1/L sum_l C_l; refine: a non-local
    block; strengthen: the result resized back to each level (nearest up, adaptive max-pool down)
    and added to it."""

    def __init__(self, channels: int, refine_index: int):
        super().__init__()
        self.refine_index = refine_index
        self.refine = NonLocal2d(channels)
        for m in self.modules():  # mmdetection: BFP's init_cfg, Xavier uniform on every conv
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def integrate(self, levels: list[Tensor]) -> Tensor:
        size = levels[self.refine_index].shape[-2:]
        resized = [F.adaptive_max_pool2d(x, size) if i < self.refine_index else F.interpolate(x, size=size, mode="nearest")
                   for i, x in enumerate(levels)]
        return sum(resized) / len(resized)

    def strengthen(self, levels: list[Tensor], balanced: Tensor) -> list[Tensor]:
        return [x + (F.interpolate(balanced, size=x.shape[-2:], mode="nearest") if i < self.refine_index
                     else F.adaptive_max_pool2d(balanced, x.shape[-2:]))
                for i, x in enumerate(levels)]

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        return self.strengthen(levels, self.refine(self.integrate(levels)))


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """ASFF's add_conv: conv (no bias, padding k // 2), BN, activation (ReLU here)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ASFFLevel(nn.Module):
    """ASFF at level `level` of n (finest first, C channels each): every other level resized to it
    (a coarser one: nearest up, as the authors' ASFF takes its 256-channel level 1 to level 2, their
    1x1 compress conv being only where the channel counts differ, 512 to 256, and here none differ;
    a finer one 2^k times larger: k-1 3x3 stride-2 max-pools, then a 3x3 stride-2 conv-BN-ReLU, which
    the authors apply whatever the channels), a 1x1 conv-BN-ReLU of each to `compress` channels,
    concatenated, a 1x1 conv to n logits, softmax over the levels per position, the weighted sum
    y = sum_l alpha_l x_l (eq. 1-2, alpha summing to 1), then a 3x3 conv-BN-ReLU."""

    def __init__(self, channels: int, num_levels: int, level: int, compress: int):
        super().__init__()
        self.level = level
        # only the finer levels have a resize conv (the coarser ones are upsampled as they are)
        self.resize = nn.ModuleList(
            conv_bn_relu(channels, channels, 3, 2) if j < level else nn.Identity() for j in range(num_levels))
        self.weight_convs = nn.ModuleList(conv_bn_relu(channels, compress, 1) for _ in range(num_levels))
        self.weight_logits = nn.Conv2d(compress * num_levels, num_levels, 1)
        self.expand = conv_bn_relu(channels, channels, 3)

    def resized(self, levels: list[Tensor]) -> list[Tensor]:
        size = levels[self.level].shape[-2:]
        out = []
        for j, (x, resize) in enumerate(zip(levels, self.resize)):
            if j > self.level:
                x = F.interpolate(x, size=size, mode="nearest")
            elif j < self.level:
                for _ in range(self.level - j - 1):
                    x = F.max_pool2d(x, 3, 2, 1)
                x = resize(x)
            out.append(x)
        return out

    def weights(self, resized: list[Tensor]) -> Tensor:
        """The fusion weights alpha [N, n, H, W]: softmax over the levels at each position."""
        logits = self.weight_logits(torch.cat([conv(x) for conv, x in zip(self.weight_convs, resized)], 1))
        return torch.softmax(logits, dim=1)

    def forward(self, levels: list[Tensor]) -> Tensor:
        resized = self.resized(levels)
        alpha = self.weights(resized)
        return self.expand(sum(alpha[:, j:j + 1] * x for j, x in enumerate(resized)))


class ASFF(nn.Module):
    """ASFF on every level: level l's output is ASFFLevel l over all the input levels."""

    def __init__(self, channels: int, num_levels: int, compress: int):
        super().__init__()
        self.fusions = nn.ModuleList(ASFFLevel(channels, num_levels, lv, compress) for lv in range(num_levels))

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        return [fusion(levels) for fusion in self.fusions]


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """NAS-FPN's resampling of a merging cell's input (mmcv's BaseMergeCell._resize): unchanged at the
    size, nearest up to a larger one, to a smaller one max-pooled by the integer ratio after padding
    with zeros (split, the odd cell after) to a multiple of the target size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
        return F.interpolate(x, size=size, mode="nearest")
    pad_h, pad_w = -x.shape[-2] % size[0], -x.shape[-1] % size[1]
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    kernel = (x.shape[-2] // size[0], x.shape[-1] // size[1])
    return F.max_pool2d(x, kernel, kernel)


class MergingCell(nn.Module):
    """A NAS-FPN merging cell (Ghiasi et al. 2019, sec. 3.1, Fig. 3): both inputs resized to the output
    size, a binary op, sum (x1 + x2) or global pooling (x2 + sigmoid(avgpool(x2)) * x1, Fig. 4), then,
    with a conv, ReLU, 3x3 conv (no bias) and BN."""

    def __init__(self, op: str, channels: int | None):
        super().__init__()
        self.op = op
        self.conv = None if channels is None else nn.Sequential(
            nn.ReLU(), _fpn_init(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), bias=False),
            nn.BatchNorm2d(channels))

    def forward(self, x1: Tensor, x2: Tensor, size: tuple[int, int]) -> Tensor:
        x1, x2 = resize_to(x1, size), resize_to(x2, size)
        x = x1 + x2 if self.op == "sum" else x2 + torch.sigmoid(F.adaptive_avg_pool2d(x2, 1)) * x1
        return x if self.conv is None else self.conv(x)


class NASFPNCell(nn.Module):
    """One NAS-FPN cell over P3-P7, the published 7-stack architecture's cell (Ghiasi et al. 2019,
    Fig. 7f; mmdetection's NASFPN, names as there: gp_64_4 is a global-pooling cell of P6 and P4 to
    P4's size):
    P4_1 = gp(P6, P4); P4_2 = sum(P4_1, P4); P3' = sum(P4_2, P3); P4' = sum(P3', P4_2);
    P5' = sum(P5, gp(P4', P3') without conv); P7' = sum(P7, gp(P5', P4_2) without conv); P6' = gp(P7', P5')."""

    def __init__(self, channels: int):
        super().__init__()
        self.cells = nn.ModuleDict({
            "gp_64_4": MergingCell("gp", channels), "sum_44_4": MergingCell("sum", channels),
            "sum_43_3": MergingCell("sum", channels), "sum_34_4": MergingCell("sum", channels),
            "gp_43_5": MergingCell("gp", None), "sum_55_5": MergingCell("sum", channels),
            "gp_54_7": MergingCell("gp", None), "sum_77_7": MergingCell("sum", channels),
            "gp_75_6": MergingCell("gp", channels)})

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        p3, p4, p5, p6, p7 = levels
        c, size = self.cells, [x.shape[-2:] for x in levels]
        p4_1 = c["gp_64_4"](p6, p4, size[1])
        p4_2 = c["sum_44_4"](p4_1, p4, size[1])
        p3 = c["sum_43_3"](p4_2, p3, size[0])
        p4 = c["sum_34_4"](p3, p4_2, size[1])
        p5 = c["sum_55_5"](p5, c["gp_43_5"](p4, p3, size[2]), size[2])
        p7 = c["sum_77_7"](p7, c["gp_54_7"](p5, p4_2, size[4]), size[4])
        p6 = c["gp_75_6"](p7, p5, size[3])
        return [p3, p4, p5, p6, p7]


class NASFPN(nn.Sequential):
    """`stack_times` NAS-FPN cells in a row (7 in the paper's RetinaNet, mmdetection's config)."""

    def __init__(self, channels: int, stack_times: int):
        super().__init__(*(NASFPNCell(channels) for _ in range(stack_times)))


def m2det_conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """M2Det's BasicConv: conv (no bias), BN (momentum 0.01, as the authors'), ReLU; the conv
    initialised as their init_model does (kaiming_normal_, mode fan_out)."""
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=1e-5, momentum=0.01), nn.ReLU(inplace=True))


class TUM(nn.Module):
    """M2Det's thinned U-shaped module (sec. 3.2, Fig. 4): an encoder of 3x3 stride-2 convs from the
    input down to `scales` maps, a decoder from the coarsest (a 1x1 conv) upwards, each step the
    nearest-upsampled coarser output plus a 3x3 conv of the encoder's map at that scale, then a 1x1
    "smooth" conv on every output but the coarsest. Returns `scales` maps of `channels`, finest first."""

    def __init__(self, in_channels: int, channels: int, scales: int, smooth: bool):
        super().__init__()
        self.encoder = nn.ModuleList([m2det_conv(in_channels, channels, 3, 2, 1)] +
                                     [m2det_conv(channels, channels, 3, 2, 1) for _ in range(scales - 2)])
        self.top = m2det_conv(channels, channels, 1)
        # lateral[i] reads the encoder's map i+1 steps finer than the coarsest; the last, the input
        self.lateral = nn.ModuleList([m2det_conv(channels, channels, 3, 1, 1) for _ in range(scales - 2)] +
                                     [m2det_conv(in_channels, channels, 3, 1, 1)])
        self.smooth = nn.ModuleList(m2det_conv(channels, channels, 1) for _ in range(scales - 1)) if smooth else None

    def forward(self, x: Tensor) -> list[Tensor]:
        encoded = [x]
        for conv in self.encoder:
            encoded.append(conv(encoded[-1]))
        decoded = [self.top(encoded[-1])]
        for i, lateral in enumerate(self.lateral):
            skip = lateral(encoded[-2 - i])
            decoded.append(F.interpolate(decoded[-1], size=skip.shape[-2:], mode="nearest") + skip)
        if self.smooth is not None:
            decoded = decoded[:1] + [conv(d) for conv, d in zip(self.smooth, decoded[1:])]
        return decoded[::-1]


class SFAM(nn.Module):
    """M2Det's scale-wise feature aggregation, its channel attention (sec. 3.2, eq. 2): for each scale's
    concatenation X of the TUMs' maps, X * sigmoid(W2 ReLU(W1 avgpool(X))), W1 and W2 1x1 convs with
    reduction r. One W1, W2 for all scales, as the authors' code builds them (a ModuleList of one
    module repeated)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def attention(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))

    def forward(self, scales: list[Tensor]) -> list[Tensor]:
        return [x * self.attention(x) for x in scales]


class MLFPN(nn.Module):
    """M2Det's MLFPN with SFAM (Zhao et al. 2019, sec. 3.2, Fig. 2) in place of the FPN, on the body's
    features (finest first). FFMv1: the base feature, a 3x3 conv of the finest map to `channels` and a
    1x1 conv of the deepest to 2 x `channels`, nearest-upsampled to the finest's size, concatenated;
    a 1x1 conv reduces it to channels / 2 (the authors' `leach`, one module for every TUM). FFMv2: TUM
    k > 1 reads that reduced base concatenated with TUM k-1's finest output. The TUMs' maps of each
    scale are concatenated (num_tums x channels), re-weighted by SFAM, the finest BN-normalised (the
    authors' Norm); then a 1x1 conv per scale to `out_channels`, the detector's heads' width."""

    def __init__(self, shallow_channels: int, deep_channels: int, channels: int, out_channels: int,
                 names: list[str], num_tums: int, smooth: bool, reduction: int):
        super().__init__()
        self.names = list(names)
        half = channels // 2
        self.reduce = m2det_conv(shallow_channels, channels, 3, 1, 1)
        self.up_reduce = m2det_conv(deep_channels, 2 * channels, 1)
        self.leach = m2det_conv(3 * channels, half, 1)
        self.tums = nn.ModuleList(TUM(half if k == 0 else half + channels, channels, len(names), smooth)
                                  for k in range(num_tums))
        self.sfam = SFAM(num_tums * channels, reduction)
        self.norm = nn.BatchNorm2d(num_tums * channels)
        self.project = nn.ModuleList(_fpn_init(nn.Conv2d(num_tums * channels, out_channels, 1)) for _ in names)

    def base(self, feats: list[Tensor]) -> Tensor:
        """FFMv1's base feature, reduced by the leach conv."""
        shallow = self.reduce(feats[0])
        deep = F.interpolate(self.up_reduce(feats[-1]), size=shallow.shape[-2:], mode="nearest")
        return self.leach(torch.cat([shallow, deep], 1))

    def tum_outputs(self, base: Tensor) -> list[list[Tensor]]:
        outs = [self.tums[0](base)]
        for tum in self.tums[1:]:
            outs.append(tum(torch.cat([base, outs[-1][0]], 1)))  # FFMv2
        return outs

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        outs = self.tum_outputs(self.base(list(x.values())))
        scales = self.sfam([torch.cat([o[s] for o in outs], 1) for s in range(len(self.names))])
        scales = [self.norm(scales[0]), *scales[1:]]
        return OrderedDict(zip(self.names, (project(s) for project, s in zip(self.project, scales))))
