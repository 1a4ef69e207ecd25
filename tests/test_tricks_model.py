"""Tricks that change the model or its losses, against their papers' definitions on hand-computed
cases, and a few training steps of each on every baseline it fits."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads

from ablate.config import conf_dir
from ablate.testing import (batch_context, loss_history, model_config, really_on, tiny_batch, tiny_model,
                            trick_config)
from ablate.models.losses import CrossEntropyLoss, FocalLoss, smooth_binary_targets
from ablate.tricks import TrickConflictError, build_tricks
from ablate.tricks.network.dropblock import DropBlock, FittedDropBlock2d
from ablate.tricks.loss.ghm import GHMCLoss, GHMRLoss
from ablate.tricks.network.activation import ACTIVATIONS, Activation, ActP6P7, ActTwoMLPHead
from ablate.tricks.data.mixup import MixUp

MODELS = ["fcos", "retinanet", "faster_rcnn"]


pytestmark = pytest.mark.usefixtures("single_thread")


def losses_of(model, images, targets, seed=0):
    torch.manual_seed(seed)  # the RoI sampler draws at random
    model.train()
    return model(images, [dict(t) for t in targets])


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- the loss plumbing

def torchvision_copy(model):
    """The same detector with torchvision's own head classes (no plumbing)."""
    plain = copy.deepcopy(model)
    if hasattr(plain, "roi_heads"):
        plain.roi_heads.__class__ = RoIHeads
    else:
        plain.head.__class__ = FCOSHead if type(plain.head).__name__ == "FCOSLossHead" else RetinaNetHead
    return plain


@pytest.mark.parametrize("name", MODELS)
def test_default_losses_are_exactly_torchvisions_and_unit_box_weights_change_nothing(name):
    model = tiny_model(name)
    plain = torchvision_copy(model)
    images, targets = tiny_batch(name)
    ours, theirs = losses_of(model, images, targets), losses_of(plain, images, targets)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    # target["weights"] of ones sends the classification loss through the plumbing: same values
    images, targets = tiny_batch(name, weights=[1.0, 1.0])
    weighted = losses_of(model, images, targets)
    for k in ours:
        assert weighted[k].item() == pytest.approx(theirs[k].item(), rel=1e-5, abs=1e-7), k


LOSS_KEYS = {"fcos": ["classification", "bbox_regression", "bbox_ctrness"],
             "retinanet": ["classification", "bbox_regression"],
             "faster_rcnn": ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"]}


@pytest.mark.parametrize("name", MODELS)
def test_box_weight_scales_every_loss_term_of_the_samples_matched_to_that_box(name):
    """One box of weight w, every term linear in w: L(w) = L_rest + w * L_box, so L(1/2) is the mean
    of L(0) and L(1), L(1) is torchvision's loss, and L(0) < L(1) for each term (classification,
    box regression, centerness; the RPN's objectness and box terms too), as the Bag of Freebies
    code weights every loss of a mixed box."""
    model = tiny_model(name)
    out = {}
    for w in (0.0, 0.5, 1.0):
        images, targets = tiny_batch(name, weights=[w, 1.0])
        out[w] = losses_of(model, images, targets)
    reference = losses_of(model, *tiny_batch(name))
    assert sorted(out[1.0]) == sorted(LOSS_KEYS[name])
    for key in LOSS_KEYS[name]:
        assert out[1.0][key].item() == pytest.approx(reference[key].item(), rel=1e-5), key
        assert out[0.0][key] < out[1.0][key], key
        assert out[0.5][key].item() == pytest.approx((out[0.0][key] + out[1.0][key]).item() / 2, rel=1e-5), key


def test_mixup_loss_weights_option_keeps_or_drops_the_box_weights():
    images = [torch.ones(3, 8, 8), torch.zeros(3, 8, 8)]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    kept = MixUp(alpha=1.5, prob=1.0, off_last_fraction=0, loss_weights=True).on_batch(images, targets, batch_context(0, 1))[1]
    dropped = MixUp(alpha=1.5, prob=1.0, off_last_fraction=0, loss_weights=False).on_batch(images, targets, batch_context(0, 1))[1]
    assert all("weights" in t and len(t["weights"]) == 2 for t in kept)
    assert all("weights" not in t and len(t["boxes"]) == 2 for t in dropped)
    assert OmegaConf.load(conf_dir() / "tricks" / "mixup.yaml").loss_weights is True


# ---------------------------------------------------------------- label smoothing

def test_sigmoid_label_smoothing_targets_and_focal_loss_by_hand():
    eps = 0.1
    targets = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    smoothed = smooth_binary_targets(targets, eps)
    # foreground row: y (1 - eps) + eps / 2; background row unchanged
    assert smoothed.flatten().tolist() == pytest.approx([0.05, 0.95, 0.05, 0.0, 0.0, 0.0])
    logits = [[0.5, -1.0, 2.0], [0.3, 0.0, -0.7]]
    expected = 0.0
    for row_x, row_t, row_hard in zip(logits, smoothed.tolist(), targets.tolist()):
        for x, t, hard in zip(row_x, row_t, row_hard):
            p = sigmoid(x)
            ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
            alpha_t = 0.25 if hard == 1 else 0.75  # by the hard label
            expected += alpha_t * ce * abs(t - p) ** 2  # |y' - p|^gamma, gamma = 2
    normalizer = torch.tensor([2.0, 2.0])  # e.g. two foreground locations in the batch
    value = FocalLoss(label_smoothing=eps)(torch.tensor(logits), targets, torch.ones(2), normalizer)
    assert value.item() == pytest.approx(expected / 2, rel=1e-6)
    # eps = 0 is the baseline's focal loss, torchvision's
    plain = FocalLoss(0.0)(torch.tensor(logits), targets, torch.ones(2), normalizer)
    from torchvision.ops import sigmoid_focal_loss
    assert plain.item() == pytest.approx(sigmoid_focal_loss(torch.tensor(logits), targets, reduction="sum").item() / 2)
    assert value.item() != pytest.approx(plain.item(), rel=1e-3)  # smoothing changes the loss


def argmin_p(loss_of_logit) -> float:
    """The p = sigmoid(x) in (0, 1) minimising a loss of one logit x (float64, bounded Brent)."""
    from scipy.optimize import minimize_scalar

    def f(p):
        x = torch.tensor([math.log(p / (1 - p))], dtype=torch.float64)
        return float(loss_of_logit(x))
    return minimize_scalar(f, bounds=(1e-6, 1 - 1e-6), method="bounded", options={"xatol": 1e-7}).x


@pytest.mark.parametrize("hard,row", [(1.0, [0.0, 1.0]), (0.0, [0.0, 1.0]), (0.0, [0.0, 0.0])])
def test_one_stage_label_smoothing_loss_is_lowest_at_the_smoothed_target(hard, row):
    """Minimised over p numerically, the one-stage loss with label smoothing has its minimum at the
    smoothed target (0.95 for a class target of 1, 0.05 for a 0 of a foreground location, 0 on the
    background) within 1e-3. The focal factor of the hard label, (1 - p_t)^2, would put it at 0.995
    and 0.005: checked below so this test can tell them apart."""
    eps = 0.1
    targets = torch.tensor([row], dtype=torch.float64)
    column = row.index(hard)
    smoothed = float(smooth_binary_targets(targets, eps)[0, column])
    loss, one = FocalLoss(label_smoothing=eps), torch.ones(1, dtype=torch.float64)

    def of_logit(x):  # the other column's logit held far out: only this column's term varies
        logits = torch.full((1, 2), -30.0 if targets[0, 1 - column] == 0 else 30.0, dtype=torch.float64)
        logits[0, column] = x[0]
        return loss(logits, targets, one, one)

    assert argmin_p(of_logit) == pytest.approx(smoothed, abs=1e-3)
    if 0 < smoothed < 1:  # the hard-label focal factor's minimum lies elsewhere
        t = torch.tensor([smoothed], dtype=torch.float64)

        def hard_focal(x):
            p = torch.sigmoid(x)
            p_t = p * hard + (1 - p) * (1 - hard)
            return (F.binary_cross_entropy_with_logits(x, t, reduction="none") * (1 - p_t) ** 2).sum()
        assert abs(argmin_p(hard_focal) - smoothed) > 0.003


def test_two_stage_label_smoothing_loss_is_lowest_at_the_smoothed_target():
    """Cross-entropy with smoothed targets q = (1 - eps) one_hot + eps / C: gradient descent on the
    logits ends at softmax = q (within 1e-3)."""
    eps, labels = 0.1, torch.tensor([1])
    logits = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")
    loss = CrossEntropyLoss(label_smoothing=eps)

    def closure():
        opt.zero_grad()
        value = loss(logits, labels, torch.ones(1))
        value.backward()
        return value
    opt.step(closure)
    assert logits.softmax(dim=1)[0].tolist() == pytest.approx([eps / 3, 1 - eps + eps / 3, eps / 3], abs=1e-3)


def test_softmax_label_smoothing_cross_entropy_by_hand():
    eps, logits, labels = 0.1, [[2.0, 0.5, -1.0], [0.0, 1.0, 0.2]], [1, 0]
    per_roi = []
    for x, y in zip(logits, labels):
        log_z = math.log(sum(math.exp(v) for v in x))
        q = [(1 - eps) * (k == y) + eps / 3 for k in range(3)]  # q = (1 - eps) one_hot + eps / C
        per_roi.append(-sum(qk * (xk - log_z) for qk, xk in zip(q, x)))
    weights = torch.tensor([1.0, 0.5])  # e.g. the second RoI matched to a MixUp box of weight 0.5
    value = CrossEntropyLoss(label_smoothing=eps)(torch.tensor(logits), torch.tensor(labels), weights)
    assert value.item() == pytest.approx((per_roi[0] + 0.5 * per_roi[1]) / 2, rel=1e-6)


def test_label_smoothing_sets_each_detectors_classification_loss():
    for name in MODELS:
        model = tiny_model(name)
        trick = build_tricks(trick_config("label_smoothing"), model_config(name))[0]
        model = trick.on_model(model)
        loss = model.roi_heads.cls_loss if name == "faster_rcnn" else model.head.cls_loss
        assert isinstance(loss, CrossEntropyLoss if name == "faster_rcnn" else FocalLoss)
        assert loss.label_smoothing == 0.1


# ---------------------------------------------------------------- GHM-C and GHM-R

def test_ghmc_weights_are_n_over_bin_count_times_valid_bins():
    # one class, all negatives: g = |p - 0| = p. Bins of 0.1: three samples in bin 0, one in 5, one in 9.
    g = [0.01, 0.02, 0.03, 0.55, 0.95]
    logits = torch.tensor([[math.log(p / (1 - p))] for p in g])
    targets = torch.zeros(5, 1)
    loss = GHMCLoss(bins=10, momentum=0.0, per_level=True)
    beta = loss.weights(logits, targets).flatten().tolist()
    n_valid_bins = 3  # mmdetection's normalization (the paper's would be M = 10 bins)
    expected = [5 / (3 * n_valid_bins)] * 3 + [5 / (1 * n_valid_bins)] * 2
    assert beta == pytest.approx(expected, rel=1e-6)
    value = loss(logits, targets, torch.ones(5), torch.ones(5), torch.zeros(5, dtype=torch.long))
    bce = [-math.log(1 - p) for p in g]
    assert value.item() == pytest.approx(sum(b * l for b, l in zip(expected, bce)) / 5, rel=1e-6)


def test_ghmc_bin_counts_follow_the_momentum():
    m = 0.75
    loss = GHMCLoss(bins=2, momentum=m, per_level=True)
    t = torch.zeros(4, 1)
    first = torch.tensor([[-3.0], [-3.0], [-3.0], [3.0]])  # g: three below 0.5, one above
    beta1 = loss.weights(first, t).flatten()
    assert loss.density.acc_sum.tolist() == pytest.approx([(1 - m) * 3, (1 - m) * 1])
    assert beta1.tolist() == pytest.approx([4 / ((1 - m) * 3 * 2)] * 3 + [4 / ((1 - m) * 1 * 2)])
    second = torch.full((4, 1), -3.0)  # all four below 0.5: only bin 0 moves
    beta2 = loss.weights(second, t).flatten()
    s0 = m * (1 - m) * 3 + (1 - m) * 4
    assert loss.density.acc_sum.tolist() == pytest.approx([s0, (1 - m) * 1])
    assert beta2.tolist() == pytest.approx([4 / (s0 * 1)] * 4)
    for _ in range(200):  # the average converges to the count: beta -> N / (R n) = 1
        beta = loss.weights(second, t)
    assert beta.flatten().tolist() == pytest.approx([1.0] * 4, rel=1e-6)


def test_ghmc_with_one_bin_is_plain_binary_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(50, 3)
    targets = (torch.rand(50, 3) > 0.8).float()
    value = GHMCLoss(bins=1, momentum=0.0, per_level=True)(logits, targets, torch.ones(50), torch.ones(50), torch.zeros(50, dtype=torch.long))
    assert value.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, targets).item(), rel=1e-6)


def test_ghmr_asl1_and_weights_by_hand():
    mu, d = 0.02, [0.0, 0.01, 0.1, 1.0]
    asl1 = [math.sqrt(x * x + mu * mu) - mu for x in d]
    assert asl1[2] == pytest.approx(0.0819804, rel=1e-5)
    g = [abs(x) / math.sqrt(x * x + mu * mu) for x in d]  # 0, 0.447, 0.981, 0.9998: bins 0, 4, 9, 9
    assert [int(v * 10) for v in g] == [0, 4, 9, 9]
    expected_beta = [4 / (1 * 3), 4 / (1 * 3), 4 / (2 * 3), 4 / (2 * 3)]
    loss = GHMRLoss(mu=mu, bins=10, momentum=0.0, loss_weight=10.0)
    pred, target = torch.tensor([d]), torch.zeros(1, 4)
    assert loss.weights(pred, target).flatten().tolist() == pytest.approx(expected_beta, rel=1e-5)
    one = torch.ones(1)
    assert loss(pred, target, one, one, torch.zeros(1, dtype=torch.long)).item() == pytest.approx(
        10.0 * sum(b * a for b, a in zip(expected_beta, asl1)) / 4, rel=1e-5)


def test_ghmc_histogram_and_normalisation_are_per_pyramid_level():
    """The authors' code calls GHM-C once per FPN level: level 0 holds three samples in bin 0 and
    one in bin 1 (bins of 0.5), level 1 one sample in bin 1. Per level: beta = N_l / (R n_l), the
    level's loss sum beta BCE / N_l, the levels summed. One histogram over the batch would give
    other weights (checked)."""
    g = [0.1, 0.2, 0.3, 0.9, 0.8]
    logits = torch.tensor([[math.log(p / (1 - p))] for p in g])
    targets, levels = torch.zeros(5, 1), torch.tensor([0, 0, 0, 0, 1])
    bce = [-math.log(1 - p) for p in g]
    level0 = (4 / (3 * 2) * sum(bce[:3]) + 4 / (1 * 2) * bce[3]) / 4  # N 4, two bins used
    level1 = (1 / (1 * 1) * bce[4]) / 1  # N 1, one bin used
    value = GHMCLoss(bins=2, momentum=0.0, per_level=True)(logits, targets, torch.ones(5), torch.ones(5), levels)
    assert value.item() == pytest.approx(level0 + level1, rel=1e-6)
    whole = (5 / (3 * 2) * sum(bce[:3]) + 5 / (2 * 2) * (bce[3] + bce[4])) / 5  # one histogram
    assert value.item() != pytest.approx(whole, rel=1e-3)
    # the moving average is shared by the levels: updated once per level, lowest level first
    loss = GHMCLoss(bins=2, momentum=0.5, per_level=True)
    loss(logits, targets, torch.ones(5), torch.ones(5), levels)
    assert loss.density.acc_sum.tolist() == pytest.approx([0.5 * 3, 0.5 * (0.5 * 1) + 0.5 * 1])
    # over all levels at once (FCOS): one histogram, whatever the levels say, one update of the average
    once = GHMCLoss(bins=2, momentum=0.0, per_level=False)
    assert once(logits, targets, torch.ones(5), torch.ones(5), levels).item() == pytest.approx(whole, rel=1e-6)
    loss = GHMCLoss(bins=2, momentum=0.5, per_level=False)
    loss(logits, targets, torch.ones(5), torch.ones(5), levels)
    assert loss.density.acc_sum.tolist() == pytest.approx([0.5 * 3, 0.5 * 2])


@pytest.mark.parametrize("name,per_level", [("fcos", False), ("retinanet", True), ("reppoints", True)])
def test_ghmc_is_called_as_the_detectors_reference_head_calls_its_loss(name, per_level):
    """mmdetection's FCOSHead concatenates the levels and calls the classification loss once;
    AnchorHead (RetinaNet) and RepPointsHead call it per level. On FCOS the GHM-C loss therefore does
    not depend on the levels tensor; on RetinaNet it does."""
    model = tiny_model(name)
    for trick in build_tricks(trick_config("ghm"), model_config(name)):
        model = trick.on_model(model)
    loss = model.head.cls_loss
    assert isinstance(loss, GHMCLoss) and loss.per_level is per_level
    g = [0.1, 0.2, 0.3, 0.9, 0.8]
    logits = torch.tensor([[math.log(p / (1 - p))] for p in g])
    targets, one = torch.zeros(5, 1), torch.ones(5)
    loss.density.momentum = 0.0  # compare the two groupings on one batch, without the moving average
    same_level = loss(logits, targets, one, one, torch.zeros(5, dtype=torch.long)).item()
    two_levels = loss(logits, targets, one, one, torch.tensor([0, 0, 0, 0, 1])).item()
    assert (same_level == pytest.approx(two_levels, rel=1e-6)) is not per_level


def test_ghmr_is_per_pyramid_level_and_weights_each_box():
    mu = 0.02
    pred, target = torch.tensor([[0.0, 0.01, 0.1, 1.0], [1.0, 1.0, 1.0, 1.0]]), torch.zeros(2, 4)
    loss = GHMRLoss(mu=mu, bins=10, momentum=0.0, loss_weight=1.0)
    a = lambda x: math.sqrt(x * x + mu * mu) - mu  # noqa: E731
    # level 0: the first anchor as in the test above; level 1: four deltas in bin 9 (beta 4 / (4 * 1) = 1)
    level0 = (4 / 3 * (a(0.0) + a(0.01)) + 4 / 6 * (a(0.1) + a(1.0))) / 4
    level1 = 4 * a(1.0) / 4
    weights = torch.tensor([1.0, 0.5])  # MixUp: the second box weighs 0.5
    value = loss(pred, target, weights, torch.ones(2), torch.tensor([0, 1]))
    assert value.item() == pytest.approx(level0 + 0.5 * level1, rel=1e-5)


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_one_stage_heads_tell_the_losses_each_samples_level(name):
    """The levels given to a loss: level l for the H_l x W_l x A samples of feature map l, in
    torchvision's order (levels concatenated)."""
    model = tiny_model(name)
    seen = {}

    class Spy(nn.Module):
        def forward(self, logits, targets, weights, normalizer, levels):
            seen["levels"], seen["n"] = levels, len(logits)
            return logits.sum() * 0
    model.head.cls_loss = Spy()
    losses_of(model, *tiny_batch(name))
    sizes = model.head.level_sizes  # per image: 96 px -> 12x12, 6x6, 3x3, 2x2, 1x1 locations x anchors
    anchors = 1 if name == "fcos" else 9
    assert sizes == [n * anchors for n in (144, 36, 9, 4, 1)]
    levels = seen["levels"]
    if name == "fcos":  # every location of both images
        assert torch.equal(levels, torch.arange(5).repeat_interleave(torch.tensor(sizes)).repeat(2))
    assert set(levels.tolist()) == {0, 1, 2, 3, 4} and len(levels) == seen["n"]


def test_ghm_replaces_the_one_stage_losses():
    model = tiny_model("retinanet")
    for trick in build_tricks(trick_config("ghm", "ghm_r"), model_config("retinanet")):
        model = trick.on_model(model)
    assert isinstance(model.head.cls_loss, GHMCLoss) and model.head.cls_loss.density.bins == 30
    assert model.head.cls_loss.density.momentum == 0.75
    assert isinstance(model.head.box_loss, GHMRLoss) and model.head.box_loss.mu == 0.02
    assert "head.cls_loss.density.acc_sum" in model.state_dict()  # the moving average is checkpointed


# ---------------------------------------------------------------- DropBlock

def test_dropblock_drops_the_scheduled_fraction_in_training_and_nothing_in_eval():
    block = FittedDropBlock2d(0.1, 7)
    x = torch.ones(8, 16, 64, 64)
    torch.manual_seed(0)
    out = block.train()(x)
    dropped = (out == 0).float().mean().item()
    # gamma (paper eq. 1) makes the expected dropped share 1 - keep_prob, less block overlaps
    assert dropped == pytest.approx(0.1, abs=0.015)
    assert out.mean().item() == pytest.approx(1.0, abs=1e-4)  # kept units rescaled by count / kept
    assert torch.equal(block.eval()(x), x)
    # a block larger than the map is cut to the largest odd size that fits (torchvision refuses 6)
    assert FittedDropBlock2d(0.1, 7).train()(torch.ones(2, 4, 6, 6)).shape == (2, 4, 6, 6)


def test_dropblock_keep_prob_falls_linearly_from_one_to_its_target():
    trick = DropBlock(keep_prob=0.9, block_size=7, levels=[4, 5])
    model = trick.on_model(tiny_model("fcos"))
    # tiny backbone: layer3 (stride 16) and layer4 (stride 32) have two BatchNorms each
    assert len(trick.blocks) == 4
    assert all(isinstance(m[1], FittedDropBlock2d) for m in model.backbone.body["layer4"].modules()
               if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.BatchNorm2d))
    assert not any(isinstance(m, FittedDropBlock2d) for m in model.backbone.body["layer2"].modules())
    for step, keep in ((0, 1.0), (25, 0.975), (50, 0.95), (100, 0.9)):
        trick.on_batch([], [], batch_context(step, 101))
        assert trick.keep_prob_at(step, 101) == pytest.approx(keep)
        assert all(b.p == pytest.approx(1 - keep) for b in trick.blocks)


def test_dropblock_is_off_in_eval_and_leaves_the_network_as_it_was():
    model = tiny_model("fcos")
    before = copy.deepcopy(model)
    trick = build_tricks(trick_config("dropblock"), model_config("fcos"))[0]
    model = trick.on_model(model)
    trick.on_batch([], [], batch_context(99, 100))  # the target drop rate
    x = torch.rand(2, 3, 96, 96)
    model.eval(), before.eval()
    with torch.no_grad():
        feats, ref = model.backbone(x), before.backbone(x)
        assert all(torch.equal(feats[k], ref[k]) for k in ref)
        model.train(), before.train()
        # in training, level 5 (pyramid output "2") is dropped
        assert not torch.equal(model.backbone(x)["2"], before.backbone(x)["2"])


# ---------------------------------------------------------------- Mish

def activations(module):
    """The activation modules under `module` other than Mish."""
    return [m for m in module.modules() if isinstance(m, ACTIVATIONS) and not isinstance(m, nn.Mish)]


def test_mish_backbone_only_leaves_neck_and_head_and_changes_outputs():
    model = tiny_model("retinanet")
    before = copy.deepcopy(model)
    trick = build_tricks(trick_config("mish"), model_config("retinanet"))[0]
    assert trick.parts == ["backbone"]
    model = trick.on_model(model)
    assert activations(model.backbone.body) == []
    assert sum(isinstance(m, nn.Mish) for m in model.backbone.body.modules()) == 9  # stem + 4 stages x 2
    assert len(activations(model.head)) > 0
    assert not isinstance(model.backbone.fpn.extra_blocks, ActP6P7)
    model.load_state_dict(before.state_dict())  # no parameter added or renamed
    x = torch.rand(1, 3, 96, 96)
    model.eval(), before.eval()
    with torch.no_grad():
        assert not torch.allclose(model.backbone(x)["0"], before.backbone(x)["0"])


@pytest.mark.parametrize("name", ["fcos", "faster_rcnn"])
def test_mish_everywhere_leaves_no_other_activation(name):
    model = tiny_model(name)
    before = copy.deepcopy(model)
    trick = build_tricks(trick_config("mish", **{"mish.parts": ["backbone", "neck", "head"]}), model_config(name))[0]
    model = trick.on_model(model)
    assert activations(model) == []
    if name == "faster_rcnn":
        assert isinstance(model.roi_heads.box_head, ActTwoMLPHead)
    else:
        assert isinstance(model.backbone.fpn.extra_blocks, ActP6P7)
    model.load_state_dict(before.state_dict())
    images, _ = tiny_batch(name)
    model.eval(), before.eval()
    with torch.no_grad():
        feats = model.backbone(torch.stack([images[0]]))
        ref = before.backbone(torch.stack([images[0]]))
    assert not torch.allclose(feats[list(feats)[-1]], ref[list(ref)[-1]])


def test_mish_rejects_unknown_parts():
    with pytest.raises(ValueError, match=r"parts=\['body'\]: choose among"):
        Activation(kind="mish", parts=["body"])


# ---------------------------------------------------------------- fits and slots

def test_label_smoothing_and_ghm_both_claim_the_classification_loss():
    with pytest.raises(TrickConflictError, match="'label_smoothing' and 'ghm' both claim the 'cls_loss' slot"):
        build_tricks(trick_config("label_smoothing", "ghm"), model_config("fcos"))


@pytest.mark.parametrize("trick,name,needs", [("ghm", "faster_rcnn", "one_stage.*model=fcos or model=retinanet"),
                                              ("ghm_r", "faster_rcnn", "retinanet detector \\(model=retinanet\\)"),
                                              ("ghm_r", "fcos", "retinanet detector \\(model=retinanet\\)"),
                                              ("iou_balanced", "fcos", "two_stage.*model=faster_rcnn"),
                                              ("iou_balanced", "retinanet", "two_stage.*model=faster_rcnn")])
def test_trick_on_a_detector_it_does_not_fit_stops_before_training(trick, name, needs):
    with pytest.raises(TrickConflictError, match=f"'{trick}' does not fit model={name}: it needs a {needs}"):
        build_tricks(trick_config(trick), model_config(name))


def test_ghm_r_on_a_model_without_delta_regression_says_why():
    trick = build_tricks(trick_config("ghm_r"), model_config("retinanet"))[0]
    trick.name = "ghm_r"
    with pytest.raises(TrickConflictError, match="'ghm_r' does not fit FCOS.*model=retinanet.*GIoU"):
        trick.on_model(tiny_model("fcos"))


# ---------------------------------------------------------------- a few training steps

FITS = [(t, m) for t in ("label_smoothing", "dropblock", "mish") for m in MODELS] + [
    ("ghm", "fcos"), ("ghm", "retinanet"), ("ghm_r", "retinanet"), ("iou_balanced", "faster_rcnn")]
COMBOS = [("retinanet", ["mixup", "ghm", "ghm_r", "dropblock"]),
          ("faster_rcnn", ["mixup", "label_smoothing", "iou_balanced", "mish"])]


@pytest.mark.parametrize("trick,name", FITS)
def test_trick_trains_on_each_baseline_it_fits(trick, name):
    """A few steps train with the trick really on: each hook it overrides runs, each slot it sets is
    called, and the loss history differs from the baseline's of the same seed and batches (it
    would not with the trick switched off)."""
    really_on(trick, model=name)


@pytest.mark.parametrize("name,trick_names", COMBOS)
def test_compatible_tricks_train_together(name, trick_names):
    history = loss_history(name, build_tricks(trick_config(*trick_names), model_config(name)))
    assert all(math.isfinite(x) for x in history)
    assert history != pytest.approx(loss_history(name, []), rel=1e-6)
