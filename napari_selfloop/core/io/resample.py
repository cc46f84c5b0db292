"""Lazy resampling of large images: a window of the result reads only its source window.

:class:`ResampledView` wraps a level of a slide (zarr, dask, numpy) as an array-like of
another pixel size, for :meth:`.slides.Slide.view`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["ResampledView"]


def _axis_plan(
    start: int, stop: int, scale: float, length: int, margin: int
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Source window and linear-interpolation indices/weights for output pixels start..stop-1."""
    centres = (np.arange(start, stop) + 0.5) / scale - 0.5
    lo = np.clip(np.floor(centres).astype(np.int64), 0, length - 1)
    hi = np.clip(lo + 1, 0, length - 1)
    weight = np.clip(centres - np.floor(centres), 0.0, 1.0).astype(np.float32)
    weight[centres < 0] = 0.0
    src0 = max(int(lo.min()) - margin, 0)
    src1 = min(int(hi.max()) + margin + 1, length)
    return src0, src1, lo - src0, hi - src0, weight


class ResampledView:
    """A lazy array-like: ``source`` resampled by ``scale`` (output pixels per source pixel).

    Slicing reads only the source window behind the slice (plus a margin), smooths it with a
    Gaussian of sigma ``(1/scale - 1) / 2`` when reducing (as ``skimage.transform.resize``
    does against aliasing), and interpolates linearly at the output pixel centres. A pixel's
    value does not depend on the window it was read in (except within a few pixels of the
    image border). The dtype is the source's (integers are rounded).

    Parameters
    ----------
    source
        ``(H, W)`` or ``(H, W, C)`` array-like with slicing (zarr, dask, numpy).
    scale
        Output pixels per source pixel, > 0.
    """

    def __init__(self, source: Any, scale: float) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"the scale must be positive, got {scale}")
        self.source, self.scale = source, float(scale)
        src = tuple(int(s) for s in source.shape)
        self.shape = (max(round(src[0] * scale), 1), max(round(src[1] * scale), 1), *src[2:])
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)
        self.sigma = max((1.0 / self.scale - 1.0) / 2.0, 0.0)
        self._margin = int(math.ceil(4 * self.sigma)) + 1

    def _window(self, ys: slice, xs: slice) -> np.ndarray:
        from scipy import ndimage as ndi

        src_h, src_w = int(self.source.shape[0]), int(self.source.shape[1])
        y0, y1, ylo, yhi, wy = _axis_plan(ys.start, ys.stop, self.scale, src_h, self._margin)
        x0, x1, xlo, xhi, wx = _axis_plan(xs.start, xs.stop, self.scale, src_w, self._margin)
        block = np.asarray(self.source[y0:y1, x0:x1]).astype(np.float32)
        if self.sigma > 0:
            for axis in (0, 1):
                block = ndi.gaussian_filter1d(
                    block, self.sigma, axis=axis, mode="nearest", truncate=4.0
                )
        extra = (None,) * (block.ndim - 2)
        rows = (
            block[ylo] * (1 - wy)[(slice(None), None, *extra)]
            + block[yhi] * wy[(slice(None), None, *extra)]
        )
        out = (
            rows[:, xlo] * (1 - wx)[(None, slice(None), *extra)]
            + rows[:, xhi] * wx[(None, slice(None), *extra)]
        )
        if self.dtype.kind in "biu":
            info = np.iinfo(self.dtype) if self.dtype.kind != "b" else None
            out = np.rint(out)
            if info is not None:
                out = np.clip(out, info.min, info.max)
        return out.astype(self.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        spatial = []
        squeeze = []
        for axis, k in enumerate(key[:2]):
            if isinstance(k, (int, np.integer)):
                k = int(k) + (self.shape[axis] if k < 0 else 0)
                spatial.append(slice(k, k + 1))
                squeeze.append(axis)
            elif isinstance(k, slice) and k.step in (None, 1):
                start, stop, _ = k.indices(self.shape[axis])
                spatial.append(slice(start, max(stop, start)))
            else:
                raise IndexError(f"ResampledView supports integers and step-1 slices, got {k!r}")
        if spatial[0].stop == spatial[0].start or spatial[1].stop == spatial[1].start:
            out = np.zeros(
                (
                    spatial[0].stop - spatial[0].start,
                    spatial[1].stop - spatial[1].start,
                    *self.shape[2:],
                ),
                self.dtype,
            )
        else:
            out = self._window(spatial[0], spatial[1])
        out = out[(slice(None), slice(None), *key[2:])]
        return np.squeeze(out, axis=tuple(squeeze)) if squeeze else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)
