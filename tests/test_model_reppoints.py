"""RepPoints (ablate/models/reppoints.py): the moment transform, the point layout the deformable convs
sample at, both assigners and the losses against hand-computed cases (with MixUp's per-box weights),
gradient_mul, decoding, an overfit run, the tricks that fit it and those that do not, and one
`ablate train model=reppoints profile=smoke`."""
import math

import pytest
import torch
from torchvision.ops import deform_conv2d

from ablate.models.losses import (FocalLoss, IoUTypeLoss, ScaledLoss, SigmoidBCELoss, SmoothL1BoxLoss,
                                  current_slot)
from ablate.models.reppoints import (IGNORED, NEGATIVE, max_iou_assign, moment_boxes, point_assign)
from ablate.testing import build_trick, eval_detections, fixed_batch_history, really_on, tiny_model
from ablate.tricks import TrickConflictError
from conftest import smoke_training_record

pytestmark = pytest.mark.usefixtures("single_thread")

# The unbiased standard deviation of (-1, 0, 1) taken three times (a 3 x 3 grid's columns): sqrt(6 / 8).
GRID_STD = math.sqrt(6 / 8)
# A 64 x 64 image on P3-P7: 8x8, 4x4, 2x2, 1x1, 1x1 locations.
MAP_SIDES = (8, 4, 2, 1, 1)
LOCATIONS = sum(s * s for s in MAP_SIDES)  # 86
LN2 = math.log(2)


def grid_points(centre_x, centre_y, half_w, half_h):
    """A 3 x 3 grid of points (x, y) whose moment box (transfer 0) is centre -/+ half."""
    r = torch.tensor([-1.0, 0.0, 1.0])
    dy, dx = torch.meshgrid(r * half_h / GRID_STD, r * half_w / GRID_STD, indexing="ij")
    return torch.stack([dx.flatten() + centre_x, dy.flatten() + centre_y], dim=1)


def test_moment_transform_is_mean_plus_minus_std_times_exp_transfer():
    xs = torch.tensor([1.0, 2, 3] * 3)
    ys = torch.tensor([10.0] * 3 + [20.0] * 3 + [30.0] * 3)
    points = torch.stack([xs, ys], dim=1)
    transfer = torch.zeros(2, requires_grad=True)
    box = moment_boxes(points, transfer, 0.01)
    # mean (2, 20); unbiased std sqrt(6/8) and 10 sqrt(6/8)
    assert box.tolist() == pytest.approx([2 - GRID_STD, 20 - 10 * GRID_STD, 2 + GRID_STD, 20 + 10 * GRID_STD])
    # exp(transfer) scales the half-sides, (w, h) in that order
    wide = moment_boxes(points, torch.tensor([math.log(2), 0.0]), 0.01)
    assert wide.tolist() == pytest.approx([2 - 2 * GRID_STD, 20 - 10 * GRID_STD, 2 + 2 * GRID_STD, 20 + 10 * GRID_STD])
    # transfer's gradient is moment_mul of the plain one: d(x2 - x1)/d t_w = 2 std x 0.01
    (box[2] - box[0]).backward()
    assert transfer.grad.tolist() == pytest.approx([2 * GRID_STD * 0.01, 0.0])


def test_offsets_are_dy_dx_pairs_in_stride_units_and_the_deformable_convs_sample_there():
    head = tiny_model("reppoints").head
    maps = [torch.zeros(1, 18, s, s) for s in MAP_SIDES]
    maps[0][0, 0, 1, 2], maps[0][0, 1, 1, 2] = 1.0, 2.0  # point 0 at row 1, col 2 of P3: dy 1, dx 2
    points, stride, _ = head.grid(maps)
    sets = head.point_sets(maps, points, stride)
    assert sets[0, 1 * 8 + 2, 0].tolist() == [2 * 8 + 2 * 8, 1 * 8 + 1 * 8]  # (x, y) = (32, 16)
    # the offset the head gives deform_conv2d (points minus the kernel's own grid) reads each tap at
    # location + its point: on f(y, x) = x + 100 y, the first tap of every location at (+1, +2)
    feature = (torch.arange(8.0)[None, :] + 100 * torch.arange(8.0)[:, None]).view(1, 1, 8, 8)
    pts = torch.tensor([1.0, 2.0] * 9).view(1, 18, 1, 1).expand(1, 18, 8, 8)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 0, 0] = 1.0
    out = deform_conv2d(feature, pts - head.kernel_offsets, weight, padding=1)
    assert out[0, 0, 3, 3] == (3 + 2) + 100 * (3 + 1)
    # and the head's own deformable conv (the grid_sample path on CPU) reads the same place
    with torch.no_grad():
        head.cls_dcn.weight.zero_()
        head.cls_dcn.weight[:, 0, 0, 0] = 1.0
        wide = feature.expand(1, head.cls_dcn.in_channels, 8, 8)
        assert head.cls_dcn(wide, pts - head.kernel_offsets)[0, :, 3, 3].tolist() == [out[0, 0, 3, 3].item()] * \
            head.cls_dcn.out_channels


def test_gradient_mul_scales_what_the_classifier_sends_to_the_initial_points():
    grads = []
    for mul in (1.0, 0.1):
        head = tiny_model("reppoints").head
        head.gradient_mul = mul
        cls, _, _ = head.forward_level(torch.randn(1, 64, 6, 6, generator=torch.Generator().manual_seed(0)))
        cls.sum().backward()
        grads.append(head.init_out.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[1], 0.1 * grads[0], rtol=1e-4, atol=1e-12)


def test_point_assigner_takes_the_level_by_scale_and_the_nearest_location():
    head = tiny_model("reppoints").head
    points, _, level = head.grid([torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8)])  # strides 8, 16
    # 40 x 50: (log2(10) + log2(12.5)) / 2 = 3.48 -> P3; centre (30, 37): nearest (32, 40), row 5 col 4
    # 128 x 96: (log2(32) + log2(24)) / 2 = 4.79 -> P4; centre (64, 48) = location row 3 col 4 of P4
    # 5 x 4: (log2(1.25) + log2(1)) / 2 = 0.16 -> 0, clamped to P3; centre (2.5, 3): nearest (0, 0)
    boxes = torch.tensor([[10.0, 12, 50, 62], [0, 0, 128, 96], [0, 1, 5, 5]])
    assigned = point_assign(points, level, boxes, 4.0, 1)
    assert torch.where(assigned == 0)[0].tolist() == [5 * 16 + 4]
    assert torch.where(assigned == 1)[0].tolist() == [256 + 3 * 8 + 4]
    assert torch.where(assigned == 2)[0].tolist() == [0]
    assert (assigned >= 0).sum() == 3
    # two boxes nearest the same location: the nearer keeps it, whichever comes first
    a, b = [20.0, 20, 44, 44], [26.0, 26, 42, 42]  # centres (32, 32) (distance 0) and (34, 34)
    for order in ([a, b], [b, a]):
        got = point_assign(points, level, torch.tensor(order), 4.0, 1)
        owner = order.index(a)
        assert got[4 * 16 + 4] == owner and (got >= 0).sum() == 1
    assert (point_assign(points, level, torch.zeros(0, 4), 4.0, 1) == -1).all()


def test_refine_assignment_is_max_iou_with_low_quality_matches():
    gts = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]])
    boxes = torch.tensor([[0.0, 0, 10, 10],      # IoU 1: positive
                          [0, 0, 10, 5],         # 0.5: positive (>= pos_iou_thr)
                          [0, 0, 10, 4.5],       # 0.45: ignored (between 0.4 and 0.5)
                          [0, 0, 10, 3],         # 0.3: negative
                          [20, 20, 30, 30],      # 0: negative
                          [100, 100, 103, 110]])  # 0.3, but the second box's best: positive (min_pos_iou 0)
    assigned = max_iou_assign(boxes, gts, 0.5, 0.4, 0.0)
    assert assigned.tolist() == [0, 0, IGNORED, NEGATIVE, NEGATIVE, 1]
    # the third box overlaps nothing: it takes no box (mmdetection's >= 0 would take every box of IoU 0)
    assert (max_iou_assign(boxes, gts[:0], 0.5, 0.4, 0.0) == NEGATIVE).all()


def hand_outputs(init_box, refine_box):
    """Head outputs for one 64 x 64 image: zero logits (p = 0.5) and zero offsets everywhere (boxes of
    zero size), but at P3's row 5, col 4 (location (32, 40)) point sets of the given moment boxes."""
    outputs = {"cls": [torch.zeros(1, 2, s, s) for s in MAP_SIDES],
               "pts_init": [torch.zeros(1, 18, s, s) for s in MAP_SIDES],
               "pts_refine": [torch.zeros(1, 18, s, s) for s in MAP_SIDES]}
    for key, (x1, y1, x2, y2) in (("pts_init", init_box), ("pts_refine", refine_box)):
        pts = grid_points((x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2)
        offsets = (pts - torch.tensor([32.0, 40.0])) / 8  # (dx, dy) in stride units
        outputs[key][0][0, :, 5, 4] = offsets.flip(1).flatten()
    return outputs


def test_losses_of_a_hand_case_and_per_box_weights():
    head = tiny_model("reppoints").head
    gt = [10.0, 12.0, 50.0, 62.0]  # P3 by the point assigner, location (32, 40)
    init_box, refine_box = [12.0, 15.0, 52.0, 65.0], [10.0, 12.0, 56.4, 62.0]  # init IoU 1786 / 2214 >= 0.5
    outputs = hand_outputs(init_box, refine_box)
    for weight in (1.0, 0.5):
        target = {"boxes": torch.tensor([gt]), "labels": torch.tensor([1]), "weights": torch.tensor([weight])}
        losses = head.compute_loss(outputs, [target], [(64, 64)])
        # focal at p = 0.5: a negative's class term 0.75 x 0.25 ln 2, the positive's 0.25 x 0.25 ln 2; the
        # positive's row (both classes) times its box's weight; / 1 positive (the refine stage's)
        negatives = (LOCATIONS - 1) * 2 * 0.75 * 0.25 * LN2
        positive_row = (0.25 * 0.25 + 0.75 * 0.25) * LN2
        assert losses["classification"].item() == pytest.approx(negatives + weight * positive_row, rel=1e-5)
        # init: smooth L1 (beta 0.11) of (2, 3, 2, 3) px / 32 (4 x stride 8), x 0.5
        diffs = [2 / 32, 3 / 32, 2 / 32, 3 / 32]
        init = sum(0.5 * d * d / 0.11 for d in diffs)
        assert losses["points_init"].item() == pytest.approx(0.5 * weight * init, rel=1e-4)
        # refine: only x2 is off, by 6.4 px = 0.2 > beta: 0.2 - 0.11 / 2, x 1.0
        assert losses["points_refine"].item() == pytest.approx(weight * (0.2 - 0.055), rel=1e-4)


def test_an_image_without_boxes_has_only_negatives():
    head = tiny_model("reppoints").head
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = head.compute_loss(hand_outputs([0, 0, 8, 8], [0, 0, 8, 8]), [empty], [(64, 64)])
    assert losses["classification"].item() == pytest.approx(LOCATIONS * 2 * 0.75 * 0.25 * LN2, rel=1e-5)
    assert losses["points_init"] == 0 and losses["points_refine"] == 0


def test_iou_losses_take_the_pseudo_boxes_in_pixels():
    head = tiny_model("reppoints").head
    head.box_loss = ScaledLoss(IoUTypeLoss("giou", 1e-6), 2.0)
    target = {"boxes": torch.tensor([[10.0, 12.0, 50.0, 62.0]]), "labels": torch.tensor([1])}
    losses = head.compute_loss(hand_outputs([12.0, 15.0, 52.0, 65.0], [10.0, 12.0, 56.4, 62.0]), [target], [(64, 64)])
    # refine: IoU 40 x 50 / 46.4 x 50 (the enclosing box is the union): 1 - 2000 / 2320, x 2.0
    assert losses["points_refine"].item() == pytest.approx(2.0 * (1 - 2000 / 2320), rel=1e-4)
    # init: IoU 1786 / 2214, enclosing 42 x 53 = 2226, x 2.0 x 0.5
    giou = 1786 / 2214 - (2226 - 2214) / 2226
    assert losses["points_init"].item() == pytest.approx(1.0 * (1 - giou), rel=1e-4)


def test_eval_output_format():
    # an untrained head scores 0.01 (its prior) everywhere, below score_thresh 0.05: all candidates here
    for o in eval_detections("reppoints", score_thresh=0.0):
        assert len(o["scores"]) == 100 and (o["scores"][:-1] >= o["scores"][1:]).all()
    model = tiny_model("reppoints").eval()
    assert model.head.score_thresh == 0.05 and model.head.topk_candidates == 1000


def test_overfits_a_tiny_fixed_batch():
    history = fixed_batch_history("reppoints", steps=40, lr=5e-3)
    first, last = history[0], history[-1]
    assert sum(last.values()) < 0.4 * sum(first.values()), history
    assert last["classification"] < 0.3 * first["classification"] and last["points_init"] < 0.1 * first["points_init"]
    # the refine stage's positives change as the initial boxes grow (IoU >= 0.5 with more locations, on
    # finer levels), so its loss first rises; it then falls
    refine = [h["points_refine"] for h in history]
    assert refine[-1] < 0.8 * max(refine), refine


def test_baseline_slots_are_focal_and_smooth_l1():
    model = tiny_model("reppoints")
    assert type(current_slot(model, "cls_loss")) is FocalLoss
    box = current_slot(model, "box_loss")
    assert type(box) is SmoothL1BoxLoss and box.beta == 0.11


@pytest.mark.parametrize("trick", ["giou", "label_smoothing", "bce", "ghm", "dropout", "nas_fpn"])
def test_tricks_act_on_reppoints(trick):
    really_on(trick, model="reppoints")


def test_loss_tricks_set_reppoints_own_forms():
    giou = build_trick("giou", "reppoints").on_model(tiny_model("reppoints"))
    box = current_slot(giou, "box_loss")
    assert isinstance(box, ScaledLoss) and box.factor == 2.0 and box.inner.kind == "giou"
    bce = build_trick("bce", "reppoints").on_model(tiny_model("reppoints"))
    assert type(current_slot(bce, "cls_loss")) is SigmoidBCELoss
    smooth = build_trick("label_smoothing", "reppoints").on_model(tiny_model("reppoints"))
    assert type(current_slot(smooth, "cls_loss")) is FocalLoss and current_slot(smooth, "cls_loss").label_smoothing == 0.1


def test_group_norm_head_part_changes_nothing_the_towers_have_it():
    head_only = build_trick("group_norm", "reppoints", parts=["head"])
    with pytest.raises(TrickConflictError, match="changes nothing"):
        head_only.on_model(tiny_model("reppoints"))


@pytest.mark.parametrize("trick", ["balanced_l1", "ghm_r", "focal", "ohem", "iou_balanced", "pisa"])
def test_tricks_that_do_not_fit_reppoints(trick):
    with pytest.raises(TrickConflictError, match="does not fit model=reppoints"):
        build_trick(trick, "reppoints")


def test_smoke_training_ends_ok(tmp_path, shapes_cache):
    record = smoke_training_record("reppoints", tmp_path, shapes_cache)
    assert record["status"] == "ok" and set(record["metrics"]) >= {"mAP", "AP50"}
