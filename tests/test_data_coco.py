"""The COCO reader: every bad input gives a DatasetError naming the file; boxes are cleaned and counted."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ablate.data import DatasetError, build_data
from ablate.data.coco import read_coco

BCCD = Path(__file__).resolve().parents[1].parent / "shared/data/bccd"


def img(i, w=40, h=30, ext="png"):
    return {"id": i, "file_name": f"{i:03d}.{ext}", "width": w, "height": h}


def ann(i, image_id=1, cat=1, bbox=(2, 3, 10, 8), **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), **kw}


@pytest.fixture
def two_splits(coco_set_factory):
    """A valid set: train (3 images) and val (2 images), 2 categories."""

    def make(train_images=None, train_anns=None, val_images=None, val_anns=None, categories=None):
        train = coco_set_factory(train_images or [img(1), img(2), img(3)],
                                 train_anns if train_anns is not None else [ann(1), ann(2, 2, 2)],
                                 categories, "instances_train.json")
        coco_set_factory(val_images or [img(11), img(12)],
                         val_anns if val_anns is not None else [ann(21, 11), ann(22, 12, 2)],
                         categories, "instances_val.json")
        return train.parent.parent

    return make


@pytest.fixture
def coco_cfg(load_conf):
    def make(root, **overrides):
        return load_conf("data/coco", root=str(root), **overrides)

    return make


# ------------------------------------------------------------------------------------ bad input

def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)


def test_missing_annotation_file(two_splits, coco_cfg, tmp_path):
    root = two_splits()
    (root / "annotations" / "instances_val.json").unlink()
    with pytest.raises(DatasetError, match="instances_val.json") as e:
        build_data(coco_cfg(root), tmp_path / "cache")
    assert "not found" in str(e.value)


def test_missing_images_folder(coco_set_factory, tmp_path):
    ann_file = coco_set_factory([img(1)], [ann(1)], write_images=False)
    with pytest.raises(DatasetError, match="images folder not found") as e:
        read_coco(ann_file, tmp_path / "nowhere", None)
    assert str(tmp_path / "nowhere") in str(e.value)


def test_malformed_json_names_file_and_line(coco_set_factory):
    ann_file = coco_set_factory([img(1)], [ann(1)])
    ann_file.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')
    with pytest.raises(DatasetError) as e:
        read_coco(ann_file, ann_file.parent.parent / "images", None)
    assert str(ann_file) in str(e.value) and "line 3" in str(e.value)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(coco_set_factory, key):
    ann_file = coco_set_factory([img(1)], [ann(1)])
    data = json.loads(ann_file.read_text())
    del data[key]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as e:
        read_coco(ann_file, ann_file.parent.parent / "images", None)
    assert str(ann_file) in str(e.value) and f"'{key}'" in str(e.value)


def test_unknown_image_id(coco_set_factory):
    ann_file = coco_set_factory([img(1)], [ann(1), ann(17, image_id=99)])
    with pytest.raises(DatasetError) as e:
        read_coco(ann_file, ann_file.parent.parent / "images", None)
    msg = str(e.value)
    assert str(ann_file) in msg and "annotation id 17" in msg and "image_id 99" in msg


def test_unknown_category_id(coco_set_factory):
    ann_file = coco_set_factory([img(1)], [ann(5, cat=42)])
    with pytest.raises(DatasetError) as e:
        read_coco(ann_file, ann_file.parent.parent / "images", None)
    msg = str(e.value)
    assert str(ann_file) in msg and "annotation id 5" in msg and "category_id 42" in msg


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, 3, "4"], "1,2,3,4", None, [1, 2, 3, float("nan")]])
def test_bbox_not_four_numbers(coco_set_factory, bbox):
    a = ann(8)
    a["bbox"] = bbox
    ann_file = coco_set_factory([img(1)], [a])
    with pytest.raises(DatasetError) as e:
        read_coco(ann_file, ann_file.parent.parent / "images", None)
    assert str(ann_file) in str(e.value) and "annotation id 8" in str(e.value)


def test_duplicate_ids(coco_set_factory):
    ann_file = coco_set_factory([img(1)], [ann(3), ann(3)])
    with pytest.raises(DatasetError, match="duplicate annotation id 3"):
        read_coco(ann_file, ann_file.parent.parent / "images", None)
    ann_file = coco_set_factory([img(1), img(1)], [])
    with pytest.raises(DatasetError, match="duplicate image id 1"):
        read_coco(ann_file, ann_file.parent.parent / "images", None)


def test_missing_image_file_is_caught_up_front(two_splits, coco_cfg, tmp_path):
    root = two_splits()
    (root / "images" / "002.png").unlink()
    # With the cache off nothing is decoded at construction: the check is up front all the same.
    with pytest.raises(DatasetError) as e:
        build_data(coco_cfg(root, cache_ram_mb=0), tmp_path / "cache")
    assert str(root / "images" / "002.png") in str(e.value) and "not found" in str(e.value)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_corrupt_image(two_splits, coco_cfg, tmp_path, ext):
    root = two_splits(train_images=[img(1, ext=ext), img(2, ext=ext)])
    bad = root / "images" / f"002.{ext}"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    # Cache on: everything is decoded at construction.
    with pytest.raises(DatasetError) as e:
        build_data(coco_cfg(root), tmp_path / "cache")
    assert str(bad) in str(e.value)
    # Cache off: the bad file fails when it is read, the good one still reads.
    bundle = build_data(coco_cfg(root, cache_ram_mb=0), tmp_path / "cache")
    bundle.train.set_epoch(0)
    bundle.train[0]
    with pytest.raises(DatasetError) as e:
        bundle.train[1]
    assert str(bad) in str(e.value)


def test_not_an_image(two_splits, coco_cfg, tmp_path):
    root = two_splits()
    (root / "images" / "003.png").write_text("hello")
    with pytest.raises(DatasetError, match="003.png"):
        build_data(coco_cfg(root), tmp_path / "cache")


def test_image_size_mismatch(coco_set_factory):
    ann_file = coco_set_factory([img(1, w=40, h=30)], [ann(1)])
    data = json.loads(ann_file.read_text())
    data["images"][0]["width"] = 50
    ann_file.write_text(json.dumps(data))
    split = read_coco(ann_file, ann_file.parent.parent / "images", None)
    from ablate.data.dataset import decode_image
    with pytest.raises(DatasetError, match="001.png.*40x30.*50x30"):
        decode_image(split.records[0], None)


def test_coco_needs_root(load_conf, tmp_path):
    with pytest.raises(DatasetError, match="data.root"):
        build_data(load_conf("data/coco"), tmp_path)
    with pytest.raises(DatasetError, match="nowhere"):
        build_data(load_conf("data/coco", root=str(tmp_path / "nowhere")), tmp_path)


def test_val_categories_must_match_train(coco_set_factory, coco_cfg, tmp_path):
    coco_set_factory([img(1)], [ann(1)], name="instances_train.json")
    val = coco_set_factory([img(2)], [ann(2, 2)], [{"id": 1, "name": "a"}, {"id": 2, "name": "z"}],
                           name="instances_val.json")
    with pytest.raises(DatasetError, match="differ") as e:
        build_data(coco_cfg(val.parent.parent), tmp_path / "cache")
    assert str(val) in str(e.value)


# ------------------------------------------------------------------------------- box cleaning

def test_clip_and_drop_are_counted_and_logged(coco_set_factory, caplog):
    anns = [
        ann(1, bbox=(2, 3, 10, 8)),          # fine
        ann(2, bbox=(-5, 4, 10, 10)),        # clipped on the left  -> [0, 4, 5, 14]
        ann(3, bbox=(35, 25, 20, 20)),       # clipped right/bottom -> [35, 25, 40, 30]
        ann(4, bbox=(50, 5, 10, 10)),        # wholly outside -> dropped
        ann(5, bbox=(5, 5, 0, 10)),          # zero width -> dropped
        ann(6, bbox=(5, 5, 10, -3)),         # negative height -> dropped
    ]
    ann_file = coco_set_factory([img(1, w=40, h=30)], anns)
    caplog.set_level(logging.WARNING, logger="ablate.data")
    split = read_coco(ann_file, ann_file.parent.parent / "images", None)
    rec = split.records[0]
    np.testing.assert_allclose(rec.boxes, [[2, 3, 12, 11], [0, 4, 5, 14], [35, 25, 40, 30]])
    assert split.counts["clipped"] == 2 and split.counts["dropped"] == 3
    warnings = [r for r in caplog.records if r.name == "ablate.data" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert str(ann_file) in msg and "2 boxes clipped" in msg and "3 degenerate boxes dropped" in msg
    # The ground truth gets the same cleaning.
    gt = {a["id"]: a for a in split.coco_gt["annotations"]}
    assert sorted(gt) == [1, 2, 3]
    assert gt[2]["bbox"] == [0.0, 4.0, 5.0, 10.0] and gt[3]["bbox"] == [35.0, 25.0, 5.0, 5.0]


def test_clean_boxes_log_no_warning(coco_set_factory, caplog):
    ann_file = coco_set_factory([img(1)], [ann(1), ann(2, bbox=(0, 0, 40, 30))])
    caplog.set_level(logging.INFO, logger="ablate.data")
    read_coco(ann_file, ann_file.parent.parent / "images", None)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_crowd_left_out_of_targets_kept_in_gt(two_splits, coco_cfg, tmp_path):
    val_anns = [ann(21, 11), ann(22, 11, 2, bbox=(0, 0, 20, 20), iscrowd=1, area=123.0), ann(23, 12, 2)]
    bundle = build_data(coco_cfg(two_splits(val_anns=val_anns)), tmp_path / "cache")
    _, target = bundle.val[0]
    assert target["image_id"] == 11 and target["labels"].tolist() == [1]
    gt = {a["id"]: a for a in bundle.val_coco_gt["annotations"]}
    assert gt[22]["iscrowd"] == 1 and gt[22]["area"] == 123.0 and gt[22]["bbox"] == [0, 0, 20, 20]
    # Filled in where the file lacks them: iscrowd 0, area = box area.
    assert gt[21]["iscrowd"] == 0 and gt[21]["area"] == 80.0


def test_images_without_annotations_are_kept(two_splits, coco_cfg, tmp_path):
    bundle = build_data(coco_cfg(two_splits(train_anns=[ann(1, 2)])), tmp_path / "cache")
    assert len(bundle.train) == 3
    bundle.train.set_epoch(0)
    _, target = bundle.train[0]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_labels_follow_category_id_order(two_splits, coco_cfg, tmp_path):
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    root = two_splits(train_anns=[ann(1, 1, 7), ann(2, 1, 3)], val_anns=[ann(21, 11, 3)], categories=cats)
    bundle = build_data(coco_cfg(root), tmp_path / "cache")
    assert bundle.classes == ["three", "seven"]
    assert bundle.label_to_cat_id == {1: 3, 2: 7}
    bundle.train.set_epoch(0)
    assert bundle.train[0][1]["labels"].tolist() == [2, 1]


def test_max_images_keeps_first_by_id(two_splits, coco_cfg, tmp_path):
    root = two_splits(train_images=[img(3), img(1), img(2)],
                      val_images=[img(12), img(11)], val_anns=[ann(21, 11), ann(22, 12)])
    bundle = build_data(coco_cfg(root, max_train_images=2, max_val_images=1), tmp_path / "cache")
    assert bundle.train.image_ids == [1, 2] and len(bundle.train) == 2
    assert bundle.val.image_ids == [11]
    assert [i["id"] for i in bundle.val_coco_gt["images"]] == [11]
    assert [a["id"] for a in bundle.val_coco_gt["annotations"]] == [21]


def test_missing_width_height_read_from_file(coco_set_factory):
    ann_file = coco_set_factory([img(1, w=40, h=30)], [ann(1)])
    data = json.loads(ann_file.read_text())
    del data["images"][0]["width"], data["images"][0]["height"]
    ann_file.write_text(json.dumps(data))
    split = read_coco(ann_file, ann_file.parent.parent / "images", None)
    assert (split.records[0].width, split.records[0].height) == (40, 30)
    assert split.coco_gt["images"][0]["width"] == 40


def test_val_gt_works_with_pycocotools(two_splits, coco_cfg, tmp_path):
    val_anns = [ann(21, 11), ann(22, 11, 2, bbox=(20, 10, 15, 15)), ann(23, 12, 2, bbox=(-4, 0, 14, 10)),
                ann(24, 12, 1, bbox=(0, 0, 30, 30), iscrowd=1)]
    bundle = build_data(coco_cfg(two_splits(val_anns=val_anns)), tmp_path / "cache")
    gt = COCO()
    gt.dataset = bundle.val_coco_gt
    gt.createIndex()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in bundle.val_coco_gt["annotations"] if not a["iscrowd"]]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- real data

@pytest.mark.realdata
@pytest.mark.skipif(not (BCCD / "annotations").is_dir(), reason=f"real data set not found at {BCCD}")
def test_bccd_bundle(load_conf, tmp_path):
    cfg = load_conf("data/coco", root=str(BCCD), image_size=320, max_train_images=6, max_val_images=4)
    bundle = build_data(cfg, tmp_path / "cache")
    train_json = json.loads((BCCD / "annotations/instances_train.json").read_text())
    val_json = json.loads((BCCD / "annotations/instances_val.json").read_text())
    assert bundle.classes == ["RBC", "WBC", "Platelets"]
    assert bundle.label_to_cat_id == {1: 1, 2: 2, 3: 3}
    assert len(bundle.train) == 6 and len(bundle.val) == 4
    assert bundle.train.image_ids == sorted(i["id"] for i in train_json["images"])[:6]
    assert [i["id"] for i in bundle.val_coco_gt["images"]] == sorted(i["id"] for i in val_json["images"])[:4]
    by_image: dict[int, list] = {}
    for a in train_json["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    torch.manual_seed(0)
    for i in range(len(bundle.val)):
        image, target = bundle.val[i]
        assert image.shape == (3, 240, 320) and image.dtype == torch.uint8
        assert target["scale"] == 0.5 and target["orig_size"] == (480, 640)
        assert target["labels"].min() >= 1 and target["labels"].max() <= 3
    # Val targets against the json, scaled by 0.5.
    val_by_image: dict[int, list] = {}
    for a in val_json["annotations"]:
        val_by_image.setdefault(a["image_id"], []).append(a)
    for i in range(len(bundle.val)):
        _, target = bundle.val[i]
        anns = val_by_image[target["image_id"]]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]) * 0.5
        torch.testing.assert_close(target["boxes"], expected.float())
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
    # Train: counts per image match the json (flip only mirrors).
    bundle.train.set_epoch(0)
    for i in range(len(bundle.train)):
        image, target = bundle.train[i]
        assert image.shape == (3, 240, 320)
        assert len(target["boxes"]) == len(by_image.get(target["image_id"], []))
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
