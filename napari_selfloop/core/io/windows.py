"""Windows of a large (possibly pyramidal, lazy) image, processed at a chosen resolution.

A :class:`Window` is a rectangle of an image in its full-resolution (level-0) pixels, read
at ``factor`` level-0 pixels per output pixel: output pixel ``(i, j)`` covers the level-0
square ``[y0 + i f, y0 + (i + 1) f) x [x0 + j f, x0 + (j + 1) f)`` (``f = factor``). So a
point ``(x, y)`` of the output, in pixel-edge coordinates, is the slide point
``(x0 + x f, y0 + y f)`` (:meth:`Window.to_slide`), which is how results of a region are
exported in slide coordinates (QuPath's full-resolution pixels).

:func:`choose_window` picks the pyramid level to read for a wanted factor (the model's pixel
size over the slide's): the coarsest level that is not coarser than wanted; when that level
is (within :data:`LEVEL_TOLERANCE`, 2 %) exactly the wanted factor, the window is snapped to its
pixel grid and read as it is stored, otherwise it is resampled the rest of the way
(:func:`read_window`). Only the window is ever read.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .slides import MPP_TOLERANCE

#: A level whose downsampling is within this fraction of the wanted factor is used as it is
#: (the tolerance of :meth:`.slides.Slide.level_for_mpp`, so the CLI and the plugin agree).
LEVEL_TOLERANCE = MPP_TOLERANCE
#: A level's downsampling this close to an integer counts as that integer (1023x1023 of 4095).
_INTEGER_SLACK = 0.02


@dataclass(frozen=True)
class Window:
    """A rectangle of an image at a resolution.

    Attributes
    ----------
    y0, x0
        Top-left corner in level-0 pixels.
    height, width
        Size of the output in its own pixels.
    factor
        Level-0 pixels per output pixel (1: full resolution, 2: half, 0.5: upsampled).
    level
        The pyramid level the pixels are read from (0: full resolution).
    """

    y0: int
    x0: int
    height: int
    width: int
    factor: float = 1.0
    level: int = 0

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(f"a window needs a positive size, got {self.height}x{self.width}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise InputError(f"a window's factor must be positive, got {self.factor}")
        if self.y0 < 0 or self.x0 < 0 or self.level < 0:
            raise InputError(f"a window starts inside the image, got ({self.y0}, {self.x0})")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the output."""
        return self.height, self.width

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)``: the level-0 pixels the window touches (half-open)."""
        return (
            self.y0,
            self.x0,
            self.y0 + math.ceil(self.height * self.factor - 1e-9),
            self.x0 + math.ceil(self.width * self.factor - 1e-9),
        )

    def to_slide(self, xy: Any) -> np.ndarray:
        """Output pixel-edge coordinates ``(..., 2)`` as ``(x, y)`` -> level-0 coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy * self.factor + np.array([self.x0, self.y0], np.float64)

    @property
    def label(self) -> str:
        """A short readable name: ``[y0:y1, x0:x1]`` in level-0 pixels, and the factor."""
        y0, x0, y1, x1 = self.box
        res = "" if self.factor == 1 else f" 1/{self.factor:g}"
        return f"[{y0}:{y1}, {x0}:{x1}]{res}"

    @property
    def stem(self) -> str:
        """A file-name part: ``y{y0}-{y1}_x{x0}-{x1}`` (and ``_f{factor}``)."""
        y0, x0, y1, x1 = self.box
        res = "" if self.factor == 1 else f"_f{self.factor:g}"
        return f"y{y0}-{y1}_x{x0}-{x1}{res}"

    def key(self) -> str:
        """A stable text that identifies the window (its geometry, not the level read)."""
        return f"{self.y0},{self.x0},{self.height},{self.width},{self.factor!r}"

    def to_meta(self) -> dict[str, Any]:
        """Plain JSON values (for layer metadata, autosave records and manifests)."""
        return {
            "y0": self.y0,
            "x0": self.x0,
            "height": self.height,
            "width": self.width,
            "factor": self.factor,
            "level": self.level,
            "box": list(self.box),
        }

    @classmethod
    def from_meta(cls, meta: Any) -> Window | None:
        """The window :meth:`to_meta` described, or None for anything else."""
        if isinstance(meta, Window):
            return meta
        if not isinstance(meta, dict):
            return None
        try:
            return cls(
                int(meta["y0"]),
                int(meta["x0"]),
                int(meta["height"]),
                int(meta["width"]),
                float(meta.get("factor", 1.0)),
                int(meta.get("level", 0)),
            )
        except (KeyError, TypeError, ValueError, InputError):
            return None


def region_key(image_key: str, window: Window) -> str:
    """The hex key of one window of an image (for autosave): 24 hex digits."""
    return hashlib.sha256(f"{image_key}/{window.key()}".encode()).hexdigest()[:24]


def level_factors(shapes: Sequence[Sequence[int]]) -> list[float]:
    """How many level-0 pixels one pixel of each level covers (level 0 first: 1).

    The ratio of the sizes, the mean of both axes; a ratio within 2 % of an integer is that
    integer (pyramids round odd sizes up or down).
    """
    if not shapes:
        raise InputError("an image needs at least one level")
    h0, w0 = (int(s) for s in shapes[0][:2])
    out = []
    for shape in shapes:
        h, w = (int(s) for s in shape[:2])
        ratio = (h0 / max(h, 1) + w0 / max(w, 1)) / 2
        near = round(ratio)
        out.append(
            float(near) if near >= 1 and abs(ratio - near) <= _INTEGER_SLACK * near else ratio
        )
    return out


def choose_window(
    shapes: Sequence[Sequence[int]], box: Sequence[int], factor: float = 1.0
) -> Window:
    """The window that covers level-0 ``box = (y0, x0, y1, x1)`` at ``factor``.

    Parameters
    ----------
    shapes
        ``(height, width, ...)`` of every pyramid level, level 0 first.
    box
        The wanted rectangle in level-0 pixels (clipped to the image).
    factor
        Wanted level-0 pixels per output pixel (the model's pixel size / the image's).

    Returns
    -------
    Window
        Read from the coarsest level not coarser than ``factor``. When that level's
        downsampling is within :data:`LEVEL_TOLERANCE` of ``factor`` the window takes it
        exactly, snapped outward to that level's pixel grid (read without resampling);
        otherwise it has ``factor`` and its corner at ``box``'s (resampled).
    """
    if not (math.isfinite(factor) and factor > 0):
        raise InputError(f"the resolution factor must be positive, got {factor}")
    h0, w0 = (int(s) for s in shapes[0][:2])
    y0, x0, y1, x1 = (int(v) for v in box)
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h0, y1), min(w0, x1)
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"the box [{y0}:{y1}, {x0}:{x1}] is outside the {h0}x{w0} image")
    factors = level_factors(shapes)
    usable = [k for k, d in enumerate(factors) if d <= factor * (1 + LEVEL_TOLERANCE)] or [0]
    level = max(usable, key=lambda k: factors[k])
    d = factors[level]
    if abs(d / factor - 1) <= LEVEL_TOLERANCE and float(d).is_integer():
        step = int(d)
        lh, lw = (int(s) for s in shapes[level][:2])
        ly0, lx0 = y0 // step, x0 // step
        height = min(math.ceil(y1 / step), lh) - ly0
        width = min(math.ceil(x1 / step), lw) - lx0
        return Window(ly0 * step, lx0 * step, max(1, height), max(1, width), float(step), level)
    height = max(1, min(math.floor((y1 - y0) / factor), math.floor((h0 - y0) / factor)))
    width = max(1, min(math.floor((x1 - x0) / factor), math.floor((w0 - x0) / factor)))
    return Window(y0, x0, height, width, float(factor), level)


def read_window(levels: Sequence[Any], window: Window) -> np.ndarray:
    """The pixels of ``window`` as a numpy array (the image's dtype and channels).

    Parameters
    ----------
    levels
        The pyramid, level 0 first (numpy, dask, zarr or anything sliceable); a plain
        image is a list of one.
    window
        From :func:`choose_window`.

    Only the part of ``levels[window.level]`` under the window is read. A window on the
    level's grid is returned as stored; otherwise it is resampled (linear, after a Gaussian
    blur when shrinking, so it does not alias).
    """
    if not 0 <= window.level < len(levels):
        raise InputError(f"the image has no level {window.level} (it has {len(levels)})")
    shapes = [tuple(int(s) for s in lvl.shape) for lvl in levels]
    src = levels[window.level]
    lh, lw = shapes[window.level][:2]
    d = level_factors(shapes)[window.level]
    try:
        if (
            window.factor == d
            and float(d).is_integer()
            and window.y0 % d == 0
            and window.x0 % d == 0
        ):
            ly0, lx0 = int(window.y0 // d), int(window.x0 // d)
            if ly0 + window.height <= lh and lx0 + window.width <= lw:
                return np.asarray(src[ly0 : ly0 + window.height, lx0 : lx0 + window.width])
        return _resampled(src, shapes[0], (lh, lw), window)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # lazy readers (zarr, dask, tifffile codecs) fail in many ways
        raise InputError(
            f"could not read region {window.label} of the image "
            f"({type(exc).__name__}: {exc}): the file may be corrupt"
        ) from exc


def _resampled(
    src: Any, shape0: tuple[int, ...], level_shape: tuple[int, int], window: Window
) -> np.ndarray:
    from scipy import ndimage as ndi

    lh, lw = level_shape
    sy, sx = shape0[0] / lh, shape0[1] / lw  # level-0 pixels per level pixel, per axis
    # Centres of the output pixels in the level's pixel-centre coordinates.
    ys = (window.y0 + (np.arange(window.height) + 0.5) * window.factor) / sy - 0.5
    xs = (window.x0 + (np.arange(window.width) + 0.5) * window.factor) / sx - 0.5
    shrink_y, shrink_x = window.factor / sy, window.factor / sx
    pad = 2 + int(math.ceil(2 * max(shrink_y, shrink_x, 1.0)))
    ry0, ry1 = max(0, int(math.floor(ys[0])) - pad), min(lh, int(math.ceil(ys[-1])) + pad + 1)
    rx0, rx1 = max(0, int(math.floor(xs[0])) - pad), min(lw, int(math.ceil(xs[-1])) + pad + 1)
    block = np.asarray(src[ry0:ry1, rx0:rx1])
    dtype = block.dtype
    work = block.astype(np.float32)
    sigma = [max(0.0, (shrink_y - 1) / 2), max(0.0, (shrink_x - 1) / 2)]
    if work.ndim == 3:
        sigma.append(0.0)
    if any(sigma):
        work = ndi.gaussian_filter(work, sigma, mode="nearest")
    grid = np.meshgrid(ys - ry0, xs - rx0, indexing="ij")
    if work.ndim == 2:
        out = ndi.map_coordinates(work, grid, order=1, mode="nearest")
    else:
        out = np.stack(
            [
                ndi.map_coordinates(work[..., c], grid, order=1, mode="nearest")
                for c in range(work.shape[2])
            ],
            axis=-1,
        )
    if dtype.kind in "biu":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        if info is None:
            return out >= 0.5
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    return out.astype(dtype)


class WindowArray:
    """A window of a pyramid as a lazy array: it is read whole, once, when first indexed.

    Hand it where an image array is expected (``shape``, ``dtype``, numpy slicing), e.g. as
    a training item made in the main thread and read in a worker thread.
    """

    def __init__(self, levels: Sequence[Any], window: Window) -> None:
        self.levels = list(levels)
        self.window = window
        base = self.levels[0]
        self.shape = (window.height, window.width, *tuple(int(s) for s in base.shape[2:]))
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)
        self._data: np.ndarray | None = None
        self._lock = threading.Lock()

    def read(self) -> np.ndarray:
        """The window's pixels (read on the first call)."""
        with self._lock:
            if self._data is None:
                self._data = read_window(self.levels, self.window)
            return self._data

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.read()[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self.read()
        return data if dtype is None else data.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]
