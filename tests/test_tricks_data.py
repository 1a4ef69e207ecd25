"""Batch tricks on data: CutMix against its definition (ablate/tricks/data/cutmix.py) on hand-made
cases, and MixUp's / CutMix's off_last_fraction (off for the final share of training)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ablate.config import conf_dir
from ablate.testing import batch_context, model_config, trick_config
from ablate.tricks import BatchContext, TrickArgumentError, TrickConfigError, TrickConflictError, build_tricks
from ablate.tricks.base import off_at_end
from ablate.tricks.data.cutmix import CutMix, boxes_around, boxes_within, cut_pair, cut_pairs, cut_region
from ablate.tricks.data.mixup import MixUp


def ctx(seed=0, epoch=0, num_epochs=1):
    return batch_context(seed=seed, epoch=epoch, num_epochs=num_epochs)


def target(boxes, labels, **extra):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), **extra}


def cutmix(**kw):
    args = {"alpha": 1.0, "prob": 1.0, "min_visible": 0.1, "off_last_fraction": 0.0, **kw}
    return CutMix(**args)


# ---------------------------------------------------------------- the region

def test_cut_region_is_the_paper_rectangle_clipped_to_the_image():
    # lambda 0.75: cut ratio sqrt(0.25) = 0.5 of each side, a quarter of the area
    assert cut_region(100, 100, 0.75, cx=50, cy=50) == (25, 25, 75, 75)
    assert cut_region(100, 200, 0.75, cx=100, cy=50) == (50, 25, 150, 75)  # W and H each scaled
    assert cut_region(100, 100, 0.75, cx=0, cy=99) == (0, 74, 25, 100)  # clipped at two edges
    assert cut_region(100, 100, 1.0, cx=50, cy=50) == (50, 50, 50, 50)  # lambda 1: nothing cut
    assert cut_region(100, 100, 0.0, cx=50, cy=50) == (0, 0, 100, 100)  # lambda 0: all of B


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.5, 0.64, 0.9, 0.99])
def test_unclipped_region_area_is_one_minus_lambda_of_the_image(lam):
    h, w = 120, 160
    x0, y0, x1, y1 = cut_region(h, w, lam, cx=w // 2, cy=h // 2)
    assert 0 < x0 and 0 < y0 and x1 < w and y1 < h  # not clipped
    # sides rounded to whole pixels: at most half a pixel off each
    r = math.sqrt(1 - lam)
    assert abs((x1 - x0) - r * w) <= 0.5 and abs((y1 - y0) - r * h) <= 0.5
    assert (x1 - x0) * (y1 - y0) / (h * w) == pytest.approx(1 - lam, abs=(r * w + r * h + 1) / (h * w))


def pasted_region(img):
    """The bounding rectangle of the pixels equal to 1 (B is ones, A zeros): x0, y0, x1, y1."""
    ys, xs = torch.nonzero(img[0] == 1, as_tuple=True)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_on_batch_draws_lambda_from_beta_and_the_centre_uniformly_in_the_documented_order():
    """The pasted pixels of each on_batch call are exactly the region that replaying ctx.rng by the
    documented draws gives: permutation, then per image random(), beta(alpha, alpha), cx, cy."""
    alpha, h, w = 2.0, 40, 50
    trick = cutmix(alpha=alpha, min_visible=0.0)
    run, replay = np.random.default_rng(11), np.random.default_rng(11)
    lams = []
    for _ in range(300):
        images = [torch.zeros(1, h, w), torch.ones(1, h, w)]
        targets = [target([], []), target([], [])]
        out, _ = trick.on_batch(images, targets, BatchContext(0, 1, 0, 1, run))
        replay.permutation(2)
        draws = []
        for _ in range(2):  # image 0, then image 1 (ones, pasted with zeros)
            assert replay.random() < 1.0
            lam = float(replay.beta(alpha, alpha))
            draws.append((lam, int(replay.integers(0, w)), int(replay.integers(0, h))))
        lam, cx, cy = draws[0]
        region = cut_region(h, w, lam, cx, cy)
        expected = region if region[0] < region[2] and region[1] < region[3] else None
        assert pasted_region(out[0]) == expected
        lams.append(lam)
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 0.01


def test_cut_region_on_a_100_by_50_image_centred_and_clipped_at_each_border():
    # lambda 0.75: cut ratio sqrt(0.25) = 0.5 -> a 50 x 25 px region; x0 = cx - 25, y0 = cy - 12
    # (25 // 2), x1 = x0 + 50, y1 = y0 + 25, then each edge clipped to [0, 100] x [0, 50].
    cases = {
        (50, 25): (25, 13, 75, 38),   # inside: 50 x 25 = 1250 px = (1 - 0.75) x 5000
        (10, 25): (0, 13, 35, 38),    # left border: x0 = -15 -> 0
        (90, 25): (65, 13, 100, 38),  # right border: x1 = 115 -> 100
        (50, 5): (25, 0, 75, 18),     # top border: y0 = -7 -> 0
        (50, 45): (25, 33, 75, 50),   # bottom border: y1 = 58 -> 50
        (0, 0): (0, 0, 25, 13),       # top-left corner: x0 = -25, y0 = -12 -> 0, 0
        (99, 49): (74, 37, 100, 50),  # bottom-right corner: x1 = 124, y1 = 62 -> 100, 50
    }
    for (cx, cy), region in cases.items():
        assert cut_region(50, 100, 0.75, cx=cx, cy=cy) == region, (cx, cy)
    # lambda 0.64: ratio 0.6 -> 60 x 30 px; lambda 0.84: ratio 0.4 -> 40 x 20 px; both centred at (50, 25).
    assert cut_region(50, 100, 0.64, cx=50, cy=25) == (20, 10, 80, 40)
    assert cut_region(50, 100, 0.84, cx=50, cy=25) == (30, 15, 70, 35)


class ScriptedRng:
    """Stands in for ctx.rng: the identity permutation, every coin below prob, then the given lambdas
    and centres in turn; records each call (name and arguments)."""

    def __init__(self, lams, centres):
        self.lams, self.values, self.calls = list(lams), [v for xy in centres for v in xy], []

    def permutation(self, n):
        self.calls.append(("permutation", n))
        return np.arange(n)

    def random(self):
        self.calls.append(("random",))
        return 0.0

    def beta(self, a, b):
        self.calls.append(("beta", a, b))
        return self.lams.pop(0)

    def integers(self, low, high):
        self.calls.append(("integers", low, high))
        return self.values.pop(0)


def test_on_batch_pastes_the_literal_region_of_its_lambda_and_centre():
    """Two 100 x 50 images, zeros (0) and ones (1), partners of each other. Image 0 draws lambda 0.75
    and centre (99, 49): region (74, 37, 100, 50), clipped at the bottom-right corner (26 x 13 px of
    ones). Image 1 draws lambda 0.64 and centre (50, 25): region (20, 10, 80, 40) (60 x 30 px of zeros)."""
    rng = ScriptedRng(lams=[0.75, 0.64], centres=[(99, 49), (50, 25)])
    images = [torch.zeros(1, 50, 100), torch.ones(1, 50, 100)]
    targets = [target([[0, 0, 100, 50]], [1]), target([[0, 0, 100, 50]], [2])]
    out, tg = cutmix(alpha=2.0, min_visible=0.05).on_batch(images, targets, BatchContext(0, 1, 0, 1, rng))
    assert rng.calls == [("permutation", 2),
                         ("random",), ("beta", 2.0, 2.0), ("integers", 0, 100), ("integers", 0, 50),
                         ("random",), ("beta", 2.0, 2.0), ("integers", 0, 100), ("integers", 0, 50)]
    assert pasted_region(out[0]) == (74, 37, 100, 50) and out[0].sum().item() == 26 * 13
    assert pasted_region(1 - out[1]) == (20, 10, 80, 40) and (1 - out[1]).sum().item() == 60 * 30
    # A's whole-image box: a corner bitten / a hole punched, unchanged; B's: clipped to the region
    # (338 / 5000 = 6.8% and 1800 / 5000 = 36% of it inside, both >= min_visible 5%).
    assert tg[0]["boxes"].tolist() == [[0, 0, 100, 50], [74, 37, 100, 50]] and tg[0]["labels"].tolist() == [1, 2]
    assert tg[1]["boxes"].tolist() == [[0, 0, 100, 50], [20, 10, 80, 40]] and tg[1]["labels"].tolist() == [2, 1]


# ---------------------------------------------------------------- pixels

def test_pixels_inside_the_region_come_from_b_and_the_rest_from_a():
    a = torch.rand(3, 30, 40)
    b = torch.rand(3, 30, 40) + 2
    a_before, b_before = a.clone(), b.clone()
    region = (5, 7, 25, 20)
    img, _ = cut_pair(a, target([], []), b, target([], []), region, 0.1)
    mask = torch.zeros(30, 40, dtype=torch.bool)
    mask[7:20, 5:25] = True
    assert torch.equal(img[:, mask], b[:, mask])
    assert torch.equal(img[:, ~mask], a[:, ~mask])
    assert torch.equal(a, a_before) and torch.equal(b, b_before)  # the inputs are not written into


def test_images_of_different_sizes_cut_within_the_common_area_and_keep_a_size():
    trick = cutmix(alpha=0.3, min_visible=0.0)
    images = [torch.zeros(1, 50, 80), torch.ones(1, 70, 60)]
    targets = [target([[0, 0, 80, 50]], [1]), target([[0, 0, 60, 70]], [2])]
    rng = np.random.default_rng(0)
    pasted = 0
    for _ in range(50):
        out, tg = trick.on_batch(images, targets, BatchContext(0, 1, 0, 1, rng))
        assert out[0].shape == (1, 50, 80) and out[1].shape == (1, 70, 60)
        r = pasted_region(out[0])
        if r is not None:
            pasted += 1
            assert r[2] <= 60 and r[3] <= 50  # inside both images
            # B's whole-image box clipped to the region is exactly the region
            assert tg[0]["boxes"][-1].tolist() == list(map(float, r))
        for box in tg[0]["boxes"]:
            assert box[2] <= 80 and box[3] <= 50
    # alpha 0.3 puts lambda near 0 or 1: a region is pasted in about half the draws (not 0 of 50).
    assert pasted >= 10


def test_each_image_takes_its_patch_from_another_image_of_the_batch():
    trick = cutmix(alpha=1.0)
    images = [torch.full((1, 20, 20), float(i)) for i in range(5)]
    targets = [target([], []) for _ in range(5)]
    for seed in range(5):
        out, _ = trick.on_batch(images, targets, ctx(seed=seed))
        sources = []
        for i, img in enumerate(out):
            pasted = set(img.unique().tolist()) - {float(i)}
            assert len(pasted) <= 1  # one partner per image, never itself
            sources += list(pasted)
        assert len(sources) >= 4
        # partners come from a permutation shifted by one: each image gives its patch to one other
        assert len(set(sources)) == len(sources)


# ---------------------------------------------------------------- boxes

REGION = (20, 20, 60, 60)  # 40 x 40


def test_a_boxes_inside_outside_and_partly_covered():
    boxes = torch.tensor([
        [30, 30, 50, 50],   # 0 fully inside the region: dropped
        [70, 70, 90, 90],   # 1 outside: unchanged
        [30, 10, 50, 40],   # 2 bottom strip covered (v = 1/3): cut back to its top part
        [10, 30, 40, 50],   # 3 right strip covered (v = 1/3): cut back to its left part
        [50, 50, 80, 80],   # 4 corner bitten (v = 8/9): unchanged
        [10, 10, 70, 70],   # 5 hole in the middle (v = 5/9): unchanged
        [30, 0, 50, 100],   # 6 split in two strips (v = 0.6): unchanged (tight box is the box)
        [18, 18, 62, 62],   # 7 frame of 2 px (v = 336/1936 = 0.17 < 0.25): dropped
        [20, 0, 60, 40],    # 8 exactly half covered, region spans it: cut to (20, 0, 60, 20)
    ], dtype=torch.float32)
    kept, keep = boxes_around(boxes, REGION, min_visible=0.25)
    assert keep.tolist() == [False, True, True, True, True, True, True, False, True]
    assert kept.tolist() == [[70, 70, 90, 90], [30, 10, 50, 20], [10, 30, 20, 50], [50, 50, 80, 80],
                             [10, 10, 70, 70], [30, 0, 50, 100], [20, 0, 60, 20]]


def test_a_box_threshold_is_on_the_visible_share_and_inclusive():
    box = torch.tensor([[30.0, 0.0, 50.0, 40.0]])  # 800 px, 400 covered by the region's top half
    assert boxes_around(box, REGION, min_visible=0.5)[1].tolist() == [True]   # v = 0.5 >= 0.5
    assert boxes_around(box, REGION, min_visible=0.51)[1].tolist() == [False]
    assert boxes_around(box, REGION, min_visible=0.5)[0].tolist() == [[30, 0, 50, 20]]
    # fully covered is dropped even with min_visible 0; an empty region keeps everything as it is
    assert boxes_around(torch.tensor([[25.0, 25, 35, 35]]), REGION, 0.0)[1].tolist() == [False]
    same, keep = boxes_around(torch.tensor([[25.0, 25, 35, 35]]), (5, 5, 5, 30), 0.9)
    assert keep.tolist() == [True] and same.tolist() == [[25, 25, 35, 35]]


def test_b_boxes_inside_partly_inside_and_outside_the_region():
    boxes = torch.tensor([
        [30, 30, 50, 50],   # 0 fully inside: added unchanged
        [50, 30, 80, 50],   # 1 one third inside: added clipped to (50, 30, 60, 50)
        [55, 30, 95, 50],   # 2 one eighth inside (< 0.25): dropped
        [70, 70, 90, 90],   # 3 outside: dropped
        [60, 30, 70, 50],   # 4 touches the region's edge only: dropped
        [0, 0, 100, 100],   # 5 covers the region (16 % inside): dropped at 0.25
    ], dtype=torch.float32)
    kept, keep = boxes_within(boxes, REGION, min_visible=0.25)
    assert keep.tolist() == [True, True, False, False, False, False]
    assert kept.tolist() == [[30, 30, 50, 50], [50, 30, 60, 50]]
    kept, keep = boxes_within(boxes, REGION, min_visible=0.0)
    assert keep.tolist() == [True, True, True, False, False, True]  # zero-area clips never added
    assert kept[-1].tolist() == list(map(float, REGION))


def test_cut_pair_targets_put_a_kept_boxes_first_then_b_and_keep_the_other_keys():
    ta = target([[30, 30, 50, 50], [70, 70, 90, 90], [30, 10, 50, 40]], [1, 2, 3], image_id=7, scale=0.5)
    tb = target([[25, 25, 35, 35], [55, 30, 95, 50], [0, 0, 10, 10]], [4, 5, 1])
    _, tgt = cut_pair(torch.zeros(1, 100, 100), ta, torch.ones(1, 100, 100), tb, REGION, 0.25)
    assert tgt["boxes"].tolist() == [[70, 70, 90, 90], [30, 10, 50, 20], [25, 25, 35, 35]]
    assert tgt["labels"].tolist() == [2, 3, 4]
    assert tgt["image_id"] == 7 and tgt["scale"] == 0.5
    assert "weights" not in tgt  # no input weights: none invented
    assert ta["boxes"].shape == (3, 4) and len(ta["labels"]) == 3  # inputs untouched


def test_weights_are_kept_per_box_and_new_boxes_from_b_weigh_one():
    ta = target([[30, 30, 50, 50], [70, 70, 90, 90], [30, 10, 50, 40]], [1, 2, 3],
                weights=torch.tensor([0.2, 0.3, 0.4]))
    tb = target([[25, 25, 35, 35]], [4])
    _, tgt = cut_pair(torch.zeros(1, 100, 100), ta, torch.ones(1, 100, 100), tb, REGION, 0.25)
    assert tgt["weights"].tolist() == pytest.approx([0.3, 0.4, 1.0])
    # the other way round: A without weights (its box weighs 1), B's own weights kept
    tc = target([[0, 0, 10, 10]], [4])
    _, tgt = cut_pair(torch.zeros(1, 100, 100), tc, torch.ones(1, 100, 100), ta, REGION, 0.25)
    assert tgt["labels"].tolist() == [4, 1, 3]  # B's (70, 70, 90, 90) lies outside the region
    assert tgt["weights"].tolist() == pytest.approx([1.0, 0.2, 0.4])


def test_a_region_outside_both_images_is_refused():
    with pytest.raises(ValueError, match="inside both images"):
        cut_pair(torch.zeros(1, 50, 50), target([], []), torch.zeros(1, 30, 30), target([], []), (0, 0, 40, 20), 0.1)


# ---------------------------------------------------------------- the trick

def batch(seed=0, n=4, size=48):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = []
    for i in range(n):
        xy = torch.rand(3, 2, generator=g) * (size - 16)
        boxes = torch.cat([xy, xy + 8 + torch.rand(3, 2, generator=g) * 8], dim=1)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2, 3]) + i, "image_id": i})
    return images, targets


def test_same_seed_same_batch_other_seed_other_batch():
    trick = cutmix(alpha=1.0, prob=0.7)
    images, targets = batch()
    out1, tg1 = trick.on_batch(images, targets, ctx(seed=4))
    out2, tg2 = trick.on_batch(images, targets, ctx(seed=4))
    out3, _ = trick.on_batch(images, targets, ctx(seed=5))
    assert all(torch.equal(a, b) for a, b in zip(out1, out2))
    for a, b in zip(tg1, tg2):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    assert not all(torch.equal(a, b) for a, b in zip(out1, out3))


def test_prob_zero_and_single_image_batches_change_nothing():
    images, targets = batch()
    # The control: with prob 1 every image of the batch is cut (each gets a different image's pixels).
    cut, _ = cutmix(prob=1.0).on_batch(images, targets, ctx())
    assert not any(torch.equal(a, b) for a, b in zip(cut, images))
    same, tg = cutmix(prob=0.0).on_batch(images, targets, ctx())
    assert same == images and tg == targets
    same, tg = cutmix().on_batch(images[:1], targets[:1], ctx())
    assert same == images[:1] and tg == targets[:1]


def test_cutmix_rejects_bad_values_naming_the_key_a_user_types():
    cases = [("alpha", 0, r"must be a number > 0"), ("prob", 1.5, r"must be a number in \[0, 1\]"),
             ("min_visible", -0.1, r"must be a number in \[0, 1\]")]
    cases += [("off_last_fraction", bad, r"must be a number in \[0, 1\]") for bad in (-0.1, 1.5, "0.1", True)]
    for arg, bad, why in cases:
        with pytest.raises(TrickArgumentError, match=rf"^{arg}={bad!r}: {why}"):
            cutmix(**{arg: bad})
        with pytest.raises(TrickConfigError, match=rf"^tricks\.cutmix\.{arg}={bad!r}: {why} \(conf/tricks/cutmix.yaml"):
            build_tricks(trick_config("cutmix", **{f"cutmix.{arg}": bad}), model_config("fcos"))


def test_cutmix_yaml_builds_with_the_paper_defaults_and_conflicts_with_mixup():
    assert (conf_dir() / "tricks" / "cutmix.yaml").read_text().splitlines()[0] == "# @package tricks.cutmix"
    (trick,) = build_tricks(trick_config("cutmix"), model_config("fcos"))
    assert isinstance(trick, CutMix) and trick.name == "cutmix"
    assert (trick.alpha, trick.prob, trick.min_visible, trick.off_last_fraction) == (1.0, 1.0, 0.1, 0.0)
    build_tricks(trick_config("cutmix"), model_config("faster_rcnn"))  # fits both families
    with pytest.raises(TrickConflictError, match="'mixup' and 'cutmix' both claim the 'batch_mix' slot"):
        build_tricks(trick_config("mixup", "cutmix"), model_config("fcos"))


# ---------------------------------------------------------------- off_last_fraction

# (off_last_fraction, num_epochs, the epochs (from 0) the trick is off): off for
# epoch >= num_epochs - round(fraction x num_epochs), halves rounded up.
OFF_CASES = [
    (0.1, 9, {8}),                    # 0.9 -> the last 1 epoch (the default run, MixUp's default)
    (0.1, 4, set()),                  # 0.4 -> 0: on throughout
    (0.1, 5, {4}),                    # 0.5 -> 1 (half up; Python's round would give 0)
    (0.25, 10, {7, 8, 9}),            # 2.5 -> 3 (round would give 2)
    (0.5, 3, {1, 2}),                 # 1.5 -> 2
    (0.0, 5, set()),                  # 0: on throughout
    (1.0, 3, {0, 1, 2}),              # 1: off throughout
    (0.1, 200, set(range(180, 200))), # GluonCV's YOLOv3: mixup off for the last 20 of 200 epochs
]


@pytest.mark.parametrize("fraction, num_epochs, off", OFF_CASES)
def test_off_at_end_is_off_for_the_final_share_of_epochs(fraction, num_epochs, off):
    assert {e for e in range(num_epochs) if off_at_end(fraction, e, num_epochs)} == off


MAKERS = [lambda f: MixUp(alpha=1.5, prob=1.0, off_last_fraction=f, loss_weights=True),
          lambda f: cutmix(alpha=1.0, off_last_fraction=f)]


@pytest.mark.parametrize("make", MAKERS, ids=["mixup", "cutmix"])
@pytest.mark.parametrize("fraction, num_epochs, off", [c for c in OFF_CASES if c[1] <= 10])
def test_off_last_fraction_turns_the_trick_off_for_the_final_epochs(make, fraction, num_epochs, off):
    images, targets = batch()
    trick = make(fraction)
    for epoch in range(num_epochs):
        c = ctx(seed=1, epoch=epoch, num_epochs=num_epochs)
        out, tg = trick.on_batch(images, targets, c)
        if epoch in off:
            assert out is images and tg is targets
            assert c.rng.random() == np.random.default_rng(1).random()  # nothing drawn
        else:
            assert not any(torch.equal(a, b) for a, b in zip(out, images)), epoch  # every image mixed


@pytest.mark.parametrize("make", MAKERS, ids=["mixup", "cutmix"])
def test_off_last_fraction_of_200_epochs_is_off_from_epoch_180(make):
    images, targets = batch()
    trick = make(0.1)
    for epoch, on in ((0, True), (179, True), (180, False), (199, False)):
        out, _ = trick.on_batch(images, targets, ctx(seed=1, epoch=epoch, num_epochs=200))
        assert (out is not images) == on, epoch


def test_mixup_off_last_fraction_comes_from_its_yaml_and_is_checked():
    (trick,) = build_tricks(trick_config("mixup"), model_config("fcos"))
    assert trick.off_last_fraction == 0.1  # GluonCV's 20 of 200 epochs
    images, targets = batch()
    # The default 9-epoch run: MixUp on in epoch 7 (the 8th), off in epoch 8 (the last).
    out, _ = trick.on_batch(images, targets, ctx(seed=1, epoch=7, num_epochs=9))
    assert not any(torch.equal(a, b) for a, b in zip(out, images))
    out, _ = trick.on_batch(images, targets, ctx(seed=1, epoch=8, num_epochs=9))
    assert out is images
    cfg = trick_config("mixup")
    cfg.mixup.off_last_fraction = 0.5
    assert build_tricks(cfg, model_config("fcos"))[0].off_last_fraction == 0.5
    for bad in (-0.1, 1.5, "0.1", True):
        with pytest.raises(TrickArgumentError, match=r"^off_last_fraction=.*: must be a number in \[0, 1\]"):
            MixUp(alpha=1.5, prob=1.0, off_last_fraction=bad, loss_weights=True)


# ---------------------------------------------------------------- in training

@pytest.fixture
def cache(shapes_cache):
    return shapes_cache


def test_cutmix_trains_a_few_steps(tmp_path, cache):
    from hydra import compose, initialize_config_dir

    from ablate.train import train_and_evaluate

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["profile=smoke", f"paths.cache={cache}", "tricks=[cutmix]"])
    rec = train_and_evaluate(cfg, tmp_path)
    assert rec.status == "ok", rec.error
    assert rec.tricks == ["cutmix"] and rec.config["tricks"]["cutmix"]["min_visible"] == 0.1
    losses = [p["loss"] for p in rec.curve if "loss" in p]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # 16 images, batches of 4


def test_cut_pairs_of_a_batch_equal_each_pair_cut_alone():
    # The batched box rules (one region per box) against one pair at a time (one region for all).
    g = torch.Generator().manual_seed(0)
    pairs = []
    for k in range(6):
        n_a, n_b = k % 4, (k + 2) % 5  # some pairs with no box on one side
        xy = torch.rand(n_a + n_b, 2, generator=g) * 80
        boxes = torch.cat([xy, xy + 5 + torch.rand(n_a + n_b, 2, generator=g) * 40], 1).clamp(max=100)
        ta = target(boxes[:n_a].tolist(), list(range(n_a)))
        tb = target(boxes[n_a:].tolist(), list(range(n_b)))
        x0, y0 = int(torch.randint(0, 60, (1,), generator=g)), int(torch.randint(0, 60, (1,), generator=g))
        region = (x0, y0, x0 + int(torch.randint(0, 40, (1,), generator=g)), y0 + 30)
        pairs.append((torch.rand(3, 100, 100, generator=g), ta, torch.rand(3, 100, 100, generator=g), tb, region))
    together = cut_pairs(pairs, 0.3)
    assert sum(len(t["boxes"]) for _, t in together) > 0
    for (img, tgt), pair in zip(together, pairs):
        alone_img, alone_tgt = cut_pair(*pair, 0.3)
        assert torch.equal(img, alone_img)
        assert torch.equal(tgt["boxes"], alone_tgt["boxes"]) and torch.equal(tgt["labels"], alone_tgt["labels"])
