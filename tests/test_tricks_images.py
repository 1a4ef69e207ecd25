"""random_erasing, cutout, multiscale and scale_jitter against their definitions on literal regions and
boxes, and a few training steps each."""
import math

import numpy as np
import pytest
import torch

from ablate.testing import batch_context, build_trick, really_on
from ablate.tricks import BatchContext

pytestmark = pytest.mark.usefixtures("single_thread")


class Scripted:
    """Stands in for ctx.rng: coins, uniforms and integers in the order given; fills with 0.5."""

    def __init__(self, coins=(), uniforms=(), integers=()):
        self.coins, self.uniforms, self.integers_ = list(coins), list(uniforms), list(integers)
        self.calls = []

    def random(self, size=None):
        if size is not None:
            self.calls.append(("fill", size))
            return np.full(size, 0.5)
        self.calls.append(("coin",))
        return self.coins.pop(0)

    def uniform(self, low, high):
        self.calls.append(("uniform", low, high))
        return self.uniforms.pop(0)

    def integers(self, low, high):
        self.calls.append(("integers", low, high))
        return self.integers_.pop(0)


def ctx(rng):
    return BatchContext(epoch=0, num_epochs=1, step=0, total_steps=1, rng=rng)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "weights": torch.ones(len(labels))}


def test_random_erasing_draws_torchvisions_rectangle_and_fills_it():
    """A 100 x 50 image (h 50, w 100). Area share 0.2 -> 1,000 px; log-aspect 0 -> ratio 1:
    h = w = round(sqrt(1000)) = 32; top-left y 10, x 20: the rectangle x 20-52, y 10-42."""
    trick = build_trick("random_erasing")
    rng = Scripted(coins=[0.1], uniforms=[0.2, 0.0], integers=[10, 20])
    img = torch.zeros(3, 50, 100)
    tgt = target([[25, 12, 45, 40], [0, 0, 30, 30], [60, 5, 90, 45]], [1, 2, 3])
    (out,), (t,) = trick.on_batch([img], [tgt], ctx(rng))
    assert rng.calls == [("coin",), ("uniform", 0.02, 0.33), ("uniform", math.log(0.3), math.log(3.3)),
                         ("integers", 0, 50 - 32 + 1), ("integers", 0, 100 - 32 + 1), ("fill", (3, 32, 32))]
    assert (out[:, 10:42, 20:52] == 0.5).all() and out.sum() == 0.5 * 3 * 32 * 32
    # the first box lies wholly inside: dropped with its label and weight; the others stay unchanged
    assert t["boxes"].tolist() == [[0, 0, 30, 30], [60, 5, 90, 45]] and t["labels"].tolist() == [2, 3]
    assert len(t["weights"]) == 2


def test_random_erasing_retries_a_rectangle_that_does_not_fit_and_is_off_with_the_coin():
    trick = build_trick("random_erasing", attempts=2)
    # share 0.33 of 100 x 50 at aspect e^1.19 = 3.29: h = round(sqrt(1650 * 3.29)) = 74 > 50: retried
    rng = Scripted(coins=[0.2], uniforms=[0.33, 1.19, 0.02, 0.0], integers=[0, 0])
    (out,), _ = trick.on_batch([torch.zeros(3, 50, 100)], [target([[0, 0, 5, 5]], [1])], ctx(rng))
    assert [c[0] for c in rng.calls] == ["coin", "uniform", "uniform", "uniform", "uniform", "integers", "integers",
                                         "fill"]
    # the second try: share 0.02 of 5,000 px = 100 px at ratio 1: 10 x 10 at the top-left corner
    assert (out[:, 0:10, 0:10] == 0.5).all() and out.sum() == 0.5 * 3 * 100
    off = Scripted(coins=[0.9])
    img = torch.zeros(3, 50, 100)
    (same,), _ = trick.on_batch([img], [target([[0, 0, 5, 5]], [1])], ctx(off))
    assert same is img and off.calls == [("coin",)]


def test_cutout_is_the_authors_clipped_square_of_half_the_shorter_side():
    """50 x 100 image: L = 0.5 x 50 = 25, L//2 = 12. Centre (x 95, y 5): x 83-100 (clipped at 107),
    y 0-17 (clipped at -7), filled with the ImageNet mean."""
    trick = build_trick("cutout")
    rng = Scripted(coins=[0.0], integers=[5, 95])
    img = torch.ones(3, 50, 100)
    tgt = target([[85, 2, 99, 15], [80, 0, 100, 20]], [1, 2])
    (out,), (t,) = trick.on_batch([img], [tgt], ctx(rng))
    assert rng.calls == [("coin",), ("integers", 0, 50), ("integers", 0, 100)]
    mean = torch.tensor([0.485, 0.456, 0.406])
    assert torch.equal(out[:, 0:17, 83:100], mean[:, None, None].expand(3, 17, 17))
    assert out[:, 17:, :].eq(1).all() and out[:, :, :83].eq(1).all()
    assert t["boxes"].tolist() == [[80, 0, 100, 20]] and t["labels"].tolist() == [2]  # the covered one dropped


def test_erasing_arguments_are_checked_by_their_keys():
    from ablate.tricks import TrickConfigError

    with pytest.raises(TrickConfigError, match=r"tricks\.random_erasing\.p=1\.5"):
        build_trick("random_erasing", p=1.5)
    with pytest.raises(TrickConfigError, match=r"tricks\.random_erasing\.scale=\[0\.5, 0\.1\]"):
        build_trick("random_erasing", scale=[0.5, 0.1])
    with pytest.raises(TrickConfigError, match=r"tricks\.cutout\.size=0"):
        build_trick("cutout", size=0)


@pytest.mark.parametrize("name", ["random_erasing", "cutout"])
def test_erasing_tricks_change_training(name):
    really_on(name, model="fcos", p=1.0)


def test_same_seed_same_erasure():
    trick = build_trick("random_erasing", p=1.0)
    imgs = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    tg = [target([[0, 0, 10, 10]], [1])]
    a, _ = trick.on_batch(imgs, tg, batch_context(seed=3))
    b, _ = trick.on_batch(imgs, tg, batch_context(seed=3))
    c, _ = trick.on_batch(imgs, tg, batch_context(seed=4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


# ---------------------------------------------------------------- multiscale (a batch-level trick too)

def test_multiscale_draws_ultralytics_size_and_scales_the_boxes():
    """Base 160 (the longer side): randrange(80, 240 + 32) // 32 * 32; a draw of 250 gives 224, factor
    1.4: a 160 x 120 image becomes ceil(168 / 32) * 32 = 192 high and 224 wide."""
    trick = build_trick("multiscale")
    rng = Scripted(integers=[250])
    img = torch.rand(3, 120, 160)
    tgt = target([[16, 12, 80, 60]], [1])
    (out,), (t,) = trick.on_batch([img], [tgt], ctx(rng))
    assert rng.calls == [("integers", 80, 240 + 32)]
    assert out.shape == (3, 192, 224)
    assert t["boxes"][0].tolist() == pytest.approx([16 * 224 / 160, 12 * 192 / 120, 80 * 224 / 160, 60 * 192 / 120])
    same = Scripted(integers=[175])  # 175 // 32 * 32 = 160: the base size, left as it is
    (kept,), _ = trick.on_batch([img], [tgt], ctx(same))
    assert kept is img


def test_multiscale_changes_training():
    really_on("multiscale", model="fcos")


def test_scale_jitter_is_detectron2s_resize_crop_and_pad():
    """Base 100 (a 100 x 50 image, w x h). r = 1.5: scale min(150/50, 150/100) = 1.5 -> 150 x 75;
    fraction 0.4 of the spare room (50 wide, 0 high): x offset 20. The crop is x 20-120 of the
    resized image, 75 high, padded with 0.5 to 100 x 100. A box at x 10-30 (15-45 resized) is clipped
    to 0-25; one at x 0-8 (0-12 resized) is cropped away."""
    trick = build_trick("scale_jitter")
    rng = Scripted(uniforms=[1.5, 0.4])
    img = torch.zeros(3, 50, 100)
    img[:, :, 60:] = 1.0  # the right part: x >= 90 once resized
    tgt = target([[10, 10, 30, 20], [0, 0, 8, 8]], [1, 2])
    (out,), (t,) = trick.on_batch([img], [tgt], ctx(rng))
    assert rng.calls == [("uniform", 0.1, 2.0), ("uniform", 0.0, 1.0)]
    assert out.shape == (3, 100, 100)
    assert (out[:, 75:, :] == 0.5).all()  # padded below the 75-px-high crop
    assert (out[:, :75, :68] == 0).all() and (out[:, :75, 72:] == 1).all()  # x 90 resized is x 70 in the crop
    assert t["boxes"][0].tolist() == pytest.approx([0, 15, 25, 30])
    assert t["labels"].tolist() == [1]


def test_scale_jitter_changes_training():
    really_on("scale_jitter", model="fcos")


# ---------------------------------------------------------------- photometric

def test_hsv_round_trip_and_opencvs_values_by_hand():
    from ablate.tricks.data.photometric import hsv_to_rgb, rgb_to_hsv

    px = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.25, 0.5], [0.0, 0.0, 0.75, 0.5]])[:, :, None]  # 4 pixels
    hsv = rgb_to_hsv(px)
    # red 0 deg, green 120, (0, .25, .75): V .75, S 1, H 240 + 60 (0 - .25) / .75 = 220; gray: H 0, S 0
    assert hsv[0, :, 0].tolist() == pytest.approx([0.0, 120.0, 220.0, 0.0])
    assert hsv[1, :, 0].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.0])
    assert hsv[2, :, 0].tolist() == pytest.approx([1.0, 1.0, 0.75, 0.5])
    assert torch.allclose(hsv_to_rgb(hsv), px, atol=1e-6)


class ScriptedPhoto(Scripted):
    def __init__(self, flags, values):
        super().__init__(integers=list(flags), uniforms=list(values))

    def permutation(self, n):
        self.calls.append(("permutation", n))
        return np.array([2, 1, 0])


def test_photometric_steps_in_mmdetections_order_by_hand():
    trick = build_trick("photometric")
    red = torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 2, 2)
    # mode 0 (contrast last), every flag on: brightness -0.5, contrast 2, saturation 0.5, hue +120, swap
    rng = ScriptedPhoto(flags=[0, 1, 1, 1, 1, 1], values=[-0.5, 2.0, 0.5, 120.0])
    (out,), _ = trick.on_batch([red], [{}], ctx(rng))
    assert [c[0] for c in rng.calls] == ["integers"] * 6 + ["uniform"] * 4 + ["permutation"]
    # (0.5, -0.5, -0.5): V .5, S (0.5 + 0.5) / 0.5 = 2 -> 1 after x 0.5 ... H 0 -> 120: green sector
    # with V .5, S 1: (p, v, p) = (0, .5, 0); contrast x 2: (0, 1, 0); swapped (2, 1, 0): (0, 1, 0)
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    off = ScriptedPhoto(flags=[0, 0, 0, 0, 0, 0], values=[-0.5, 2.0, 0.5, 120.0])
    (same,), _ = trick.on_batch([red], [{}], ctx(off))
    assert torch.allclose(same, red)


def test_photometric_changes_training():
    really_on("photometric", model="fcos")


# ---------------------------------------------------------------- random_crop

class ScriptedCrop(Scripted):
    """Scripted draws for the random crop: the mode (integers), then per mode the attempts' widths and
    heights (uniform, size n) and their left and top fractions (random, size n)."""

    def __init__(self, integers, uniforms, fractions):
        super().__init__(integers=integers, uniforms=uniforms)
        self.fractions = list(fractions)

    def uniform(self, low, high, size=None):
        self.calls.append(("uniform", low, high, size))
        return np.array(self.uniforms.pop(0))

    def random(self, size=None):
        self.calls.append(("random", size))
        return np.array(self.fractions.pop(0))


def test_random_crop_keeps_the_boxes_whose_centre_is_in_a_patch_of_enough_iou():
    """A 100 x 100 image, boxes A (10-30) and B (60-90) squares. Mode index 2 -> min IoU 0.3 would
    need IoU >= 0.3 with both: a 60 x 60 patch at (5, 5) has IoU 400/3600 = 0.11 with A: retried;
    then mode 0 (index 6, any patch): its first attempt too thin (aspect 20/60 < 0.5), its second
    the same 60 x 60 patch at (5, 5): B's centre (75, 75) is outside, A's (20, 20) in: A kept, shifted
    by (-5, -5), then the 60-px patch resized to 100 (x 5/3). The left and top are 1 + 39 u (the
    reference's numpy uniform(w - new_w) lies between 1 and w - new_w = 40): u = 4/39 gives 5."""
    trick = build_trick("random_crop", attempts=2)
    u = 4 / 39
    rng = ScriptedCrop(integers=[2, 6], uniforms=[[60.0, 60.0], [60.0, 60.0], [60.0, 60.0], [20.0, 60.0]],
                       fractions=[[u, u], [u, u], [u, u], [u, u]])
    img = torch.zeros(3, 100, 100)
    img[:, 30:40, 30:40] = 1.0
    tgt = target([[10, 10, 30, 30], [60, 60, 90, 90]], [1, 2])
    (out,), (t,) = trick.on_batch([img], [tgt], ctx(rng))
    assert rng.calls[0] == ("integers", 0, 7) and rng.calls[1] == ("uniform", 30.0, 100, 2)
    assert rng.calls[3] == ("random", 2) and rng.calls[5] == ("integers", 0, 7)
    assert out.shape == (3, 100, 100)
    assert t["labels"].tolist() == [1]
    assert t["boxes"][0].tolist() == pytest.approx([5 * 5 / 3, 5 * 5 / 3, 25 * 5 / 3, 25 * 5 / 3])
    # the bright square at 30-40 lands at (25-35) x 5/3 = 41.7-58.3
    assert out[0, 45:55, 45:55].min() > 0.99 and out[0, :40, :40].max() < 0.01


def test_random_crop_with_a_real_generator_keeps_boxes_inside_its_patch():
    trick = build_trick("random_crop")
    rng = np.random.default_rng(0)
    for _ in range(20):
        img = torch.rand(3, 60, 80)
        (out,), (t,) = trick.on_batch([img], [target([[10, 10, 40, 40], [50, 20, 75, 55]], [1, 2])], ctx(rng))
        h, w = out.shape[1:]
        assert max(h, w) == 80 and len(t["boxes"]) >= 1
        b = t["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w + 1e-4).all() and (b[:, 3] <= h + 1e-4).all()


def test_random_crop_mode_1_keeps_the_image():
    trick = build_trick("random_crop")
    img = torch.rand(3, 50, 80)
    (out,), (t,) = trick.on_batch([img], [target([[0, 0, 10, 10]], [1])], ctx(Scripted(integers=[0])))
    assert out is img and t["labels"].tolist() == [1]


def test_random_crop_changes_training():
    really_on("random_crop", model="fcos")


# ---------------------------------------------------------------- rotation

def test_rotation_turns_pixels_and_boxes_the_same_way():
    """A 4 x 4 image with its top-left 2 x 2 quadrant bright, turned 90 degrees counter-clockwise:
    the quadrant is at the bottom left, and so is the box around it."""
    trick = build_trick("rotation", min_size=0)
    img = torch.zeros(1, 4, 4)
    img[:, :2, :2] = 1.0
    out, t = trick.rotate(img, target([[0, 0, 2, 2]], [1]), 90.0)
    assert torch.allclose(out[0, 2:, :2], torch.ones(2, 2), atol=1e-5) and out[0, :2, :].abs().max() < 1e-5
    assert t["boxes"][0].tolist() == pytest.approx([0, 2, 2, 4], abs=1e-5)


def test_rotation_inflates_a_box_to_its_rotated_bounds():
    from ablate.tricks.data.rotation import rotated_bounds

    box = torch.tensor([[45.0, 45.0, 55.0, 55.0]])  # 10 x 10 at the centre of a 100 x 100 image
    side = 10 * (math.cos(math.radians(10)) + math.sin(math.radians(10)))  # 11.58
    assert rotated_bounds(box, 10.0, 50, 50)[0].tolist() == pytest.approx([50 - side / 2, 50 - side / 2,
                                                                           50 + side / 2, 50 + side / 2])


def test_rotation_draws_its_angle_and_drops_boxes_turned_out_of_the_image():
    trick = build_trick("rotation")
    rng = Scripted(coins=[0.0], uniforms=[10.0])
    tgt = target([[0, 0, 3, 3], [40, 40, 60, 60]], [1, 2])  # the corner box is turned mostly outside
    _, (t,) = trick.on_batch([torch.rand(3, 100, 100)], [tgt], ctx(rng))
    assert rng.calls == [("coin",), ("uniform", -10, 10)]
    assert t["labels"].tolist() == [2]


def test_rotation_filters_boxes_as_yoloxs_box_candidates():
    """Megvii-BaseDetection/YOLOX yolox/data/data_augment.py box_candidates (wh_thr 2, ar_thr 20,
    area_thr 0.2) after random_perspective: a box kept only if its sides exceed 2 px, its area 0.2 of
    the box before, its aspect ratio stays under 20. Turned 10 degrees about the centre of a 400-px
    image, the 24 x 60 box at the left border keeps bounds of 3.4 x 63.3 px: 0.15 of its area (the
    old 0.1 kept it; aspect 18.6 and sides > 2 pass), dropped; the central box is kept."""
    trick = build_trick("rotation")
    rng = Scripted(coins=[0.0], uniforms=[10.0])
    tgt = target([[0, 6, 24, 66], [150, 150, 250, 250]], [1, 2])
    _, (t,) = trick.on_batch([torch.rand(1, 400, 400)], [tgt], ctx(rng))
    assert t["labels"].tolist() == [2]


def test_rotation_changes_training():
    really_on("rotation", model="fcos")


# ---------------------------------------------------------------- mosaic

class ScriptedMosaic:
    def __init__(self, coins, partners, order, centres):
        self.coins, self.partners, self.order, self.centres, self.calls = list(coins), partners, order, list(centres), []

    def random(self):
        self.calls.append(("coin",))
        return self.coins.pop(0)

    def integers(self, low, high, size=None):
        self.calls.append(("integers", low, high, size))
        return np.array(self.partners)

    def permutation(self, n):
        self.calls.append(("permutation", n))
        return np.array(self.order)

    def uniform(self, low, high):
        self.calls.append(("uniform", low, high))
        return self.centres.pop(0)


def test_mosaic_places_four_images_around_the_centre_and_keeps_the_central_window():
    """Four 8 x 8 images of values 0, 1, 2, 3, each with one box over all of it. Image 0 with
    partners 1, 2, 3 in that order, centre (8, 8) on the 16 x 16 canvas: each image fills a
    quadrant; the window [4, 12) shows a 4 x 4 corner of each, and each box is cut to that corner."""
    trick = build_trick("mosaic", prob=0.5)
    images = [torch.full((1, 8, 8), float(k)) for k in range(4)]
    targets = [target([[0, 0, 8, 8]], [k + 1]) for k in range(4)]
    # only the first image is mixed: the coins of the others say no
    rng = ScriptedMosaic(coins=[0.1, 0.9, 0.9, 0.9], partners=[0, 1, 2], order=[0, 1, 2, 3], centres=[1.0, 1.0])
    ctx_ = BatchContext(epoch=0, num_epochs=10, step=0, total_steps=1, rng=rng)
    (out, *rest), (t, *_) = trick.on_batch(images, targets, ctx_)
    assert rng.calls[:5] == [("coin",), ("integers", 0, 3, 3), ("permutation", 4), ("uniform", 0.5, 1.5),
                             ("uniform", 0.5, 1.5)]
    assert out.shape == (1, 8, 8)
    assert out[0, :4, :4].eq(0).all() and out[0, :4, 4:].eq(1).all() and out[0, 4:, :4].eq(2).all()
    assert out[0, 4:, 4:].eq(3).all()
    assert t["boxes"].tolist() == [[0, 0, 4, 4], [4, 0, 8, 4], [0, 4, 4, 8], [4, 4, 8, 8]]
    assert t["labels"].tolist() == [1, 2, 3, 4]
    assert all(r is img for r, img in zip(rest, images[1:]))  # the others' coins said no


def test_mosaic_filters_boxes_as_yolov5s_box_candidates():
    """ultralytics/yolov5 utils/augmentations.py box_candidates after load_mosaic: sides > 2 px, area
    > 0.1 of the box before the cut, aspect ratio < 100 (ar_thr). Two 64 x 64 images, centre (96, 64)
    on the 128 x 128 canvas: image 0 fills x [32, 96), y [0, 64), all of it inside the window's x
    range [32, 96). Its boxes: a 64 x 3 strip (aspect 21.3: kept, where the old limit 20 dropped
    it), a 64 x 0.5 strip (aspect 128, and under 2 px: dropped), a box cut to 3 / 35 of its area
    (y [0, 35) -> [32, 35): dropped) and one cut to 8 / 40 (y [0, 40) -> [32, 40): kept)."""
    trick = build_trick("mosaic", prob=0.5)  # the second image's coin (0.9) says no
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    images = [torch.rand(1, 64, 64) for _ in range(2)]
    strips = [[0, 60, 64, 63], [0, 50, 64, 50.5], [0, 0, 64, 35], [0, 0, 64, 40]]
    targets = [target(strips, [1, 2, 3, 4]), empty]
    rng = ScriptedMosaic(coins=[0.1, 0.9], partners=[0, 0, 0], order=[0, 1, 2, 3], centres=[1.5, 1.0])
    (_, _), (t, _) = trick.on_batch(images, targets, BatchContext(epoch=0, num_epochs=10, step=0, total_steps=1,
                                                                  rng=rng))
    assert t["labels"].tolist() == [1, 4]
    assert t["boxes"].tolist() == [[0, 28, 64, 31], [0, 0, 64, 8]]


def test_mosaic_is_off_for_the_last_tenth_of_training():
    trick = build_trick("mosaic")
    images = [torch.rand(3, 8, 8) for _ in range(2)]
    out, _ = trick.on_batch(images, [target([[0, 0, 4, 4]], [1])] * 2,
                            BatchContext(epoch=9, num_epochs=10, step=0, total_steps=1, rng=np.random.default_rng(0)))
    assert out is images


def test_mosaic_changes_training():
    really_on("mosaic", model="fcos")


@pytest.mark.parametrize("factor", [0.5, 1.3])
def test_saturation_alone_equals_the_hsv_round_trip(factor):
    """The shortcut for a saturation change without a hue change gives the round trip's numbers,
    on images shifted by a brightness delta (negative values included) and with gray pixels."""
    from ablate.tricks.data.photometric import hsv_to_rgb, rgb_to_hsv, saturate, scaled_saturation

    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) - 0.1
    img[:, 0, :4] = 0.4  # gray
    hsv = rgb_to_hsv(img)
    hsv[1] = scaled_saturation(hsv[1], factor)
    assert torch.allclose(saturate(img, factor), hsv_to_rgb(hsv), atol=1e-5)
    assert not torch.allclose(saturate(img, factor), img, atol=1e-3)


def test_rotation_of_a_batch_in_one_call_equals_one_image_at_a_time():
    trick = build_trick("rotation")
    imgs = torch.rand(3, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    together = trick.rotate_images(imgs, [5.0, -8.0, 0.5])
    for k, degrees in enumerate([5.0, -8.0, 0.5]):
        assert torch.allclose(together[k], trick.rotate_images(imgs[k:k + 1], [degrees])[0], atol=1e-6)
    assert not torch.allclose(together[0], imgs[0], atol=1e-3)


def test_photometric_on_a_batch_equals_one_image_at_a_time():
    trick = build_trick("photometric")
    imgs = [torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(k)) for k in range(6)]
    together, _ = trick.on_batch(imgs, [{}] * 6, ctx(np.random.default_rng(3)))
    rng = np.random.default_rng(3)
    for img, out in zip(imgs, together):
        assert torch.allclose(out, trick.distort(img, rng), atol=1e-6)
    assert any(not torch.allclose(out, img, atol=1e-3) for img, out in zip(imgs, together))


def test_rotation_grid_is_torchs_affine_grid():
    import math

    import torch.nn.functional as F

    from ablate.tricks.data.rotation import affine_grid

    a = math.radians(7.0)
    theta = torch.tensor([[[math.cos(a), -math.sin(a) * 0.6, 0.1], [math.sin(a) / 0.6, math.cos(a), -0.2]]])
    assert torch.allclose(affine_grid(theta, 12, 20), F.affine_grid(theta, [1, 3, 12, 20], align_corners=False),
                          atol=1e-6)


def test_hsv_to_rgb_closed_form_is_opencvs_sector_formula():
    """hsv_to_rgb's closed form against OpenCV's HSV2RGB as written: sector i = floor(H / 60), f its
    fraction, (r, g, b) from v, p = v(1 - s), q = v(1 - s f), t = v(1 - s(1 - f)) by sector."""
    from ablate.tricks.data.photometric import hsv_to_rgb

    gen = torch.Generator().manual_seed(0)
    h, s, v = torch.rand(50, generator=gen) * 360, torch.rand(50, generator=gen), torch.rand(50, generator=gen)
    expected = []
    for hh, ss, vv in zip(h.tolist(), s.tolist(), v.tolist()):
        i, f = int(hh // 60) % 6, hh / 60 - int(hh // 60)
        p, q, t = vv * (1 - ss), vv * (1 - ss * f), vv * (1 - ss * (1 - f))
        expected.append([(vv, t, p), (q, vv, p), (p, vv, t), (p, q, vv), (t, p, vv), (vv, p, q)][i])
    got = hsv_to_rgb(torch.stack([h, s, v])[:, :, None])[:, :, 0].T
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)
