"""Bootstrap standard error of a run's COCO mAP over its val images (``metrics.mAP_se``).

The val images are a sample: another draw of as many images would give another mAP. The standard
error of that is estimated by the bootstrap: ``resamples`` sets of N images drawn with replacement
from the N val images, the mAP of each, their standard deviation.

Method: per-image matching once, AP re-accumulated per resample. Each val image's detections are
matched to its boxes once, as COCOeval.evaluateImg matches them (area range "all", the last maxDets:
100), by :func:`match_images`: a numpy port, because faster-coco-eval (the default evaluator) keeps its
per-image results in C++, out of Python's reach. A resample is then a count per image (0, 1, 2...),
and :func:`resampled_map` accumulates each as COCOeval.accumulate would the resampled image set, with
each image's detections and boxes repeated as often as it was drawn: a detection of an image drawn c
times counts c times in the true and false positives and its boxes c times in the positives, in one
cumulative sum over the detections sorted once by score. That is COCOeval on the resampled set with
duplicated images (tests/test_bootstrap.py checks it against pycocotools' COCOeval, and the full set,
every count 1, against the run's mAP of either backend), except where two detections of different
images have exactly the same score (COCOeval then orders them by image id, an order a resample with
new ids would change).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger("ablate.evaluate")

# COCOeval's parameters for bbox: IoU thresholds .50:.05:.95 (written as pycocotools writes them, so
# the floats are the same), 101 recall points, the area range "all" and 100 detections per image.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
AREA_ALL = (0.0, 1e5 ** 2)
MAX_DETS = 100
# Elements of one [resamples, detections] block accumulated at a time (bounded memory).
_BLOCK = 1 << 22


@dataclasses.dataclass
class ImageMatches:
    """The matching of every val image, per class: what AP is accumulated from.

    ``det_image[k]``: the image index (0..N-1, images in COCOeval's order: ascending id) of each kept
    detection of class k, in the order COCOeval.accumulate sorts them (score descending); ``tp[k]``
    and ``ignored[k]``: [thresholds, detections] booleans, a true positive, and a detection that
    counts as neither (matched to a crowd box, or outside the area range); the others are false
    positives. ``positives``: [classes, images], the boxes of each class in each image that are not
    ignored (not crowd)."""
    num_images: int
    det_image: list[np.ndarray]
    tp: list[np.ndarray]
    ignored: list[np.ndarray]
    positives: np.ndarray


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[..., D, G] IoU of xywh boxes, in the order of operations of pycocotools' bbIou (so that
    comparisons with a threshold come out the same); a crowd box's union is the detection's area."""
    dx, dy, dw, dh = (dt[..., :, None, j] for j in range(4))
    gx, gy, gw, gh = (gt[..., None, :, j] for j in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    da, ga = dw * dh, gw * gh
    union = np.where(crowd[..., None, :], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def _slots(groups: np.ndarray) -> np.ndarray:
    """Each element's place within its group, in the order given."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    slots = np.empty_like(groups)
    slots[order] = np.arange(len(groups)) - np.searchsorted(ordered, ordered, side="left")
    return slots


def _pad(groups: np.ndarray, slots: np.ndarray, n_groups: int, values: np.ndarray, fill) -> np.ndarray:
    """values[i] at [groups[i], slots[i]] of a [n_groups, longest group, ...] array, `fill` elsewhere."""
    out = np.full((n_groups, int(slots.max()) + 1, *values.shape[1:]), fill, dtype=values.dtype)
    out[groups, slots] = values
    return out


def _table(anns: list[dict], image_index: dict[int, int], cat_index: dict[int, int], *fields: str):
    """Image index, class index, xywh box and the named fields of the annotations (or detections)
    of the evaluated images and classes, as arrays; one pass over the dicts."""
    rows = [(image_index[a["image_id"]], cat_index[a["category_id"]], *a["bbox"], *(a.get(f, 0) for f in fields))
            for a in anns if a["image_id"] in image_index and a["category_id"] in cat_index]
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), 6 + len(fields))
    return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2:6], table[:, 6:]


def match_images(coco_gt: dict, detections: list[dict], image_ids: list[int],
                 max_dets: int = MAX_DETS) -> ImageMatches:
    """Match each image's detections of each class to its boxes, as COCOeval.evaluateImg does for
    the area range "all": detections by score (the first max_dets), each taking at each IoU threshold
    the still unmatched box (a crowd box stays available) of highest IoU >= the threshold, a regular
    box before a crowd one."""
    images = np.unique(np.asarray(list(image_ids), dtype=np.int64))  # COCOeval's order
    cats = sorted({int(c["id"]) for c in coco_gt["categories"]})
    n, k_count = len(images), len(cats)
    image_index = {int(i): j for j, i in enumerate(images)}
    cat_index = {c: k for k, c in enumerate(cats)}

    g_img, g_cls, g_box, g_crowd, g_ig = _ground_truth(coco_gt["annotations"], image_index, cat_index)
    d_img, d_cls, d_box, d_score = _table(detections, image_index, cat_index, "score")
    d_score = d_score[:, 0]

    positives = np.zeros((k_count, n), dtype=np.int64)
    np.add.at(positives, (g_cls, g_img), (~g_ig).astype(np.int64))

    d_sel, d_pair, rank = _first_detections(d_img, d_cls, d_score, n, max_dets)
    # Boxes per pair, regular ones first (COCOeval's stable sort on the ignore flag).
    g_sel = np.lexsort((g_ig, g_cls * n + g_img))
    g_pair = (g_cls * n + g_img)[g_sel]
    matched, matched_ig = _match_pairs(d_pair, d_box[d_sel], g_pair, g_box[g_sel], g_crowd[g_sel], g_ig[g_sel])
    # Unmatched detections outside the area range are ignored (for "all": none).
    d_area = d_box[d_sel, 2] * d_box[d_sel, 3]
    out_of_range = (d_area < AREA_ALL[0]) | (d_area > AREA_ALL[1])
    tp = matched & ~matched_ig
    ignored = matched_ig | (~matched & out_of_range[None, :])

    det_image, tps, igs = _per_class(k_count, d_cls[d_sel], d_img[d_sel], d_score[d_sel], rank, tp, ignored)
    return ImageMatches(num_images=n, det_image=det_image, tp=tps, ignored=igs, positives=positives)


def _ground_truth(anns: list[dict], image_index: dict[int, int], cat_index: dict[int, int]):
    """The boxes of the evaluated images and classes: image index, class index, xywh box, crowd flag
    and ignore flag (pycocotools' _prepare: a box is ignored when it is a crowd; "all" also ignores
    areas outside it)."""
    g_img, g_cls, g_box, g_fields = _table(anns, image_index, cat_index, "area", "iscrowd")
    g_area, g_crowd = g_fields[:, 0], g_fields[:, 1].astype(bool)
    g_ig = g_crowd | (g_area < AREA_ALL[0]) | (g_area > AREA_ALL[1])
    return g_img, g_cls, g_box, g_crowd, g_ig


def _first_detections(d_img: np.ndarray, d_cls: np.ndarray, d_score: np.ndarray, n: int, max_dets: int):
    """The detections evaluateImg keeps: per (class, image) pair by score, stable (COCOeval's mergesort),
    the first max_dets. Returns their indices, their pair (class * n + image) and their rank in it."""
    d_sel = np.lexsort((-d_score, d_cls * n + d_img))
    d_pair = (d_cls * n + d_img)[d_sel]
    rank = np.arange(len(d_sel)) - np.searchsorted(d_pair, d_pair, side="left")
    kept = rank < max_dets
    return d_sel[kept], d_pair[kept], rank[kept]


def _match_pairs(d_pair: np.ndarray, d_box: np.ndarray, g_pair: np.ndarray, g_box: np.ndarray,
                 g_crowd: np.ndarray, g_ig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[thresholds, detections] booleans: each kept detection matched, and matched to an ignored box.
    Detections and boxes come sorted by pair; they are padded into [pairs, slots] arrays so that all
    pairs are matched at once, rank by rank."""
    matched = np.zeros((len(IOU_THRESHOLDS), len(d_pair)), dtype=bool)
    matched_ig = np.zeros((len(IOU_THRESHOLDS), len(d_pair)), dtype=bool)
    pairs = np.intersect1d(d_pair, g_pair)  # pairs with detections and boxes; elsewhere nothing matches
    if pairs.size:
        d_in, g_in = np.isin(d_pair, pairs), np.isin(g_pair, pairs)
        d_group, g_group = _pair_groups(pairs, d_pair[d_in], g_pair[g_in])
        d_slot, g_slot = _slots(d_group), _slots(g_group)  # a detection's slot is its rank
        dt = _pad(d_group, d_slot, len(pairs), d_box[d_in], 0.0)
        d_mask = _pad(d_group, d_slot, len(pairs), np.ones(len(d_group), dtype=bool), False)
        gt = _pad(g_group, g_slot, len(pairs), g_box[g_in], 0.0)
        g_mask = _pad(g_group, g_slot, len(pairs), np.ones(len(g_group), dtype=bool), False)
        crowd = _pad(g_group, g_slot, len(pairs), g_crowd[g_in], False)
        ig = _pad(g_group, g_slot, len(pairs), g_ig[g_in], True)
        out_m, out_ig = _greedy_match(dt, d_mask, gt, g_mask, crowd, ig)
        matched[:, d_in] = out_m[d_group, :, d_slot].T
        matched_ig[:, d_in] = out_ig[d_group, :, d_slot].T
    return matched, matched_ig


def _pair_groups(pairs: np.ndarray, d_pair: np.ndarray, g_pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's and box's group: its pair's place, the pairs with the most detections first,
    so that at rank r only the first `active[r]` pairs take part in the matching."""
    d_group, g_group = np.searchsorted(pairs, d_pair), np.searchsorted(pairs, g_pair)
    order = np.argsort(-np.bincount(d_group, minlength=len(pairs)), kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    return where[d_group], where[g_group]


def _greedy_match(dt: np.ndarray, d_mask: np.ndarray, gt: np.ndarray, g_mask: np.ndarray, crowd: np.ndarray,
                  ig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """evaluateImg's greedy matching on padded pairs ([P, D, 4] detections by rank, [P, G, 4] boxes):
    [P, T, D] matched and matched-to-an-ignored-box flags, one rank at a time since a box taken by a
    higher-scored detection is no longer available."""
    ious = _iou(dt, gt, crowd)  # [P, D, G]
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]
    taken = np.zeros((dt.shape[0], len(IOU_THRESHOLDS), gt.shape[1]), dtype=bool)
    out_m = np.zeros((dt.shape[0], len(IOU_THRESHOLDS), dt.shape[1]), dtype=bool)
    out_ig = np.zeros_like(out_m)
    active = d_mask.sum(axis=0)
    for r in range(dt.shape[1]):
        a = int(active[r])
        iou = ious[:a, r, None, :]  # [a, 1, G]
        ok = g_mask[:a, None, :] & (~taken[:a] | crowd[:a, None, :]) & (iou >= thr)
        # The best regular box if any qualifies (evaluateImg stops at the crowd boxes then), else
        # the best crowd box; on equal IoU the later box (it takes IoU >= the best so far).
        regular = ok & ~ig[:a, None, :]
        cand = np.where(regular.any(axis=2, keepdims=True), regular, ok)
        score = np.where(cand, iou, -1.0)
        best = score.shape[2] - 1 - np.argmax(score[:, :, ::-1], axis=2)  # [a, T]
        hit = cand.any(axis=2)
        rows, ts = np.nonzero(hit)
        taken[rows, ts, best[rows, ts]] = True
        out_m[:a, :, r] = hit
        out_ig[:a, :, r] = hit & ig[np.arange(a)[:, None], best]
    return out_m, out_ig


def _per_class(k_count: int, d_cls: np.ndarray, d_img: np.ndarray, d_score: np.ndarray, rank: np.ndarray,
               tp: np.ndarray, ignored: np.ndarray) -> tuple[list, list, list]:
    """Per class, the kept detections' images, true-positive and ignored flags in the order
    COCOeval.accumulate sorts them: the images' detections concatenated in image order, then sorted
    by score (stable)."""
    det_image, tps, igs = [], [], []
    for k in range(k_count):
        mine = np.flatnonzero(d_cls == k)
        mine = mine[np.lexsort((rank[mine], d_img[mine], -d_score[mine]))]
        det_image.append(d_img[mine])
        tps.append(tp[:, mine])
        igs.append(ignored[:, mine])
    return det_image, tps, igs


def _counts_reaching(npig: np.ndarray) -> np.ndarray:
    """[B, recall points]: the fewest true positives c with c / npig >= each recall point, as floats
    compare (COCOeval's searchsorted on recall = tp / npig); npig 0 gives npig + 1, never reached."""
    npig = npig.astype(np.float64)[:, None]
    safe = np.where(npig > 0, npig, 1.0)
    c = np.ceil(RECALL_POINTS[None, :] * safe)
    c = np.where((c - 1) / safe >= RECALL_POINTS, c - 1, c)
    c = np.where(c / safe < RECALL_POINTS, c + 1, c)
    return np.where(npig > 0, c, npig + 1).astype(np.int64)


def resampled_map(matches: ImageMatches, counts: np.ndarray) -> np.ndarray:
    """COCO mAP (AP@[.50:.95], area all, 100 detections) of each image set given as ``counts``
    [resamples, images], how often each image is in it; -1 for a set without a box, as COCOeval."""
    counts = np.asarray(counts, dtype=np.int64)
    b_count = counts.shape[0]
    t_count = len(IOU_THRESHOLDS)
    ap_sum = np.zeros(b_count)
    valid = np.zeros(b_count)
    for k, det_image in enumerate(matches.det_image):
        npig = counts @ matches.positives[k]  # [B] boxes of class k in each resample
        valid += npig > 0
        tp, ign = matches.tp[k], matches.ignored[k]
        tp_any = np.flatnonzero(tp.any(axis=0))
        if not tp_any.size:
            continue  # no true positive at any threshold: AP 0
        # Detections after the last true positive change no point of any precision-recall curve.
        end = int(tp_any[-1]) + 1
        det_image, tp, ign = det_image[:end], tp[:, :end], ign[:, :end]
        step = max(1, _BLOCK // end)
        for b0 in range(0, b_count, step):
            block = slice(b0, b0 + step)
            w = counts[block][:, det_image].astype(np.int32)  # [b, D] each detection's count
            seen = np.cumsum(w, axis=1, dtype=np.int32)  # detections up to and including each
            need = _counts_reaching(npig[block])
            rows = np.arange(len(w))[:, None]
            # Rows apart in one sorted integer array: one searchsorted for all rows, exact.
            spacing = int(need.max()) + 1
            for t in range(t_count):
                pos = np.flatnonzero(tp[t])
                if not pos.size:
                    continue
                # Only the true positives matter: a false positive lowers the precision of the true
                # positives after it (through fp) and never raises the envelope or the recall.
                tps = np.cumsum(w[:, pos], axis=1, dtype=np.int32)
                fps = seen[:, pos] - tps
                if ign[t].any():
                    fps -= np.cumsum(w * ign[t], axis=1, dtype=np.int32)[:, pos]
                tp_f = tps.astype(np.float64)
                pr = tp_f / (fps.astype(np.float64) + tp_f + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the precision envelope
                # The first true positive with recall >= each recall point, or none (precision 0).
                keys = (tps + rows * spacing).ravel()
                idx = np.searchsorted(keys, (need + rows * spacing).ravel(), side="left")
                idx = idx.reshape(need.shape) - rows * len(pos)
                q = np.where(idx < len(pos), pr[rows, np.minimum(idx, len(pos) - 1)], 0.0)
                ap_sum[block] += np.where(npig[block] > 0, q.mean(axis=1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid > 0, ap_sum / (valid * t_count), -1.0)


def bootstrap_counts(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, num_images]: how often each image is drawn in each resample of num_images
    images drawn with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(resamples, num_images))
    flat = draws + num_images * np.arange(resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * num_images).reshape(resamples, num_images)


def map_standard_error(coco_gt: dict, detections: list[dict], image_ids: list[int], resamples: int,
                       seed: int) -> tuple[float, float]:
    """(bootstrap standard error of the mAP over the images, the mAP of the images themselves)."""
    matches = match_images(coco_gt, detections, image_ids)
    full = float(resampled_map(matches, np.ones((1, matches.num_images)))[0])
    maps = resampled_map(matches, bootstrap_counts(matches.num_images, resamples, seed))
    return float(np.std(maps, ddof=1)), full
