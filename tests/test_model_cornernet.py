"""CornerNet (ablate/models/cornernet.py) against hand-computed cases of the authors' definitions
(github princeton-vl/CornerNet: _cpools top/left/bottom/right pools, sample/coco.py targets with
sample/utils.py gaussian_radius, kp_utils.py _ae_loss, _regr_loss and _decode, external/nms.pyx
soft_nms), an overfit run and one smoke training."""
import math

import pytest
import torch

from ablate.models.centernet import gaussian_radius
from ablate.models.cornernet import (associative_embedding_loss, corner_gaussian_radius, corner_pool, corner_targets,
                                     gaussian_soft_nms)
from ablate.models.losses import IoUTypeLoss, L1BoxLoss, LossSlotError, ScaledLoss, SmoothL1BoxLoss, current_slot, set_slot
from ablate.testing import build_trick, eval_detections, fixed_batch_history, tiny_batch, tiny_model
from ablate.train import apply_model_tricks
from ablate.tricks import TrickConflictError
from conftest import smoke_training_record

pytestmark = pytest.mark.usefixtures("single_thread")

MAP = torch.tensor([[1.0, 5.0, 2.0],
                    [4.0, 0.0, 3.0],
                    [2.0, 6.0, 1.0]]).view(1, 1, 3, 3)


@pytest.mark.parametrize("direction, expected", [
    # top: each cell the max of itself and every cell below it (the authors' TopPool)
    ("top", [[4, 6, 3], [4, 6, 3], [2, 6, 1]]),
    # left: the max of itself and every cell to its right
    ("left", [[5, 5, 2], [4, 3, 3], [6, 6, 1]]),
    # bottom: the max of itself and every cell above it
    ("bottom", [[1, 5, 2], [4, 5, 3], [4, 6, 3]]),
    # right: the max of itself and every cell to its left
    ("right", [[1, 5, 5], [4, 4, 4], [2, 6, 6]]),
])
def test_corner_pooling_on_a_hand_made_map(direction, expected):
    assert corner_pool(MAP, direction)[0, 0].tolist() == expected


def test_corner_pooling_passes_the_gradient_to_the_max():
    x = MAP.clone().requires_grad_(True)
    corner_pool(x, "top")[0, 0, 0, 0].backward()  # the max of column 0 is 4, at row 1
    assert x.grad[0, 0].nonzero().tolist() == [[1, 0]]


def test_corner_radius_is_cornernets_own_formula():
    # h = 10, w = 20, min_overlap 0.3, each root divided by 2a, the smaller root in cases 1 and 2
    r1 = (30 - math.sqrt(30 ** 2 - 4 * 200 * 0.7 / 1.3)) / 2                   # 4.17
    r2 = (60 - math.sqrt(60 ** 2 - 4 * 4 * 140)) / 8                           # 2.890
    r3 = (-18 + math.sqrt(18 ** 2 + 4 * 1.2 * 140)) / 2.4                      # 5.65
    assert corner_gaussian_radius(10, 20, 0.3) == pytest.approx(min(r1, r2, r3), rel=1e-12)
    assert corner_gaussian_radius(10, 20, 0.3) == pytest.approx(2.8902, abs=1e-4)
    # CenterNet's copy of the formula gives another radius (6.78) for the same box
    assert gaussian_radius(10, 20, 0.3) == pytest.approx(6.7797, abs=1e-4)


def test_corner_targets_of_a_box():
    # 96 x 96 image, stride 4: corners (2.25, 4.25) and (22.25, 14.25) in output units, a box of 20 x 10
    t = corner_targets([{"boxes": torch.tensor([[9.0, 17.0, 89.0, 57.0]]), "labels": torch.tensor([1])}],
                       [(96, 96)], (24, 24), num_classes=2, stride=4, min_overlap=0.3)
    tl, br = t.heatmaps["tl"][0, 1], t.heatmaps["br"][0, 1]
    assert t.heatmaps["tl"][0, 0].abs().sum() == 0 and t.heatmaps["br"][0, 0].abs().sum() == 0
    assert tl[4, 2] == 1 and tl.eq(1).sum() == 1 and br[14, 22] == 1 and br.eq(1).sum() == 1
    # radius int(2.89) = 2, diameter 5, sigma 5/6: exp(-d^2 / (2 * 25/36)) = exp(-18 d^2 / 25)
    assert tl[4, 3] == pytest.approx(math.exp(-18 / 25), rel=1e-6)
    assert tl[5, 3] == pytest.approx(math.exp(-36 / 25), rel=1e-6)
    assert tl[4, 4] == pytest.approx(math.exp(-72 / 25), rel=1e-6) and tl[4, 5] == 0
    assert (tl > 0).sum() == 25
    assert (br > 0).sum() == 20  # its column 24 lies beyond the map (24 cells): cut
    assert (t.xs["tl"].tolist(), t.ys["tl"].tolist(), t.xs["br"].tolist(), t.ys["br"].tolist()) == ([2], [4], [22], [14])
    assert t.offsets["tl"].tolist() == [[0.25, 0.25]] and t.offsets["br"].tolist() == [[0.25, 0.25]]


def test_boxes_are_clipped_to_the_image_in_pixels_and_empty_ones_dropped():
    # sample/coco.py _clip_detections: x to [0, 95]; 95 / 4 = 23.75, cell 23, offset 0.75
    boxes = torch.tensor([[60.0, -8.0, 100.0, 40.0], [50.0, 50.0, 50.0, 60.0]])
    t = corner_targets([{"boxes": boxes, "labels": torch.tensor([0, 0])}], [(96, 96)], (24, 24), 1, 4, 0.3)
    assert len(t.batch) == 1 and t.xs["br"].tolist() == [23] and t.offsets["br"].tolist() == [[0.75, 0.0]]
    assert t.ys["tl"].tolist() == [0] and t.offsets["tl"].tolist() == [[0.0, 0.0]]


def test_pull_and_push_on_a_hand_case_with_per_box_weights():
    # image 0: two objects, embeddings (tl, br) = (0, 0.4) and (1, 0.6): means 0.2 and 0.8
    # image 1: one object (0.1, 0.3): mean 0.2
    tl, br = torch.tensor([0.0, 1.0, 0.1]), torch.tensor([0.4, 0.6, 0.3])
    batch = torch.tensor([0, 0, 1])
    pull, push = associative_embedding_loss(tl, br, batch, torch.ones(3), 2, margin=1.0)
    # pull: image 0 (2 x 0.2^2 + 2 x 0.2^2) / 2 = 0.08, image 1 2 x 0.1^2 / 1 = 0.02; summed over images
    assert pull == pytest.approx(0.1, rel=1e-6)
    # push: image 0, both ordered pairs max(0, 1 - 0.6) / (2 x 1) = 0.4; image 1 (one object): 0
    assert push == pytest.approx(0.4, rel=1e-6)
    # a box's weight multiplies its pull term, a pair's push term the product of the two weights
    pull, push = associative_embedding_loss(tl, br, batch, torch.tensor([0.5, 1.0, 1.0]), 2, margin=1.0)
    assert pull == pytest.approx((0.5 * 0.08 + 0.08) / 2 + 0.02, rel=1e-6)
    assert push == pytest.approx(0.5 * 0.4, rel=1e-6)
    # objects further apart than the margin are not pushed; no object at all: zero, with a graph
    assert associative_embedding_loss(tl, tl + 0.0, batch, torch.ones(3), 2, margin=0.5)[1] == 0
    empty = torch.zeros(0, requires_grad=True)
    pull, push = associative_embedding_loss(empty, empty, torch.zeros(0, dtype=torch.long), empty, 2, 1.0)
    assert pull == 0 and push == 0 and pull.requires_grad


def perfect_outputs(targets, size=96, embeddings=None):
    """Head outputs that are the targets: heatmap logits of the target heatmaps, offsets at the
    corners; embeddings (tl, br per object) at the corners when given."""
    t = corner_targets(targets, [(size, size)] * len(targets), (size // 4, size // 4), 2, 4, 0.3)
    out = {}
    for c in ("tl", "br"):
        heat = t.heatmaps[c].clamp(1e-6, 1 - 1e-6)
        out[f"{c}_heatmap"] = torch.log(heat / (1 - heat))
        out[f"{c}_offset"] = torch.zeros(len(targets), 2, size // 4, size // 4)
        out[f"{c}_offset"][t.batch, :, t.ys[c], t.xs[c]] = t.offsets[c]
        out[f"{c}_embedding"] = torch.zeros(len(targets), 1, size // 4, size // 4)
        if embeddings is not None:
            out[f"{c}_embedding"][t.batch, 0, t.ys[c], t.xs[c]] = torch.tensor(embeddings[c])
    return out, t


def test_losses_of_the_head_follow_ae_loss_regr_loss_and_per_box_weights():
    model = tiny_model("cornernet")
    _, targets = tiny_batch("cornernet")
    sizes = [(96, 96), (80, 96)]
    out, t = perfect_outputs(targets, embeddings={"tl": [0.0, 1.0], "br": [0.4, 0.6]})
    losses = model.head.compute_loss(out, targets, sizes)
    assert set(losses) == {"heatmap", "pull", "push", "offset"} and losses["offset"] == 0
    # the weights 0.1 of models/CornerNet.py on the hand case above (image 0)
    assert losses["pull"] == pytest.approx(0.1 * 0.08, rel=1e-5) and losses["push"] == pytest.approx(0.1 * 0.4, rel=1e-5)
    # _regr_loss: SmoothL1 (beta 1) summed over the coordinates, per corner / (N + 1e-4), the two corners summed
    out["tl_offset"][t.batch[0], :, t.ys["tl"][0], t.xs["tl"][0]] += torch.tensor([2.0, 0.0])
    out["br_offset"][t.batch[1], :, t.ys["br"][1], t.xs["br"][1]] += torch.tensor([0.5, 0.0])
    assert model.head.compute_loss(out, targets, sizes)["offset"] == pytest.approx((1.5 + 0.125) / (2 + 1e-4), rel=1e-6)
    # MixUp's per-box weights: the first object's offset term, its pull term and its heatmap peaks
    targets[0]["weights"] = torch.tensor([0.5, 1.0])
    losses = model.head.compute_loss(out, targets, sizes)
    assert losses["offset"] == pytest.approx((0.5 * 1.5 + 0.125) / (2 + 1e-4), rel=1e-6)
    assert losses["pull"] == pytest.approx(0.1 * (0.5 * 0.08 + 0.08) / 2, rel=1e-5)
    weighted = corner_targets(targets, sizes, (24, 24), 2, 4, 0.3)
    # the first box (10, 12, 50, 60), label 0: corners in cells (2, 3) and (12, 15)
    assert weighted.peak_weights["tl"][0, 0, 3, 2] == 0.5 and weighted.peak_weights["br"][0, 0, 15, 12] == 0.5
    assert weighted.peak_weights["tl"].ne(1).sum() == 1 and weighted.peak_weights["br"].ne(1).sum() == 1


def hand_made_outputs():
    """One 96 x 96 image (24 x 24 cells), 2 classes: object A of class 0 with corners at cells (2, 4) and
    (22, 14), object B of class 1 at (5, 5) and (10, 20); a class-0 bottom-right corner whose embedding
    is 0.6 from A's and one left of and above A's top-left, with A's embedding."""
    out = {}
    for c in ("tl", "br"):
        out[f"{c}_heatmap"] = torch.full((1, 2, 24, 24), -10.0)
        out[f"{c}_offset"] = torch.zeros(1, 2, 24, 24)
        # far from every other embedding: the background's corners never pair
        out[f"{c}_embedding"] = torch.full((1, 1, 24, 24), 100.0 if c == "tl" else -100.0)
    corners = [("tl", 0, 2, 4, 0.0), ("br", 0, 22, 14, 0.4), ("tl", 1, 5, 5, 3.0), ("br", 1, 10, 20, 3.2),
               ("br", 0, 20, 20, 0.6), ("br", 0, 1, 1, 0.0)]
    for c, label, x, y, e in corners:
        out[f"{c}_heatmap"][0, label, y, x] = 10.0
        out[f"{c}_embedding"][0, 0, y, x] = e
    out["tl_offset"][0, :, 4, 2] = torch.tensor([0.5, 0.25])
    return out


def test_decoding_pairs_corners_of_one_class_with_close_embeddings_only():
    model = tiny_model("cornernet")
    dets = model.head.decode(hand_made_outputs(), [(96, 96)])[0]
    # A (with its top-left offset) and B; never A's top-left with the far embedding, the corner above
    # it, or B's corner (another class)
    assert dets["labels"].tolist() == [0, 1] or dets["labels"].tolist() == [1, 0]
    boxes = dets["boxes"][dets["labels"].argsort()]
    assert torch.allclose(boxes, torch.tensor([[10.0, 17.0, 88.0, 56.0], [20.0, 20.0, 40.0, 80.0]]))
    assert dets["scores"].gt(0.999).all()
    # within ae_threshold (0.5) the far corner pairs with A's top-left too
    model.head.ae_threshold = 0.65
    labels = model.head.decode(hand_made_outputs(), [(96, 96)])[0]["labels"]
    assert labels.tolist().count(0) == 2


def test_soft_nms_decays_overlapping_boxes_of_one_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0], [50, 50, 60, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.0005])
    keep, decayed = gaussian_soft_nms(boxes, scores, torch.tensor([0, 0, 1, 0]), sigma=0.5, score_thresh=0.001)
    # IoU 0.5 with the kept box of its class: 0.8 exp(-0.25 / 0.5); another class untouched; below 0.001 dropped
    assert keep.tolist() == [0, 2, 1]
    assert decayed.tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-0.5)])


def test_eval_output_format():
    for o in eval_detections("cornernet"):
        assert (o["scores"][:-1] >= o["scores"][1:]).all()


def test_overfits_a_tiny_fixed_batch():
    history = [sum(h.values()) for h in fixed_batch_history("cornernet", steps=25, lr=5e-3)]
    assert history[-1] < 0.2 * history[0], history


def test_offset_loss_is_the_box_loss_slot_and_tricks_that_cannot_act_here_do_not_fit():
    model = tiny_model("cornernet")
    default = current_slot(model, "box_loss")
    assert isinstance(default, ScaledLoss) and isinstance(default.inner, SmoothL1BoxLoss) and default.inner.beta == 1
    set_slot(model, "box_loss", ScaledLoss(L1BoxLoss(), 0.3))
    _, targets = tiny_batch("cornernet")
    out, t = perfect_outputs(targets)
    out["tl_offset"][t.batch, :, t.ys["tl"], t.xs["tl"]] += 1.0
    assert model.head.compute_loss(out, targets, [(96, 96), (80, 96)])["offset"] == pytest.approx(0.3 * 4 / (2 + 1e-4))
    with pytest.raises(LossSlotError, match="takes only deltas losses, not boxes: it regresses no box"):
        set_slot(model, "box_loss", IoUTypeLoss("giou", 1e-6))
    for name, why in [("giou", "takes only deltas"), ("iou_loss", "takes only deltas"),
                      ("label_smoothing", "no 'cls_loss' slot"), ("pan", "finest pyramid level"),
                      ("dropout", "no classification and regression conv towers")]:
        with pytest.raises(TrickConflictError, match=f"does not fit .*{why}"):
            apply_model_tricks(tiny_model("cornernet"), [build_trick(name, "cornernet")], "cornernet")


def test_smoke_training_ends_ok(tmp_path, shapes_cache):
    record = smoke_training_record("cornernet", tmp_path, shapes_cache)
    assert record["status"] == "ok" and set(record["metrics"]) >= {"mAP", "AP50"}
