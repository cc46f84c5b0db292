"""An initial mask from classical image analysis, for starting without a model.

Two recipes, chosen automatically or by name:

``he`` (H&E or IHC nuclei)
    The haematoxylin channel from colour deconvolution (:func:`skimage.color.rgb2hed`),
    smoothed, thresholded with Otsu's method, cleaned of specks and holes, and split into
    touching nuclei by a watershed on the distance transform.
``dermoscopy`` (one lesion on skin)
    The luminance, smoothed, thresholded with Otsu's method (dark = lesion), and the
    largest connected component, with its holes filled.

``auto`` picks ``dermoscopy`` when the dark part of the image is mostly one large compact
blob, otherwise ``he``. The result is a starting point for correction, not a segmentation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage import color, feature, filters, measure, morphology, segmentation

from ..errors import InputError
from ..io.images import check_image, read_region

log = logging.getLogger(__name__)

KINDS = ("auto", "he", "dermoscopy")


@dataclass
class BootstrapResult:
    """An initial mask.

    Attributes
    ----------
    mask
        ``(H, W)`` uint8, 1 foreground and 0 background.
    labels
        ``(H, W)`` int32 instance labels (one per nucleus, or the single lesion).
    kind
        The recipe used (``he`` or ``dermoscopy``).
    threshold
        The Otsu threshold on the channel the recipe used.
    """

    mask: np.ndarray
    labels: np.ndarray
    kind: str
    threshold: float


def _as_rgb(image: Any) -> np.ndarray:
    info = check_image(image)
    return read_region(image, 0, info.height, 0, info.width)


def _min_size(shape: tuple[int, ...], fraction: float, floor: int) -> int:
    return max(floor, int(fraction * shape[0] * shape[1]))


def guess_kind(rgb: np.ndarray) -> str:
    """``dermoscopy`` when the dark part is mostly one large, compact blob, else ``he``."""
    lum = filters.gaussian(color.rgb2gray(rgb), sigma=2)
    if float(lum.max() - lum.min()) < 1e-6:
        return "he"
    dark = lum < filters.threshold_otsu(lum)
    # An opening removes hairs and thin strands that would join the lesion to the border.
    dark = ndi.binary_opening(dark, morphology.disk(max(2, min(dark.shape) // 100)))
    labels = measure.label(dark)
    if labels.max() == 0:
        return "he"
    largest = max(measure.regionprops(labels), key=lambda p: p.area)
    share_of_dark = largest.area / max(1, int(dark.sum()))
    share_of_image = largest.area / dark.size
    compact = largest.solidity > 0.8
    return "dermoscopy" if share_of_dark > 0.6 and share_of_image > 0.05 and compact else "he"


def _haematoxylin(rgb: np.ndarray) -> np.ndarray:
    # rgb2hed needs strictly positive values; the H channel grows with nuclear stain.
    hed = color.rgb2hed(np.clip(rgb, 1e-3, 1.0))
    return filters.gaussian(hed[..., 0], sigma=1)


def bootstrap_he(rgb: np.ndarray, *, min_distance: int = 4) -> BootstrapResult:
    """Nuclei from the haematoxylin channel, split by a distance-transform watershed."""
    h = _haematoxylin(rgb)
    if float(h.max() - h.min()) < 1e-9:
        empty = np.zeros(h.shape, np.uint8)
        return BootstrapResult(empty, empty.astype(np.int32), "he", float(h.max()))
    th = float(filters.threshold_otsu(h))
    fg = h > th
    fg = morphology.remove_small_objects(fg, max_size=_min_size(fg.shape, 2e-5, 8) - 1)
    fg = morphology.remove_small_holes(fg, max_size=_min_size(fg.shape, 1e-4, 16) - 1)
    fg = ndi.binary_opening(fg, morphology.disk(1))
    dist = ndi.distance_transform_edt(fg)
    coords = feature.peak_local_max(
        filters.gaussian(dist, sigma=1),
        min_distance=min_distance,
        labels=measure.label(fg),
        exclude_border=False,
    )
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1)
    labels = segmentation.watershed(-dist, markers, mask=fg, watershed_line=True)
    # Components without a peak (tiny ones) keep their own label.
    rest = measure.label(fg & (labels == 0) & ~_watershed_lines(labels, fg))
    labels = np.where(rest > 0, rest + labels.max(), labels).astype(np.int32)
    mask = (labels > 0).astype(np.uint8)
    return BootstrapResult(mask, labels, "he", th)


def _watershed_lines(labels: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Pixels of ``fg`` that the watershed left as lines between two labels."""
    grown = ndi.grey_dilation(labels, size=3)
    return fg & (labels == 0) & (grown > 0)


def bootstrap_dermoscopy(rgb: np.ndarray) -> BootstrapResult:
    """The largest dark component of the smoothed luminance, holes filled."""
    lum = filters.gaussian(color.rgb2gray(rgb), sigma=max(1.0, min(rgb.shape[:2]) / 200))
    if float(lum.max() - lum.min()) < 1e-9:
        empty = np.zeros(lum.shape, np.uint8)
        return BootstrapResult(empty, empty.astype(np.int32), "dermoscopy", float(lum.max()))
    th = float(filters.threshold_otsu(lum))
    dark = ndi.binary_opening(lum < th, morphology.disk(2))
    labels = measure.label(dark)
    if labels.max() == 0:
        empty = np.zeros(lum.shape, np.uint8)
        return BootstrapResult(empty, empty.astype(np.int32), "dermoscopy", th)
    largest = int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    lesion = ndi.binary_fill_holes(labels == largest)
    mask = lesion.astype(np.uint8)
    return BootstrapResult(mask, mask.astype(np.int32), "dermoscopy", th)


def bootstrap_mask(image: Any, kind: str = "auto") -> BootstrapResult:
    """An initial foreground mask of a 2D image by classical image analysis.

    Parameters
    ----------
    image
        ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (grayscale is treated as RGB).
    kind
        ``auto``, ``he`` or ``dermoscopy`` (see the module docstring).

    Returns
    -------
    BootstrapResult

    Raises
    ------
    InputError
        For an unknown ``kind`` or an image the core cannot read.
    """
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    rgb = _as_rgb(image)
    chosen = guess_kind(rgb) if kind == "auto" else kind
    log.debug("bootstrap: %s recipe on %dx%d", chosen, rgb.shape[1], rgb.shape[0])
    return bootstrap_he(rgb) if chosen == "he" else bootstrap_dermoscopy(rgb)
