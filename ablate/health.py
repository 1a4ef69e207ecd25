"""Run health: does a finished run show the signs of a detector that learned nothing?

A collapsed detector still finishes with status ``ok`` and a valid (near-zero) mAP: boxes of zero
width and height at confident scores, every detection of one class, no detection at all. ``assess``
looks at the validation detections and the COCO metrics of a run and returns one warning per sign
found; the record keeps them under ``health`` (beside ``status``, which stays ``ok``) and the report
flags the variant, so that its mAP is not read as the effect of its tricks.

Plain Python (numbers, lists, dicts): no torch, no numpy needed, so the record and the report stay
light. Every threshold is an argument: their values live in ``conf/config.yaml`` under ``eval.health``
(call ``assess(detections, metrics, num_images, num_classes, **cfg.eval.health)``).

Warning codes (stable; the report and runs.csv show them):

- ``no_detections``: no detection scored at or above ``score_threshold`` on the whole val set;
- ``degenerate_boxes``: at least ``degenerate_fraction`` of those detections have a width or a height
  below ``min_box_size`` pixels (original image pixels; a non-finite side counts as degenerate);
- ``single_class``: the data set has several classes but all of those detections, at least
  ``single_class_min_detections`` of them, are of one class;
- ``near_zero_recall``: AR100 (COCO's average recall at 100 detections per image) below ``min_recall``;
  not checked when AR100 is missing or undefined (COCO's -1: no ground truth).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

NO_DETECTIONS = "no_detections"
DEGENERATE_BOXES = "degenerate_boxes"
SINGLE_CLASS = "single_class"
NEAR_ZERO_RECALL = "near_zero_recall"
# In the order assess reports them.
CODES = (NO_DETECTIONS, DEGENERATE_BOXES, SINGLE_CLASS, NEAR_ZERO_RECALL)


def _warning(code: str, message: str, **numbers: Any) -> dict[str, Any]:
    """A warning as stored in the record: its code, a message with the numbers, the numbers themselves."""
    return {"code": code, "message": message, **numbers}


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _degenerate(bbox: Any, min_box_size: float) -> bool:
    """A COCO [x, y, w, h] box whose width or height is below min_box_size (or not a finite number)."""
    try:
        w, h = _finite(bbox[2]), _finite(bbox[3])
    except (TypeError, IndexError, KeyError):
        return True
    return w is None or h is None or w < min_box_size or h < min_box_size


def assess(detections: Iterable[Mapping[str, Any]], metrics: Mapping[str, Any], num_images: int,
           num_classes: int, *, score_threshold: float, min_box_size: float, degenerate_fraction: float,
           single_class_min_detections: int, min_recall: float) -> list[dict[str, Any]]:
    """The health warnings of one run, in the order of ``CODES``; an empty list when it looks healthy.

    detections: COCO-format results on the val set (dicts with image_id, category_id, bbox [x, y, w, h] in
    original pixels, score), as ``ablate.evaluate.predict`` makes them. metrics: COCO stats by name
    (``AR100`` is read; -1 means undefined). num_images: images in the val set. num_classes: classes of the
    data set. Each warning is a dict with ``code`` (one of ``CODES``), ``message`` (the numbers, in words)
    and the numbers it was decided on.

    Only detections with score >= score_threshold are looked at (a detection without a finite score is
    not counted).
    """
    kept = [d for d in detections if (s := _finite(d.get("score"))) is not None and s >= score_threshold]
    n = len(kept)
    warnings: list[dict[str, Any]] = []

    if n == 0 and num_images > 0:
        warnings.append(_warning(
            NO_DETECTIONS,
            f"no detection with score >= {score_threshold:g} on the {num_images} val images",
            detections=0, images=int(num_images), score_threshold=score_threshold))

    if n:
        bad = sum(_degenerate(d.get("bbox"), min_box_size) for d in kept)
        fraction = bad / n
        if fraction >= degenerate_fraction:
            warnings.append(_warning(
                DEGENERATE_BOXES,
                f"{bad} of {n} detections with score >= {score_threshold:g} ({fraction:.0%}) have a width or "
                f"height below {min_box_size:g} px (threshold {degenerate_fraction:.0%})",
                degenerate=bad, detections=n, fraction=fraction, min_box_size=min_box_size,
                threshold=degenerate_fraction))

    if num_classes > 1 and n >= single_class_min_detections:
        classes = {d.get("category_id") for d in kept}
        if len(classes) == 1:
            (category,) = classes
            warnings.append(_warning(
                SINGLE_CLASS,
                f"all {n} detections with score >= {score_threshold:g} are of category {category} although "
                f"the data set has {num_classes} classes",
                category_id=category, detections=n, classes=int(num_classes)))

    recall = _finite(metrics.get("AR100")) if isinstance(metrics, Mapping) else None
    if recall is not None and recall >= 0 and recall < min_recall:
        warnings.append(_warning(
            NEAR_ZERO_RECALL,
            f"AR100 {recall:.3f} is below {min_recall:g}: the detections find almost none of the objects",
            AR100=recall, threshold=min_recall))
    return warnings
