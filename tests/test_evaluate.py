"""COCO metrics: the 12 stats under COCO's names, AP per class, and the two backends agreeing."""
from pathlib import Path

import numpy as np
import pytest

from ablate.evaluate import coco_metrics
from ablate.results import COCO_METRICS


def toy_set(seed=0, images=12, crowd=0.0):
    """Ground truth over three classes and sizes from small to large, and detections that jitter
    it, miss some boxes, confuse some classes and add false positives, with scores; with `crowd`,
    that share of the boxes are crowds (a detection on one is neither true nor false positive)."""
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": n} for c, n in
                                                          [(1, "a"), (3, "b"), (7, "c")]]}
    dets = []
    for i in range(1, images + 1):
        gt["images"].append({"id": i, "file_name": f"{i}.png", "width": 320, "height": 320})
        for _ in range(rng.integers(1, 6)):
            w, h = rng.uniform(8, 150, size=2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 320 - h)
            cat = int(rng.choice([1, 3, 7]))
            is_crowd = int(crowd > 0 and rng.random() < crowd)  # no draw without crowds: the same sets
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": is_crowd})
            if rng.random() < 0.85:
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                det_cat = cat if rng.random() < 0.9 else int(rng.choice([1, 3, 7]))
                dets.append({"image_id": i, "category_id": det_cat, "score": float(rng.uniform(0.3, 1)),
                             "bbox": [float(x + jitter[0]), float(y + jitter[1]), float(max(1, w + jitter[2])),
                                      float(max(1, h + jitter[3]))]})
        for _ in range(rng.integers(0, 4)):
            dets.append({"image_id": i, "category_id": int(rng.choice([1, 3, 7])), "score": float(rng.uniform(0, 0.6)),
                         "bbox": [float(v) for v in rng.uniform(0, 200, 2)] + [float(v) for v in rng.uniform(5, 100, 2)]})
    return gt, dets


NAMES = {1: "a", 3: "b", 7: "c"}


def test_metrics_are_the_twelve_coco_stats_and_per_class_ap():
    gt, dets = toy_set()
    metrics, per_class = coco_metrics(gt, dets, [im["id"] for im in gt["images"]], "pycocotools", NAMES)
    assert list(metrics) == list(COCO_METRICS)
    assert 0 < metrics["mAP"] < metrics["AP50"] <= 1
    assert set(per_class) == {"a", "b", "c"}
    # AP over classes averages to mAP (area all, 100 detections), as COCOeval defines it
    assert np.mean(list(per_class.values())) == pytest.approx(metrics["mAP"], abs=1e-9)


def test_ground_truth_as_detections_scores_one():
    gt, _ = toy_set(seed=1)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"]]
    metrics, per_class = coco_metrics(gt, dets, [im["id"] for im in gt["images"]], "pycocotools", NAMES)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in per_class.values())


def test_no_detection_gives_zeros():
    gt, _ = toy_set()
    metrics, per_class = coco_metrics(gt, [], [1, 2], "pycocotools", NAMES)
    assert set(metrics.values()) == {0.0} and set(per_class.values()) == {0.0}


def test_faster_coco_eval_gives_the_same_stats_as_pycocotools():
    for seed in range(3):
        gt, dets = toy_set(seed=seed, images=20)
        ids = [im["id"] for im in gt["images"]]
        ref, ref_cls = coco_metrics(gt, dets, ids, "pycocotools", NAMES)
        fast, fast_cls = coco_metrics(gt, dets, ids, "faster_coco_eval", NAMES)
        for k in COCO_METRICS:
            assert fast[k] == pytest.approx(ref[k], abs=1e-6), (seed, k)
        for k in ref_cls:
            assert fast_cls[k] == pytest.approx(ref_cls[k], abs=1e-6), (seed, k)


def test_unknown_backend_is_named():
    gt, dets = toy_set()
    with pytest.raises(ValueError, match="eval.backend='cocoapi'"):
        coco_metrics(gt, dets, [1], "cocoapi", NAMES)


def _benchmark_detections():
    """The detection maker of benchmarks/evaluation.py (one generator for the benchmark and this test)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "evaluation.py"
    spec = importlib.util.spec_from_file_location("benchmark_evaluation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_detections


BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"


@pytest.mark.parametrize("data", ["shapes", pytest.param("bccd", marks=pytest.mark.skipif(
    not BCCD.is_dir(), reason=f"real data set not found at {BCCD}"))])
def test_faster_coco_eval_equals_pycocotools_on_the_embedded_data_and_bccd(data, tmp_path):
    from hydra import compose, initialize_config_dir

    from ablate.config import conf_dir
    from ablate.data import build_data

    overrides = (["data=shapes", "data.generator.num_train=4", "data.generator.num_val=120"] if data == "shapes"
                 else ["data=coco", f"data.root={BCCD}", "data.max_train_images=4"])
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides + [f"paths.cache={tmp_path}", "data.cache_ram_mb=0"])
    bundle = build_data(cfg.data, tmp_path)
    dets = _benchmark_detections()(bundle.val_coco_gt, per_image=30)
    names = {bundle.label_to_cat_id[k + 1]: n for k, n in enumerate(bundle.classes)}
    ref, ref_cls = coco_metrics(bundle.val_coco_gt, dets, bundle.val.image_ids, "pycocotools", names)
    fast, fast_cls = coco_metrics(bundle.val_coco_gt, dets, bundle.val.image_ids, "faster_coco_eval", names)
    assert 0.05 < ref["mAP"] < 0.95  # a mix of hits, misses and false positives, not a degenerate case
    for k in COCO_METRICS:
        assert fast[k] == pytest.approx(ref[k], abs=1e-6), k
    for k in ref_cls:
        assert fast_cls[k] == pytest.approx(ref_cls[k], abs=1e-6), k


def test_two_stage_flops_do_not_depend_on_what_the_weights_nms_keeps():
    """Two Faster R-CNNs of one architecture, different weights: the RPN's NMS keeps different
    numbers of proposals, but the FLOPs are counted on the full proposal budget, so they are equal;
    and an activation swap (no FLOPs of its own) leaves them equal too."""
    import torch

    from ablate.evaluate import count_flops
    from ablate.testing import build_trick, one_thread, tiny_model

    with one_thread():
        image = (torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        a, b = tiny_model("faster_rcnn", seed=0), tiny_model("faster_rcnn", seed=1)
        torch.nn.init.zeros_(b.rpn.head.bbox_pred.weight)  # proposals are the anchors: NMS keeps fewer
        torch.nn.init.zeros_(b.rpn.head.bbox_pred.bias)
        c = tiny_model("faster_rcnn", seed=2, tricks=[build_trick("leaky_relu", "faster_rcnn")])
        flops = [count_flops(m, image, torch.device("cpu")) for m in (a, b, c)]
        assert flops[0] == flops[1] == flops[2] > 0
        assert a.rpn.nms_thresh == 0.7  # restored


def test_a_deformable_conv_counts_as_the_conv_of_its_shapes():
    """torch's FLOP counter does not know torchvision's deform_conv2d (RepPoints' deformable convs):
    ablate counts it as a convolution of the same shapes, 2 x C_out x C_in x k^2 per output place."""
    import torch
    from torchvision.ops import DeformConv2d

    from ablate.evaluate import count_flops

    class TwoConvs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.deform, self.plain = DeformConv2d(3, 16, 3, padding=1), torch.nn.Conv2d(3, 16, 3, padding=1)

        def forward(self, images):
            x = images[0][None]
            return self.deform(x, torch.zeros(1, 18, *x.shape[-2:])), self.plain(x)

    image = torch.zeros(3, 10, 12, dtype=torch.uint8)
    assert count_flops(TwoConvs(), image, torch.device("cpu")) == 2 * (2 * 16 * 3 * 9 * 10 * 12)


def test_flops_are_counted_without_building_a_graph():
    """count_flops runs the forward under no_grad (a misplaced decorator once left it building
    autograd graphs: the same count, more memory and time)."""
    import torch

    from ablate.evaluate import count_flops

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, images):
            seen.append(torch.is_grad_enabled())
            return self.conv(images[0][None])

    assert count_flops(Probe(), torch.zeros(3, 4, 4, dtype=torch.uint8), torch.device("cpu")) == 2 * 4 * 3 * 16
    assert seen == [False]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_the_ground_truth_is_indexed_once_per_process(backend, monkeypatch):
    """A run evaluates its val set after several epochs (train.eval_every): the ground truth's index
    is built at the first evaluation and reused, with the numbers of a fresh one."""
    import copy

    from ablate import evaluate

    coco_cls, _ = evaluate._backend(backend)
    indexed = []
    create_index = coco_cls.createIndex
    monkeypatch.setattr(coco_cls, "createIndex", lambda self, *a, **k: (indexed.append(self.dataset),
                                                                        create_index(self, *a, **k))[1])
    gt, dets = toy_set(seed=2, images=20, crowd=0.2)
    ids = [im["id"] for im in gt["images"]]
    fresh = [coco_metrics(copy.deepcopy(gt), copy.deepcopy(dets), subset, backend, NAMES)
             for subset in (ids, ids[:7])]
    indexed.clear()
    for subset, expected in zip((ids, ids[:7], ids), fresh + fresh[:1]):
        assert coco_metrics(gt, copy.deepcopy(dets), subset, backend, NAMES) == expected
    assert sum(d is gt for d in indexed) == 1
    # Another dict, or the same one grown, is indexed again.
    other = copy.deepcopy(gt)
    coco_metrics(other, copy.deepcopy(dets), ids, backend, NAMES)
    gt["annotations"].append(dict(gt["annotations"][0], id=10**6))
    coco_metrics(gt, copy.deepcopy(dets), ids, backend, NAMES)
    assert sum(d is other for d in indexed) == 1 and sum(d is gt for d in indexed) == 2
