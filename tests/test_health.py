"""ablate.health: the run-health check on hand-made detections and metrics, and the record's health field."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ablate.health import CODES, assess
from conftest import assert_imports_without
from ablate.results import RECORD_NAME, RecordError, RunRecord, base_hash, config_hash, read_record, write_record

REPO = Path(__file__).resolve().parents[1]

# Thresholds for the tests, spelled out (assess has no defaults of its own).
LIMITS = dict(score_threshold=0.05, min_box_size=1.0, degenerate_fraction=0.5, single_class_min_detections=20,
              min_recall=0.01)
HEALTHY_METRICS = {"mAP": 0.41, "AP50": 0.7, "AR1": 0.3, "AR10": 0.5, "AR100": 0.55}


def det(image_id: int, category_id: int, bbox: list[float], score: float = 0.7) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def healthy_detections(n_images: int = 10, n_classes: int = 3) -> list[dict]:
    """Four boxes per image of sensible size, classes in turn, scores from 0.9 down to 0.1."""
    out = []
    for i in range(n_images):
        for k in range(4):
            out.append(det(i, 1 + (i + k) % n_classes, [10.0 * k, 5.0, 20.0 + k, 15.5], score=0.9 - 0.2 * k))
    return out


def codes(warnings: list[dict]) -> list[str]:
    return [w["code"] for w in warnings]


def test_healthy_run_has_no_warning():
    assert assess(healthy_detections(), HEALTHY_METRICS, num_images=10, num_classes=3, **LIMITS) == []


def test_zero_size_boxes_are_degenerate():
    # The user's collapsed FCOS: x1 == x2 and y1 == y2, confident scores, every image, every class.
    dets = [det(i, 1 + i % 3, [37.0 + i, 51.0, 0.0, 0.0], score=0.5 + 0.03 * i) for i in range(10)]
    warnings = assess(dets, HEALTHY_METRICS, num_images=10, num_classes=3, **LIMITS)
    assert codes(warnings) == ["degenerate_boxes"]
    w = warnings[0]
    assert w["degenerate"] == 10 and w["detections"] == 10 and w["fraction"] == 1.0
    assert "10 of 10 detections" in w["message"] and "100%" in w["message"] and "1 px" in w["message"]


def test_degenerate_share_threshold_and_near_zero_sides():
    good = healthy_detections(n_images=2)  # 8 boxes
    # Width 0.4 px or height 0.9 px: below 1 px, degenerate too (not only exact zeros).
    thin = [det(0, 1, [5.0, 5.0, 0.4, 30.0]), det(1, 2, [5.0, 5.0, 30.0, 0.9])] * 4  # 8 boxes
    assert codes(assess(good + thin, HEALTHY_METRICS, 2, 3, **LIMITS)) == ["degenerate_boxes"]  # 8/16 = 50%
    assert assess(good + thin[:7], HEALTHY_METRICS, 2, 3, **LIMITS) == []  # 7/15 < 50%
    # Boxes under the score threshold do not count: 8 degenerate at 0.01 beside 8 good ones.
    faint = [dict(d, score=0.01) for d in thin]
    assert assess(good + faint, HEALTHY_METRICS, 2, 3, **LIMITS) == []
    # A box with a non-finite side is degenerate.
    nan_boxes = [det(0, 1, [1.0, 1.0, float("nan"), 5.0])] * 9
    assert codes(assess(good + nan_boxes, HEALTHY_METRICS, 2, 3, **LIMITS)) == ["degenerate_boxes"]


def test_no_detections():
    warnings = assess([], {k: 0.0 for k in HEALTHY_METRICS}, num_images=50, num_classes=3, **LIMITS)
    # COCO gives 0 recall without detections: both signs are reported, no_detections first.
    assert codes(warnings) == ["no_detections", "near_zero_recall"]
    assert warnings[0]["message"] == "no detection with score >= 0.05 on the 50 val images"
    # Only detections under the threshold: none counts.
    low = [dict(d, score=0.02) for d in healthy_detections()]
    assert codes(assess(low, HEALTHY_METRICS, 10, 3, **LIMITS)) == ["no_detections"]
    # An empty val set says nothing.
    assert assess([], {}, num_images=0, num_classes=3, **LIMITS) == []


def test_single_class():
    dets = [dict(d, category_id=2) for d in healthy_detections()]  # 40 detections, all of category 2
    warnings = assess(dets, HEALTHY_METRICS, num_images=10, num_classes=3, **LIMITS)
    assert codes(warnings) == ["single_class"]
    assert warnings[0]["category_id"] == 2 and warnings[0]["detections"] == 40
    assert "all 40 detections" in warnings[0]["message"] and "3 classes" in warnings[0]["message"]
    # A one-class data set: nothing to say.
    assert assess(dets, HEALTHY_METRICS, 10, num_classes=1, **LIMITS) == []
    # Too few detections to say so (19 < 20).
    assert assess(dets[:19], HEALTHY_METRICS, 10, 3, **LIMITS) == []
    # Detections of a second class only under the score threshold do not count.
    faint_other = [det(0, 1, [1.0, 1.0, 20.0, 20.0], score=0.01)]
    assert codes(assess(dets + faint_other, HEALTHY_METRICS, 10, 3, **LIMITS)) == ["single_class"]


def test_near_zero_recall():
    metrics = dict(HEALTHY_METRICS, mAP=0.0, AR100=0.004)
    warnings = assess(healthy_detections(), metrics, num_images=10, num_classes=3, **LIMITS)
    assert codes(warnings) == ["near_zero_recall"]
    assert warnings[0]["AR100"] == 0.004 and warnings[0]["threshold"] == 0.01
    assert "AR100 0.004 is below 0.01" in warnings[0]["message"]
    # At the threshold, undefined (-1: no ground truth), missing or NaN: no warning.
    for value in (0.01, -1.0, float("nan"), None):
        assert assess(healthy_detections(), dict(HEALTHY_METRICS, AR100=value), 10, 3, **LIMITS) == [], value
    assert assess(healthy_detections(), {}, 10, 3, **LIMITS) == []


def test_thresholds_are_required_and_in_config():
    # No hidden defaults: every threshold is a keyword argument without default ...
    params = inspect.signature(assess).parameters
    limits = [p for p in params.values() if p.kind is p.KEYWORD_ONLY]
    assert all(p.default is p.empty for p in params.values())
    # ... and conf/config.yaml holds exactly these under eval.health, so **cfg.eval.health calls it.
    cfg = OmegaConf.load(REPO / "conf" / "config.yaml")
    assert sorted(cfg.eval.health) == sorted(p.name for p in limits)
    assert assess([], {}, 5, 3, **cfg.eval.health)[0]["code"] == "no_detections"
    assert set(CODES) == {"no_detections", "degenerate_boxes", "single_class", "near_zero_recall"}


def test_warnings_are_json_ready():
    dets = [det(0, 1, [1.0, 1.0, 0.0, 0.0])] * 30
    warnings = assess(dets, {"AR100": 0.0}, 1, 3, **LIMITS)
    assert codes(warnings) == ["degenerate_boxes", "single_class", "near_zero_recall"]
    assert json.loads(json.dumps(warnings)) == warnings


# ------------------------------------------------------------------------------------------ the record


def make_record(**kw) -> RunRecord:
    config = {"seed": 0, "data": {"name": "shapes"}, "model": {"name": "fcos"}, "tricks": {}, "train": {},
              "eval": {"backend": "faster_coco_eval"}}
    base = dict(status="ok", variant="baseline", sweep="quick", tricks=[], seed=0, config=config,
                config_hash=config_hash(config), base_hash=base_hash(config),
                metrics={"mAP": 0.0, "AR100": 0.0}, timings={"wall_s": 10.0})
    base.update(kw)
    return RunRecord(**base)


def test_record_with_health_round_trips(tmp_path):
    warnings = assess([det(0, 1, [1.0, 1.0, 0.0, 0.0])] * 30, {"AR100": 0.0}, 1, 3, **LIMITS)
    rec = make_record(health=warnings)
    path = write_record(rec, tmp_path)
    back = read_record(path)
    assert back == rec
    assert [w["code"] for w in back.health] == ["degenerate_boxes", "single_class", "near_zero_recall"]
    assert back.status == "ok"  # the warning sits beside the status
    assert json.loads(path.read_text())["health"][0]["code"] == "degenerate_boxes"


def test_old_record_without_health_reads_as_healthy(tmp_path):
    data = make_record().to_dict()
    del data["health"]
    (tmp_path / RECORD_NAME).write_text(json.dumps(data))
    assert read_record(tmp_path / RECORD_NAME).health == []
    # The committed example records read, whichever version wrote them.
    for path in sorted((REPO / "reports" / "quick" / "runs").rglob(RECORD_NAME)):
        assert read_record(path).health == json.loads(path.read_text()).get("health", [])


def test_malformed_health_is_refused(tmp_path):
    data = make_record().to_dict()
    data["health"] = ["degenerate_boxes"]  # a list of codes, not of warnings
    (tmp_path / RECORD_NAME).write_text(json.dumps(data))
    with pytest.raises(RecordError, match=f"{tmp_path / RECORD_NAME}: health must be a list of warnings"):
        read_record(tmp_path / RECORD_NAME)


def test_health_thresholds_do_not_change_the_hashes():
    # Records made before eval.health existed keep their hashes: finished runs are reused, not retrained,
    # and old and new records of one base share a baseline.
    old = {"seed": 0, "data": {"x": 1}, "model": {}, "tricks": {}, "train": {}, "eval": {"backend": "b"}}
    new = dict(old, eval={"backend": "b", "health": dict(LIMITS)})
    other = dict(old, eval={"backend": "b", "health": dict(LIMITS, min_recall=0.2)})
    assert config_hash(old) == config_hash(new) == config_hash(other)
    assert base_hash(old) == base_hash(new)
    assert config_hash(old) != config_hash(dict(old, eval={"backend": "c"}))
    assert old["eval"] == {"backend": "b"} and "health" in new["eval"]  # the configs are left as they were


def test_health_imports_no_torch_nor_numpy():
    assert_imports_without("ablate.health", "torch", "torchvision", "numpy")
