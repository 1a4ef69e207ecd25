"""YOLOv3 (ablate/models/yolo.py): target assignment and loss against hand-computed cases, the ignore
rule, per-box weights, decoding and class-wise NMS, an overfit run, the loss tricks that fit it, and
one `ablate train model=yolov3 profile=smoke`."""
import json
import math
from pathlib import Path

import pytest
import torch

from ablate.models import build_model
from ablate.models.losses import SigmoidBCELoss, current_slot
from ablate.models.yolo import YOLOv3BoxLoss, shape_iou
from ablate.testing import eval_detections, fixed_batch_history, model_config, really_on, tiny_model
from conftest import ablate, paths

pytestmark = pytest.mark.usefixtures("single_thread")

LN2 = math.log(2)
# The model's anchors are the paper's 416-px ones scaled to image_size: at 208 px, halved.
IMAGE_SIZE = 208
# A 224 x 224 image (208 padded to a multiple of 32 would be 224 too): grids 28, 14, 7.
GRIDS = (28, 14, 7)
PREDICTIONS = 3 * sum(g * g for g in GRIDS)  # 3087
# A 32 x 24 box centred at (56, 36).
BOX = [40.0, 24.0, 72.0, 48.0]


def yolo(num_classes=2):
    torch.manual_seed(0)
    return build_model(model_config("yolov3"), num_classes=num_classes, image_size=IMAGE_SIZE)


def zero_outputs(num_classes=2):
    """Raw head outputs of one 224 x 224 image, all zero: [1, H, W, 3, 5 + K] per level."""
    return [torch.zeros(1, g, g, 3, 5 + num_classes, requires_grad=True) for g in GRIDS]


def test_anchors_are_the_papers_scaled_to_the_image_size():
    head = yolo().head
    assert head.anchors[4].tolist() == [31.0, 22.5]  # (62, 45) at 416 px
    assert head.anchors[8].tolist() == [186.5, 163.0]
    assert head.strides == [8, 16, 32]


def test_bias_prior_sets_the_output_biases_from_the_priors():
    cfg = model_config("yolov3")
    torch.manual_seed(0)
    plain = build_model(cfg, num_classes=2, image_size=IMAGE_SIZE).head
    cfg.bias_prior = {"objects_per_image": 8, "class_prior": 0.6}
    torch.manual_seed(0)
    prior = build_model(cfg, num_classes=2, image_size=IMAGE_SIZE).head
    for level, stride in enumerate((8, 16, 32)):
        delta = (prior.outputs[level].bias - plain.outputs[level].bias).view(3, 7)
        # ultralytics: objectness ln(8 / cells), 208 / 8 = 26 cells a side; classes ln(0.6 / (2 - 0.99))
        assert delta[:, 4].tolist() == pytest.approx([math.log(8 / (208 / stride) ** 2)] * 3, rel=1e-5)
        assert delta[:, 5:].flatten().tolist() == pytest.approx([math.log(0.6 / 1.01)] * 6, rel=1e-5)
        assert delta[:, :4].abs().max() == 0


def test_a_box_goes_to_the_anchor_of_largest_shape_iou_at_the_cell_of_its_centre():
    head = yolo().head
    boxes = torch.tensor([BOX])
    # By hand, (w, h) = (32, 24) against the halved anchors: (31, 22.5) overlaps 697.5 / 768 = 0.908;
    # (16.5, 11.5) 189.75 / 768 = 0.247; (58, 45) 768 / 2610 = 0.294; (29.5, 59.5) 708 / 1815.25 = 0.390.
    ious = shape_iou(boxes[:, 2:] - boxes[:, :2], head.anchors)[0]
    assert ious[4].item() == pytest.approx(697.5 / 768)
    assert ious[2].item() == pytest.approx(189.75 / 768)
    assert ious[6].item() == pytest.approx(768 / 2610)
    index, best = head.assign(boxes, zero_outputs())
    # anchor 4 = level 1 (stride 16), its anchor 1; the centre (56, 36) lies in cell (3, 2) of 14 x 14;
    # level 1 starts after the 28 x 28 x 3 predictions of level 0.
    assert best.tolist() == [4]
    assert index.tolist() == [28 * 28 * 3 + (2 * 14 + 3) * 3 + 1]


def test_the_loss_of_a_hand_computed_case_and_the_ignore_rule():
    head = yolo().head
    raw = zero_outputs()
    # One other prediction (the same cell's anchor 0, (15, 30.5)) decodes exactly to the box: IoU 1 >
    # ignore_thresh 0.7, so its objectness gets no loss although it is no positive.
    with torch.no_grad():
        raw[1][0, 2, 3, 0, :4] = torch.tensor([0.0, math.log(0.25 / 0.75), math.log(32 / 15), math.log(24 / 30.5)])
    targets = [{"boxes": torch.tensor([BOX]), "labels": torch.tensor([1])}]
    losses = head.compute_loss(raw, targets, [(224, 224)])
    # BCE of a zero logit is ln 2 whatever the target: every prediction but the ignored one.
    assert losses["objectness"].item() == pytest.approx((PREDICTIONS - 1) * LN2, rel=1e-6)
    # the positive's two classes
    assert losses["classification"].item() == pytest.approx(2 * LN2, rel=1e-6)
    # centre BCE (targets 0.5 and 0.25) 2 ln 2, scale L1 |0 - ln(32/31)| + |0 - ln(24/22.5)|, weighted
    # by 2 - 32 x 24 / (224 x 224)
    expected_box = (2 * LN2 + math.log(32 / 31) + math.log(24 / 22.5)) * (2 - 768 / 224 ** 2)
    assert losses["bbox_regression"].item() == pytest.approx(expected_box, rel=1e-6)
    sum(losses.values()).backward()
    assert raw[1].grad[0, 2, 3, 1].abs().sum() > 0  # the positive learns
    assert raw[1].grad[0, 2, 3, 0, 4] == 0  # the ignored objectness does not


def test_mixup_weights_scale_every_term_of_their_box():
    head = yolo().head
    targets = [{"boxes": torch.tensor([BOX]), "labels": torch.tensor([0]), "weights": torch.tensor([0.25])}]
    losses = head.compute_loss(zero_outputs(), targets, [(224, 224)])
    # the positive's objectness weighs 0.25 (GluonCV: the mix ratio as objectness target weight)
    assert losses["objectness"].item() == pytest.approx((PREDICTIONS - 1 + 0.25) * LN2, rel=1e-6)
    assert losses["classification"].item() == pytest.approx(0.25 * 2 * LN2, rel=1e-6)
    expected_box = (2 * LN2 + math.log(32 / 31) + math.log(24 / 22.5)) * (2 - 768 / 224 ** 2)
    assert losses["bbox_regression"].item() == pytest.approx(0.25 * expected_box, rel=1e-6)


def test_a_later_box_in_the_same_cell_and_anchor_replaces_the_earlier():
    head = yolo().head
    boxes = torch.tensor([BOX, [41.0, 25.0, 73.0, 49.0]])  # same shape, centre (57, 37): same cell
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 1])}]
    losses = head.compute_loss(zero_outputs(), targets, [(224, 224)])
    assert losses["classification"].item() == pytest.approx(2 * LN2, rel=1e-6)  # one positive
    targets[0]["weights"] = torch.tensor([1.0, 0.5])
    assert head.compute_loss(zero_outputs(), targets, [(224, 224)])["classification"].item() == pytest.approx(LN2)


def test_an_image_without_boxes_has_only_negatives():
    head = yolo().head
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = head.compute_loss(zero_outputs(), targets, [(224, 224)])
    assert losses["objectness"].item() == pytest.approx(PREDICTIONS * LN2, rel=1e-6)
    assert losses["classification"].item() == 0 and losses["bbox_regression"].item() == 0


def test_losses_are_averaged_over_the_images_of_a_batch():
    head = yolo().head
    raw = [torch.zeros(2, g, g, 3, 7) for g in GRIDS]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = head.compute_loss(raw, [{"boxes": torch.tensor([BOX]), "labels": torch.tensor([1])}, empty],
                               [(224, 224), (224, 224)])
    assert losses["objectness"].item() == pytest.approx(PREDICTIONS * LN2, rel=1e-6)
    assert losses["classification"].item() == pytest.approx(LN2, rel=1e-6)


def test_decoding_scores_and_class_wise_nms():
    head = yolo().head
    raw = [torch.full((1, g, g, 3, 7), -20.0) for g in GRIDS]
    # level 1, cell (3, 2): anchor 1 (31 x 22.5) with tx = ty = 0 puts the centre at (3.5, 2.5) x 16,
    # tw = ln 2 doubles the width (62 x 22.5); objectness logit 2, class 0 logit 1.
    raw[1][0, 2, 3, 1] = torch.tensor([0.0, 0.0, math.log(2), 0.0, 2.0, 1.0, -20.0])
    # anchors 2 (29.5 x 59.5) and 0 (15 x 30.5) of that cell decode to the same box: class 1 with
    # objectness 0.5 x sigmoid(3), and a weaker class 0 box (0.5 x 0.5)
    raw[1][0, 2, 3, 2] = torch.tensor([0.0, 0.0, math.log(62 / 29.5), math.log(22.5 / 59.5), 0.0, -20.0, 3.0])
    raw[1][0, 2, 3, 0] = torch.tensor([0.0, 0.0, math.log(62 / 15), math.log(22.5 / 30.5), 0.0, 0.0, -20.0])
    (det,) = head.detect(raw, [(224, 224)], score_thresh=0.01, nms_thresh=0.45, topk_candidates=400,
                         detections_per_img=100)
    score0 = (torch.sigmoid(torch.tensor(2.0)) * torch.sigmoid(torch.tensor(1.0))).item()  # 0.644
    score1 = 0.5 * torch.sigmoid(torch.tensor(3.0)).item()  # 0.476
    # class 1's box survives beside class 0's (NMS per class); class 0's weaker duplicate (0.25) is suppressed
    assert det["labels"].tolist() == [0, 1]
    assert det["scores"].tolist() == pytest.approx([score0, score1], rel=1e-5)
    box0 = det["boxes"][det["labels"] == 0][0]
    assert box0.tolist() == pytest.approx([56 - 31, 40 - 11.25, 56 + 31, 40 + 11.25], abs=1e-4)


def test_eval_output_format_and_frame():
    for o in eval_detections("yolov3"):
        assert o["scores"].min() > 0.01  # the score threshold


def test_it_learns_a_fixed_batch():
    history = fixed_batch_history("yolov3", steps=30, lr=3e-3)
    first, last = history[0], history[-1]
    assert sum(last.values()) < 0.3 * sum(first.values())
    assert last["classification"] < 0.5 * first["classification"]
    assert last["bbox_regression"] < 0.7 * first["bbox_regression"]


def test_baseline_slots_are_bce_and_yolos_box_loss():
    model = tiny_model("yolov3")
    assert type(current_slot(model, "cls_loss")) is SigmoidBCELoss
    assert type(current_slot(model, "box_loss")) is YOLOv3BoxLoss


@pytest.mark.parametrize("trick", ["giou", "ciou", "label_smoothing", "mixup", "mosaic", "dropout", "group_norm"])
def test_loss_tricks_act_on_yolov3(trick):
    really_on(trick, model="yolov3")


def gluoncv_label_smooth(class_targets: torch.Tensor, num_class: int) -> torch.Tensor:
    """GluonCV's YOLOV3TargetMerger.hybrid_forward, label_smooth branch, step by step (-1: ignored)."""
    smooth_weight = min(1.0 / num_class, 1.0 / 40)
    t = torch.where(class_targets > 0.5, class_targets - smooth_weight, class_targets)
    keep = (t < -0.5) | (t > 0.5)
    return torch.where(keep, t, torch.full_like(t, smooth_weight))


@pytest.mark.parametrize("k, positive, negative", [(5, 0.975, 0.025), (80, 1 - 1 / 80, 1 / 80)])
def test_label_smoothing_default_on_yolov3_is_gluoncvs_rule(k, positive, negative):
    from ablate.models.losses import smooth_binary_targets
    from ablate.testing import build_trick

    model = build_trick("label_smoothing", "yolov3").on_model(tiny_model("yolov3", num_classes=k))
    loss = current_slot(model, "cls_loss")
    assert isinstance(loss, SigmoidBCELoss)
    one_hot = torch.zeros(1, k)
    one_hot[0, 2] = 1
    soft = smooth_binary_targets(one_hot, loss.label_smoothing)
    expected = torch.full((1, k), negative)
    expected[0, 2] = positive
    assert torch.allclose(soft, expected, atol=1e-7)  # the old epsilon 0.1 gave 0.95 / 0.05
    assert torch.allclose(soft, gluoncv_label_smooth(one_hot, k), atol=1e-7)
    # the loss on the smoothed targets, by hand: BCE(z, y) = softplus(z) - y z over the K classes
    logits = torch.zeros(1, k)
    logits[0, 2], logits[0, 0] = 2.0, -1.0
    by_hand = (math.log1p(math.exp(2.0)) - positive * 2.0 + math.log1p(math.exp(-1.0)) + negative * 1.0
               + (k - 2) * math.log(2.0))
    assert loss(logits, one_hot, torch.ones(1), torch.ones(1)).item() == pytest.approx(by_hand, rel=1e-6)


def test_label_smoothing_epsilon_errors_name_the_key():
    from ablate.testing import build_trick
    from ablate.tricks import TrickConfigError

    with pytest.raises(TrickConfigError, match="tricks.label_smoothing.epsilon.fcos='gluoncv'"):
        build_trick("label_smoothing", "fcos", **{"epsilon.fcos": "gluoncv"})  # a YOLOv3 rule only
    with pytest.raises(TrickConfigError, match="tricks.label_smoothing.epsilon.yolov3=1.5"):
        build_trick("label_smoothing", "yolov3", **{"epsilon.yolov3": 1.5})
    trick = build_trick("label_smoothing", "yolov3", epsilon={"fcos": 0.1})
    with pytest.raises(TrickConfigError, match="add tricks.label_smoothing.epsilon.yolov3"):
        trick.on_model(tiny_model("yolov3"))


def test_label_smoothing_smooths_yolos_bce_as_gluoncv():
    from ablate.testing import build_trick

    model = build_trick("label_smoothing", "yolov3", epsilon=0.05).on_model(tiny_model("yolov3"))
    loss = current_slot(model, "cls_loss")
    assert isinstance(loss, SigmoidBCELoss) and loss.label_smoothing == 0.05
    # GluonCV (K = 20 VOC classes): the positive's class 1 - 1/40, the others 1/40; the loss is lowest there.
    logits = torch.zeros(1, 20, requires_grad=True)
    targets = torch.zeros(1, 20)
    targets[0, 3] = 1
    optimizer = torch.optim.SGD([logits], lr=50.0)
    for _ in range(300):
        optimizer.zero_grad()
        loss(logits, targets, torch.ones(1), torch.ones(1)).backward()
        optimizer.step()
    p = logits.sigmoid()[0]
    assert p[3].item() == pytest.approx(1 - 1 / 40, abs=1e-4) and p[0].item() == pytest.approx(1 / 40, abs=1e-4)


def test_head_tricks_reach_the_detection_blocks():
    from torch import nn

    from ablate.testing import build_trick

    dropout = build_trick("dropout", "yolov3").on_model(tiny_model("yolov3"))
    assert all(isinstance(block[-1], nn.Dropout2d) for block in dropout.head.blocks)
    gn = build_trick("group_norm", "yolov3").on_model(tiny_model("yolov3"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.head.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.head.blocks.modules()) == 3 * (5 + 1)


def test_bce_and_focal_do_not_fit_yolov3():
    from ablate.tricks import TrickConflictError
    from ablate.testing import build_trick

    for name in ("bce", "focal"):
        with pytest.raises(TrickConflictError, match="does not fit model=yolov3"):
            build_trick(name, "yolov3")
    with pytest.raises(TrickConflictError, match="and yolov3 is yolo: YOLOv3 already trains its class and "
                                                 "objectness scores with sigmoid BCE"):
        build_trick("bce", "yolov3")


def test_ablate_train_yolov3_smoke(tmp_path, shapes_cache):
    d = {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}
    result = ablate("train", "model=yolov3", "profile=smoke", *paths(d), env={"ABLATE_CACHE": str(shapes_cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = list(Path(d["runs"]).rglob("result.json"))
    data = json.loads(record.read_text())
    assert data["status"] == "ok"
    assert data["config"]["model"]["name"] == "yolov3" and data["params"] > 0


def test_yolov3_trains_with_gluoncvs_train_yolo3_recipe_by_default():
    """GluonCV's train_yolo3.py defaults: SGD lr 0.001, momentum 0.9, wd 5e-4 (gluon.Trainer 'sgd'),
    step decay x0.1 at epochs 160 and 180 of 200, no gradient clipping; other detectors keep
    conf/train/default.yaml, and model/recipe=none gives YOLOv3 that too."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ablate.testing import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base=None):
        yolo = compose("config", ["model=yolov3"])
        shared = compose("config", ["model=yolov3", "model/recipe=none"])
        fcos = compose("config", ["model=fcos"])
        overridden = compose("config", ["model=yolov3", "train.optimizer.lr=0.01"])
    optimizer = instantiate(yolo.train.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.001, 0.9, 0.0005)
    assert yolo.train.schedule.name == "step" and list(yolo.train.schedule.milestones) == [0.8, 0.9]
    assert yolo.train.schedule.gamma == 0.1 and yolo.train.clip_grad_norm is None
    assert shared.train == fcos.train and fcos.train.optimizer._target_ == "torch.optim.AdamW"
    assert overridden.train.optimizer.lr == 0.01  # the command line still wins
