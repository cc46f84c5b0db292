"""Resizing to and from a model's working size (:attr:`.model.ModelConfig.work_size`).

A model with a work size sees every image resized so that its longer side has
``work_size`` pixels (dermoscopy photographs come at any resolution; the lesion model
learned lesions at one scale). Pseudo-labelling, training and the jigsaw call these
functions, so a user never resizes by hand and every output comes back at the size of
the image that was opened.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.transform import resize

from ..errors import InputError
from .losses import IGNORE

__all__ = ["from_work_size", "mask_to_work_size", "to_work_size", "work_shape"]

#: Images whose longer side exceeds this many pixels are refused (whole slides have no
#: single work size: open a region, or use a model without one).
MAX_SOURCE_SIDE = 16384


def work_shape(
    shape: tuple[int, ...], work_size: int | None, source: tuple[int, ...] | None = None
) -> tuple[int, int] | None:
    """``(height, width)`` of an image of ``shape`` at ``work_size``, or None when the
    model has no work size or the image already has it.

    ``source`` is the shape of the whole image when ``shape`` is a region of it: the region
    is then scaled by the factor that brings the whole image to ``work_size`` (so a region
    is seen at the scale the model learned, not magnified to fill the work size).
    """
    h, w = int(shape[0]), int(shape[1])
    ref = max(int(source[0]), int(source[1])) if source is not None else max(h, w)
    if work_size is None or ref == work_size:
        return None
    if max(h, w) > MAX_SOURCE_SIDE:
        raise InputError(
            f"this model works on images resized to {work_size} px; a {h}x{w} image is too "
            f"large to resize as a whole (at most {MAX_SOURCE_SIDE} px a side): open a region "
            "of it, or use a model without a work size"
        )
    scale = work_size / ref
    return max(round(h * scale), 1), max(round(w * scale), 1)


def to_work_size(image: Any, work_size: int | None, source: tuple[int, ...] | None = None) -> Any:
    """The image resized to ``work_size`` (anti-aliased, same dtype), or the image itself;
    ``source``: see :func:`work_shape`."""
    shape = work_shape(image.shape, work_size, source)
    if shape is None:
        return image
    arr = np.asarray(image)
    out = resize(
        arr.astype(np.float32),
        shape + arr.shape[2:],
        order=1,
        anti_aliasing=True,
        preserve_range=True,
    )
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(arr.dtype)


def mask_to_work_size(mask: Any, work_size: int | None) -> Any:
    """A training mask (0 background, 1 foreground, 255 unlabelled) at ``work_size``.

    A pixel of the result is unlabelled when less than half of the source pixels behind it
    are labelled, otherwise foreground when more than half of the labelled ones are.
    """
    shape = work_shape(mask.shape, work_size)
    if shape is None:
        return mask
    m = np.asarray(mask)
    labelled = (m != IGNORE).astype(np.float32)
    fg = (m == 1).astype(np.float32)

    def shrink(a: np.ndarray) -> np.ndarray:
        return resize(a, shape, order=1, anti_aliasing=True, preserve_range=True)

    lab, fgs = shrink(labelled), shrink(fg)
    out = np.where(fgs > 0.5 * np.maximum(lab, 1e-6), 1, 0).astype(np.uint8)
    out[lab < 0.5] = IGNORE
    return out


def from_work_size(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A float map computed at the work size put back at ``shape[:2]`` (linear)."""
    target = (int(shape[0]), int(shape[1]))
    if array.shape[:2] == target:
        return array
    return resize(array, target, order=1, anti_aliasing=False, preserve_range=True).astype(
        array.dtype
    )
