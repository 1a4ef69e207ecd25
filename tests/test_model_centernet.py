"""CenterNet (ablate/models/centernet.py) against hand-computed cases of the authors' formulas
(github xingyizhou/CenterNet: utils/image.py gaussian_radius and draw_umich_gaussian, models/losses.py
_neg_loss and RegL1Loss, models/decode.py ctdet_decode), an overfit run and one smoke training."""
import math

import pytest
import torch

from ablate.models.centernet import (centernet_targets, draw_gaussian, gaussian_radius, local_peaks,
                                     penalty_reduced_focal_loss)
from ablate.models.losses import IoUTypeLoss, L1BoxLoss, LossSlotError, ScaledLoss, current_slot, set_slot
from ablate.testing import eval_detections, fixed_batch_history, build_trick, tiny_batch, tiny_model
from ablate.train import apply_model_tricks
from ablate.tricks import TrickConflictError
from conftest import smoke_record

pytestmark = pytest.mark.usefixtures("single_thread")

# A box of 20 x 10 output units (stride 4) whose centre (12.25, 9.25) falls inside cell (12, 9).
BOX = [9.0, 17.0, 89.0, 57.0]


def test_gaussian_radius_is_the_authors_three_case_formula_with_its_quirks():
    # h = 10, w = 20, min_overlap 0.7, by hand: each root (b + sqrt(b^2 - 4ac)) / 2, whatever a is
    r1 = (30 + math.sqrt(30 ** 2 - 4 * 1 * (200 * 0.3 / 1.7))) / 2             # 28.77
    r2 = (60 + math.sqrt(60 ** 2 - 4 * 4 * 60)) / 2                            # 55.69 (a = 4, not divided by 8)
    r3 = (-42 + math.sqrt(42 ** 2 - 4 * 2.8 * -60)) / 2                        # 3.6779 (a = 2.8, not divided by 5.6)
    assert gaussian_radius(10, 20, 0.7) == pytest.approx(min(r1, r2, r3), rel=1e-12)
    assert gaussian_radius(10, 20, 0.7) == pytest.approx(3.677925, rel=1e-6)
    # the textbook root of case 3, divided by 2a, would be 1.3136: the quirk is kept
    assert gaussian_radius(10, 20, 0.7) != pytest.approx((-42 + math.sqrt(2436)) / 5.6)


def test_heatmap_peak_and_neighbours_follow_draw_umich_gaussian():
    t = centernet_targets([{"boxes": torch.tensor([BOX]), "labels": torch.tensor([1])}], [(96, 96)], (24, 24),
                          num_classes=2, stride=4, min_overlap=0.7)
    heat = t.heatmap[0, 1]
    assert t.heatmap[0, 0].abs().sum() == 0
    # radius int(3.678) = 3, diameter 7, sigma 7/6: exp(-d^2 / (2 * 49/36)) = exp(-18 d^2 / 49)
    assert heat[9, 12] == 1 and heat.eq(1).sum() == 1
    assert heat[9, 13] == pytest.approx(math.exp(-18 / 49), rel=1e-6)            # 0.6926
    assert heat[10, 13] == pytest.approx(math.exp(-36 / 49), rel=1e-6)           # 0.4797
    assert heat[9, 15] == pytest.approx(math.exp(-162 / 49), rel=1e-6)           # 0.0367, the radius
    assert heat[9, 16] == 0 and heat[13, 12] == 0 and (heat > 0).sum() == 49     # nothing beyond it
    assert t.sizes.tolist() == [[20.0, 10.0]] and t.offsets.tolist() == [[0.25, 0.25]]
    assert (t.batch.tolist(), t.ys.tolist(), t.xs.tolist()) == ([0], [9], [12])


def test_two_objects_of_one_class_take_the_element_wise_max_and_boxes_clip_to_the_map():
    heat = torch.zeros(10, 10)
    draw_gaussian(heat, 3, 3, 1)
    draw_gaussian(heat, 4, 3, 1)  # sigma 0.5: a neighbour is exp(-2) = 0.135
    assert heat[3, 3] == 1 and heat[3, 4] == 1 and heat[3, 5] == pytest.approx(math.exp(-2))
    assert heat[2, 3] == pytest.approx(math.exp(-2)) and heat[2, 2] == pytest.approx(math.exp(-4))
    # ctdet.py clips boxes to [0, out - 1] (out = 96 // 4 = 24): x2 = 96 px becomes 23 output units
    t = centernet_targets([{"boxes": torch.tensor([[60.0, 0.0, 96.0, 40.0]]), "labels": torch.tensor([0])}],
                          [(96, 96)], (24, 24), num_classes=1, stride=4, min_overlap=0.7)
    assert t.sizes.tolist() == [[8.0, 10.0]] and t.xs.tolist() == [19] and t.offsets.tolist() == [[0.0, 0.0]]


def test_focal_loss_on_a_tiny_hand_case():
    # Y = [1, 0.5, 0] at p = 0.5: the peak (1-p)^2 log p, the others (1-Y)^4 p^2 log(1-p); / 1 peak
    heat = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 1, 3)
    logits = torch.zeros(1, 1, 1, 3)
    ln2 = math.log(2)
    loss = penalty_reduced_focal_loss(logits, heat, torch.ones_like(heat), 2.0, 4.0)
    assert loss == pytest.approx(0.25 * ln2 * (1 + 1 / 16 + 1), rel=1e-6)
    # a peak's term is multiplied by its box's weight; the normaliser stays the count of peaks
    weighted = penalty_reduced_focal_loss(logits, heat, torch.tensor([0.5, 1, 1]).view(1, 1, 1, 3), 2.0, 4.0)
    assert weighted == pytest.approx(0.25 * ln2 * (0.5 + 1 / 16 + 1), rel=1e-6)
    # no peak: the sum is not divided (_neg_loss's num_pos == 0 branch)
    none = penalty_reduced_focal_loss(torch.zeros(1, 1, 1, 2), torch.tensor([0.5, 0.0]).view(1, 1, 1, 2), torch.ones(1, 1, 1, 2), 2.0, 4.0)
    assert none == pytest.approx(0.25 * ln2 * (1 / 16 + 1), rel=1e-6)
    # p is clamped to [1e-4, 1 - 1e-4] (the authors' _sigmoid): a sure peak still costs (1e-4)^2 ln(1/(1-1e-4))
    sure = penalty_reduced_focal_loss(torch.full((1, 1, 1, 1), 50.0), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1), 2, 4)
    assert sure == pytest.approx(-(1e-4) ** 2 * math.log(1 - 1e-4), rel=1e-3)


def perfect_outputs(model, targets, size=96):
    """Head outputs that are the targets themselves: heatmap logits of the target heatmap, sizes and
    offsets at the peaks."""
    t = centernet_targets(targets, [(size, size)] * len(targets), (size // 4, size // 4), 2, 4, 0.7)
    heat = t.heatmap.clamp(1e-6, 1 - 1e-6)
    out = {"heatmap": torch.log(heat / (1 - heat)), "size": torch.zeros(len(targets), 2, size // 4, size // 4),
           "offset": torch.zeros(len(targets), 2, size // 4, size // 4)}
    out["size"][t.batch, :, t.ys, t.xs] = t.sizes
    out["offset"][t.batch, :, t.ys, t.xs] = t.offsets
    return out, t


def test_size_and_offset_losses_follow_reg_l1_and_per_box_weights():
    model = tiny_model("centernet")
    images, targets = tiny_batch("centernet")
    out, t = perfect_outputs(model, targets)
    losses = model.head.compute_loss(out, targets, [(96, 96), (80, 96)])
    assert losses["size"] == 0 and losses["offset"] == 0
    # RegL1Loss: sum |d| over both coordinates / (2N + 1e-4), times wh_weight 0.1
    out["size"][t.batch, :, t.ys, t.xs] = t.sizes + torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    losses = model.head.compute_loss(out, targets, [(96, 96), (80, 96)])
    assert losses["size"] == pytest.approx(0.1 * 7 / (4 + 1e-4), rel=1e-6)
    # MixUp's per-box weights multiply each object's terms; the normaliser stays 2N
    targets[0]["weights"] = torch.tensor([0.5, 1.0])
    losses = model.head.compute_loss(out, targets, [(96, 96), (80, 96)])
    assert losses["size"] == pytest.approx(0.1 * (0.5 * 3 + 4) / (4 + 1e-4), rel=1e-6)
    # ... and the heatmap term of its peak (the first box, label 0, centre (30, 36) px: cell (7, 9))
    weighted = centernet_targets(targets, [(96, 96), (80, 96)], (24, 24), 2, 4, 0.7)
    assert weighted.peak_weights[0, 0, 9, 7] == 0.5 and weighted.peak_weights.ne(1).sum() == 1


def test_decoding_keeps_local_peaks_and_recovers_the_boxes():
    model = tiny_model("centernet")
    _, targets = tiny_batch("centernet")
    out, t = perfect_outputs(model, targets[:1])
    dets = model.head.decode(out, [(96, 96)])[0]
    # the two peaks first, each exactly its box
    top = dets["boxes"][:2][dets["labels"][:2].argsort()]
    assert torch.allclose(top, torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 40.0, 80.0, 70.0]]), atol=1e-4)
    assert dets["scores"][:2].gt(0.99).all() and dets["scores"][2:].lt(0.5).all()
    # 3x3 max-pool NMS: a neighbour of a peak is never kept, however high
    heat = torch.zeros(1, 1, 5, 5)
    heat[0, 0, 2, 2], heat[0, 0, 2, 3], heat[0, 0, 0, 0] = 0.9, 0.8, 0.3
    kept = local_peaks(heat, 3)
    assert kept[0, 0, 2, 2] == 0.9 and kept[0, 0, 2, 3] == 0 and kept[0, 0, 0, 0] == 0.3


def test_eval_output_format():
    for o in eval_detections("centernet"):
        assert len(o["scores"]) == 100  # top K of the peaks, sorted
        assert (o["scores"][:-1] >= o["scores"][1:]).all()


def test_overfits_a_tiny_fixed_batch():
    history = [sum(h.values()) for h in fixed_batch_history("centernet", steps=25, lr=5e-3)]
    assert history[-1] < 0.4 * history[0], history


def test_size_loss_is_the_box_loss_slot_and_tricks_that_cannot_act_here_do_not_fit():
    model = tiny_model("centernet")
    assert isinstance(current_slot(model, "box_loss"), ScaledLoss)  # L1 x 0.1, the default
    set_slot(model, "box_loss", ScaledLoss(L1BoxLoss(), 0.3))
    _, targets = tiny_batch("centernet")
    out, t = perfect_outputs(model, targets)
    out["size"][t.batch, :, t.ys, t.xs] = t.sizes + 1.0
    assert model.head.compute_loss(out, targets, [(96, 96), (80, 96)])["size"] == pytest.approx(0.3 * 4 / (4 + 1e-4))
    # IoU-type losses (boxes form) and classification-loss tricks: not applicable, with the reason
    with pytest.raises(LossSlotError, match="takes only deltas losses, not boxes: its size head is unconstrained"):
        set_slot(model, "box_loss", IoUTypeLoss("giou", 1e-6))
    for name, why in [("giou", "takes only deltas"), ("label_smoothing", "no 'cls_loss' slot"),
                      ("pan", "finest pyramid level")]:
        with pytest.raises(TrickConflictError, match=f"trick '{name}' does not fit .*{why}"):
            apply_model_tricks(tiny_model("centernet"), [build_trick(name, "centernet")], "centernet")


def test_smoke_training_ends_ok(tmp_path, shapes_cache):
    record = smoke_record("centernet", tmp_path, shapes_cache)
    assert record["status"] == "ok" and set(record["metrics"]) >= {"mAP", "AP50"}
