"""COCO evaluation of a detector, and its inference costs (latency, FLOPs).

Predictions are mapped back to the original image frame (the data pipeline resized the
images) and to the dataset's category ids, then scored against the original annotations, so
the numbers are those a COCO tool would report on the same files.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn
import torchvision  # noqa: F401  (registers torch.ops.torchvision, whose deform_conv2d is counted below)
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .results import COCO_METRICS

log = logging.getLogger("ablate.evaluate")


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, class_to_cat_id: dict[int, int],
            autocast: contextlib.AbstractContextManager | None = None) -> list[dict]:
    """COCO-format detections ([x, y, w, h] in original pixels) for every image of the loader;
    class_to_cat_id maps the model's class index to the dataset's category id."""
    model.eval()
    detections = []
    for images, targets in loader:
        images = [img.to(device, non_blocking=True).float().div_(255) for img in images]
        with autocast or contextlib.nullcontext():
            outputs = model(images)
        for out, tgt in zip(outputs, targets):
            boxes = out["boxes"].float().cpu() / tgt["scale"]
            boxes[:, 2:] -= boxes[:, :2]
            for box, score, label in zip(boxes.tolist(), out["scores"].float().cpu().tolist(),
                                         out["labels"].cpu().tolist()):
                detections.append({"image_id": int(tgt["image_id"]), "category_id": class_to_cat_id[label],
                                   "bbox": [round(v, 3) for v in box], "score": round(score, 5)})
    return detections


def _backend(backend: str):
    """The (COCO, COCOeval) classes of eval.backend."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    elif backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval
    else:
        raise ValueError(f"eval.backend={backend!r}: choose pycocotools or faster_coco_eval")
    return COCO, COCOeval


# Per backend, the ground truth indexed last: (the dict, its size then, the backend's COCO of it).
_INDEXED: dict[str, tuple[dict, tuple[int, int], Any]] = {}


def ground_truth(coco_gt: dict, backend: str):
    """The backend's COCO object over ``coco_gt``, built once per process: a run evaluates the same
    val set several times (train.eval_every), and indexing it is a good part of an evaluation at
    COCO val size (benchmarks/coco_size.py). The object is reused while ``coco_gt`` is the same
    dict holding as many images and annotations (a dict replaced or grown is indexed again);
    COCOeval only adds its own 'ignore' flag to the annotations, the same at every evaluation."""
    coco_cls, _ = _backend(backend)
    size = (len(coco_gt["images"]), len(coco_gt["annotations"]))
    held = _INDEXED.get(backend)
    if held is not None and held[0] is coco_gt and held[1] == size:
        return held[2]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls()
        gt.dataset = coco_gt
        gt.createIndex()
    _INDEXED[backend] = (coco_gt, size, gt)
    return gt


def coco_metrics(coco_gt: dict, detections: list[dict], image_ids: list[int], backend: str,
                 class_names: dict[int, str]) -> tuple[dict[str, float], dict[str, float]]:
    """The 12 COCOeval stats under their COCO names, and AP@[.5:.95] per class name."""
    _, coco_eval = _backend(backend)
    if not detections:
        log.warning("the model made no detection on the %d validation images: every metric is 0", len(image_ids))
        return {k: 0.0 for k in COCO_METRICS}, {name: 0.0 for name in class_names.values()}
    gt = ground_truth(coco_gt, backend)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        dt = gt.loadRes(detections)
        ev = coco_eval(gt, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.info("COCO evaluation (%s):\n%s", backend, printed.getvalue().strip())
    metrics = {name: float(v) for name, v in zip(COCO_METRICS, ev.stats)}
    # precision: [IoU thresholds, recall points, classes, area ranges, max dets]; area "all", 100 dets.
    precision = np.asarray(ev.eval["precision"])
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[class_names.get(cat_id, str(cat_id))] = float(p.mean()) if p.size else float("nan")
    return metrics, per_class


@torch.inference_mode()
def measure_latency(model: nn.Module, images: list[torch.Tensor], device: torch.device,
                    autocast: contextlib.AbstractContextManager | None = None) -> float:
    """Median milliseconds for one image through the model (batch 1, no gradient), after two warm-ups."""
    model.eval()
    images = [img.to(device).float().div_(255) for img in images]
    times = []
    for i, img in enumerate([images[0], images[0]] + images):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast or contextlib.nullcontext():
            model([img])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def _deform_conv_flops(x_shape, w_shape, *args, out_shape, **kwargs) -> int:
    """A deformable convolution counted as the convolution of its shapes (as mmcv's and fvcore's
    counters do): the bilinear sampling at the offsets is not counted."""
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape))


# Operators torch's counter does not know: torchvision's deform_conv2d (RepPoints' deformable convs).
CUSTOM_FLOPS = {torch.ops.torchvision.deform_conv2d: _deform_conv_flops}


@torch.no_grad()
def count_flops(model: nn.Module, image: torch.Tensor, device: torch.device) -> int:
    """FLOPs of one inference forward on one image (torch.utils.flop_counter; NMS is not counted).
    A two-stage detector's RoI head runs on the proposals the RPN's NMS keeps, a number its weights
    decide (two runs of one config differed by 10%), so its FLOPs are counted with the RPN's NMS
    off: the RoI head on the full test budget (rpn_post_nms_top_n_test proposals), the same for
    every variant of an architecture."""
    model.eval()
    rpn = getattr(model, "rpn", None)
    nms_thresh = getattr(rpn, "nms_thresh", None)
    try:
        if rpn is not None:
            rpn.nms_thresh = 1.0  # IoU > 1 never happens: NMS keeps every proposal
        with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
            model([image.to(device).float().div_(255)])
    finally:
        if rpn is not None:
            rpn.nms_thresh = nms_thresh
    return int(counter.get_total_flops())
