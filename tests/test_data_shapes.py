"""The shapes generator: deterministic, COCO json that the reader serves, a fair spread of objects."""
from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ablate.data import DatasetError
from ablate.data import shapes
from ablate.data.shapes import GeneratorParams, ensure_shapes, generator_hash, render_image

SMALL = {"generator.num_train": 6, "generator.num_val": 3, "generator.image_size": 64,
         "generator.min_size": 8, "generator.max_size": 40}


@pytest.fixture
def small_gen(load_conf):
    def make(**overrides):
        return load_conf("data/shapes", **{**SMALL, **{f"generator.{k}": v for k, v in overrides.items()}}).generator

    return make


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_config_gives_identical_files(small_gen, tmp_path):
    gen = small_gen()
    a = ensure_shapes(gen, tmp_path / "one")
    b = ensure_shapes(gen, tmp_path / "two")
    fa, fb = files(a), files(b)
    assert len([k for k in fa if k.endswith(".png")]) == 9
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k] == fb[k], k


def test_image_depends_on_seed_split_index_only(small_gen, tmp_path):
    p6 = GeneratorParams.from_cfg(small_gen())
    p20 = GeneratorParams.from_cfg(small_gen(num_train=20, num_val=9))
    for i in (0, 5):
        assert np.array_equal(render_image(p6, "train", i)[0], render_image(p20, "train", i)[0])
    assert not np.array_equal(render_image(p6, "train", 1)[0], render_image(p6, "val", 1)[0])
    other = GeneratorParams.from_cfg(small_gen(seed=99))
    assert not np.array_equal(render_image(p6, "train", 1)[0], render_image(other, "train", 1)[0])
    # The file on disk holds exactly the rendered pixels (lossless).
    root = ensure_shapes(small_gen(), tmp_path)
    on_disk = np.array(Image.open(root / "images" / "train" / "000006.png"))
    assert np.array_equal(on_disk, render_image(p6, "train", 5)[0])


def test_json_is_coco(small_gen, tmp_path):
    gen = small_gen()
    root = ensure_shapes(gen, tmp_path)
    assert root == tmp_path / "shapes" / generator_hash(gen)
    d = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [c["id"] for c in d["categories"]] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in d["categories"]] == list(gen.classes)
    assert [i["id"] for i in d["images"]] == list(range(1, 7))
    assert all(i["width"] == i["height"] == 64 and (root / "images" / i["file_name"]).is_file() for i in d["images"])
    assert [a["id"] for a in d["annotations"]] == list(range(1, len(d["annotations"]) + 1))
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and a["area"] == w * h and 1 <= a["category_id"] <= 5
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
    assert len(json.loads((root / "annotations" / "instances_val.json").read_text())["images"]) == 3


def test_boxes_are_tight_around_the_drawn_object(small_gen):
    # No noise, no clutter, one object: the object is the only flat patch of its colour.
    p = GeneratorParams.from_cfg(small_gen(noise_std=0.0, max_clutter=0, min_objects=1, max_objects=1))
    for i in range(20):
        image, anns = render_image(p, "train", i)
        assert len(anns) == 1
        x, y, w, h = anns[0][1]
        patch = image[y:y + h, x:x + w].reshape(-1, 3)
        colours, counts = np.unique(patch, axis=0, return_counts=True)
        colour = colours[counts.argmax()]
        ys, xs = np.nonzero((image == colour).all(axis=-1))
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h), i


@pytest.mark.parametrize("kind", shapes.SHAPE_CLASSES)
def test_shape_masks_fill_their_frame(kind):
    for w, h in [(8, 8), (9, 12), (40, 31), (120, 100)]:
        m = shapes._shape_mask(kind, w, h)
        assert m.shape == (h, w) and shapes._tight_box(m) == (0, 0, w, h)
        assert m.mean() > 0.15


def test_coverage_at_default_config(load_conf, tmp_path):
    """At the default generator config (fewer images): COCO small, medium and large boxes, several
    objects per image, every class, the IoU bound and the object count bounds."""
    cfg = load_conf("data/shapes", **{"generator.num_train": 200, "generator.num_val": 0})
    gen = cfg.generator
    d = json.loads((ensure_shapes(gen, tmp_path) / "annotations" / "instances_train.json").read_text())
    areas = np.array([a["area"] for a in d["annotations"]])
    small, large = (areas < 32 ** 2).mean(), (areas > 96 ** 2).mean()
    assert small > 0.2 and large > 0.02 and 1 - small - large > 0.2
    per_image = Counter(a["image_id"] for a in d["annotations"])
    assert len(per_image) == 200
    assert min(per_image.values()) >= gen.min_objects and max(per_image.values()) <= gen.max_objects
    assert np.mean(list(per_image.values())) >= 3
    assert set(a["category_id"] for a in d["annotations"]) == set(range(1, len(gen.classes) + 1))
    by_image: dict[int, list] = {}
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], []).append((x, y, x + w, y + h))
    ious = [shapes._iou(a, b) for boxes in by_image.values() for a, b in itertools.combinations(boxes, 2)]
    assert max(ious) <= gen.max_iou and max(ious) > 0  # objects do overlap, within the bound


def test_concurrent_generation_keeps_one_folder(small_gen, tmp_path):
    gen = small_gen()
    results, errors = [], []

    def job():
        try:
            results.append(ensure_shapes(gen, tmp_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sorted(p.name for p in (tmp_path / "shapes").iterdir()) == [generator_hash(gen)]


def test_target_appearing_meanwhile_is_kept(small_gen, tmp_path, monkeypatch):
    gen = small_gen()
    real_generate = shapes.generate
    target = tmp_path / "shapes" / generator_hash(gen)

    def racing_generate(g, out):
        real_generate(g, out)
        # Another job finishes first.
        target.mkdir(parents=True)
        (target / "theirs").write_text("x")

    monkeypatch.setattr(shapes, "generate", racing_generate)
    assert ensure_shapes(gen, tmp_path) == target
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in (tmp_path / "shapes").iterdir()] == [target.name]


def test_failed_generation_leaves_nothing(small_gen, tmp_path, monkeypatch):
    def broken(g, out):
        (Path(out) / "partial").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setattr(shapes, "generate", broken)
    with pytest.raises(RuntimeError):
        ensure_shapes(small_gen(), tmp_path)
    assert list((tmp_path / "shapes").iterdir()) == []


def test_hash_follows_the_generator_config(small_gen):
    assert generator_hash(small_gen()) == generator_hash(small_gen())
    assert generator_hash(small_gen()) != generator_hash(small_gen(seed=5))
    # Equal values name the same set whatever their YAML spelling.
    assert generator_hash(small_gen(noise_std=8)) == generator_hash(small_gen(noise_std=8.0))


@pytest.mark.parametrize("override", [{"classes": ["circle", "hexagon"]}, {"min_objects": 0},
                                      {"min_size": 50, "max_size": 20}, {"num_train": 2.5},
                                      {"noise_sdt": 3.0}, {"max_iou": "high"}])
def test_bad_generator_config(small_gen, tmp_path, override):
    with pytest.raises(DatasetError):
        ensure_shapes(small_gen(**override), tmp_path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io, used here as a second decoder
@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (64, 64), (33, 160)])
def test_png_encoder_round_trips(h, w):
    import io

    import torch
    from torchvision.io import decode_png

    pixels = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    data = shapes.encode_png(pixels)
    with Image.open(io.BytesIO(data)) as im:  # Pillow
        assert im.mode == "RGB" and np.array_equal(np.array(im), pixels)
    decoded = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8))  # libpng
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), pixels)
