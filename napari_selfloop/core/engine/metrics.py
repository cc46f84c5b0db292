"""Segmentation metrics: pixel scores and, for nuclei, object-level F1 and AJI.

Pixel scores (:func:`pixel_scores`) come from the confusion counts of a binary prediction
against a mask whose pixels marked 255 are ignored:

- ``f1`` -- pixel F1, i.e. the Dice coefficient ``2 TP / (2 TP + FP + FN)``;
- ``balanced_accuracy`` -- ``(recall + specificity) / 2``, what the self-loop paper calls
  "F1" ("the unweighted average classification accuracy of the foreground and background");
- ``precision``, ``recall``, ``specificity``, ``accuracy``, ``iou``.

Empty cases are scored as agreement: with no foreground in truth and prediction, Dice,
precision and recall are 1.

:func:`captured_errors` measures an uncertainty map: the share of the wrong pixels that lie
among the K % most uncertain pixels (random pixels capture K %).

Object scores work on instance labels (0 = background, one id per object).
:func:`instances` makes them from a binary mask by connected components, optionally split
by a distance-transform watershed. :func:`object_scores` matches objects one-to-one at
IoU > 0.5 (such matches are unique) and reports object precision, recall and F1;
:func:`aji` is the Aggregated Jaccard Index of Kumar et al. (IEEE TMI 2017).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

IGNORE = 255

__all__ = [
    "aji",
    "captured_errors",
    "instances",
    "object_scores",
    "overlaps",
    "pixel_counts",
    "pixel_scores",
    "scores_from_counts",
]


def _binary(a: Any, threshold: float = 0.5) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    if a.dtype.kind == "f":
        return a > threshold
    return a > 0


def pixel_counts(pred: Any, truth: Any, *, ignore: int | None = IGNORE) -> np.ndarray:
    """Confusion counts ``[TP, FP, FN, TN]`` (int64) over the pixels truth does not ignore.

    Parameters
    ----------
    pred
        Prediction: bool, 0/1 integers, or probabilities (foreground where > 0.5).
    truth
        Integer mask: 0 background, 1 (or any value > 0) foreground, ``ignore`` not counted.
    """
    truth = np.asarray(truth)
    pred_b = _binary(pred)
    if pred_b.shape != truth.shape:
        raise ValueError(f"prediction shape {pred_b.shape} != truth shape {truth.shape}")
    valid = np.ones(truth.shape, bool) if ignore is None else truth != ignore
    t = (truth > 0) & valid
    p = pred_b & valid
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(np.count_nonzero(valid)) - tp - fp - fn
    return np.array([tp, fp, fn, tn], dtype=np.int64)


def _ratio(num: float, den: float, empty: float = 1.0) -> float:
    return float(num) / float(den) if den > 0 else empty


def scores_from_counts(counts: Any) -> dict[str, float]:
    """Pixel scores from ``[TP, FP, FN, TN]``."""
    tp, fp, fn, tn = (int(c) for c in counts)
    recall = _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0)
    precision = _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0)
    specificity = _ratio(tn, tn + fp, 1.0)
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "iou": _ratio(tp, tp + fp + fn),
    }


def pixel_scores(pred: Any, truth: Any, *, ignore: int | None = IGNORE) -> dict[str, float]:
    """Pixel F1 (Dice), balanced accuracy, precision, recall ... of one image."""
    return scores_from_counts(pixel_counts(pred, truth, ignore=ignore))


def captured_errors(
    uncertainty: np.ndarray,
    wrong: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, float]:
    """``{LABELtopK: %}``: the share of each ``wrong[LABEL]`` pixel set (bool, the shape of
    ``uncertainty``) inside the K % most uncertain pixels. Ties are broken at random, with
    one draw of ``rng`` per call; a set with no pixel captures 0."""
    size = uncertainty.size
    order = np.argsort(-(np.asarray(uncertainty, np.float64).ravel() + 1e-9 * rng.random(size)))
    out = {}
    for k in ks:
        top = np.zeros(size, bool)
        top[order[: int(round(k / 100 * size))]] = True
        for label, w in wrong.items():
            w = np.asarray(w, bool).ravel()
            out[f"{label}top{k}"] = 100 * float((w & top).sum() / max(w.sum(), 1))
    return out


def instances(
    mask: Any, *, split: bool = False, min_distance: int = 5, min_size: int = 0
) -> np.ndarray:
    """Instance labels (int32) of a binary mask.

    Parameters
    ----------
    mask
        Binary mask (bool, 0/1, or probabilities thresholded at 0.5).
    split
        Split touching objects by a watershed on the negated distance transform, seeded
        at its local maxima at least ``min_distance`` pixels apart.
    min_size
        Objects smaller than this many pixels are removed.
    """
    from scipy import ndimage as ndi
    from skimage.measure import label

    binary = _binary(mask)
    labels = label(binary, connectivity=1).astype(np.int32)
    if split and labels.max() > 0:
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        dist = ndi.distance_transform_edt(binary)
        peaks = peak_local_max(dist, min_distance=min_distance, labels=labels, exclude_border=False)
        markers = np.zeros(binary.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # Objects without a peak (tiny or flat ones) keep their own component.
        missing = np.setdiff1d(np.unique(labels[labels > 0]), np.unique(labels[markers > 0]))
        for i, lab in enumerate(missing, start=len(peaks) + 1):
            markers[labels == lab] = i
        labels = watershed(-dist, markers, mask=binary).astype(np.int32)
    if min_size > 0 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        if small.size:
            labels[np.isin(labels, small)] = 0
    if labels.max() > 0:
        labels = label(labels > 0, connectivity=1) if not split else _relabel(labels)
    return labels.astype(np.int32)


def _relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]


def overlaps(
    truth: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersections of two instance label images.

    Returns
    -------
    t_ids, p_ids, inter
        One entry per overlapping pair (truth id, prediction id, pixels in common).
    t_area, p_area
        Pixel counts per id (index = id; index 0 is the background).
    """
    truth = np.asarray(truth).astype(np.int64, copy=False)
    pred = np.asarray(pred).astype(np.int64, copy=False)
    if truth.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    t_area = np.bincount(truth.ravel())
    p_area = np.bincount(pred.ravel())
    both = (truth > 0) & (pred > 0)
    key = truth[both] * (int(pred.max()) + 1) + pred[both]
    pairs, inter = np.unique(key, return_counts=True)
    t_ids, p_ids = np.divmod(pairs, int(pred.max()) + 1)
    return t_ids, p_ids, inter, t_area, p_area


def object_scores(truth: Any, pred: Any) -> dict[str, float]:
    """Object precision, recall and F1 with one-to-one matching at IoU > 0.5.

    ``truth`` and ``pred`` are instance label images (0 = background).
    """
    t_ids, p_ids, inter, t_area, p_area = overlaps(truth, pred)
    n_true = int(np.count_nonzero(t_area[1:])) if t_area.size > 1 else 0
    n_pred = int(np.count_nonzero(p_area[1:])) if p_area.size > 1 else 0
    iou = inter / (t_area[t_ids] + p_area[p_ids] - inter) if inter.size else np.zeros(0)
    tp = int(np.count_nonzero(iou > 0.5))
    fp, fn = n_pred - tp, n_true - tp
    return {
        "object_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "object_precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "object_recall": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
        "objects_true": n_true,
        "objects_pred": n_pred,
        "objects_matched": tp,
    }


def panoptic_scores(truth: Any, pred: Any) -> dict[str, float]:
    """Panoptic quality and the cost of correcting ``pred`` into ``truth``.

    Objects are matched one to one at IoU > 0.5 (such matches are unique). With TP the
    matches, FP the unmatched predictions and FN the unmatched true objects:
    ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ`` the mean IoU of the matches and
    ``PQ = DQ * SQ`` (HoVer-Net's definition; 1.0 when both images are empty). Every
    unmatched prediction is one *delete*, every unmatched true object one *add or redraw*:
    ``edits_per_100 = 100 * (FP + FN) / true objects`` (``100 * FP`` ... when there are
    none: each false object costs a delete).
    """
    t_ids, p_ids, inter, t_area, p_area = overlaps(truth, pred)
    n_true = int(np.count_nonzero(t_area[1:])) if t_area.size > 1 else 0
    n_pred = int(np.count_nonzero(p_area[1:])) if p_area.size > 1 else 0
    iou = inter / (t_area[t_ids] + p_area[p_ids] - inter) if inter.size else np.zeros(0)
    matched = iou[iou > 0.5]
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_true - tp
    if n_true == 0 and n_pred == 0:
        dq = sq = 1.0
    else:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = float(matched.mean()) if tp else 0.0
    return {
        "pq": dq * sq,
        "dq": dq,
        "sq": sq,
        "edits_per_100": 100.0 * (fp + fn) / max(n_true, 1),
        "deletes": fp,
        "adds": fn,
    }


def aji(truth: Any, pred: Any) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017).

    Each true object is paired with the predicted object of largest IoU with it; the sum
    of their intersections is divided by the sum of their unions plus the areas of the
    predicted objects that were paired with no true object. A true object that overlaps
    nothing adds its area to the denominator. 1.0 when both images are empty.
    """
    t_ids, p_ids, inter, t_area, p_area = overlaps(truth, pred)
    true_ids = np.flatnonzero(t_area)
    true_ids = true_ids[true_ids > 0]
    pred_ids = np.flatnonzero(p_area)
    pred_ids = pred_ids[pred_ids > 0]
    if true_ids.size == 0 and pred_ids.size == 0:
        return 1.0
    c = u = 0
    used = np.zeros(p_area.size, bool)
    iou = inter / (t_area[t_ids] + p_area[p_ids] - inter) if inter.size else np.zeros(0)
    best_for: dict[int, int] = {}
    order = np.lexsort((-iou, t_ids))  # by truth id, best IoU first
    for k in order:
        best_for.setdefault(int(t_ids[k]), int(k))
    for tid in true_ids:
        k = best_for.get(int(tid))
        if k is None:
            u += int(t_area[tid])
            continue
        c += int(inter[k])
        u += int(t_area[tid] + p_area[p_ids[k]] - inter[k])
        used[p_ids[k]] = True
    unused = pred_ids[~used[pred_ids]]
    u += int(p_area[unused].sum())
    return _ratio(c, u, 1.0)
