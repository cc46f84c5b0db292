"""Whole-slide images: TIFF-family pyramids opened lazily, at a chosen resolution.

:func:`open_slide` opens an Aperio ``.svs``, a Hamamatsu ``.ndpi``, an OME-TIFF or a plain
(pyramidal or not) TIFF as a :class:`Slide`: its resolution levels as read-only zarr arrays
over tifffile's store (decoded tile by tile, never whole), and its pixel size in microns per
pixel (``mpp``). Nothing else is read until pixels are asked for.

Which image is the slide
    A slide file also holds small vendor images: Aperio's thumbnail, label and macro pages,
    Hamamatsu's macro and map, Bio-Formats' "label image" / "macro image" series. The slide
    is the largest series whose name is none of those (:data:`VENDOR_EXTRAS`); its levels are
    tifffile's (SubIFDs, SVS/NDPI reduced pages, OME pyramids), completed by reduced pages
    stored as separate series of the same aspect ratio (:mod:`.tiff_series`, which the image
    reader shares).

Pixel size, first found of
    OME ``PhysicalSizeX/Y`` (with its unit), the Aperio description's ``MPP = ``, ImageJ's
    ``unit=micron`` with the resolution tags, and the TIFF ``XResolution``/``YResolution``
    with ``ResolutionUnit`` inch or centimetre. Values outside 0.01-100 µm/px (e.g. the
    72 dpi of most image editors) are not taken as a microscope's; then ``mpp`` is None.

Working resolution
    :meth:`Slide.level_for_mpp` picks the level nearest to a pixel size among those at least
    as fine (so the rest of the way is a reduction, never an enlargement) and the scale left;
    :meth:`Slide.view` returns that level, or a lazy :class:`.resample.ResampledView` of it.

Tissue detection is in :mod:`.slide_tissue`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .file_check import TIFF_MAGICS, check_input_file
from .images import check_image
from .resample import ResampledView
from .tiff_series import VENDOR_EXTRAS, choose_series, plane_shape, reduced_series

__all__ = [
    "MPP_TOLERANCE",
    "SLIDE_MIN_PIXELS",
    "SLIDE_SUFFIXES",
    "VENDOR_EXTRAS",
    "LevelChoice",
    "Slide",
    "is_slide",
    "open_slide",
]

logger = logging.getLogger(__name__)

#: File name endings of slides this module opens (all TIFF inside).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".ome.tif", ".ome.tiff")
#: A single-level image with at least this many pixels counts as a slide.
SLIDE_MIN_PIXELS = 8192 * 8192
#: Pixel sizes (µm/px) outside this range are not a microscope's (72 dpi is 353 µm/px).
MPP_RANGE = (0.01, 100.0)
#: Relative tolerance within which a coarser level still counts as at the asked pixel size.
MPP_TOLERANCE = 0.02

_UNIT_UM = {
    "pm": 1e-6,
    "nm": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
}


# --------------------------------------------------------------------------------------------
# pixel size


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        return None
    return float(mpp)


def _ome_mpp(xml: str, image_index: int) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    images = [el for el in root if el.tag.rsplit("}", 1)[-1] == "Image"]
    if not images:
        return None
    image = images[min(image_index, len(images) - 1)]
    pixels = next((el for el in image if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            continue
        unit = _UNIT_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        with contextlib.suppress(ValueError):
            if unit is not None:
                sizes.append(float(value) * unit)
    return _plausible(float(np.mean(sizes))) if sizes else None


def _aperio_mpp(description: str) -> float | None:
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    if not match:
        return None
    with contextlib.suppress(ValueError):
        return _plausible(float(match.group(1)))
    return None


def _rational(value: Any) -> float | None:
    try:
        num, den = value
        return float(num) / float(den) if den else None
    except (TypeError, ValueError):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None


def _resolution_mpp(page: Any, imagej_unit: str | None = None) -> float | None:
    tags = page.tags
    if "XResolution" not in tags:
        return None
    unit = int(getattr(tags.get("ResolutionUnit"), "value", 2))
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    if per_unit is None and imagej_unit is not None:
        per_unit = _UNIT_UM.get(imagej_unit.replace("\\u00B5", "µ"))
    if per_unit is None:
        return None
    sizes = []
    for name in ("XResolution", "YResolution"):
        res = _rational(tags[name].value) if name in tags else None
        if res:
            sizes.append(per_unit / res)
    return _plausible(float(np.mean(sizes))) if sizes else None


def _read_mpp(tif: Any, series_index: int, page: Any) -> tuple[float | None, str]:
    """The pixel size of level 0 and where it came from."""
    if tif.is_ome:
        mpp = _ome_mpp(tif.ome_metadata or "", series_index)
        if mpp is not None:
            return mpp, "OME PhysicalSizeX/Y"
    description = getattr(tif.pages.first, "description", "") or ""
    if description.startswith("Aperio"):
        mpp = _aperio_mpp(description)
        if mpp is not None:
            return mpp, "Aperio MPP"
    unit = None
    if tif.is_imagej:
        unit = (tif.imagej_metadata or {}).get("unit")
    mpp = _resolution_mpp(page, unit)
    if mpp is not None:
        return mpp, "TIFF resolution tags"
    return None, "none"


# --------------------------------------------------------------------------------------------
# levels


def _zarr_levels(series: Any) -> list[Any]:
    import zarr

    node = zarr.open(series.aszarr(), mode="r")
    if hasattr(node, "shape"):
        return [node]
    keys = sorted((k for k in node.array_keys() if k.isdigit()), key=int)
    return [node[k] for k in keys]


class _Plane:
    """A read-only view of a zarr array without its leading length-1 axes."""

    def __init__(self, array: Any, drop: int) -> None:
        self._array, self._drop = array, drop
        self.shape = tuple(int(s) for s in array.shape[drop:])
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(array.chunks[drop:])

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self._array[(0,) * self._drop + key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self._array[...]).reshape(self.shape)
        return out if dtype is None else out.astype(dtype)


def _squeezed(array: Any) -> Any:
    drop = 0
    while array.ndim - drop > 2 and array.shape[drop] == 1:
        drop += 1
    return array if drop == 0 else _Plane(array, drop)


@dataclass(frozen=True)
class LevelChoice:
    """Where to read a slide at a pixel size.

    Attributes
    ----------
    level
        Index of the pyramid level to read.
    level_mpp
        That level's microns per pixel (None when the slide has no pixel size).
    scale
        Output pixels per level pixel (1: the level as it is; below 1: a reduction).
    mpp
        Microns per pixel of the result (None when the slide has no pixel size).
    """

    level: int
    level_mpp: float | None
    scale: float
    mpp: float | None


class Slide:
    """A TIFF-family slide opened lazily (see :func:`open_slide`).

    Attributes
    ----------
    path
        The file.
    levels
        Read-only zarr arrays ``(H, W)`` or ``(H, W, C)``, level 0 (full resolution) first,
        each smaller than the one before. Slicing one decodes only the tiles it touches.
    mpp
        Microns per pixel of level 0, or None when the file does not say.
    mpp_source
        Where ``mpp`` came from (``OME PhysicalSizeX/Y``, ``Aperio MPP``, ``TIFF resolution
        tags``, ``none``).
    vendor
        ``aperio``, ``ndpi``, ``ome`` or ``tiff``.
    series
        Index of the tifffile series read (vendor label/macro series are skipped).
    """

    def __init__(
        self,
        path: Path,
        tif: Any,
        series: int,
        levels: list[Any],
        mpp: float | None,
        mpp_source: str,
        vendor: str,
    ) -> None:
        self.path, self._tif, self.series = path, tif, series
        self.levels, self.mpp, self.mpp_source, self.vendor = levels, mpp, mpp_source, vendor

    # geometry ------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of level 0."""
        return tuple(self.levels[0].shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.levels[0].dtype)

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        """(height, width) of every level."""
        return [(int(a.shape[0]), int(a.shape[1])) for a in self.levels]

    @property
    def downsamples(self) -> list[float]:
        """Level-0 pixels per pixel of every level (1.0 for level 0)."""
        h0, w0 = self.level_shapes[0]
        return [(h0 / h + w0 / w) / 2 for h, w in self.level_shapes]

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level`` (None when the slide has no pixel size)."""
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def level_for_mpp(self, mpp: float | None) -> LevelChoice:
        """The level to read for ``mpp`` microns per pixel and the scale left to apply.

        The level is the coarsest whose pixel size is at most ``mpp`` (within
        :data:`MPP_TOLERANCE`), so the rest of the way is a reduction; when ``mpp`` is finer
        than level 0, level 0 is enlarged. ``mpp=None``, or a slide without a pixel size,
        gives level 0 at scale 1.

        Raises
        ------
        InputError
            When ``mpp`` is not a positive number.
        """
        if mpp is None or self.mpp is None:
            return LevelChoice(0, self.mpp, 1.0, self.mpp)
        if not (math.isfinite(mpp) and mpp > 0):
            raise InputError(f"the pixel size must be a positive number of microns, got {mpp}")
        best = 0
        for i in range(len(self.levels)):
            if self.level_mpp(i) <= mpp * (1 + MPP_TOLERANCE):  # type: ignore[operator]
                best = i
        level_mpp = self.level_mpp(best)
        scale = level_mpp / mpp  # type: ignore[operator]
        if abs(scale - 1.0) <= MPP_TOLERANCE:
            scale = 1.0
        return LevelChoice(best, level_mpp, scale, level_mpp if scale == 1.0 else mpp)

    def view(self, mpp: float | None = None) -> tuple[Any, LevelChoice]:
        """The slide at ``mpp`` microns per pixel: a level, or a lazy resampled view of one.

        Returns
        -------
        image, choice
            An array-like accepted by :func:`.images.check_image` (only the windows asked
            for are read) and the :class:`LevelChoice` it came from.
        """
        choice = self.level_for_mpp(mpp)
        level = self.levels[choice.level]
        return (level if choice.scale == 1.0 else ResampledView(level, choice.scale)), choice

    # life cycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (the levels cannot be read afterwards)."""
        with contextlib.suppress(Exception):
            self._tif.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = "unknown" if self.mpp is None else f"{self.mpp:g}"
        return (
            f"Slide({self.path.name!r}, {self.vendor}, level shapes {self.level_shapes}, mpp {mpp})"
        )


def _vendor(tif: Any) -> str:
    if tif.is_svs:
        return "aperio"
    if tif.is_ndpi:
        return "ndpi"
    if tif.is_ome:
        return "ome"
    return "tiff"


def open_slide(path: str | os.PathLike[str]) -> Slide:
    """Open a TIFF-family slide lazily.

    Parameters
    ----------
    path
        An ``.svs``, ``.ndpi``, ``.tif``/``.tiff`` or ``.ome.tif`` file (identified by its
        first bytes, not its name).

    Returns
    -------
    Slide
        Close it when done (or use it as a context manager).

    Raises
    ------
    InputError
        One line naming the file: missing, not a TIFF, corrupt or truncated, a layout that
        is not a 2D (RGB or gray) image, or a compression no installed codec decodes.
    """
    import tifffile

    path = check_input_file(path, "a slide file")
    name = path.name
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(TIFF_MAGICS):
        raise InputError(
            f"{name} is not a TIFF-family slide (.svs, .ndpi, .tif, .ome.tif; it "
            f"starts with {head!r}): convert it to a pyramidal TIFF"
        )
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types for broken files
        raise InputError(
            f"{name} is a corrupt or truncated TIFF file ({exc}): copy or export it again"
        ) from exc
    try:
        slide = _build(path, tif)
    except BaseException:
        tif.close()
        raise
    return slide


def _build(path: Path, tif: Any) -> Slide:
    name = path.name
    try:
        if not tif.series:
            raise InputError(f"{name} is a TIFF file without images: re-export it")
        index = choose_series(tif)
        series = tif.series[index]
        levels = [_squeezed(a) for a in _zarr_levels(series)]
        shape = tuple(levels[0].shape)
        if len(levels) == 1:
            for other in reduced_series(tif, index, shape):
                levels.extend(_squeezed(a) for a in _zarr_levels(tif.series[other])[:1])
        mpp, source = _read_mpp(tif, index, series.pages[0] or tif.pages.first)
        _check_complete(path, series)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name} is a corrupt TIFF file ({exc}): copy or export it again") from exc
    try:
        check_image(levels[0])
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    tif.filehandle.set_lock(True)  # napari reads tiles from several threads
    _check_decodes(name, levels[-1], series)
    return Slide(path, tif, index, levels, mpp, source, _vendor(tif))


def _check_complete(path: Path, series: Any) -> None:
    """Refuse a file whose levels lack their pixel data or point past its end (truncated)."""
    size = path.stat().st_size
    for level in series.levels:
        page = level.keyframe
        offsets, counts = page.dataoffsets, page.databytecounts
        if not offsets or len(offsets) != len(counts):
            raise InputError(
                f"{path.name} is a corrupt TIFF file (a level has no pixel data): "
                "copy or export it again"
            )
        end = max(o + c for o, c in zip(offsets, counts, strict=True))
        if end > size:
            raise InputError(
                f"{path.name} is a truncated TIFF file (pixel data ends at byte "
                f"{end}, the file has {size}): copy or export it again"
            )


def _check_decodes(name: str, level: Any, series: Any) -> None:
    """Decode one tile now, so a missing codec or broken data fails here, in one line."""
    page = series.pages[0]
    compression = getattr(getattr(page, "compression", None), "name", "unknown")
    try:
        level[(slice(0, 1),) * 2]
    except Exception as exc:
        if "imagecodecs" in str(exc) or "codec" in str(exc).lower():
            raise InputError(
                f"{name} is {compression}-compressed, which needs the imagecodecs package to "
                "decode (a requirement of napari-selfloop that this environment lacks): install "
                "it with pip install imagecodecs"
            ) from exc
        raise InputError(
            f"{name}: could not decode its pixels ({compression}: {exc}): the "
            "file may be corrupt or truncated"
        ) from exc


def is_slide(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a slide: a TIFF with a pyramid, a vendor slide (SVS, NDPI), or
    one plane of at least :data:`SLIDE_MIN_PIXELS` pixels. Never raises (False for anything
    unreadable)."""
    import tifffile

    try:
        path = Path(path)
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            if not f.read(4).startswith(TIFF_MAGICS):
                return False
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return False
            if tif.is_svs or tif.is_ndpi:
                return True
            index = choose_series(tif)
            series = tif.series[index]
            shape = plane_shape(series.shape)
            if len(series.levels) > 1 or reduced_series(tif, index, shape):
                return True
            return len(shape) >= 2 and shape[0] * shape[1] >= SLIDE_MIN_PIXELS
    except Exception:  # anything unreadable is not a slide we open
        return False
