"""Reading images safely and lazily: identifying, checking and reading windows.

Reading
    :func:`open_image` identifies a file by its first bytes (not its extension) and returns an
    array-like of shape ``(H, W)`` or ``(H, W, C)``. TIFFs stay on disk: an uncompressed,
    contiguous TIFF comes back as a read-only ``numpy.memmap``, any other TIFF as a zarr array
    over tifffile's store, decoded tile by tile. PNG and JPEG are read into memory with Pillow
    (a dependency of scikit-image). Pixel order is the file's: the EXIF orientation tag of a
    JPEG is not applied, so masks line up with what other readers (tifffile, scikit-image)
    return.

    :func:`check_image` accepts numpy arrays, ``np.memmap``, dask and zarr arrays (anything
    with ``shape``, ``dtype`` and slicing) of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``
    or ``(H, W, 4)`` and dtype bool, uint8, uint16 or float16/32/64. Signed integers and
    32/64-bit unsigned integers are refused: there is no range to scale them by that would be
    right for every source, so the caller is asked to convert them.

    :func:`read_region` and :func:`read_region_padded` read one window as float32 RGB in
    ``[0, 1]``, touching only that window of a lazy array.

The check at the door (a regular file? readable? which format?) is :mod:`.file_check`'s;
which series of a TIFF is the image, :mod:`.tiff_series`'s. Writing results atomically lives
in :mod:`.atomic`.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SelfloopError
from .file_check import check_input_file, image_kind, read_head
from .tiff_series import choose_series, plane_shape

__all__ = [
    "ImageInfo",
    "check_image",
    "open_image",
    "read_region",
    "read_region_padded",
    "source_name",
]

logger = logging.getLogger(__name__)

#: Values this far outside [0, 1] in a float image are rounding noise and are clipped.
FLOAT_TOLERANCE = 1e-3

_SUPPORTED_DTYPES = ("bool", "uint8", "uint16", "float16", "float32", "float64")
_INTEGER_SCALE = {"bool": 1.0, "uint8": 255.0, "uint16": 65535.0}


# --------------------------------------------------------------------------------------------
# checking


@dataclass(frozen=True)
class ImageInfo:
    """Shape and pixel type of a 2D image accepted by the core.

    Attributes
    ----------
    height, width
        Size in pixels (both at least 1).
    channels
        1 (grayscale), 3 (RGB) or 4 (RGBA; the alpha channel is ignored when reading).
    dtype
        The stored pixel type (bool, uint8, uint16, float16, float32 or float64).
    """

    height: int
    width: int
    channels: int
    dtype: np.dtype


def _shape_problem(shape: tuple[int, ...]) -> str | None:
    """Return a one-line complaint about an image shape, or None when it is fine."""
    ndim = len(shape)
    if ndim == 3 and shape[-1] not in (1, 3, 4):
        if shape[0] in (1, 2, 3, 4) and shape[-1] > 4:
            return (
                f"got shape {shape}, which looks channel-first: move the channel axis last "
                "(np.moveaxis(image, 0, -1)) or pick one plane"
            )
        if shape[-1] > 4 and shape[0] < min(shape[1], shape[2]):
            return (
                f"got shape {shape}, which looks like a stack of {shape[0]} planes of "
                f"{shape[1]}x{shape[2]} pixels: pick one plane (image[0]) or save each "
                "plane as its own file"
            )
        if shape[-1] > 4:
            return (
                f"got shape {shape} with {shape[-1]} channels; at most 4 are supported "
                "(gray, RGB or RGBA): pick one plane or save an RGB version"
            )
        if shape[-1] == 2:
            return (
                f"got shape {shape} with 2 channels; expected 1, 3 or 4 (gray, RGB, RGBA): "
                "keep the first channel (image[..., 0]) or convert to RGB"
            )
    elif ndim != 3 and ndim != 2:
        return f"expected a 2D RGB or grayscale image, got shape {shape}: pick one plane"
    if 0 in shape[:2] or (ndim == 3 and shape[2] == 0):
        return f"the image is empty (shape {shape}): pick an image with at least one pixel"
    return None


def _dtype_problem(dtype: np.dtype) -> str | None:
    if dtype.name in _SUPPORTED_DTYPES:
        return None
    return (
        f"unsupported pixel type {dtype.name}: convert the image to uint8, uint16 or "
        "float scaled to [0, 1]"
    )


def check_image(arr: Any) -> ImageInfo:
    """Check that ``arr`` is a 2D grayscale, RGB or RGBA image the core can read.

    Parameters
    ----------
    arr
        A numpy array, ``np.memmap``, dask or zarr array (anything with ``shape``, ``dtype``
        and numpy-style slicing). Nothing is read from it.

    Returns
    -------
    ImageInfo
        Height, width, channel count and dtype.

    Raises
    ------
    InputError
        For other shapes (stacks, channel-first arrays, more than 4 channels, empty images)
        and pixel types (signed or 32/64-bit integers, complex, object).
    """
    if not (hasattr(arr, "shape") and hasattr(arr, "dtype")):
        arr = np.asarray(arr)
    shape = tuple(int(s) for s in arr.shape)
    problem = _shape_problem(shape)
    if problem is None:
        problem = _dtype_problem(np.dtype(arr.dtype))
    if problem is not None:
        raise InputError(problem)
    channels = 1 if len(shape) == 2 else shape[2]
    return ImageInfo(shape[0], shape[1], channels, np.dtype(arr.dtype))


# --------------------------------------------------------------------------------------------
# reading


def _describe(path: Path) -> str:
    return path.name or str(path)


_sources: dict[int, tuple[weakref.ref[Any], str]] = {}
_sources_lock = threading.Lock()


def _forget_source(key: int, ref: weakref.ref[Any]) -> None:
    with _sources_lock:
        entry = _sources.get(key)
        if entry is not None and entry[0] is ref:
            del _sources[key]


def _remember_source(image: Any, name: str) -> None:
    """Note which file ``image`` was opened from, for error messages (see :func:`source_name`)."""
    key = id(image)
    try:
        ref = weakref.ref(image, functools.partial(_forget_source, key))
    except TypeError:  # an array type without weak references: messages just do not name it
        return
    with _sources_lock:
        _sources[key] = (ref, name)


def source_name(arr: Any) -> str | None:
    """The file name an array returned by :func:`open_image` was read from, or None.

    Also knows the file of any ``numpy.memmap`` (its ``filename``).
    """
    with _sources_lock:
        entry = _sources.get(id(arr))
    if entry is not None and entry[0]() is arr:
        return entry[1]
    filename = getattr(arr, "filename", None) if isinstance(arr, np.memmap) else None
    return Path(filename).name if filename else None


def open_image(path: str | os.PathLike[str]) -> Any:
    """Open a PNG, JPEG or TIFF file as a 2D image, lazily where the format allows.

    The format is identified by the file's first bytes, not by its extension.

    Parameters
    ----------
    path
        The file to open.

    Returns
    -------
    array-like
        Shape ``(H, W)`` or ``(H, W, C)`` with C in (1, 3, 4), accepted by
        :func:`check_image`. A read-only ``numpy.memmap`` for uncompressed contiguous TIFFs, a
        read-only zarr array for other TIFFs (tiled, compressed), a numpy array for PNG/JPEG.

    Raises
    ------
    InputError
        When the file is missing (or a broken link, or a link loop), is not a regular file (a
        folder, a named pipe, a device: refused at once, never read), is not a PNG/JPEG/TIFF,
        is corrupt or truncated, holds several planes, is channel-first, has more than 4
        channels or an unsupported pixel type. The message names the file and says what to
        do. Later errors about the pixels (NaN values, float values outside [0, 1]) raised
        by :func:`read_region` name the file too.
    """
    path = Path(path)
    name = _describe(path)
    check_input_file(path)
    head = read_head(path, 16)
    if not head:
        raise InputError(f"{name} is empty (0 bytes): the file was not saved completely")
    kind = image_kind(head)
    try:
        if kind == "TIFF":
            image = _open_tiff(path)
        elif kind is not None:
            image = _open_pil(path, kind)
        else:
            raise InputError(f"is not a PNG, JPEG or TIFF file (starts with {head[:8]!r})")
        check_image(image)
    except InputError as exc:
        message = str(exc)
        raise InputError(
            f"{name} {message}" if message.startswith("is ") else f"{name}: {message}"
        ) from exc
    _remember_source(image, name)
    return image


#: Notes already said, per file (its resolved path, size and modification time): a command
#: opens a file more than once (checked at the door, then read), and says a note once.
_noted: set[tuple[str, int, int, str]] = set()
_noted_lock = threading.Lock()


def _note_once(path: Path, message: str, *args: Any) -> None:
    """Log ``message % args`` at INFO, once per file as it is now (a changed file again)."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, message % args)
    except (OSError, RuntimeError):  # cannot tell the file again: say it
        key = None
    if key is not None:
        with _noted_lock:
            if key in _noted:
                return
            _noted.add(key)
    logger.info(message, *args)


def _open_pil(path: Path, kind: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            frames = int(getattr(img, "n_frames", 1))
            if frames > 1 and kind == "PNG":
                raise InputError(f"is an animated PNG with {frames} frames: pick one plane")
            if frames > 1:
                _note_once(path, "%s holds %d pictures; reading the first", path.name, frames)
            img.load()
            mode = img.mode
            picture: Image.Image = img
            if mode in ("P", "PA"):
                transparent = mode == "PA" or "transparency" in img.info
                picture = img.convert("RGBA" if transparent else "RGB")
            elif mode in ("LA", "La", "RGBa"):
                picture = img.convert("RGBA")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                picture = img.convert("RGB")
            elif mode == "1":
                picture = img.convert("L")
            arr = np.asarray(picture)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"is too large to read as {kind} ({exc}): save it as a tiled TIFF instead"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise InputError(f"is a corrupt or truncated {kind} file ({exc}): re-export it") from exc
    if arr.dtype.kind == "i":  # 16-bit PNGs may come back as int32 ('I' mode)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InputError(f"holds values in [{lo}, {hi}], outside uint16: re-export it")
        arr = arr.astype(np.uint16)
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))


def _open_tiff(path: Path) -> Any:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError("is a TIFF file without images: re-export it")
            chosen = choose_series(tif)  # the slide, not a vendor label or macro image
            if len(tif.series) > 1:
                _note_once(
                    path,
                    "%s holds %d image series; using %s (%s)",
                    path.name,
                    len(tif.series),
                    tif.series[chosen].name or f"series {chosen}",
                    tif.series[chosen].shape,
                )
            series = tif.series[chosen]
            shape = plane_shape(series.shape)  # without singleton leading axes (ImageJ, OME)
            problem = _shape_problem(shape) or _dtype_problem(np.dtype(series.dtype))
            if problem is not None:
                raise InputError(problem)
            page = series.pages[0]
            if page is None or tuple(page.shape) != shape:
                raise InputError(
                    f"stores shape {shape} in a layout that cannot be read as one plane: "
                    "re-save it as a plain 2D TIFF"
                )
            size = path.stat().st_size
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                if count and offset + count > size:
                    raise InputError(
                        f"is a truncated TIFF file (pixel data ends at byte {offset + count}, "
                        f"file has {size}): copy or export it again"
                    )
            index = page.index
            memmappable = bool(page.is_memmappable)
            compression = getattr(page.compression, "name", str(page.compression))
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise InputError(f"is a corrupt or truncated TIFF file ({exc}): re-export it") from exc

    if memmappable:
        try:
            mapped = tifffile.memmap(path, page=index, mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"is a corrupt TIFF file ({exc}): re-export it") from exc
        return mapped.reshape(shape)
    try:
        store = tifffile.imread(path, aszarr=True, key=index)
        image: Any = zarr.open(store, mode="r")  # one page: an array
        image[(0,) * image.ndim]  # decode one tile now: unsupported codecs fail here
    except Exception as exc:
        if "imagecodecs" in str(exc):
            raise InputError(
                f"is {compression}-compressed, which needs the imagecodecs package to decode "
                "(a requirement of napari-selfloop that this environment lacks): install it "
                "with pip install imagecodecs"
            ) from exc
        raise InputError(
            f"could not decode its pixels (compression {compression}: {exc}): the file may be "
            "corrupt or truncated; copy or export it again"
        ) from exc
    return image


def _to_float(window: np.ndarray) -> np.ndarray:
    """Scale a window of a supported dtype to float32 in [0, 1]."""
    scale = _INTEGER_SCALE.get(window.dtype.name)
    if scale is not None:
        out = window.astype(np.float32)
        if scale != 1.0:
            out /= np.float32(scale)
        return out
    out = window.astype(np.float32)
    if out.size == 0:
        return out
    lo, hi = float(np.min(out)), float(np.max(out))
    if np.isnan(lo) or np.isnan(hi):
        raise InputError("the image contains NaN values: replace them first (np.nan_to_num(image))")
    if hi > 1.0 + FLOAT_TOLERANCE:
        raise InputError(
            f"float images must be scaled to [0, 1]; got values up to {hi:.6g}: divide by 255 "
            "(or the image's maximum) or pass the integer image"
        )
    if lo < -FLOAT_TOLERANCE:
        raise InputError(
            f"float images must be scaled to [0, 1]; got values down to {lo:.6g}: rescale "
            "the image (e.g. skimage.exposure.rescale_intensity) or pass the integer image"
        )
    if lo < 0.0 or hi > 1.0:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _read_window(arr: Any, info: ImageInfo, ys: slice, xs: slice) -> np.ndarray:
    if info.channels == 1 and getattr(arr, "ndim", len(arr.shape)) == 3:
        key: tuple[Any, ...] = (ys, xs, 0)
    elif info.channels == 4:
        key = (ys, xs, slice(0, 3))
    else:
        key = (ys, xs)
    try:
        window = np.asarray(arr[key])
    except SelfloopError:
        raise
    except Exception as exc:  # lazy readers (zarr, dask, tifffile codecs) fail in many ways
        raise InputError(
            f"could not read pixels [{ys.start}:{ys.stop}, {xs.start}:{xs.stop}] of the "
            f"image ({type(exc).__name__}: {exc}): the file may be corrupt"
        ) from exc
    try:
        out = _to_float(window)
    except InputError as exc:
        name = source_name(arr)
        if name is None:
            raise
        raise InputError(f"{name}: {exc}") from exc
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def read_region(arr: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read one window of an image as float32 RGB in [0, 1].

    Only the window is read from lazy arrays (memmap, zarr, dask).

    Parameters
    ----------
    arr
        An image accepted by :func:`check_image`.
    y0, y1, x0, x1
        The window ``[y0:y1, x0:x1]``; it must lie inside the image and not be empty.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(y1 - y0, x1 - x0, 3)``. Gray is replicated to 3 channels, alpha is
        dropped; uint8 is divided by 255, uint16 by 65535, bool becomes 0/1, float is passed
        through (values within a tiny tolerance outside [0, 1] are clipped).

    Raises
    ------
    InputError
        For an unsupported image, a window outside the image, NaN values or float values
        outside [0, 1].
    """
    info = check_image(arr)
    if not (0 <= y0 < y1 <= info.height and 0 <= x0 < x1 <= info.width):
        raise InputError(
            f"window [{y0}:{y1}, {x0}:{x1}] is not inside the {info.height}x{info.width} "
            "image: use read_region_padded for windows that extend past the border"
        )
    return _read_window(arr, info, slice(int(y0), int(y1)), slice(int(x0), int(x1)))


def _reflect(start: int, stop: int, length: int) -> np.ndarray:
    """Source indices for positions start..stop-1 under symmetric reflection (np.pad)."""
    idx = np.arange(start, stop, dtype=np.int64) % (2 * length)
    return np.where(idx < length, idx, 2 * length - 1 - idx)


def read_region_padded(arr: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Like :func:`read_region`, but the window may extend past the image on any side.

    The missing part is filled by symmetric reflection (``np.pad(..., mode="symmetric")``,
    repeated as often as needed), so an image smaller than a patch is padded up to the patch.
    Only the part of the image the window maps to is read.

    Parameters
    ----------
    arr
        An image accepted by :func:`check_image`.
    y0, y1, x0, x1
        The window; ``y0 < y1`` and ``x0 < x1``, any of them may be negative or beyond the
        image.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(y1 - y0, x1 - x0, 3)`` in [0, 1].
    """
    info = check_image(arr)
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"window [{y0}:{y1}, {x0}:{x1}] is empty: pass y0 < y1 and x0 < x1")
    if y0 >= 0 and x0 >= 0 and y1 <= info.height and x1 <= info.width:
        return read_region(arr, y0, y1, x0, x1)
    rows = _reflect(int(y0), int(y1), info.height)
    cols = _reflect(int(x0), int(x1), info.width)
    ry0, ry1 = int(rows.min()), int(rows.max()) + 1
    rx0, rx1 = int(cols.min()), int(cols.max()) + 1
    block = _read_window(arr, info, slice(ry0, ry1), slice(rx0, rx1))
    return np.ascontiguousarray(block[np.ix_(rows - ry0, cols - rx0)])
