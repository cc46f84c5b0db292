"""What the Review tab walks through: uncertain regions and unsure nuclei, ranked.

Two kinds of :class:`ReviewItem`:

- a **region** (``kind == "region"``): a connected group of pixels still uncertain (255)
  in the correction layer, as :func:`.regions.uncertain_regions` finds them;
- a **nucleus** (``kind == "nucleus"``): one nucleus of the layer (all the pixels of one
  id, see :mod:`.nuclei`), that the model is among the least sure of.

**Order.** With an uncertainty map, regions and nuclei form one list ranked by their
mean uncertainty per pixel, most uncertain first (ties: the larger item first, then top to
bottom, left to right). A region's pixels are those the pseudo-label could not decide,
so on a fresh entropy map they come before every nucleus. Without an uncertainty map there
is nothing to tell how unsure a nucleus is: the list holds only the regions, largest
first (as :func:`.regions.uncertain_regions` ranks them).

**Which nuclei.** A nucleus is listed when it is among the most uncertain
:data:`NUCLEI_SHARE` of the layer's nuclei by mean uncertainty (at least
:data:`NUCLEI_MIN` and at most :data:`NUCLEI_MAX` of them) *and* its mean uncertainty is
above the mean of the map over all nucleus pixels of the layer (so a layer whose nuclei
are all equally sure lists none, and neither does a layer with one nucleus). A relative
rule: the pseudo-label calls a pixel nucleus only where the model is sure enough, so on
the default entropy map every nucleus pixel is less uncertain than every uncertain (255)
pixel, and an absolute cut at the uncertain pixels' level would never list a nucleus.

Nuclei are listed only in a layer that holds nucleus ids (:func:`.nuclei.has_ids`); the
connected pieces of a plain 0/1/255 mask are often clumps of touching nuclei, so they are
listed only on request (``pieces=True``).

Ranking a 2000 x 2000 layer with a few thousand nuclei takes a few whole-array passes
(``np.bincount`` and one ``ndi.find_objects``), well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..engine.pseudolabel import UNCERTAIN
from ..errors import InputError
from .nuclei import FOUR, has_ids
from .regions import uncertain_regions

#: Share of a layer's nuclei, the most uncertain ones, that may be listed for review.
NUCLEI_SHARE = 0.1
#: At least this many nuclei may be listed (where the layer has more than the average
#: uncertainty to show), and at most :data:`NUCLEI_MAX`, however large the layer.
NUCLEI_MIN = 3
NUCLEI_MAX = 30
#: Ids above this (and above twice the number of pixels) are renumbered before counting,
#: so that ``np.bincount`` stays small whatever the ids are.
_DENSE_IDS = 1 << 20

REGION, NUCLEUS = "region", "nucleus"


@dataclass(frozen=True)
class ReviewItem:
    """One thing to review.

    Attributes
    ----------
    kind
        ``"region"`` or ``"nucleus"``.
    bbox
        ``(y0, x0, y1, x1)``, half-open, in pixel coordinates of the layer: the region's
        uncertain pixels, or all of the nucleus.
    centroid
        ``(y, x)`` of those pixels.
    area
        Number of those pixels (a region: its uncertain pixels).
    score
        Their summed uncertainty (without a map: ``area``).
    mean
        Their mean uncertainty (the ranking key), None without an uncertainty map.
    label
        A nucleus: its value in the layer (its id; 1 for a piece of a 0/1 mask). 0 for a
        region.
    number
        A nucleus: the number to show (its id, or the piece's number in a 0/1 mask).
    point
        A nucleus: one of its pixels, the one nearest its centroid (for
        :func:`.nuclei.delete`).
    pixels
        A nucleus: its pixels within ``bbox`` (bool), as they were when it was listed.
    """

    kind: str
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area: int
    score: float
    mean: float | None = None
    label: int = 0
    number: int = 0
    point: tuple[int, int] | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def is_nucleus(self) -> bool:
        return self.kind == NUCLEUS

    @property
    def slices(self) -> tuple[slice, slice]:
        y0, x0, y1, x1 = self.bbox
        return slice(y0, y1), slice(x0, x1)


def _check(labels: np.ndarray, uncertainty: np.ndarray | None) -> np.ndarray | None:
    if labels.ndim != 2:
        raise InputError(f"expected a 2D mask, got shape {labels.shape}: pick one plane")
    if labels.dtype.kind not in "biu":
        raise InputError(f"a correction mask must hold integer labels, got {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and int(labels.min()) < 0:
        raise InputError("a correction mask must not hold negative values")
    if uncertainty is None:
        return None
    unc = np.asarray(uncertainty)
    if unc.shape != labels.shape:
        raise InputError(
            f"uncertainty map {unc.shape} and mask {labels.shape} differ in shape: "
            "run the pseudo-label again on this image"
        )
    return unc


def unsure_nuclei(
    labels: np.ndarray,
    uncertainty: np.ndarray,
    *,
    share: float = NUCLEI_SHARE,
    min_count: int = NUCLEI_MIN,
    max_count: int = NUCLEI_MAX,
    pieces: bool = False,
) -> list[ReviewItem]:
    """The nuclei of ``labels`` the model is least sure of, most uncertain first.

    See the module's docstring for the rule: the most uncertain ``share`` of the nuclei
    (``min_count`` to ``max_count`` of them) whose mean ``uncertainty`` is above the mean
    over all nucleus pixels. A nucleus is all the pixels of one id; with ``pieces`` a plain
    0/1/255 mask's 4-connected pieces of 1 are its nuclei (else it has none to list).
    """
    data = np.asarray(labels)
    unc = _check(data, uncertainty)
    if unc is None or not data.size:
        return []
    if has_ids(data):
        inst = np.where(data == UNCERTAIN, 0, data)
        piecewise = False
    elif pieces:
        inst, _ = ndi.label(data == 1, structure=FOUR)
        piecewise = True
    else:
        return []
    flat = inst.ravel().astype(np.intp, copy=False)
    top = int(flat.max())
    if top == 0:
        return []
    names = None  # dense index -> id, where the ids were renumbered
    if top > max(_DENSE_IDS, 2 * flat.size):
        some = flat != 0
        names, dense = np.unique(flat[some], return_inverse=True)
        flat = np.zeros(flat.shape, np.intp)
        flat[some] = dense.ravel() + 1
        names = np.concatenate([[0], names])
        top = names.size - 1
    counts = np.bincount(flat, minlength=top + 1)
    sums = np.bincount(flat, weights=unc.ravel().astype(np.float64), minlength=top + 1)
    ids = np.flatnonzero(counts[1:]) + 1
    means = sums[ids] / counts[ids]
    overall = float(sums[ids].sum() / counts[ids].sum())
    want = int(round(share * ids.size))
    k = min(ids.size, max(min_count, min(max_count, want)))
    order = np.lexsort((ids, -means))[:k]
    order = order[means[order] > overall]
    if not order.size:
        return []
    chosen = ids[order]
    lut = np.zeros(top + 1, np.int32)
    lut[chosen] = np.arange(1, chosen.size + 1, dtype=np.int32)
    small = lut[flat].reshape(data.shape)
    boxes = ndi.find_objects(small, max_label=chosen.size)
    items = []
    for j, dense in enumerate(chosen):
        ys, xs = boxes[j]
        pixels = small[ys, xs] == j + 1
        py, px = np.nonzero(pixels)
        cy, cx = float(py.mean()), float(px.mean())
        near = int(np.argmin((py - cy) ** 2 + (px - cx) ** 2))
        name = int(names[dense]) if names is not None else int(dense)
        items.append(
            ReviewItem(
                kind=NUCLEUS,
                bbox=(ys.start, xs.start, ys.stop, xs.stop),
                centroid=(cy + ys.start, cx + xs.start),
                area=int(counts[dense]),
                score=float(sums[dense]),
                mean=float(means[order[j]]),
                label=1 if piecewise else name,
                number=name,
                point=(int(py[near]) + ys.start, int(px[near]) + xs.start),
                pixels=pixels,
            )
        )
    return items


def review_items(
    labels: np.ndarray,
    uncertainty: np.ndarray | None = None,
    *,
    min_area: int = 4,
    merge_distance: int = 2,
    share: float = NUCLEI_SHARE,
    min_count: int = NUCLEI_MIN,
    max_count: int = NUCLEI_MAX,
    pieces: bool = False,
) -> list[ReviewItem]:
    """Uncertain regions and unsure nuclei of a correction layer, most uncertain first.

    ``min_area`` and ``merge_distance`` are :func:`.regions.uncertain_regions`'; ``share``,
    ``min_count``, ``max_count`` and ``pieces`` :func:`unsure_nuclei`'. Without
    ``uncertainty`` only the regions, largest first. See the module's docstring.
    """
    data = np.asarray(labels)
    unc = _check(data, uncertainty)
    regions = uncertain_regions(data, unc, min_area=min_area, merge_distance=merge_distance)
    items = [
        ReviewItem(
            kind=REGION,
            bbox=r.bbox,
            centroid=r.centroid,
            area=r.area,
            score=r.score,
            mean=None if unc is None else r.score / r.area,
        )
        for r in regions
    ]
    if unc is None:
        return items  # already ranked by area
    items += unsure_nuclei(
        data,
        unc,
        share=share,
        min_count=min_count,
        max_count=max_count,
        pieces=pieces,
    )
    items.sort(key=lambda it: (-(it.mean or 0.0), -it.area, it.bbox[0], it.bbox[1]))
    return items
