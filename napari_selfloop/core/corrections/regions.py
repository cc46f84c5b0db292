"""Uncertain regions of a pseudo-label, ranked by how much uncertainty they hold.

A region is a connected group of uncertain pixels (those still marked ``255`` in the
correction mask), after a small dilation so that specks a few pixels apart count as one
place to look at. Its score is the summed per-pixel uncertainty inside it, so a large,
very uncertain region comes first and a one-pixel speck last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..engine.pseudolabel import UNCERTAIN
from ..errors import InputError


@dataclass(frozen=True)
class Region:
    """One uncertain region.

    Attributes
    ----------
    bbox
        ``(y0, x0, y1, x1)``, half-open, in pixel coordinates of the mask.
    centroid
        ``(y, x)`` of the region's uncertain pixels.
    area
        Number of uncertain pixels.
    score
        Summed uncertainty over those pixels (the ranking key).
    """

    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area: int
    score: float


def uncertain_regions(
    mask: np.ndarray,
    uncertainty: np.ndarray | None = None,
    *,
    min_area: int = 4,
    merge_distance: int = 2,
    limit: int | None = None,
) -> list[Region]:
    """Connected uncertain regions of ``mask``, most uncertain first.

    Parameters
    ----------
    mask
        ``(H, W)`` correction mask; pixels equal to 255 are uncertain.
    uncertainty
        ``(H, W)`` per-pixel uncertainty; when None every uncertain pixel counts 1 (so
        regions are ranked by area).
    min_area
        Regions with fewer uncertain pixels are dropped.
    merge_distance
        Uncertain pixels this close (in pixels) belong to one region.
    limit
        Keep at most this many regions.

    Returns
    -------
    list of Region
        Sorted by decreasing ``score``; ties by position (top to bottom, left to right).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"expected a 2D mask, got shape {mask.shape}")
    if uncertainty is not None:
        uncertainty = np.asarray(uncertainty, dtype=np.float64)
        if uncertainty.shape != mask.shape:
            raise InputError(
                f"uncertainty map {uncertainty.shape} and mask {mask.shape} differ in shape: "
                "run the pseudo-label again on this image"
            )
    uncertain = mask == UNCERTAIN
    if not uncertain.any():
        return []
    grown = (
        ndi.binary_dilation(uncertain, iterations=merge_distance)
        if merge_distance > 0
        else uncertain
    )
    labels, n = ndi.label(grown)
    labels = np.where(uncertain, labels, 0)
    # Sums over the uncertain pixels alone (few, next to the whole image).
    ys, xs = np.nonzero(uncertain)
    owner = labels[ys, xs]
    areas = np.bincount(owner, minlength=n + 1)[1:]
    scores = (
        areas.astype(np.float64)
        if uncertainty is None
        else np.bincount(owner, weights=uncertainty[ys, xs], minlength=n + 1)[1:]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(owner, weights=ys, minlength=n + 1)[1:] / areas
        cx = np.bincount(owner, weights=xs, minlength=n + 1)[1:] / areas
    centroids = list(zip(cy, cx))
    slices = ndi.find_objects(labels, max_label=n)
    regions = []
    for i in range(n):
        if slices[i] is None or areas[i] < min_area:
            continue
        rows, cols = slices[i]
        regions.append(
            Region(
                bbox=(rows.start, cols.start, rows.stop, cols.stop),
                centroid=(float(centroids[i][0]), float(centroids[i][1])),
                area=int(areas[i]),
                score=float(scores[i]),
            )
        )
    regions.sort(key=lambda r: (-r.score, r.bbox[0], r.bbox[1]))
    return regions[:limit] if limit is not None else regions
