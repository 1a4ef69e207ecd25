"""SSD (model=ssd, ablate/models/ssd.py): torchvision's matching, the hard negative mining and both
losses on a hand-computed case, the default boxes' sizes, the loss tricks that fit it, an overfit
run, the eval output and one smoke run through the `ablate` command."""
import json
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from ablate.models.ssd import SizedDefaultBoxes, hard_negatives
from ablate.testing import eval_detections, fixed_batch_history, build_trick, model_config, tiny_batch, tiny_model, trick_config
from ablate.tricks import TrickConflictError, build_tricks
from conftest import ablate, paths

pytestmark = pytest.mark.usefixtures("single_thread")


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def test_matching_is_torchvisions_iou_threshold_plus_each_ground_truths_best_prior():
    model = tiny_model("ssd")
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 50.0, 50.0]])
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # IoU 1 with gt 0: positive
                           [0.0, 0.0, 10.0, 20.0],    # IoU 100/200 = 0.5 with gt 0: positive (>= 0.5)
                           [0.0, 0.0, 20.0, 20.0],    # IoU 0.25: negative
                           [30.0, 30.0, 60.0, 60.0],  # IoU 400/900 = 0.44 with gt 1, but its best prior: positive
                           [20.0, 20.0, 60.0, 60.0],  # IoU 400/1600 = 0.25 with gt 1: negative
                           [70.0, 70.0, 90.0, 90.0]])  # no overlap: negative
    matched = model.proposal_matcher(box_iou(gt, priors))
    assert matched.tolist() == [0, 0, -1, 1, -1, -1]


def test_hard_negative_mining_keeps_three_per_positive_per_image_the_largest_losses():
    ce = torch.tensor([[0.1, 5.0, 0.2, 4.0, 3.0, 2.0, 1.0, 6.0],
                       [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]])
    labels = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 2],   # 1 positive -> the 3 largest negative losses
                           [0, 0, 0, 0, 0, 0, 0, 0]])  # no positive -> no negative, however large
    kept = hard_negatives(ce, labels, 3.0)
    assert kept[0].tolist() == [False, True, False, True, True, False, False, False]  # 5.0, 4.0, 3.0
    assert not kept[1].any()
    labels[0, 0] = 1  # 2 positives: the 6 negatives left, all of them
    assert hard_negatives(ce, labels, 3.0)[0].tolist() == [False, True, True, True, True, True, True, False]
    labels[0, 1] = 1  # 3 positives would want 9 negatives: the 5 left are kept
    assert hard_negatives(ce, labels, 3.0)[0].tolist() == [False, False, True, True, True, True, True, False]
    one = torch.tensor([[0.0, 2.0, 0.5, 3.0, 1.0]]), torch.tensor([[1, 0, 0, 0, 0]])
    assert hard_negatives(*one, 3.0).tolist() == [[False, True, False, True, True]]


def hand_case(model):
    """Two images, one class (C = 2: background, class 1). Image 0: six priors, one ground truth
    [1, 1, 11, 11] matched to prior 0 only (IoU 81/119); background logit 0 and class logit z per
    prior, so a negative's cross-entropy is softplus(z): z = 2, -1, 3, 0, 1 for priors 1-5; prior 0's
    class logit 1 (cross-entropy softplus(-1)), its box deltas 0. Image 1: no ground truth, one prior
    with a huge loss (z = 10) that must not be mined."""
    priors0 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 0.0, 50.0, 10.0], [60.0, 0.0, 70.0, 10.0],
                            [0.0, 40.0, 10.0, 50.0], [40.0, 40.0, 50.0, 50.0], [60.0, 60.0, 70.0, 70.0]])
    z = torch.tensor([[1.0, 2.0, -1.0, 3.0, 0.0, 1.0], [10.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    logits = torch.stack([torch.zeros_like(z), z], dim=-1)  # [2, 6, 2]
    regression = torch.zeros(2, 6, 4)
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 11.0, 11.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    anchors = [priors0, priors0]
    matched = [model.proposal_matcher(box_iou(targets[0]["boxes"], priors0)), torch.full((6,), -1)]
    assert matched[0].tolist() == [0, -1, -1, -1, -1, -1]
    model.head.level_sizes = [6]  # one feature map of 6 priors (the head's forward records this)
    return targets, {"cls_logits": logits, "bbox_regression": regression}, anchors, matched


# Hand values: positive prior 0 plus the 3 hardest negatives of image 0 (priors 3, 1, 5: z = 3, 2, 1),
# none of image 1; N = 1 positive. Box: the ground truth [1, 1, 11, 11] on prior [0, 0, 10, 10] encodes
# (weights 10, 10, 5, 5) to dx = dy = 10 * 1/10 = 1, dw = dh = 0: smooth L1 (beta 1) of 1 is 0.5, twice.
CLS_POS = softplus(-1.0)
CLS_NEG = softplus(3.0) + softplus(2.0) + softplus(1.0)
BOX = 1.0


def test_losses_on_the_hand_case_torchvisions_and_ours_with_per_box_weights():
    model = tiny_model("ssd", num_classes=1)
    targets, outputs, anchors, matched = hand_case(model)
    reference = model.compute_loss(targets, outputs, anchors, matched)  # torchvision's own (no slot, no weights)
    assert reference["classification"].item() == pytest.approx(CLS_POS + CLS_NEG, rel=1e-6)
    assert reference["bbox_regression"].item() == pytest.approx(BOX, rel=1e-6)
    targets[0]["weights"], targets[1]["weights"] = torch.tensor([0.25]), torch.ones(0)
    ours = model.compute_loss(targets, outputs, anchors, matched)  # the slots' path: the positive weighs 0.25
    assert ours["classification"].item() == pytest.approx(0.25 * CLS_POS + CLS_NEG, rel=1e-6)
    assert ours["bbox_regression"].item() == pytest.approx(0.25 * BOX, rel=1e-6)
    targets[0]["weights"] = torch.tensor([1.0])
    same = model.compute_loss(targets, outputs, anchors, matched)
    assert all(same[k].item() == pytest.approx(reference[k].item(), rel=1e-6) for k in reference)


def test_ssd_losses_equal_torchvisions_on_a_real_batch():
    model = tiny_model("ssd")
    model.train()
    images, targets = tiny_batch("ssd")
    reference = model(images, targets)
    for t in targets:
        t["weights"] = torch.ones(len(t["boxes"]))
    ours = model(images, targets)
    assert reference["classification"] > 0 and reference["bbox_regression"] > 0
    for key in reference:
        assert ours[key].item() == pytest.approx(reference[key].item(), rel=1e-5)


def test_label_smoothing_fits_ssd_in_its_softmax_form_over_the_mined_priors():
    eps = 0.1
    model = tiny_model("ssd", num_classes=1, tricks=[build_trick("label_smoothing", "ssd", epsilon=eps)])
    targets, outputs, anchors, matched = hand_case(model)
    got = model.compute_loss(targets, outputs, anchors, matched)["classification"].item()

    def smoothed(z: float, label: int) -> float:  # (1 - eps) CE + eps * mean over the 2 classes of -log p
        log_p = [-softplus(z), -softplus(-z)]  # log p(background), log p(class 1) for logits (0, z)
        return -(1 - eps) * log_p[label] - eps / 2 * sum(log_p)
    expected = smoothed(1.0, 1) + smoothed(3.0, 0) + smoothed(2.0, 0) + smoothed(1.0, 0)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(CLS_POS + CLS_NEG, rel=1e-3)


def test_giou_fits_ssd_on_the_decoded_boxes_with_the_diou_authors_ssd_weight():
    model = tiny_model("ssd", num_classes=1, tricks=[build_trick("giou", "ssd")])
    targets, outputs, anchors, matched = hand_case(model)
    got = model.compute_loss(targets, outputs, anchors, matched)["bbox_regression"].item()
    # deltas 0 decode to the prior [0, 0, 10, 10]; ground truth [1, 1, 11, 11]: overlap 81, union 119,
    # enclosing box 11 x 11 = 121
    giou = 81 / 119 - (121 - 119) / 121
    assert got == pytest.approx(5.0 * (1 - giou), rel=1e-5)


@pytest.mark.parametrize("name", ["focal", "bce", "ghm", "ghm_r", "balanced_l1", "ohem", "iou_balanced", "pisa"])
def test_loss_tricks_that_do_not_fit_ssd_stop_before_training_naming_why(name):
    with pytest.raises(TrickConflictError, match=rf"trick '{name}' does not fit model=ssd: .* and ssd is ssd"):
        build_tricks(trick_config(name), model_config("ssd"))


def test_default_boxes_are_torchvisions_on_a_square_batch_and_sized_to_the_image_size():
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    scales = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    maps = [torch.zeros(1, 1, s, s) for s in (38, 19, 10, 5, 3, 1)]
    square = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
    ours = SizedDefaultBoxes(ratios, 300, 0.2, 0.9, scales)(square, maps)[0]
    reference = DefaultBoxGenerator(ratios, scales=scales)(square, maps)[0]
    assert ours.shape == (38 * 38 * 4 + (19 * 19 + 100 + 25) * 6 + 9 * 4 + 4, 4)
    torch.testing.assert_close(ours, reference)
    # first cell of the first map: centre 0.5/38 * 300, sizes 0.07 * 300 = 21 px, sqrt(0.07 * 0.15) * 300,
    # then 21 sqrt(2) x 21 / sqrt(2) and its transpose
    c = 0.5 / 38 * 300
    wh = [(21.0, 21.0), (300 * math.sqrt(0.07 * 0.15),) * 2, (21 * math.sqrt(2), 21 / math.sqrt(2)),
          (21 / math.sqrt(2), 21 * math.sqrt(2))]
    expected = torch.tensor([[c - w / 2, c - h / 2, c + w / 2, c + h / 2] for w, h in wh])
    torch.testing.assert_close(ours[:4], expected)
    # a 300 x 200 batch (landscape images): boxes keep their pixel sizes (torchvision's would be 21 x 14)
    wide = ImageList(torch.zeros(1, 3, 200, 300), [(200, 300)])
    boxes = SizedDefaultBoxes(ratios, 300, 0.2, 0.9, scales)(wide, [torch.zeros(1, 1, 25, 38)])[0]
    torch.testing.assert_close(boxes[0, 2:] - boxes[0, :2], torch.tensor([21.0, 21.0]))
    torch.testing.assert_close(boxes[0, :2] + 10.5, torch.tensor([0.5 / 38 * 300, 0.5 / 25 * 200]))


def test_the_papers_scale_rule_when_scales_is_null():
    boxes = SizedDefaultBoxes([[2], [2, 3], [2, 3], [2, 3], [2], [2]], 300, 0.2, 0.9, None)
    assert boxes.scales == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.0])


def test_overfits_a_fixed_batch():
    history = [sum(h.values()) for h in fixed_batch_history("ssd", steps=15, lr=3e-3)]
    assert history[-1] < 0.25 * history[0], history


def test_eval_output_is_torchvision_detections_with_labels_of_the_classes_never_the_background():
    eval_detections("ssd")


def test_smoke_training_run_ends_ok(tmp_path, shapes_cache):
    d = {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}
    res = ablate("train", "model=ssd", "profile=smoke", *paths(d), env={"ABLATE_CACHE": str(shapes_cache)})
    assert res.returncode == 0, res.stderr[-3000:]
    (record,) = (d["runs"]).rglob("result.json")
    assert json.loads(record.read_text())["status"] == "ok"


@pytest.mark.parametrize("name", ["pan", "bifpn", "balanced_fpn", "asff", "sfam", "group_norm", "dropout"])
def test_network_tricks_made_for_an_fpn_or_conv_towers_are_not_applicable_on_ssd_saying_why(name):
    trick = build_trick(name, "ssd")
    with pytest.raises(TrickConflictError, match=rf"trick '{name}'.* not applicable"):
        tiny_model("ssd", tricks=[trick])


def test_an_activation_swap_reaches_ssds_extra_layers_as_its_neck():
    model = tiny_model("ssd", tricks=[build_trick("leaky_relu", "ssd")])
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.backbone.modules())
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in model.backbone.extras.modules()) == 6
