"""The loss tricks (iou_loss, giou, diou, ciou, balanced_l1; bce, focal) against hand-computed values of
their formulas, their per-detector loss weights, and a few training steps on each detector."""
import math

import pytest
import torch

from ablate.models.losses import (BalancedL1Loss, GIoUBoxLoss, IoUTypeLoss, ScaledLoss, balanced_l1, current_slot,
                                  iou_type_loss)
from ablate.testing import build_trick, really_on, tiny_model
from ablate.tricks import TrickConflictError

pytestmark = pytest.mark.usefixtures("single_thread")

# pred [0, 0, 2, 2] and target [1, 1, 3, 3]: intersection 1, union 7, enclosing box [0, 0, 3, 3]
PRED, TARGET = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])


def loss(kind, pred=PRED, target=TARGET):
    return float(iou_type_loss(pred, target, kind, 1e-6)[0])


def test_iou_type_losses_by_hand():
    assert loss("iou") == pytest.approx(-math.log(1 / 7), rel=1e-5)
    # GIoU = 1/7 - (9 - 7)/9
    assert loss("giou") == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-5)
    # DIoU: centres (1, 1) and (2, 2), rho^2 = 2; diagonal^2 = 18
    assert loss("diou") == pytest.approx(1 - (1 / 7 - 2 / 18), rel=1e-5)
    # same aspect ratio: v = 0, CIoU = DIoU
    assert loss("ciou") == pytest.approx(loss("diou"), rel=1e-6)


def test_ciou_aspect_term_by_hand_and_its_iou_gate():
    # pred [0, 0, 2, 1.5] in target [0, 0, 2, 2]: IoU 0.75, centres (1, 0.75) and (1, 1): rho^2/c^2 = 0.0625/8
    pred, target = torch.tensor([[0.0, 0.0, 2.0, 1.5]]), torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    v = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(2 / 1.5)) ** 2
    alpha = v / (1 - 0.75 + v)
    assert loss("ciou", pred, target) == pytest.approx(1 - (0.75 - 0.0625 / 8 - alpha * v), rel=1e-5)
    assert loss("ciou", pred, target) > loss("diou", pred, target)
    # IoU 0.5 is not above 0.5: alpha 0, the aspect term is off (mmdetection v3, the TCYB paper)
    half = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    assert loss("ciou", half, target) == pytest.approx(loss("diou", half, target), rel=1e-6)


def test_ciou_alpha_carries_no_gradient_as_torchvisions():
    """Above IoU 0.5 the value and gradient are torchvision's complete_box_iou_loss's (which also
    holds alpha constant); with alpha differentiated (mmdetection v2's v^2 / (1 - IoU + v)) the
    gradient would differ."""
    from torchvision.ops import complete_box_iou_loss

    target = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    ours = torch.tensor([[0.1, 0.0, 2.0, 1.5]], dtype=torch.float64, requires_grad=True)
    ref = ours.detach().clone().requires_grad_(True)
    iou_type_loss(ours, target, "ciou", 1e-12).sum().backward()
    complete_box_iou_loss(ref, target, eps=1e-12).sum().backward()
    assert torch.allclose(ours.grad, ref.grad, atol=1e-6)
    v2 = ours.detach().clone().requires_grad_(True)
    w1, h1 = v2[0, 2] - v2[0, 0], v2[0, 3] - v2[0, 1]
    iou = (w1 * h1) / 4.0  # pred lies inside the target
    v = 4 / math.pi ** 2 * (math.atan(1.0) - torch.atan(w1 / h1)) ** 2
    rho2 = ((2.0 - (v2[0, 0] + v2[0, 2])) ** 2 + (2.0 - (v2[0, 1] + v2[0, 3])) ** 2) / 4
    (1 - (iou - rho2 / 8.0 - v ** 2 / (1 - iou + v))).backward()
    assert (v2.grad - ref.grad).abs().max() > 1e-4


def test_balanced_l1_by_hand_and_continuous_at_beta():
    b = math.e ** 3 - 1  # gamma / alpha = 3
    x = torch.tensor([0.5, 2.0, 1.0])
    got = balanced_l1(x, alpha=0.5, gamma=1.5, beta=1.0).tolist()
    assert got[0] == pytest.approx(0.5 / b * (b * 0.5 + 1) * math.log(b * 0.5 + 1) - 0.25, rel=1e-5)
    assert got[1] == pytest.approx(3.0 + 1.5 / b - 0.5, rel=1e-6)
    inner = 0.5 / b * (b + 1) * math.log(b + 1) - 0.5
    assert got[2] == pytest.approx(inner, rel=1e-5) and inner == pytest.approx(1.5 + 1.5 / b - 0.5, rel=1e-9)


@pytest.mark.parametrize("name,model,kind,weight", [
    ("iou_loss", "fcos", "iou", 1.0), ("giou", "faster_rcnn", "giou", 10.0), ("diou", "retinanet", "diou", 2.0),
    ("ciou", "faster_rcnn", "ciou", 12.0)])
def test_each_iou_trick_installs_its_loss_with_the_detectors_weight(name, model, kind, weight):
    net = tiny_model(model, tricks=[build_trick(name, model)])
    installed = current_slot(net, "box_loss")
    assert isinstance(installed, ScaledLoss) and installed.factor == weight and installed.space == "boxes"
    assert isinstance(installed.inner, IoUTypeLoss) and installed.inner.kind == kind


def test_balanced_l1_takes_each_detectors_beta():
    for model, beta in (("faster_rcnn", 1.0), ("retinanet", 0.11)):
        installed = current_slot(tiny_model(model, tricks=[build_trick("balanced_l1", model)]), "box_loss")
        assert isinstance(installed.inner, BalancedL1Loss) and installed.inner.beta == beta
        assert installed.space == "deltas" and installed.factor == 1.0


def test_giou_on_fcos_is_not_applicable_not_a_copy_of_the_baseline():
    assert isinstance(current_slot(tiny_model("fcos"), "box_loss"), GIoUBoxLoss)
    trick = build_trick("giou", "fcos")
    with pytest.raises(TrickConflictError, match="'giou' is fcos's own box loss .* not applicable"):
        tiny_model("fcos", tricks=[trick])


def test_a_detector_without_a_weight_is_named():
    trick = build_trick("giou", "faster_rcnn", loss_weight={"fcos": 1.0})
    with pytest.raises(ValueError, match=r"tricks.giou.loss_weight has no value for faster_rcnn .* add "
                                         r"tricks.giou.loss_weight.faster_rcnn="):
        tiny_model("faster_rcnn", tricks=[trick])


@pytest.mark.parametrize("name,model", [("iou_loss", "fcos"), ("diou", "fcos"), ("ciou", "fcos"),
                                        ("giou", "retinanet"), ("ciou", "retinanet"), ("balanced_l1", "retinanet"),
                                        ("iou_loss", "faster_rcnn"), ("giou", "faster_rcnn"),
                                        ("balanced_l1", "faster_rcnn")])
def test_box_loss_trick_trains_on_the_detectors_it_fits(name, model):
    spy = really_on(name, model=model)
    assert spy.slot_calls["box_loss"] == 3



# ---------------------------------------------------------------- classification losses: bce and focal

def test_sigmoid_bce_by_hand():
    from ablate.models.losses import SigmoidBCELoss

    logits, targets = torch.tensor([[0.0, 2.0], [-1.0, 0.5]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    weights, normalizer = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])
    first = -math.log(0.5) - math.log(1 - 1 / (1 + math.exp(-2.0)))
    second = -math.log(1 - 1 / (1 + math.exp(1.0))) - math.log(1 - 1 / (1 + math.exp(-0.5)))
    assert float(SigmoidBCELoss()(logits, targets, weights, normalizer)) == pytest.approx(first + second, rel=1e-6)


def test_softmax_focal_by_hand_and_its_cross_entropy_limit():
    from ablate.models.losses import SoftmaxFocalLoss

    logits, labels, w = torch.zeros(2, 3), torch.tensor([1, 0]), torch.ones(2)
    # p_t = 1/3 for both: fg 0.25 (2/3)^2 ln 3, bg 0.75 (2/3)^2 ln 3, over 1 foreground RoI
    expected = (0.25 + 0.75) * (2 / 3) ** 2 * math.log(3)
    assert float(SoftmaxFocalLoss(2.0, 0.25)(logits, labels, w)) == pytest.approx(expected, rel=1e-6)
    # gamma 0, alpha 0.5: half the summed cross-entropy over the foreground count
    logits = torch.tensor([[0.2, 1.0, -0.3], [1.5, 0.1, 0.0], [0.0, 0.0, 2.0]])
    labels = torch.tensor([1, 0, 2])
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert float(SoftmaxFocalLoss(0.0, 0.5)(logits, labels, torch.ones(3))) == pytest.approx(0.5 * float(ce) / 2)


@pytest.mark.parametrize("name,model", [("bce", "fcos"), ("bce", "retinanet"), ("focal", "faster_rcnn")])
def test_cls_loss_trick_trains_on_the_detectors_it_fits(name, model):
    spy = really_on(name, model=model)
    assert spy.slot_calls["cls_loss"] == 3


# ---------------------------------------------------------------- ohem

def test_ohem_takes_the_hardest_positives_and_negatives_within_the_quotas():
    from ablate.tricks.loss.ohem import OHEMSampler

    labels = torch.tensor([1, 2, 1, 0, 0, 0, 0, 0])
    losses = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.8, 0.3, 0.7, 0.1])
    (pos,), (neg,) = OHEMSampler(4, 0.5).hardest([labels], [losses])
    assert torch.where(pos)[0].tolist() == [1, 2] and torch.where(neg)[0].tolist() == [4, 6]
    # few positives: the negatives fill the rest of the batch
    (pos,), (neg,) = OHEMSampler(4, 0.5).hardest([torch.tensor([1, 0, 0, 0, 0])],
                                                   [torch.tensor([0.5, 0.1, 0.4, 0.3, 0.2])])
    assert torch.where(pos)[0].tolist() == [0] and sorted(torch.where(neg)[0].tolist()) == [2, 3, 4]


def test_ohem_ranks_the_proposals_by_the_current_heads_loss_in_a_training_forward(monkeypatch):
    from ablate.tricks.loss.ohem import OHEMSampler

    model = tiny_model("faster_rcnn", tricks=[build_trick("ohem", "faster_rcnn")])
    seen = []
    real = OHEMSampler.hardest

    def spy(self, labels, losses):
        seen.append((torch.cat(labels).clone(), torch.cat(losses).clone()))
        return real(self, labels, losses)

    monkeypatch.setattr(OHEMSampler, "hardest", spy)
    from ablate.testing import tiny_batch

    images, targets = tiny_batch("faster_rcnn")
    model.train()
    model(images, targets)
    (labels, losses), = seen
    assert len(losses) == len(labels) > 64 and (losses >= 0).all() and losses.std() > 0


def test_ohem_changes_training():
    really_on("ohem", model="faster_rcnn")
