"""PISA (Prime Sample Attention) against hand-computed cases of mmdetection's isr_p, carl_loss and
ScoreHLRSampler, and mmcv's nms_match; the slots it fills train on RetinaNet and Faster R-CNN."""
import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from ablate.models.losses import CrossEntropyLoss, PositiveSamples, RoIOutputs, current_slot
from ablate.testing import build_trick, really_on, tiny_batch, tiny_model
from ablate.tricks import TrickConflictError
from ablate.tricks.loss.pisa import (PrimeSampleWeighting, ScoreHLRSampler, carl_weights, isr_p_weights, nms_match)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_nms_match_groups_each_kept_box_with_the_boxes_it_suppresses_in_score_order():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 1, 10, 11], [21, 20, 31, 30.0]])
    scores = torch.tensor([0.9, 0.5, 0.8, 0.7, 0.3])
    groups = [g.tolist() for g in nms_match(boxes, scores, 0.5)]
    assert groups == [[0, 3, 1], [2, 4]]
    # IoU exactly at the threshold suppresses (mmcv: ovr >= iou_threshold): [0,0,10,10] and [0,0,10,5] have IoU 0.5
    two = [g.tolist() for g in nms_match(torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5.0]]), torch.tensor([0.9, 0.8]), 0.5)]
    assert two == [[0, 1]]


def test_isr_p_ranks_by_local_rank_first_then_iou_within_each_class():
    # class 1: object 0 has positives of IoU 0.9 and 0.8, object 1 one of IoU 0.7; class 2: one positive.
    # IoU-HLR of class 1: 0.9 (rank 0 of its object), 0.7 (rank 0 of its object), 0.8 (rank 1), so
    # by IoU alone 0.8 would come second. max_l = 3: weights 3/3, 2/3, 1/3, mapped by w^2.
    ious = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels, gt_ids = torch.tensor([1, 1, 1, 2]), torch.tensor([0, 0, 1, 2])
    w = isr_p_weights(ious, labels, gt_ids, torch.ones(4), k=2.0, bias=0.0)
    assert w.tolist() == pytest.approx([1.0, (1 / 3) ** 2, (2 / 3) ** 2, 1.0])
    # bias shifts the mapping, and the weights so far multiply in before it
    w = isr_p_weights(ious, labels, gt_ids, torch.tensor([1.0, 1.0, 0.5, 1.0]), k=1.0, bias=0.5)
    assert w.tolist() == pytest.approx([1.0, 0.5 + 0.5 / 3, 0.5 + 0.5 * (2 / 3 * 0.5), 1.0])


def test_carl_weights_by_hand_sum_to_the_positives_and_keep_the_gradient():
    scores = torch.tensor([0.5, 1.0], requires_grad=True)
    w = carl_weights(scores, k=1.0, bias=0.2)  # 0.6 and 1.0, scaled by 2 / 1.6
    assert w.tolist() == pytest.approx([0.75, 1.25])
    (w * torch.tensor([1.0, 0.0])).sum().backward()
    assert scores.grad.abs().sum() > 0


def positives(ious_like_boxes, labels, gt_ids, cls_losses, box_losses, logits):
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(len(labels), 4)
    return PositiveSamples(
        logits=logits, labels=labels, sigmoid=False, gt_ids=gt_ids, pred_boxes=ious_like_boxes,
        target_boxes=target, cls_weights=torch.ones(len(labels)), box_weights=torch.ones(len(labels)),
        cls_loss=lambda w: (w * cls_losses).sum(), box_loss=lambda w: (w * box_losses).sum() / 8)


def test_isr_p_keeps_the_positives_classification_loss_and_carl_adds_a_score_weighted_box_term():
    # predicted boxes of IoU 0.9, 0.8, 0.7 with [0, 0, 10, 10]: one class, objects 0, 0, 1
    pred = torch.tensor([[0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 7.0]])
    labels, gt_ids = torch.tensor([1, 1, 1]), torch.tensor([0, 0, 1])
    cls_losses, box_losses = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.4, 0.2, 0.8])
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.0 + 1e-9, 1.0], [0.5, 0.5]])).requires_grad_()
    weights, extra = PrimeSampleWeighting(2.0, 0.0, 1.0, 0.2)(
        positives(pred, labels, gt_ids, cls_losses, box_losses, logits))
    raw = torch.tensor([1.0, (1 / 3) ** 2, (2 / 3) ** 2])  # HLR: 0.9, 0.7, 0.8
    expected = raw * 6.0 / float((raw * cls_losses).sum())
    assert weights.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert float((weights * cls_losses).sum()) == pytest.approx(6.0)
    # CARL: scores of class 1 are 0.5, 1.0, 0.5: (0.2 + 0.8 s) = 0.6, 1.0, 0.6, scaled to sum 3
    carl = torch.tensor([0.6, 1.0, 0.6]) * 3 / 2.2
    assert float(extra["loss_carl"].detach()) == pytest.approx(float((carl * box_losses).sum() / 8), rel=1e-5)
    extra["loss_carl"].backward()
    assert logits.grad.abs().sum() > 0  # the classifier learns from CARL


def roi_outputs(probs, proposals):
    n, c = probs.shape
    return RoIOutputs([probs.log()], [torch.zeros(n, c * 4)], [proposals], BoxCoder((10.0, 10.0, 5.0, 5.0)),
                      CrossEntropyLoss())


def test_score_hlr_takes_the_top_of_each_nms_group_before_the_next_in_the_group():
    # negatives A, B, C valid (best foreground score 0.9, 0.8, 0.6), D and E below score_thr 0.05.
    # A and B overlap (one NMS group, B second), C alone: importance A 3.9, C 3.6, B 2.8.
    probs = torch.tensor([[0.05, 0.9, 0.05], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1], [0.98, 0.01, 0.01], [0.96, 0.02, 0.02]])
    proposals = torch.tensor([[0, 0, 10, 10], [0, 1, 10, 11], [50, 50, 60, 60], [0, 30, 5, 35], [30, 0, 35, 5.0]])
    sampler = ScoreHLRSampler(8, 0.25, k=0.5, bias=0.0, score_thr=0.05, iou_thr=0.5)
    outputs = roi_outputs(probs, proposals)
    chosen, weights = sampler.sample_negatives(probs.log(), torch.zeros(5, 12), proposals, 2, outputs)
    assert chosen.tolist() == [0, 2]  # C before B, though B scores higher: B is second in A's group
    raw = torch.tensor([1.0, 2 / 3]).sqrt()  # (U - rank) / U with U = max(2, 3), then ^0.5
    ce = -probs[[0, 2], 0].log()
    assert weights.tolist() == pytest.approx((raw * ce.sum() / (raw * ce).sum()).tolist(), rel=1e-5)
    # more wanted than valid: all valid by HLR, the rest at random from the invalid, at the smallest weight
    torch.manual_seed(0)
    chosen, weights = sampler.sample_negatives(probs.log(), torch.zeros(5, 12), proposals, 4, outputs)
    assert chosen[:3].tolist() == [0, 2, 1] and int(chosen[3]) in (3, 4)
    raw = torch.tensor([4 / 4, 3 / 4, 2 / 4, 2 / 4]).sqrt()  # U = max(4, 3)
    ce = -probs[chosen, 0].log()
    assert weights.tolist() == pytest.approx((raw * ce.sum() / (raw * ce).sum()).tolist(), rel=1e-5)


def test_score_hlr_with_no_valid_negative_draws_at_random_with_weight_one():
    probs = torch.tensor([[0.98, 0.01, 0.01]] * 4)
    proposals = torch.tensor([[0, 0, 10, 10.0]] * 4)
    chosen, weights = ScoreHLRSampler(8, 0.25, 0.5, 0.0, 0.05, 0.5).sample_negatives(
        probs.log(), torch.zeros(4, 12), proposals, 3, roi_outputs(probs, proposals))
    assert len(set(chosen.tolist())) == 3 and weights.tolist() == [1.0, 1.0, 1.0]


def test_score_hlr_keeps_the_baselines_quotas_and_weighs_only_the_negatives():
    labels = torch.tensor([1, 2, 1, 0, 0, 0, 0, 0, 0, -1])
    probs = torch.softmax(torch.randn(10, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    proposals = torch.tensor([[i * 20.0, 0.0, i * 20.0 + 10, 10.0] for i in range(10)])
    (pos,), (neg,), (w,) = ScoreHLRSampler(6, 0.25, 0.5, 0.0, 0.05, 0.5)([labels], roi_outputs(probs, proposals))
    assert int(pos.sum()) == 1 and int(neg.sum()) == 5  # int(6 * 0.25) positives, the rest negatives
    assert (labels[pos.bool()] >= 1).all() and (labels[neg.bool()] == 0).all()
    assert (w[~neg.bool()] == 1).all() and not torch.allclose(w[neg.bool()], torch.ones(5))


@pytest.mark.parametrize("model", ["retinanet", "faster_rcnn"])
def test_pisa_trains_with_a_carl_term_and_its_slots_on_the_detectors_it_fits(model):
    spy = really_on("pisa", model=model)
    assert spy.slot_calls["sample_weighting"] == 3
    if model == "faster_rcnn":
        assert spy.slot_calls["roi_sampler"] == 3
        assert isinstance(current_slot(tiny_model(model, tricks=[build_trick("pisa", model)]), "roi_sampler"),
                          ScoreHLRSampler)
    net = tiny_model(model, tricks=[build_trick("pisa", model)])
    images, targets = tiny_batch(model)
    net.train()
    out = net(images, targets)
    assert "loss_carl" in out and math.isfinite(float(out["loss_carl"])) and float(out["loss_carl"]) > 0


def test_pisa_does_not_fit_fcos():
    with pytest.raises(TrickConflictError, match="pisa.*fcos"):
        build_trick("pisa", "fcos")


@pytest.mark.parametrize("model", ["retinanet", "faster_rcnn"])
def test_an_identity_sample_weighting_leaves_the_baselines_losses(model):
    """The slot's path through the detector changes nothing by itself: weights given back as they
    came and no extra term give the baseline's losses."""
    from ablate.models.losses import set_slot

    def identity(samples):
        return samples.cls_weights, {}

    base, with_slot = tiny_model(model), tiny_model(model)
    set_slot(with_slot, "sample_weighting", identity)
    images, targets = tiny_batch(model)
    base.train()
    with_slot.train()
    torch.manual_seed(0)
    a = base(images, targets)
    torch.manual_seed(0)
    b = with_slot(images, targets)
    assert a.keys() == b.keys()
    for k in a:
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-5), k
