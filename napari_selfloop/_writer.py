"""npe2 writer: save a Labels layer (e.g. corrected masks) as a TIFF, atomically.

A 2D layer is written by :func:`~napari_selfloop.core.io.label_files.write_labels_tiff`: tiled,
zlib-compressed (with a pyramid when large), its pixel size as TIFF resolution tags, and
where it lies recorded in the ImageDescription (``napari_selfloop_labels``: the slide offset
``offset_yx`` in full-resolution pixels, the ``downsample``, the ``region`` of a slide's
correction layer, the pixel size, and napari's scale/translate/units). A correction layer is
also tagged 0/1/255, so its 255 (uncertain) is never read as foreground. ``napari-selfloop
export`` reads all of that back. Stacks (3D and up) are written as one zlib-compressed TIFF,
without placement.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from .core.io.atomic import write_tiff
from .core.io.label_files import labels_dtype, write_labels_tiff
from .core.io.windows import Window

log = logging.getLogger(__name__)

KEY = "selfloop"  # the plugin's layer metadata (see widgets/_layers.py)


def _units(meta: dict) -> list[Any]:
    units = meta.get("units")
    return list(units) if isinstance(units, (list, tuple)) else []


def _placement(meta: dict) -> dict[str, Any]:
    """napari's scale, translate and units of the layer (last two axes), as plain values."""
    out: dict[str, Any] = {}
    for key in ("scale", "translate"):
        value = meta.get(key)
        if value is not None and len(value) >= 2:
            out[key] = [float(v) for v in list(value)[-2:]]
    units = _units(meta)
    if len(units) >= 2:
        out["units"] = [str(u) for u in units[-2:]]
    return out


def _scale_um(meta: dict) -> float | None:
    """Microns per pixel from napari's scale when its units are lengths."""
    units, scale = _units(meta), meta.get("scale")
    if not units or scale is None or not len(scale):
        return None
    unit = units[-1]
    try:
        if str(unit.dimensionality) != "[length]":
            return None
        value = float((float(list(scale)[-1]) * unit).to("micrometer").magnitude)
    except (AttributeError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer to ``path`` as a TIFF (see the module notes).

    Values are kept as they are (0 background, 1 foreground, 255 uncertain for correction
    layers; instance ids otherwise) in the smallest unsigned type that holds them.
    Returns the written path, as napari's writer contract asks; ``[]`` when the array
    cannot be written as labels (negative or non-integer values).
    """
    if meta.get("multiscale") and isinstance(data, (list, tuple)):
        data = data[0]
    arr = np.asarray(data)
    if arr.dtype.kind not in "biu" or (arr.size and arr.min() < 0):
        return []
    out = Path(path)
    if out.suffix.lower() not in (".tif", ".tiff"):
        out = out.with_suffix(".tif")
    top = int(arr.max()) if arr.size else 0
    arr = arr.astype(labels_dtype(top), copy=False)
    if arr.ndim != 2:
        write_tiff(out, arr, compression="zlib", photometric="minisblack")
        return [str(out)]
    layer_meta = meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {}
    ours = layer_meta.get(KEY) if isinstance(layer_meta.get(KEY), dict) else {}
    window = Window.from_meta(ours.get("window"))
    if window is not None and window.shape != arr.shape:
        log.warning(
            "%s: the layer no longer has its region's shape; its region is not recorded",
            meta.get("name"),
        )
        window = None
    um = ours.get("pixel_size_um")
    if not (isinstance(um, (int, float)) and math.isfinite(um) and um > 0):
        um = _scale_um(meta)
    write_labels_tiff(
        out,
        arr,
        window=window,
        pixel_size_um=None if um is None else float(um),
        correction=ours.get("role") == "labels",
        source=ours.get("source") if isinstance(ours.get("source"), str) else None,
        image_sha256=ours.get("image_key") if isinstance(ours.get("image_key"), str) else None,
        napari_placement=_placement(meta),
    )
    return [str(out)]
