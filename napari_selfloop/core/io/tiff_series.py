"""Which series of a TIFF file is the image: shared by the image reader (:mod:`.images`) and
the slide reader (:mod:`.slides`).

A slide file also holds small vendor images: Aperio's thumbnail, label and macro pages,
Hamamatsu's macro and map, Bio-Formats' "label image" / "macro image" series. The image is
the largest series whose name is none of those (:data:`VENDOR_EXTRAS`); a flat pyramid's
reduced copies are separate series of the same aspect ratio (:func:`reduced_series`).
Everything here takes an open ``tifffile.TiffFile`` (or its series) and reads no pixels.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["VENDOR_EXTRAS", "choose_series", "is_extra", "plane_shape", "reduced_series"]

#: Series names (lower case, substrings) of vendor images that are not the slide.
VENDOR_EXTRAS = ("label", "macro", "thumbnail", "overview", "map", "barcode")


def is_extra(series: Any) -> bool:
    """Whether a series is a vendor image (label, macro, thumbnail ...), not the slide."""
    name = (series.name or "").lower()
    return any(word in name for word in VENDOR_EXTRAS)


def plane_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its leading length-1 axes (ImageJ, OME)."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def choose_series(tif: Any) -> int:
    """The index of the series that is the image (the slide, not a label or macro image)."""
    candidates = [i for i, s in enumerate(tif.series) if not is_extra(s)]
    if not candidates:
        candidates = list(range(len(tif.series)))
    if tif.is_svs or tif.is_ndpi:
        return candidates[0]  # the baseline: tifffile names vendor pages for these
    return max(candidates, key=lambda i: math.prod(plane_shape(tif.series[i].shape)[:2]))


def reduced_series(tif: Any, chosen: int, shape: tuple[int, ...]) -> list[int]:
    """Other series that are reduced copies of the chosen one (pages of a flat pyramid)."""
    h, w = shape[:2]
    out = []
    for i, series in enumerate(tif.series):
        if i == chosen or is_extra(series):
            continue
        other = plane_shape(series.shape)
        if len(other) != len(shape) or other[2:] != shape[2:]:
            continue
        oh, ow = other[:2]
        if (
            oh < h
            and ow < w
            and abs(oh / h - ow / w) <= 0.02 * max(oh / h, ow / w) + 2 / min(oh, ow)
        ):
            out.append(i)
    return sorted(out, key=lambda i: -math.prod(plane_shape(tif.series[i].shape)[:2]))
