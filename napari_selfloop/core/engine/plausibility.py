"""Does a proposal look like what the model was trained on? A plain-words warning when not.

A model trained on some organs and stains can be confidently wrong on tissue it has not
seen (on a brain image the MoNuSeg model marked 73 % of all pixels as nucleus). Each
trained checkpoint records the range of three figures over its labelled training images
(:func:`tissue_range`, in ``metrics["tissue"]``): the **foreground share** (the fraction of
pixels that are nucleus or lesion), the **typical object size** (the median area of the
objects, in pixels) and the model's **uncertainty over what it calls foreground**
(:func:`fg_entropy`, of its own predictions, measured when training ends). :func:`plausibility_warning` compares a proposal's figures with that
range, with a margin (:data:`SHARE_MARGIN`, :data:`SIZE_MARGIN`, :data:`ENTROPY_MARGIN`), so that it stays
quiet on tissue like the training tissue and speaks when a proposal is far outside it.
The margins were measured on validation images (``docs/instances.md``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeGuard

import numpy as np

#: A proposal's foreground share may exceed the largest training share by this factor
#: (and fall below the smallest by its inverse ... see :func:`plausibility_warning`).
SHARE_MARGIN = 1.6
#: A proposal's median object area may exceed the largest training median by this factor.
SIZE_MARGIN = 3.0
#: A proposal's ``fg_entropy`` may exceed the largest training value by this factor.
ENTROPY_MARGIN = 1.05
#: Foreground pixels a proposal (or a training image) needs for its ``fg_entropy``.
MIN_FG_PIXELS = 2_000
#: Below this many objects the median size says little: only the share is checked.
MIN_OBJECTS = 5
#: Labelled pixels an image needs to count in a training record (a 100x100 region).
MIN_LABELLED = 10_000
#: The record key in a checkpoint's ``metrics``.
RECORD_KEY = "tissue"


def image_figures(foreground: np.ndarray, objects: np.ndarray | None) -> dict[str, float]:
    """``share`` (foreground fraction) and ``median_area`` (pixels; NaN with fewer than
    :data:`MIN_OBJECTS` objects or none given)."""
    fg = np.asarray(foreground, bool)
    share = float(fg.mean()) if fg.size else 0.0
    if objects is None:
        return {"share": share, "median_area": math.nan}
    areas = np.bincount(np.asarray(objects).ravel().astype(np.int64))[1:]
    return {"share": share, "median_area": figures_from_areas(areas, 1)["median_area"]}


def figures_from_areas(areas: np.ndarray, pixels: int) -> dict[str, float]:
    """The figures of objects given by their areas, in an image of ``pixels`` pixels."""
    areas = np.asarray(areas)
    areas = areas[areas > 0]
    median = float(np.median(areas)) if areas.size >= MIN_OBJECTS else math.nan
    return {"share": float(areas.sum()) / max(pixels, 1), "median_area": median}


def fg_entropy(sums: np.ndarray) -> float:
    """The mean binary entropy (bits) of the model's own probability over what it calls
    foreground, from ``(entropy summed, pixels)``; NaN under :data:`MIN_FG_PIXELS` pixels.

    How unsure the model is of what it calls nucleus: on the leave-one-organ-out cases
    where a base model was badly wrong this rose above every training image's value while
    the share and the object size stayed in range (``docs/instances.md``). It is measured
    on the plain (softmax) prediction whatever the method, so the record and the check
    agree: MC dropout's averaged probability is 5-11 % less certain than softmax's.
    """
    total, pixels = float(sums[0]), float(sums[1])
    return total / pixels if pixels >= MIN_FG_PIXELS else math.nan


def entropy_range(values: Iterable[float]) -> dict[str, Any] | None:
    """The ``fg_entropy`` part of a tissue record: its min and max over training images
    (those with enough foreground)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return None
    return {"fg_entropy": [round(min(finite), 4), round(max(finite), 4)]}


def tissue_range(figures: Iterable[dict[str, float]]) -> dict[str, Any] | None:
    """The record of a training set: min and max of each figure over its images."""
    rows = list(figures)
    if not rows:
        return None
    shares = [r["share"] for r in rows]
    areas = [r["median_area"] for r in rows if math.isfinite(r["median_area"])]
    return {
        "share": [round(min(shares), 4), round(max(shares), 4)],
        "median_area": [round(min(areas), 1), round(max(areas), 1)] if areas else None,
        "images": len(rows),
    }


def merge_ranges(*ranges: dict[str, Any] | None) -> dict[str, Any] | None:
    """The union of several records (a fine-tuned model knows its parent's tissue too)."""
    valid = [r for r in ranges if _valid(r)]
    if not valid:
        return None
    share = [min(r["share"][0] for r in valid), max(r["share"][1] for r in valid)]
    areas = [r["median_area"] for r in valid if r.get("median_area")]
    merged = {
        "share": share,
        "median_area": [min(a[0] for a in areas), max(a[1] for a in areas)] if areas else None,
        "images": sum(int(r.get("images") or 0) for r in valid),
    }
    entropies = [r["fg_entropy"] for r in valid if r.get("fg_entropy")]
    if entropies:
        merged["fg_entropy"] = [min(e[0] for e in entropies), max(e[1] for e in entropies)]
    return merged


def with_entropy(record: dict[str, Any] | None, values: Iterable[float]) -> dict[str, Any] | None:
    """``record`` with the ``fg_entropy`` range of ``values`` joined to any it had (the
    model's own figures on its labelled training images, measured after training)."""
    part = entropy_range(values)
    if part is None or not _valid(record):
        return record
    old = record.get("fg_entropy")
    lo, hi = part["fg_entropy"]
    if old:
        lo, hi = min(lo, old[0]), max(hi, old[1])
    return {**record, "fg_entropy": [lo, hi]}


def _pair(v: Any) -> bool:
    return (
        isinstance(v, list | tuple)
        and len(v) == 2
        and all(isinstance(x, int | float) and math.isfinite(x) and x >= 0 for x in v)
        and v[0] <= v[1]
    )


def _valid(record: Any) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(record, dict)
        and _pair(record.get("share"))
        and (record.get("median_area") is None or _pair(record.get("median_area")))
        and (record.get("fg_entropy") is None or _pair(record.get("fg_entropy")))
    )


def record_of(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checkpoint's tissue record (from its ``metrics``), or None when it has none or it
    is damaged (a record is file content: never trusted blindly)."""
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    record = metrics.get(RECORD_KEY) if isinstance(metrics, dict) else None
    return record if _valid(record) else None


def plausibility_warning(
    figures: dict[str, float] | None, record: dict[str, Any] | None
) -> str | None:
    """A plain-words warning when a proposal looks unlike the model's training tissue.

    ``figures`` are the proposal's (:func:`image_figures` and :func:`fg_entropy`;
    ``result.info["figures"]`` of a pseudo-label). Fires when the foreground share is above
    :data:`SHARE_MARGIN` times the largest training share, the median object area above
    :data:`SIZE_MARGIN` times the largest training median, or the model's uncertainty over
    what it calls foreground above :data:`ENTROPY_MARGIN` times its largest on the training
    images. None when the proposal is within range, or the model has no record.
    """
    if not _valid(record) or not isinstance(figures, dict):
        return None
    share = float(figures.get("share", 0.0))
    median = float(figures.get("median_area", math.nan))
    reasons = []
    top_share = record["share"][1]
    if share > SHARE_MARGIN * top_share and share > 0.05:
        reasons.append(
            f"it marks {100 * share:.0f} % of the image as {NOUN}, while on its training "
            f"images it was at most {100 * top_share:.0f} %"
        )
    areas = record.get("median_area")
    if areas and math.isfinite(median) and median > SIZE_MARGIN * areas[1]:
        reasons.append(
            f"the objects it finds are typically {median / areas[1]:.0f} times as large as on "
            "its training images"
        )
    entropy = float(figures.get("fg_entropy", math.nan))
    top_entropy = (record.get("fg_entropy") or [0.0, math.inf])[1]
    if math.isfinite(entropy) and entropy > ENTROPY_MARGIN * top_entropy:
        reasons.append(
            f"it is much less sure of what it calls {NOUN} than on any of its training images "
            f"(uncertainty {entropy:.2f} against at most {top_entropy:.2f})"
        )
    if not reasons:
        return None
    return (
        "This model may not know this tissue: "
        + "; and ".join(reasons)
        + ". Check the proposal closely; correcting a small region and pressing Fine-tune "
        "teaches it this tissue."
    )


#: What the foreground is called in the warning.
NOUN = "foreground"


def labelled_tissue(items: Iterable[Any]) -> dict[str, Any] | None:
    """The tissue record of prepared training items (:class:`.datasets.PreparedItem`):
    the figures of the labelled part of each mask, objects as its connected components
    (touching nuclei merged: a conservative, larger typical size)."""
    from skimage.measure import label

    from .instances import foreground_of

    rows = []
    for item in items:
        mask = getattr(item, "mask", None)
        if mask is None:
            continue
        labelled = mask != 255
        if labelled.sum() < MIN_LABELLED:  # a few strokes say little about the tissue
            continue
        fg = foreground_of(mask)
        rows.append(image_figures(fg[labelled], None) | _sizes(label(fg, connectivity=1)))
    return tissue_range(rows)


def _sizes(objects: np.ndarray) -> dict[str, float]:
    return {"median_area": image_figures(objects > 0, objects)["median_area"]}
