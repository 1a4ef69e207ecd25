"""The Dataset: resize and box scaling, train flip, the in-memory cache, collate and the loader."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ablate.data import DataBundle, DatasetError, build_data, collate, make_loader
from ablate.data.shapes import generator_hash


@pytest.fixture
def one_image_set(coco_set_factory, load_conf, tmp_path):
    """A coco set with one 200x100 train image and one 60x120 val image; returns a cfg maker."""
    ann_file = coco_set_factory(
        [{"id": 5, "file_name": "wide.png", "width": 200, "height": 100}],
        [{"id": 1, "image_id": 5, "category_id": 2, "bbox": [20, 40, 60, 30]},
         {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 200, 100]}])
    coco_set_factory([{"id": 9, "file_name": "tall.png", "width": 60, "height": 120}],
                     [{"id": 3, "image_id": 9, "category_id": 1, "bbox": [6, 12, 30, 60]}],
                     name="instances_val.json")
    root = ann_file.parent.parent

    def cfg(**overrides):
        return load_conf("data/coco", root=str(root), **overrides)

    return root, cfg


def test_resize_and_box_scaling(one_image_set, tmp_path):
    root, cfg = one_image_set
    bundle = build_data(cfg(image_size=50, hflip=0.0), tmp_path / "cache")
    assert isinstance(bundle, DataBundle) and bundle.root == root
    image, target = bundle.train[0]
    # 200x100 -> longer side 50: scale 0.25, 50x25.
    assert image.shape == (3, 25, 50) and image.dtype == torch.uint8
    assert target["scale"] == 0.25 and target["orig_size"] == (100, 200) and target["image_id"] == 5
    torch.testing.assert_close(target["boxes"], torch.tensor([[5.0, 10.0, 20.0, 17.5], [0.0, 0.0, 50.0, 25.0]]))
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    # The pixels are PIL's antialiased resize of the original.
    expected = np.array(Image.open(root / "images" / "wide.png").convert("RGB").resize((50, 25), Image.BILINEAR))
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))
    # Portrait: 60x120 -> 25x50, scale 50/120.
    image, target = bundle.val[0]
    assert image.shape == (3, 50, 25) and target["orig_size"] == (120, 60)
    s = 50 / 120
    torch.testing.assert_close(target["boxes"], torch.tensor([[6 * s, 12 * s, 36 * s, 72 * s]]))
    assert bundle.train.image_size == 50 and bundle.train.image_ids == [5]


def test_image_size_null_keeps_original(one_image_set, tmp_path):
    root, cfg = one_image_set
    bundle = build_data(cfg(image_size=None, hflip=0.0), tmp_path / "cache")
    image, target = bundle.train[0]
    original = np.array(Image.open(root / "images" / "wide.png").convert("RGB"))
    assert torch.equal(image, torch.from_numpy(original).permute(2, 0, 1))
    assert target["scale"] == 1.0
    torch.testing.assert_close(target["boxes"], torch.tensor([[20.0, 40.0, 80.0, 70.0], [0.0, 0.0, 200.0, 100.0]]))


def test_flip_hand_computed(one_image_set, tmp_path):
    _, cfg = one_image_set
    plain = build_data(cfg(image_size=50, hflip=0.0), tmp_path / "cache")
    flipped = build_data(cfg(image_size=50, hflip=1.0), tmp_path / "cache")
    image0, _ = plain.train[0]
    flipped.train.set_epoch(0)
    image, target = flipped.train[0]
    assert type(image) is torch.Tensor and type(target["boxes"]) is torch.Tensor
    assert torch.equal(image, image0.flip(-1))
    # x -> 50 - x: [5, 10, 20, 17.5] -> [30, 10, 45, 17.5].
    torch.testing.assert_close(target["boxes"], torch.tensor([[30.0, 10.0, 45.0, 17.5], [0.0, 0.0, 50.0, 25.0]]))
    assert target["labels"].tolist() == [2, 1]
    # Val never flips.
    val_image, val_target = flipped.val[0]
    assert torch.equal(val_image, plain.val[0][0])
    torch.testing.assert_close(val_target["boxes"], plain.val[0][1]["boxes"])


def small_shapes(load_conf, tmp_path, **overrides):
    return build_data(load_conf("data/shapes", **{"image_size": 32, "hflip": 0.5, "generator.num_train": 12,
                                                   "generator.num_val": 2, "generator.image_size": 32,
                                                   "generator.min_size": 6, "generator.max_size": 16,
                                                   **overrides}), tmp_path / "cache")


def flips_read(dataset, order) -> dict[int, bool]:
    """Which images of `order` come out flipped (their boxes differ from the unflipped ones)."""
    return {i: not torch.equal(dataset[i][1]["boxes"], dataset.targets(i)[0]) for i in order}


def test_flips_depend_on_the_epoch_seed_and_the_image_only(load_conf, tmp_path):
    train = small_shapes(load_conf, tmp_path).train
    assert train.flip_rng == "sample"
    with pytest.raises(RuntimeError, match="set_epoch"):
        train[0]
    train.set_epoch(11)
    torch.manual_seed(0)
    forward = flips_read(train, range(len(train)))
    # Another torch state, torch draws in between (a trick's), the images read backwards: the same flips.
    torch.manual_seed(1)
    torch.rand(1000)
    backward = flips_read(train, reversed(range(len(train))))
    assert forward == backward
    assert any(forward.values()) and not all(forward.values())
    assert forward == {i: train.flipped(i) for i in range(len(train))}
    train.set_epoch(12)
    assert flips_read(train, range(len(train))) != forward


def test_a_loader_worker_reads_the_same_flips_as_the_main_process(load_conf, tmp_path):
    train = small_shapes(load_conf, tmp_path).train
    train.set_epoch(5)

    def batches(workers):
        torch.manual_seed(5)  # train.py's per-epoch torch seed: a worker's torch seed is another
        loader = make_loader(train, batch_size=4, shuffle=True, num_workers=workers, seed=5)
        return [(t["image_id"], t["boxes"]) for _, ts in loader for t in ts]

    main, worker = batches(0), batches(1)
    assert [i for i, _ in main] == [i for i, _ in worker]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(main, worker))


def test_flip_rng_global_follows_torch_seed(load_conf, tmp_path):
    train = small_shapes(load_conf, tmp_path, flip_rng="global").train

    def flips():
        torch.manual_seed(123)
        return flips_read(train, range(len(train)))

    a = flips()
    assert a == flips() and any(a.values()) and not all(a.values())
    torch.manual_seed(123)
    torch.rand(1000)  # a trick's draws before: other flips (what flip_rng=sample prevents)
    assert flips_read(train, range(len(train))) != a


def test_bad_flip_rng_rejected(one_image_set, tmp_path):
    _, cfg = one_image_set
    with pytest.raises(DatasetError, match="flip_rng"):
        build_data(cfg(flip_rng="worker"), tmp_path / "cache")


@pytest.mark.parametrize("split", ["train", "val"])
def test_cache_on_and_off_give_identical_items(load_conf, tmp_path, caplog, split):
    overrides = {"image_size": 48, "generator.num_train": 6, "generator.num_val": 4, "generator.image_size": 64,
                 "generator.min_size": 8, "generator.max_size": 30}
    caplog.set_level(logging.INFO, logger="ablate.data")
    on = build_data(load_conf("data/shapes", **overrides), tmp_path / "cache")
    assert "cached in memory" in caplog.text
    caplog.clear()
    off = build_data(load_conf("data/shapes", cache_ram_mb=0, **overrides), tmp_path / "cache")
    assert "decoding on each access" in caplog.text
    a, b = getattr(on, split), getattr(off, split)
    assert a.cached and not b.cached
    a.set_epoch(3)
    b.set_epoch(3)
    for i in range(len(a)):
        ia, ta = a[i]
        ib, tb = b[i]
        assert torch.equal(ia, ib) and ia.shape[0] == 3 and max(ia.shape[1:]) == 48
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]) if isinstance(ta[k], torch.Tensor) else ta[k] == tb[k]


def test_cache_hands_out_copies(one_image_set, tmp_path):
    _, cfg = one_image_set
    bundle = build_data(cfg(image_size=50, hflip=0.0), tmp_path / "cache")
    image, target = bundle.train[0]
    before = image.clone()
    image.zero_()
    target["boxes"].zero_()
    again, target = bundle.train[0]
    assert torch.equal(again, before) and target["boxes"].abs().sum() > 0


def test_bad_hflip_rejected(one_image_set, tmp_path):
    _, cfg = one_image_set
    with pytest.raises(DatasetError, match="hflip"):
        build_data(cfg(hflip=1.5), tmp_path / "cache")


def test_collate():
    batch = [(torch.zeros(3, 4, 5), {"image_id": 1}), (torch.zeros(3, 6, 5), {"image_id": 2})]
    images, targets = collate(batch)
    assert isinstance(images, list) and isinstance(targets, list)
    assert [i.shape[1] for i in images] == [4, 6] and [t["image_id"] for t in targets] == [1, 2]


class _Ids(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.full((3, 2, 2), i, dtype=torch.uint8), {"image_id": i}


def test_loader_order_is_seeded():
    def order(seed, epochs=2):
        loader = make_loader(_Ids(), batch_size=4, shuffle=True, num_workers=0, seed=seed)
        return [[t["image_id"] for _, ts in loader for t in ts] for _ in range(epochs)]

    a, b = order(7), order(7)
    assert a == b and a[0] != a[1] and sorted(a[0]) == list(range(20))
    assert order(8) != a
    loader = make_loader(_Ids(), batch_size=3, shuffle=False, num_workers=0, drop_last=True)
    assert [t["image_id"] for _, ts in loader for t in ts] == list(range(18))
    assert loader.collate_fn is collate and not loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()


def test_loader_with_worker(load_conf, tmp_path):
    bundle = build_data(load_conf("data/shapes", **{"image_size": 32, "generator.num_train": 8,
                                                     "generator.num_val": 2, "generator.image_size": 32,
                                                     "generator.min_size": 6, "generator.max_size": 16}),
                        tmp_path / "cache")
    bundle.train.set_epoch(0)
    loader = make_loader(bundle.train, batch_size=4, shuffle=True, num_workers=1, seed=0)
    assert loader.persistent_workers
    ids = [t["image_id"] for _, ts in loader for t in ts]
    assert sorted(ids) == bundle.train.image_ids


def test_shapes_bundle(load_conf, tmp_path, caplog):
    cfg = load_conf("data/shapes", **{"image_size": 48, "generator.num_train": 10, "generator.num_val": 5,
                                     "generator.image_size": 64, "generator.min_size": 8, "generator.max_size": 40})
    bundle = build_data(cfg, tmp_path / "cache")
    assert bundle.root == tmp_path / "cache" / "shapes" / generator_hash(cfg.generator)
    assert bundle.classes == list(cfg.generator.classes)
    assert bundle.label_to_cat_id == {k + 1: k + 1 for k in range(len(bundle.classes))}
    assert len(bundle.train) == 10 and len(bundle.val) == 5
    assert len(bundle.val_coco_gt["images"]) == 5
    bundle.train.set_epoch(0)
    for ds in (bundle.train, bundle.val):
        for i in range(len(ds)):
            image, target = ds[i]
            assert image.shape == (3, 48, 48) and target["scale"] == 0.75
            b = target["boxes"]
            assert len(b) >= 1 and (b[:, 2:] > b[:, :2]).all() and b.min() >= 0 and b.max() <= 48
            assert target["labels"].min() >= 1 and target["labels"].max() <= len(bundle.classes)
    # A second build reuses the generated folder.
    caplog.set_level(logging.INFO, logger="ablate.data")
    again = build_data(cfg, tmp_path / "cache")
    assert again.root == bundle.root and "reusing" in caplog.text
