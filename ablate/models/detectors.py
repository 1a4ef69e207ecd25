"""Baseline detectors from torchvision, sized by the config.

Images reach the model already resized by the data pipeline (longer side = data.image_size), so
the detectors' own transform only normalises and batches; predictions come back in the same
pixel frame as the targets.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..errors import UserInputError
from .backbones import build_backbone
from .heads import ScaledExpRegressionHead
# torchvision's heads with settable losses (identical to torchvision's until a trick sets one)
from .losses import FCOSLossHead, LossRoIHeads, LossRPN, RetinaNetLossHead
from .roi_align import GridMultiScaleRoIAlign


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: the data pipeline sized the images."""

    def resize(self, image, target=None):
        return image, target


def _no_resize(model: nn.Module, cfg) -> nn.Module:
    old = model.transform
    model.transform = NoResizeTransform(old.min_size, old.max_size, list(cfg.image_mean), list(cfg.image_std),
                                        size_divisible=old.size_divisible)
    return model


def _pyramid_levels(cfg) -> list[int]:
    return list(cfg.levels) + [cfg.levels[-1] + i + 1 for i in range(cfg.extra_levels)]


def _anchors(cfg, octaves: int, aspect_ratios) -> AnchorGenerator:
    sizes = tuple(tuple(cfg.anchor_scale * 2 ** lv * 2 ** (k / octaves) for k in range(octaves))
                  for lv in _pyramid_levels(cfg))
    return AnchorGenerator(sizes, tuple(tuple(aspect_ratios) for _ in sizes))


def _common(cfg, image_size: int) -> dict:
    return dict(min_size=image_size, max_size=image_size,
                image_mean=list(cfg.image_mean), image_std=list(cfg.image_std))


def _one_stage(detector, cfg, backbone, anchors, head, num_classes: int, image_size: int) -> nn.Module:
    """FCOS and RetinaNet take the same post-processing settings from the config."""
    model = detector(backbone, num_classes, anchor_generator=anchors, head=head,
                     score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                     detections_per_img=cfg.detections_per_img, topk_candidates=cfg.topk_candidates,
                     **_common(cfg, image_size))
    return _no_resize(model, cfg)


def build_fcos(cfg, num_classes: int, image_size: int) -> FCOS:
    backbone = build_backbone(cfg.backbone, list(cfg.levels), cfg.extra_levels, cfg.fpn_channels, two_stage=False)
    anchors = _anchors(cfg, 1, [1.0])
    head = FCOSLossHead(backbone.out_channels, 1, num_classes, num_convs=cfg.head_convs)
    if cfg.box_regression == "exp":
        head.regression_head = ScaledExpRegressionHead(backbone.out_channels, 1, cfg.head_convs,
                                                       len(_pyramid_levels(cfg)))
    elif cfg.box_regression != "relu":
        raise UserInputError(f"model.box_regression={cfg.box_regression!r}: choose exp (the FCOS paper's) or relu "
                         "(torchvision's)")
    return _one_stage(FCOS, cfg, backbone, anchors, head, num_classes, image_size)


def build_retinanet(cfg, num_classes: int, image_size: int) -> RetinaNet:
    backbone = build_backbone(cfg.backbone, list(cfg.levels), cfg.extra_levels, cfg.fpn_channels, two_stage=False)
    anchors = _anchors(cfg, 3, cfg.aspect_ratios)
    head = RetinaNetLossHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes)
    # torchvision's head always has 4 convs per branch; keep the first head_convs.
    for branch in (head.classification_head, head.regression_head):
        branch.conv = nn.Sequential(*list(branch.conv)[: cfg.head_convs])
    return _one_stage(RetinaNet, cfg, backbone, anchors, head, num_classes, image_size)


def build_faster_rcnn(cfg, num_classes: int, image_size: int) -> FasterRCNN:
    backbone = build_two_stage_backbone(cfg)
    # torchvision's pooler; on CPU it pools through grid_sample (same values, faster backward).
    roi_pool = GridMultiScaleRoIAlign([str(i) for i in range(len(cfg.levels))], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, cfg.representation_size)
    return two_stage_detector(cfg, backbone, image_size, roi_pool, box_head,
                              FastRCNNPredictor(cfg.representation_size, num_classes))


def build_two_stage_backbone(cfg) -> nn.Module:
    return build_backbone(cfg.backbone, list(cfg.levels), cfg.extra_levels, cfg.fpn_channels, two_stage=True)


def two_stage_detector(cfg, backbone, image_size: int, box_roi_pool: nn.Module, box_head: nn.Module,
                       box_predictor: nn.Module, roi_heads_class: type[LossRoIHeads] = LossRoIHeads) -> FasterRCNN:
    """torchvision's two-stage detector with the FPN RPN and the budgets of cfg, and the given RoI box
    path (pooler, head, predictor: Faster R-CNN's, or R-FCN's position-sensitive one), its RPN and RoI
    heads the loss-slot subclasses (roi_heads_class names the detector the slots belong to)."""
    anchors = _anchors(cfg, 1, cfg.aspect_ratios)
    model = FasterRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_head=box_head, box_predictor=box_predictor,
        box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
        box_batch_size_per_image=cfg.box_batch_size_per_image, box_positive_fraction=cfg.box_positive_fraction,
        **_common(cfg, image_size))
    # set after: torchvision's constructor takes MultiScaleRoIAlign poolers only
    model.roi_heads.box_roi_pool = box_roi_pool
    model.rpn = LossRPN.adopt(model.rpn)
    model.roi_heads = roi_heads_class.from_roi_heads(model.roi_heads)
    return _no_resize(model, cfg)
