"""The bootstrap standard error of mAP (ablate/bootstrap.py): hand-computed resamples, COCOeval on
resampled image sets with duplicated images, the full set against both backends, invariants."""
import contextlib
import copy
import io

import numpy as np
import pytest

from ablate.bootstrap import bootstrap_counts, map_standard_error, match_images, resampled_map
from ablate.evaluate import coco_metrics
from test_evaluate import NAMES, toy_set

CATS = [{"id": c, "name": name} for c, name in NAMES.items()]


def box(image_id, ann_id, bbox, cat=1, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": list(bbox),
            "area": bbox[2] * bbox[3], "iscrowd": crowd}


def two_images():
    """Image 1: one box, found (score 0.9, same box). Image 2: one box, missed, and a false
    positive (score 0.8) elsewhere."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
          "annotations": [box(1, 1, [10, 10, 20, 20]), box(2, 2, [10, 10, 20, 20])], "categories": CATS[:1]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.8}]
    return gt, dets


def test_resampled_map_by_hand():
    gt, dets = two_images()
    matches = match_images(gt, dets, [1, 2])
    maps = resampled_map(matches, np.array([[1, 1], [2, 0], [0, 2], [3, 1], [1, 3]]))
    # [1, 1]: TP (recall 1/2, precision 1) then FP: precision 1 at the 51 recall points 0..0.50, 0 above.
    # [2, 0]: two TPs, recall 1: AP 1.  [0, 2]: no TP: 0.
    # [3, 1]: 3 TPs of 4 boxes first: precision 1 up to recall 0.75, 76 of the 101 points.
    # [1, 3]: 1 TP of 4 boxes, then 3 FPs: precision 1 up to recall 0.25, 26 points.
    np.testing.assert_allclose(maps, [51 / 101, 1.0, 0.0, 76 / 101, 26 / 101], rtol=0, atol=1e-12)
    # At every IoU threshold alike: the found box is the detection itself (IoU 1).
    assert matches.tp[0].tolist() == [[True, False]] * 10


def test_a_regular_box_goes_before_a_better_crowd_box():
    """A detection over a regular box (IoU 0.83) and a crowd box (IoU 1: a crowd's union is the
    detection): matched to the regular box up to IoU 0.80, a true positive; above, to the crowd box,
    ignored. AP 1 at 7 of the 10 thresholds, 0 at the others."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": CATS[:1],
          "annotations": [box(1, 1, [0, 0, 20, 20]), box(1, 2, [0, 0, 20, 24], crowd=1)]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 24], "score": 0.9}]
    matches = match_images(gt, dets, [1])
    assert matches.tp[0][:, 0].tolist() == [True] * 7 + [False] * 3
    assert matches.ignored[0][:, 0].tolist() == [False] * 7 + [True] * 3
    assert matches.positives.tolist() == [[1]]
    assert resampled_map(matches, np.ones((1, 1)))[0] == pytest.approx(0.7) == pycocotools_map(gt, dets)


def resampled_set(gt, dets, picks):
    """The image set of `picks` (indices into gt's images, repeats allowed): each pick a new image
    with new ids, its boxes and detections copied."""
    out = {"images": [], "annotations": [], "categories": gt["categories"]}
    out_dets = []
    for new_id, pick in enumerate(picks, start=1):
        old_id = gt["images"][pick]["id"]
        out["images"].append({**gt["images"][pick], "id": new_id})
        for a in gt["annotations"]:
            if a["image_id"] == old_id:
                out["annotations"].append({**copy.deepcopy(a), "image_id": new_id, "id": len(out["annotations"]) + 1})
        out_dets += [{**copy.deepcopy(d), "image_id": new_id} for d in dets if d["image_id"] == old_id]
    return out, out_dets


def pycocotools_map(gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0]


def test_each_resample_is_cocoeval_on_the_resampled_images_with_duplicates():
    gt, dets = toy_set(images=15, crowd=0.1)
    assert any(a["iscrowd"] for a in gt["annotations"])
    n = len(gt["images"])
    matches = match_images(gt, dets, [im["id"] for im in gt["images"]])
    rng = np.random.default_rng(1)
    picks = [rng.integers(0, n, n) for _ in range(6)] + [np.array([0] * n), np.array([2, 2, 5])]
    counts = np.stack([np.bincount(p, minlength=n) for p in picks])
    ours = resampled_map(matches, counts)
    for p, mine in zip(picks, ours):
        assert mine == pytest.approx(pycocotools_map(*resampled_set(gt, dets, p)), abs=1e-12)
    assert len(set(np.round(ours, 9))) == len(ours)  # the resamples differ: a real check


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("seed", [0, 3])
def test_the_full_set_gives_the_backends_map(backend, seed):
    gt, dets = toy_set(seed, images=25, crowd=0.1)
    ids = [im["id"] for im in gt["images"]]
    metrics, _ = coco_metrics(gt, dets, ids, backend, NAMES)
    se, full = map_standard_error(gt, dets, ids, resamples=50, seed=0)
    assert full == pytest.approx(metrics["mAP"], abs=1e-12)
    assert 0 < se < 0.2


def test_images_alike_in_what_they_contribute_give_no_error():
    """Copies of one image: every resample is that image, so many times over; its mAP never moves."""
    gt, dets = toy_set(2, images=1)
    many_gt, many_dets = resampled_set(gt, dets, [0] * 12)
    ids = [im["id"] for im in many_gt["images"]]
    se, full = map_standard_error(many_gt, many_dets, ids, resamples=100, seed=0)
    assert full == pytest.approx(pycocotools_map(gt, dets), abs=1e-12) and 0 < full < 1
    assert se < 1e-12
    # Against two images that differ: an error.
    se_two, _ = map_standard_error(*two_images(), [1, 2], resamples=100, seed=0)
    assert se_two > 0.1


def test_no_detection_gives_zero_map_and_error():
    gt, _ = toy_set()
    se, full = map_standard_error(gt, [], [im["id"] for im in gt["images"]], resamples=20, seed=0)
    assert (se, full) == (0.0, 0.0)


def test_bootstrap_counts_draw_as_many_images_with_replacement_from_the_seed():
    a = bootstrap_counts(7, 500, seed=4)
    assert a.shape == (500, 7) and (a.sum(axis=1) == 7).all()
    assert (a == bootstrap_counts(7, 500, seed=4)).all() and (a != bootstrap_counts(7, 500, seed=5)).any()
    # Each image is drawn once per resample on average.
    assert a.mean() == pytest.approx(1.0, abs=0.05) and (a == 0).any() and (a >= 2).any()
