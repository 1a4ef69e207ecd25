"""show_batch: the first training batch after the tricks, drawn to a PNG, deterministically."""
import hashlib

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from ablate.config import conf_dir
from ablate.show_batch import first_batch, image_size_px, show_batch
from ablate.train import epoch_seed, to_device
from ablate.data import build_data, make_loader


@pytest.fixture
def cache(shapes_cache):
    return shapes_cache


def make_cfg(cache, *overrides):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=["profile=smoke", f"paths.cache={cache}", *overrides])


def test_png_is_valid_sized_for_the_grid_and_the_same_bytes_twice(tmp_path, cache):
    cfg = make_cfg(cache, "tricks=[mixup]")
    a = show_batch(cfg, tmp_path / "a.png", num_images=3)
    b = show_batch(cfg, tmp_path / "sub" / "b.png", num_images=3)
    assert a == tmp_path / "a.png" and b.is_file()
    with Image.open(a) as im:
        im.verify()
    with Image.open(a) as im:
        assert im.format == "PNG" and im.size == image_size_px(3) == (900, 300)
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10  # images drawn, not a blank canvas
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "sub").glob(".*.tmp"))


def test_num_images_is_capped_at_the_batch_and_other_tricks_draw_other_pictures(tmp_path, cache):
    base = show_batch(make_cfg(cache), tmp_path / "base.png", num_images=8)  # smoke batch: 4
    with Image.open(base) as im:
        assert im.size == image_size_px(4) == (1200, 300)
    mixed = show_batch(make_cfg(cache, "tricks=[mixup]"), tmp_path / "mixup.png", num_images=8)
    assert base.read_bytes() != mixed.read_bytes()
    with pytest.raises(ValueError, match="num_images"):
        show_batch(make_cfg(cache), tmp_path / "none.png", num_images=0)


def test_first_batch_is_the_one_training_sees_at_epoch_0_after_the_tricks(cache):
    cfg = make_cfg(cache, "tricks=[mixup]", "seed=5")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    images, targets, classes = first_batch(cfg, num_images=4)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's torch random state is left alone
    assert classes == ["circle", "square", "triangle", "cross", "ring"]

    # what train.py does for epoch 0, written out: the batch before MixUp
    data = build_data(cfg.data, cache)
    eseed = epoch_seed(5, 0)
    torch.manual_seed(eseed)
    data.train.set_epoch(eseed)
    raw_images, raw_targets = to_device(*next(iter(make_loader(data.train, cfg.data.batch_size, shuffle=True,
                                                               num_workers=0, seed=eseed))), torch.device("cpu"), 0)
    assert len(images) == len(raw_images) == 4
    for img, tgt, raw_tgt in zip(images, targets, raw_targets):
        assert img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        assert tgt["image_id"] == raw_tgt["image_id"]
        n = len(raw_tgt["boxes"])
        # MixUp (prob 1) keeps the image's own boxes first, with labels 1..K (no model offset)
        assert torch.equal(tgt["boxes"][:n], raw_tgt["boxes"]) and torch.equal(tgt["labels"][:n], raw_tgt["labels"])
        assert len(tgt["boxes"]) > n and "weights" in tgt
        assert tgt["labels"].min() >= 1
