"""npe2 writer: save a Labels layer (e.g. corrected masks) as a TIFF, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .core.imageio import write_tiff


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a 2D (or ND) Labels array to ``path`` as a zlib-compressed TIFF.

    Values are kept as they are (0 background, 1 foreground, 255 uncertain for correction
    layers; instance ids otherwise) in the smallest unsigned type that holds them.
    Returns the written path, as napari's writer contract asks; ``[]`` when the array
    cannot be written as labels (negative or non-integer values).
    """
    arr = np.asarray(data)
    if arr.dtype.kind not in "biu" or (arr.size and arr.min() < 0):
        return []
    top = int(arr.max()) if arr.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    out = Path(path)
    if out.suffix.lower() not in (".tif", ".tiff"):
        out = out.with_suffix(".tif")
    write_tiff(out, arr.astype(dtype, copy=False), compression="zlib")
    return [str(out)]
