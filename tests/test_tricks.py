"""Tricks against their papers' definitions, on hand-computed cases."""
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats

from ablate.config import conf_dir
from ablate.tricks import BatchContext, Trick, TrickConflictError, build_tricks, check_compatible
from ablate.tricks.mixup import MixUp, mix_pair
from ablate.tricks.warmup import Warmup


def trick_cfg(*names):
    return OmegaConf.create({n: OmegaConf.load(conf_dir() / "tricks" / f"{n}.yaml") for n in names})


def model_cfg(name):
    return OmegaConf.load(conf_dir() / "model" / f"{name}.yaml")


# ---------------------------------------------------------------- warmup

def test_linear_warmup_lr_at_0_half_end_and_after():
    w = Warmup(iters=100, start_factor=0.001, mode="linear")
    assert w.factor(0) == pytest.approx(0.001)
    assert w.factor(50) == pytest.approx(0.001 + 0.999 * 0.5)
    assert w.factor(100) == 1.0
    assert w.factor(1000) == 1.0


def test_exponential_warmup_lr_at_0_half_end_and_after():
    w = Warmup(iters=100, start_factor=0.001, mode="exponential")
    assert w.factor(0) == pytest.approx(0.001)
    assert w.factor(50) == pytest.approx(0.001 ** 0.5)
    assert w.factor(100) == 1.0
    assert w.factor(250) == 1.0


def test_warmup_multiplies_the_main_schedule_through_torch_lambdalr():
    w = Warmup(iters=4, start_factor=0.2, mode="linear")
    main = lambda step: 0.5 if step >= 6 else 1.0  # a step schedule
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, w.on_lr_factor(main, 10))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * (0.2 + 0.8 * t / 4) for t in range(4)] + [0.1, 0.1, 0.05, 0.05]
    assert lrs == pytest.approx(expected)


def test_warmup_rejects_bad_values():
    with pytest.raises(ValueError, match="tricks.warmup.mode"):
        Warmup(iters=10, start_factor=0.1, mode="cubic")
    with pytest.raises(ValueError, match="tricks.warmup.iters"):
        Warmup(iters=0, start_factor=0.1, mode="linear")


# ---------------------------------------------------------------- mixup

def test_mix_pair_blends_pixels_on_the_larger_canvas_and_keeps_all_boxes():
    a = torch.full((3, 4, 6), 1.0)
    b = torch.full((3, 5, 3), 0.5)
    ta = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([1]), "image_id": 7}
    tb = {"boxes": torch.tensor([[1.0, 1.0, 3.0, 5.0], [0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([2, 3])}
    img, tgt = mix_pair(a, ta, b, tb, lam=0.7)
    assert img.shape == (3, 5, 6)
    assert img[0, 0, 0] == pytest.approx(0.7 * 1.0 + 0.3 * 0.5)  # both images
    assert img[0, 0, 5] == pytest.approx(0.7)  # only a (b is 3 wide)
    assert img[0, 4, 0] == pytest.approx(0.3 * 0.5)  # only b (a is 4 high)
    assert img[0, 4, 5] == 0.0  # neither
    assert tgt["boxes"].tolist() == [[0, 0, 2, 2], [1, 1, 3, 5], [0, 0, 1, 1]]
    assert tgt["labels"].tolist() == [1, 2, 3]
    assert tgt["weights"].tolist() == pytest.approx([0.7, 0.3, 0.3])
    assert tgt["image_id"] == 7


def test_mixup_lambda_follows_beta_alpha_alpha():
    mixup = MixUp(alpha=1.5, prob=1.0, off_last_epochs=0, loss_weights=True)
    ctx = BatchContext(epoch=0, num_epochs=1, step=0, total_steps=1, rng=np.random.default_rng(0))
    lams = []
    for _ in range(400):
        images = [torch.ones(1, 2, 2), torch.zeros(1, 2, 2)]
        targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(2)]
        out, _ = mixup.on_batch(images, targets, ctx)
        # image 0 is ones, image 1 zeros: pixel of mixed image 0 is its lambda
        lams.append(out[0][0, 0, 0].item())
    assert stats.kstest(lams, stats.beta(1.5, 1.5).cdf).pvalue > 0.01
    assert stats.kstest(lams, stats.beta(0.5, 0.5).cdf).pvalue < 0.01  # the test can tell a wrong alpha


def test_mixup_pairs_every_image_with_another_and_prob_zero_changes_nothing():
    ctx = BatchContext(epoch=0, num_epochs=1, step=0, total_steps=1, rng=np.random.default_rng(3))
    images = [torch.full((1, 2, 2), float(i)) for i in range(4)]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([i + 1])} for i in range(4)]
    out, tg = MixUp(alpha=1.5, prob=1.0, off_last_epochs=0, loss_weights=True).on_batch(images, targets, ctx)
    for i, t in enumerate(tg):
        assert len(t["labels"]) == 2 and t["labels"][0] == i + 1 and t["labels"][1] != i + 1
        j = t["labels"][1].item() - 1
        lam = t["weights"][0].item()
        assert out[i][0, 0, 0].item() == pytest.approx(lam * i + (1 - lam) * j)
    same, tg = MixUp(alpha=1.5, prob=0.0, off_last_epochs=0, loss_weights=True).on_batch(images, targets, ctx)
    assert same == images and tg == targets


# ---------------------------------------------------------------- the contract

class ClaimsLoss(Trick):
    claims = ("cls_loss",)


class TwoStageOnly(Trick):
    fits = ("two_stage",)


def named(trick, name):
    trick.name = name
    return trick


def test_build_tricks_from_the_yaml_files_in_selection_order():
    tricks = build_tricks(trick_cfg("mixup", "warmup"), model_cfg("fcos"))
    assert [t.name for t in tricks] == ["mixup", "warmup"]
    assert isinstance(tricks[0], MixUp) and tricks[0].alpha == 1.5
    assert isinstance(tricks[1], Warmup)


def test_two_tricks_on_one_slot_fail_naming_both():
    with pytest.raises(TrickConflictError, match="'ghm' and 'smooth' both claim the 'cls_loss' slot"):
        check_compatible([named(ClaimsLoss(), "ghm"), named(ClaimsLoss(), "smooth")], "one_stage", "fcos")


def test_trick_that_does_not_fit_the_detector_fails_saying_what_fits():
    with pytest.raises(TrickConflictError, match="'iou' does not fit model=fcos.*two_stage.*model=faster_rcnn"):
        check_compatible([named(TwoStageOnly(), "iou")], "one_stage", "fcos")
    check_compatible([named(TwoStageOnly(), "iou")], "two_stage", "faster_rcnn")


def test_trick_yaml_without_target_is_reported():
    with pytest.raises(ValueError, match="tricks.broken.*_target_"):
        build_tricks(OmegaConf.create({"broken": {"alpha": 1}}), model_cfg("fcos"))
