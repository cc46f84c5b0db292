"""Large images in the viewer: pyramid levels, pixel size, and where a region's layers go.

An image layer is worked on **by region** (:func:`works_by_region`) when it is a pyramid
(napari ``multiscale``) or larger than :data:`REGION_PIXELS`: pseudo-labelling a view or a
rectangle of it then makes layers of that region's size only, placed over it with
``scale`` and ``translate`` (:func:`placement`), one set per region. Smaller images keep one
full-size set of layers per image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Layer

from ..core.io.windows import Window

#: Images with more level-0 pixels than this are worked on by region (4 Mpx: 2048 x 2048).
REGION_PIXELS = 2048 * 2048
#: Most pixels one region may have at the resolution it is processed at (its probability
#: and uncertainty maps are float32: 4096 x 4096 is 64 MiB each).
MAX_REGION_PIXELS = 4096 * 4096
#: Layer metadata keys that may hold an image's pixel size in microns (readers differ).
PIXEL_SIZE_KEYS = ("pixel_size_um", "mpp", "microns_per_pixel")


def levels_of(image: Image) -> list[Any]:
    """The image's pyramid, level 0 first (a list of one for a plain image)."""
    return list(image.data) if image.multiscale else [image.data]


def level_shapes(image: Image) -> list[tuple[int, ...]]:
    return [tuple(int(s) for s in level.shape) for level in levels_of(image)]


def works_by_region(image: Image) -> bool:
    """Whether results for ``image`` are made region by region (see the module notes)."""
    if image.multiscale:
        return True
    h, w = (int(s) for s in image.data.shape[:2])
    return h * w > REGION_PIXELS


def _meta_pixel_size(meta: Any, depth: int = 0) -> float | None:
    if not isinstance(meta, dict) or depth > 2:
        return None
    for key in PIXEL_SIZE_KEYS:
        value = meta.get(key)
        if isinstance(value, (list, tuple)) and value:
            value = value[-1]
        if isinstance(value, (int, float)) and np.isfinite(value) and value > 0:
            return float(value)
    for value in meta.values():
        found = _meta_pixel_size(value, depth + 1)
        if found is not None:
            return found
    return None


def pixel_size_um(image: Layer) -> float | None:
    """Microns per level-0 pixel of ``image``, or None when it is not known.

    From the layer's physical ``scale`` when its units are lengths (as a slide reader sets
    them), else from a pixel-size entry of its metadata (:data:`PIXEL_SIZE_KEYS`).
    """
    units = getattr(image, "units", None)
    if units:
        unit = units[-1]
        try:
            if str(unit.dimensionality) == "[length]":
                value = float((float(image.scale[-1]) * unit).to("micrometer").magnitude)
                if np.isfinite(value) and value > 0:
                    return value
        except (AttributeError, ValueError, TypeError):
            pass
    return _meta_pixel_size(image.metadata)


def placement(image: Layer, window: Window | None) -> dict[str, Any]:
    """``scale`` and ``translate`` that put a result of ``window`` over ``image``.

    Output pixel ``i`` of the window covers level-0 pixels ``[y0 + i f, y0 + (i + 1) f)``,
    so its centre is level-0 pixel coordinate ``y0 + i f + (f - 1) / 2`` (napari puts data
    coordinates at pixel centres).
    """
    scale = np.asarray(image.scale[-2:], dtype=float)
    translate = np.asarray(image.translate[-2:], dtype=float)
    if window is None:
        return {"scale": tuple(scale), "translate": tuple(translate)}
    f = window.factor
    origin = np.array([window.y0, window.x0], float) + (f - 1) / 2
    return {"scale": tuple(scale * f), "translate": tuple(translate + scale * origin)}
