"""Tricks against their papers' definitions, on hand-computed cases."""
import logging
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats

from ablate.testing import model_config, really_on, trick_config
from ablate.tricks import (BatchContext, Trick, TrickArgumentError, TrickConfigError, TrickConflictError, build_tricks,
                           check_compatible, lr_factor)
from ablate.tricks.data.mixup import MixUp, mix_pair
from ablate.tricks.schedule.warmup import Warmup


# ---------------------------------------------------------------- warmup

def warmup_lrs(warmup, total_steps, steps, main=lambda step: 1.0):
    """The LR factor of `main` x warmup, as the harness builds it, at these steps."""
    factor = warmup.on_lr_factor(main, total_steps)
    return [factor(t) for t in steps]


def test_linear_warmup_length_is_the_fraction_of_the_run():
    w = Warmup(fraction=0.05, iters=None, start_factor=0.001, mode="linear")
    # 200 steps: 0.05 x 200 = 10 warmup steps; w(t) = 0.001 + 0.999 t / 10.
    assert warmup_lrs(w, 200, [0, 5, 9, 10, 11, 199]) == pytest.approx([0.001, 0.5005, 0.9001, 1.0, 1.0, 1.0])
    # The same fraction of a run twice as long warms up twice as long: 20 steps.
    assert warmup_lrs(w, 400, [0, 10, 19, 20]) == pytest.approx([0.001, 0.5005, 0.95005, 1.0])
    assert [w.length(n) for n in (200, 400, 1125)] == [10, 20, 56]  # 56.25 -> 56
    # Halves round up: 0.05 x 90 = 4.5 -> 5 and 0.05 x 30 = 1.5 -> 2 (Python's round would give 4 and 2).
    assert w.length(90) == 5 and w.length(30) == 2
    assert warmup_lrs(w, 90, [4, 5]) == pytest.approx([0.001 + 0.999 * 4 / 5, 1.0])


def test_exponential_warmup_over_the_fraction_of_the_run():
    w = Warmup(fraction=0.1, iters=None, start_factor=0.001, mode="exponential")
    # 40 steps: 4 warmup steps; w(t) = 0.001 ** (1 - t / 4).
    assert warmup_lrs(w, 40, [0, 1, 2, 3, 4, 39]) == pytest.approx(
        [0.001, 0.0056234133, 0.0316227766, 0.1778279410, 1.0, 1.0])


def test_warmup_iters_sets_the_length_whatever_the_run():
    w = Warmup(fraction=None, iters=100, start_factor=0.001, mode="linear")
    for total in (200, 10_000):
        assert w.length(total) == 100
        assert warmup_lrs(w, total, [0, 50, 99, 100, 150]) == pytest.approx([0.001, 0.5005, 0.99001, 1.0, 1.0])


def test_default_yaml_warms_up_goyal_5_of_90_of_the_default_run_through_lambdalr():
    """conf/tricks/warmup.yaml: fraction 0.056 (5/90 epochs) of the default 1,125 steps = 63 steps from
    0.001 x lr; with warmup switched off (or its factor changed) the LRs below differ."""
    (w,) = build_tricks(trick_config("warmup"), model_config("fcos"))
    assert (w.fraction, w.iters, w.start_factor, w.mode) == (0.056, None, 0.001, "linear")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, w.on_lr_factor(lambda step: 1.0, 1125))
    lrs = {}
    for step in range(70):
        lrs[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    # 0.1 x (0.001 + 0.999 t / 63): t = 0, 21, 42 give 0.0001, 0.0334, 0.0667; from t = 63 on, 0.1.
    assert [lrs[t] for t in (0, 21, 42, 62, 63, 69)] == pytest.approx(
        [0.0001, 0.0334, 0.0667, 0.1 * (0.001 + 0.999 * 62 / 63), 0.1, 0.1])


def test_warmup_multiplies_the_main_schedule_through_torch_lambdalr():
    w = Warmup(fraction=0.4, iters=None, start_factor=0.2, mode="linear")  # 0.4 x 10 = 4 steps
    main = lambda step: 0.5 if step >= 6 else 1.0  # a step schedule
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, w.on_lr_factor(main, 10))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # 0.1 x (0.2 + 0.8 t / 4) for t < 4, then the main schedule alone.
    assert lrs == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.05, 0.05])


def test_a_run_too_short_for_one_warmup_step_gets_none_and_a_warning(caplog):
    w = Warmup(fraction=0.056, iters=None, start_factor=0.001, mode="linear")
    with caplog.at_level(logging.WARNING, logger="ablate.tricks.schedule.warmup"):
        assert warmup_lrs(w, 4, [0, 1, 3]) == [1.0, 1.0, 1.0]  # 0.056 x 4 = 0.224 -> 0 steps
    assert "tricks.warmup.fraction=0.056 of 4 iterations rounds to 0" in caplog.text
    assert w.length(9) == 1 and warmup_lrs(w, 9, [0, 1]) == pytest.approx([0.001, 1.0])  # 0.504 -> 1


def test_warmup_needs_exactly_one_of_fraction_and_iters():
    with pytest.raises(TrickArgumentError, match=r"^fraction=0.05 and iters=100: set exactly one"):
        Warmup(fraction=0.05, iters=100, start_factor=0.001, mode="linear")
    with pytest.raises(TrickArgumentError, match=r"^fraction=None and iters=None: set exactly one"):
        Warmup(fraction=None, iters=None, start_factor=0.001, mode="linear")
    # From the YAML: setting iters without clearing fraction is refused when the tricks are built,
    # each argument named as the user types it, with the example in the same terms.
    cfg = trick_config("warmup")
    cfg.warmup.iters = 500
    with pytest.raises(TrickConfigError, match=r"^tricks.warmup.fraction=0.056 and tricks.warmup.iters=500: set "
                                               r"exactly one .* e.g. tricks.warmup.fraction=null tricks.warmup.iters=500 "
                                               r"\(conf/tricks/warmup.yaml"):
        build_tricks(cfg, model_config("fcos"))
    cfg.warmup.fraction = None
    (w,) = build_tricks(cfg, model_config("fcos"))
    assert w.length(1125) == 500


def test_warmup_rejects_bad_values():
    with pytest.raises(TrickArgumentError, match="^mode='cubic': choose one of linear, exponential"):
        Warmup(fraction=0.1, iters=None, start_factor=0.1, mode="cubic")
    for bad in (0, 0.0, -0.1, 1.5, True, "0.1"):
        with pytest.raises(TrickArgumentError, match=r"^fraction=.*: must be a number in \(0, 1\]"):
            Warmup(fraction=bad, iters=None, start_factor=0.1, mode="linear")
    for bad in (0, -3, 2.5):
        with pytest.raises(TrickArgumentError, match=r"^iters=.*: must be an integer >= 1"):
            Warmup(fraction=None, iters=bad, start_factor=0.1, mode="linear")
    for bad in (0, 1.5):
        with pytest.raises(TrickArgumentError, match="^start_factor"):
            Warmup(fraction=0.1, iters=None, start_factor=bad, mode="linear")


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
    mixup = MixUp(alpha=1.5, prob=1.0, off_last_fraction=0, loss_weights=True)
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
    out, tg = MixUp(alpha=1.5, prob=1.0, off_last_fraction=0, loss_weights=True).on_batch(images, targets, ctx)
    for i, t in enumerate(tg):
        assert len(t["labels"]) == 2 and t["labels"][0] == i + 1 and t["labels"][1] != i + 1
        j = t["labels"][1].item() - 1
        lam = t["weights"][0].item()
        assert out[i][0, 0, 0].item() == pytest.approx(lam * i + (1 - lam) * j)
    same, tg = MixUp(alpha=1.5, prob=0.0, off_last_fraction=0, loss_weights=True).on_batch(images, targets, ctx)
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
    tricks = build_tricks(trick_config("mixup", "warmup"), model_config("fcos"))
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
        build_tricks(OmegaConf.create({"broken": {"alpha": 1}}), model_config("fcos"))


# ---------------------------------------------------------------- cosine (a training trick)

def test_cosine_replaces_the_step_schedule_and_a_warmup_multiplies_it_in_either_order():
    step = lambda s: 0.1 ** sum(s >= m for m in (667, 917))  # noqa: E731 (the baseline's 1x shape, 1,000 steps)
    (cos,) = build_tricks(trick_config("cosine"), model_config("fcos"))
    factor = lr_factor(step, [cos], 1000)
    assert [factor(s) for s in (0, 500, 1000)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert factor(900) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))  # the step schedule is gone
    for names in (["warmup", "cosine"], ["cosine", "warmup"]):
        tricks = build_tricks(trick_config(*names), model_config("fcos"))
        both = lr_factor(step, tricks, 1000)
        # warmup 5.6% of 1,000 steps = 56 steps from 0.001: at step 28 it is (0.001 + 0.999 * 0.5) x cosine
        assert both(28) == pytest.approx((0.001 + 0.999 * 28 / 56) * 0.5 * (1 + math.cos(math.pi * 0.028)))
        assert both(500) == pytest.approx(0.5)


def test_cosine_really_changes_training():
    really_on("cosine", model="fcos")


# ---------------------------------------------------------------- ema

def test_ema_after_three_steps_by_hand():
    """A 1-parameter model trained to w1, w2, w3: the average is w1 after the first step, then
    d(2) ema + (1 - d(2)) w2, then d(3) ema + (1 - d(3)) w3, d(u) = decay (1 - exp(-u / tau))."""
    from ablate.tricks.schedule.ema import EMA

    ema = EMA(decay=0.9, tau=1.0)
    model = torch.nn.Linear(1, 1, bias=False)
    d = lambda u: 0.9 * (1 - math.exp(-u))  # noqa: E731
    expected = None
    for step, w in enumerate([1.0, 2.0, 4.0], start=1):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.on_step(model, step)
        expected = w if expected is None else d(step) * expected + (1 - d(step)) * w
        assert float(ema.eval_model(model).weight) == pytest.approx(expected)
    assert expected == pytest.approx(d(3) * (d(2) * 1.0 + (1 - d(2)) * 2.0) + (1 - d(3)) * 4.0)
    assert ema.eval_model(model) is not model and float(model.weight.detach()) == 4.0


def test_ema_resumes_from_its_state():
    from ablate.tricks.schedule.ema import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    whole, first = EMA(decay=0.9, tau=1.0), EMA(decay=0.9, tau=1.0)
    for step, w in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        with torch.no_grad():
            model.weight.fill_(w)
        whole.on_step(model, step)
        if step <= 2:
            first.on_step(model, step)
    resumed = EMA(decay=0.9, tau=1.0)
    resumed.load_state_dict(first.state_dict())
    for step, w in [(3, 4.0), (4, 8.0)]:
        with torch.no_grad():
            model.weight.fill_(w)
        resumed.on_step(model, step)
    assert float(resumed.eval_model(model).weight) == pytest.approx(float(whole.eval_model(model).weight))


def test_ema_evaluates_other_weights_than_the_trained_ones():
    really_on("ema", model="fcos", tau=1.0)
