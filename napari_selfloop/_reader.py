"""npe2 reader: whole-slide images (SVS, NDPI, OME-TIFF, pyramidal TIFF) as lazy multiscale layers.

:func:`get_reader` accepts a slide (:func:`.core.io.slides.is_slide`: a TIFF with a pyramid, an
Aperio or Hamamatsu file, or one plane of at least 8192 x 8192) and returns None for
anything else, so napari's own reader opens ordinary images as before. A slide becomes one
image layer whose data is the list of its pyramid levels (read-only zarr arrays over the
file: napari decodes only the tiles on screen, at the level the zoom needs; a large slide
stored without a pyramid gets lazy strided levels), scaled to
microns when the slide records its pixel size; the layer's ``metadata`` carries ``mpp``
(None when unknown), the file's ``path`` and the level shapes. Vendor label and macro
images are never taken for the slide.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .core.io.slides import SLIDE_SUFFIXES, is_slide, open_slide

__all__ = ["get_reader", "read_slide", "slide_layer_data"]

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
#: A slide stored without a pyramid and larger than this (pixels a side) is shown through
#: lazy strided copies (every 2nd, 4th ... pixel), so napari never holds its full plane.
STRIDED_PYRAMID_SIDE = 4096


def get_reader(path: str | os.PathLike[str] | list[Any]) -> Callable[[Any], list[LayerData]] | None:
    """The slide reader when ``path`` is one slide file, else None (napari tries others)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    name = os.fspath(path).lower()
    if not name.endswith(SLIDE_SUFFIXES) or not is_slide(path):
        return None
    return read_slide


def read_slide(path: str | os.PathLike[str] | list[Any]) -> list[LayerData]:
    """Open a slide as one lazy multiscale image layer (see the module docstring)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return [slide_layer_data(path)]


def _strided_pyramid(level: Any) -> list[Any]:
    """Lazy levels ``level[::2**k, ::2**k]`` (dask, one chunk per stored tile row band) down to
    about 2048 pixels a side."""
    import dask.array as da

    base = da.from_array(level, chunks=(2048, 2048, *level.shape[2:]), asarray=False)
    levels = [level]
    step = 2
    while max(level.shape[:2]) / step > 1024:
        levels.append(base[::step, ::step])
        step *= 2
    return levels


def slide_layer_data(path: str | os.PathLike[str]) -> LayerData:
    """``(levels, layer kwargs, "image")`` of a slide: what :func:`read_slide` returns.

    The file stays open as long as the levels are used (napari reads tiles from it while the
    layer is shown). Raises :class:`.core.errors.InputError` (one line) for a file that
    cannot be read.
    """
    slide = open_slide(path)
    levels = list(slide.levels)
    if len(levels) == 1 and max(levels[0].shape[:2]) > STRIDED_PYRAMID_SIDE:
        levels = _strided_pyramid(levels[0])
    first = levels[0]
    rgb = first.ndim == 3 and first.shape[-1] in (3, 4)
    mpp = slide.mpp
    meta = {
        "mpp": mpp,
        "mpp_source": slide.mpp_source,
        "path": str(Path(path).resolve()),
        "level_shapes": slide.level_shapes,
        "vendor": slide.vendor,
        "slide": True,
    }
    kwargs: dict[str, Any] = {
        "name": Path(path).name.split(".")[0],
        "multiscale": len(levels) > 1,
        "rgb": rgb,
        "metadata": meta,
    }
    if mpp is not None:
        kwargs["scale"] = (mpp, mpp)
        kwargs["units"] = ("µm", "µm")
    else:
        log.warning("%s records no pixel size: shown in pixels", Path(path).name)
    if str(first.dtype) == "uint8":
        kwargs["contrast_limits"] = (0, 255)
    data = levels if len(levels) > 1 else levels[0]
    return data, kwargs, "image"
