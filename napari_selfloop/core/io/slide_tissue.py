"""Tissue detection on a low-resolution level, so that glass is skipped.

The method, documented: HSV saturation (stained tissue is coloured, glass is grey), lightly
smoothed (Gaussian, sigma 1 px), thresholded by Otsu's method with the threshold held between
:data:`MIN_SATURATION` and :data:`MAX_SATURATION` (so a slide of all glass or all tissue is
not split in two); then pieces smaller than :data:`MIN_TISSUE_UM2` are removed, holes of
that size filled, and the mask grown by one pixel so tiles at the tissue's edge are kept.
:func:`detect_tissue` runs it on the coarsest level of a slide with a side of at least
1024 px; :func:`detect_tissue_in_image` on a single-level image read with a stride.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .slides import Slide

__all__ = [
    "MAX_SATURATION",
    "MIN_SATURATION",
    "MIN_TISSUE_UM2",
    "TissueMask",
    "detect_tissue",
    "detect_tissue_in_image",
    "tissue_from_rgb",
]

logger = logging.getLogger(__name__)

#: Bounds of the saturation threshold.
MIN_SATURATION, MAX_SATURATION = 0.04, 0.15
#: Tissue pieces and holes smaller than this (µm²) are dropped / filled.
MIN_TISSUE_UM2 = 5000.0


@dataclass
class TissueMask:
    """Where the tissue is, on a low-resolution grid.

    Attributes
    ----------
    mask
        bool ``(h, w)``: True on tissue.
    downsample
        Level-0 pixels per mask pixel, (rows, columns).
    threshold
        The saturation threshold used.
    level
        The slide level it was computed on.
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    threshold: float
    level: int

    @property
    def fraction(self) -> float:
        """Share of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _mask_window(
        self, y0: float, y1: float, x0: float, x1: float, downsample: float
    ) -> np.ndarray:
        dy, dx = self.downsample
        my0 = max(int(math.floor(y0 * downsample / dy)), 0)
        my1 = min(int(math.ceil(y1 * downsample / dy)), self.mask.shape[0])
        mx0 = max(int(math.floor(x0 * downsample / dx)), 0)
        mx1 = min(int(math.ceil(x1 * downsample / dx)), self.mask.shape[1])
        return self.mask[my0 : max(my1, my0), mx0 : max(mx1, mx0)]

    def covers(self, y0: float, y1: float, x0: float, x1: float, downsample: float = 1.0) -> bool:
        """Whether the window ``[y0:y1, x0:x1]`` of a level with ``downsample`` (level-0 pixels
        per pixel) touches tissue."""
        return bool(self._mask_window(y0, y1, x0, x1, downsample).any())

    def tiles(
        self, height: int, width: int, tile: int, downsample: float = 1.0
    ) -> list[tuple[int, int]]:
        """Origins ``(y, x)`` of the ``tile``-sized grid tiles of a ``height`` x ``width`` image
        at ``downsample`` that touch tissue, row by row."""
        return [
            (y, x)
            for y in range(0, height, tile)
            for x in range(0, width, tile)
            if self.covers(y, min(y + tile, height), x, min(x + tile, width), downsample)
        ]

    def resized(self, height: int, width: int) -> np.ndarray:
        """The mask at ``height`` x ``width`` (nearest neighbour), e.g. to show over a level."""
        rows = np.minimum(
            (np.arange(height) + 0.5) * self.mask.shape[0] / height, self.mask.shape[0] - 1
        )
        cols = np.minimum(
            (np.arange(width) + 0.5) * self.mask.shape[1] / width, self.mask.shape[1] - 1
        )
        return self.mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def _overview(
    slide: Slide, min_side: int, max_side: int
) -> tuple[np.ndarray, int, tuple[float, float]]:
    """A small RGB picture of the slide: the coarsest level with a side >= ``min_side``,
    read with a stride when it is still larger than ``max_side``."""
    shapes = slide.level_shapes
    level = 0
    for i, (h, w) in enumerate(shapes):
        if max(h, w) >= min(min_side, max(shapes[0])):
            level = i
    array = slide.levels[level]
    h, w = shapes[level]
    step = max(math.ceil(max(h, w) / max_side), 1)
    if step == 1:
        picture = np.asarray(array[:, :])
    else:
        chunk = int(getattr(array, "chunks", (1024,))[0] or 1024)
        band = max(chunk, step) // step * step
        parts = [np.asarray(array[y : min(y + band, h)])[::step, ::step] for y in range(0, h, band)]
        picture = np.concatenate(parts)
    h0, w0 = shapes[0]
    return picture, level, (h0 / picture.shape[0], w0 / picture.shape[1])


def detect_tissue(slide: Slide, *, min_side: int = 1024, max_side: int = 2048) -> TissueMask:
    """Find tissue on a low-resolution level (the method is in the module's docstring).

    Parameters
    ----------
    slide
        An open slide (RGB; a gray slide is taken as all tissue).
    min_side, max_side
        The coarsest level with a side of at least ``min_side`` is read, with a stride if it
        is larger than ``max_side``.

    Returns
    -------
    TissueMask
    """
    picture, level, downsample = _overview(slide, min_side, max_side)
    mask, threshold = tissue_from_rgb(picture, slide.mpp, downsample)
    logger.info(
        "%s: tissue covers %.1f%% (saturation threshold %.3f on level %d)",
        slide.path.name,
        100 * mask.mean(),
        threshold,
        level,
    )
    return TissueMask(mask, downsample, threshold, level)


def detect_tissue_in_image(
    image: Any, mpp: float | None = None, *, max_side: int = 2048
) -> TissueMask:
    """:func:`detect_tissue` for a single-level image (numpy, memmap, zarr, dask): it is read
    band by band with a stride so that the picture has at most ``max_side`` pixels a side."""
    h, w = int(image.shape[0]), int(image.shape[1])
    step = max(math.ceil(max(h, w) / max_side), 1)
    band = max(1024 // step, 1) * step
    picture = np.concatenate(
        [np.asarray(image[y : min(y + band, h)])[::step, ::step] for y in range(0, h, band)]
    )
    downsample = (h / picture.shape[0], w / picture.shape[1])
    mask, threshold = tissue_from_rgb(picture, mpp, downsample)
    return TissueMask(mask, downsample, threshold, 0)


def tissue_from_rgb(
    picture: np.ndarray, mpp: float | None, downsample: tuple[float, float]
) -> tuple[np.ndarray, float]:
    """The tissue mask of a small RGB ``picture`` and the saturation threshold used.

    ``mpp`` (µm per level-0 pixel) and ``downsample`` (level-0 pixels per picture pixel)
    convert :data:`MIN_TISSUE_UM2` to picture pixels; without ``mpp`` the smallest piece
    kept is 1/20000 of the picture. A gray picture is all tissue.
    """
    from scipy import ndimage as ndi
    from skimage import color, filters, morphology

    if picture.ndim == 2 or picture.shape[2] < 3:
        return np.ones(picture.shape[:2], bool), 0.0
    rgb = picture[..., :3]
    if rgb.dtype != np.uint8:
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "iu" else 1.0
        rgb = np.clip(rgb.astype(np.float32) / top, 0.0, 1.0)
    saturation = ndi.gaussian_filter(color.rgb2hsv(rgb)[..., 1], 1.0)
    try:
        threshold = float(filters.threshold_otsu(saturation))
    except ValueError:  # a constant picture
        threshold = MAX_SATURATION
    threshold = min(max(threshold, MIN_SATURATION), MAX_SATURATION)
    mask = saturation > threshold
    if mpp is not None:
        min_pixels = max(int(MIN_TISSUE_UM2 / (mpp**2 * downsample[0] * downsample[1])), 1)
    else:
        min_pixels = max(mask.size // 20000, 1)
    mask = morphology.remove_small_objects(mask, max_size=min_pixels)
    mask = morphology.remove_small_holes(mask, max_size=min_pixels)
    return ndi.binary_dilation(mask, iterations=1), threshold
