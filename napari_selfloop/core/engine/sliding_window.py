"""Sliding-window processing of arbitrarily large (also lazy) images with seamless blending.

:func:`tiled_apply` cuts an image into square patches on a regular grid (:func:`patch_origins`),
reads them with :func:`~napari_selfloop.core.io.images.read_region_padded` (reflection padding
where a patch passes the border), calls a patch function on batches, and blends the overlapping
results with a raised-cosine window (:func:`blend_window`).

Memory grows with the image's width, never with its height: per output it keeps one
accumulator band of ``patch_size`` rows. The blending weights are separable (the window is an
outer product and the patch grid a product of two 1D grids), so their sum is the outer product
of two 1D sums and needs no band of its own. Finished rows are normalised and handed out as
soon as no later patch touches them: to ``sinks`` (e.g. :class:`~napari_selfloop.core.io.tiled_tiff.
TiledTiffWriter`) or into an in-memory result.

Patches that ``keep`` refuses (glass around the tissue of a slide) are neither read nor
computed: they count as patches whose every output is 0, blended like any other, so the
results fade smoothly from the computed tissue to the skipped glass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from napari_selfloop.core.io.images import check_image, read_region_padded
from napari_selfloop.core.progress import Progress

__all__ = [
    "KeepFn",
    "PatchFn",
    "RowSink",
    "blend_window",
    "patch_origins",
    "tiled_apply",
]

logger = logging.getLogger(__name__)

#: Smallest blending weight, so pixels that only one patch covers (image borders) normalise.
WINDOW_FLOOR = 1e-3

#: ``patch_fn(batch) -> {name: maps}``: batch is float32 (B, P, P, 3) in [0, 1], each map
#: float32 (B, P, P).
PatchFn = Callable[[np.ndarray], Mapping[str, Any]]
#: ``keep(y0, y1, x0, x1) -> bool``: whether the patch over that window (clipped to the
#: image) is computed; a refused patch counts as all-zero outputs.
KeepFn = Callable[[int, int, int, int], bool]

T = TypeVar("T")


class RowSink(Protocol):
    """Anything that accepts finished rows, e.g. :class:`~napari_selfloop.core.io.tiled_tiff.TiledTiffWriter`."""

    def write_rows(self, y0: int, block: np.ndarray) -> None:
        """Store ``block`` (rows, width) starting at row ``y0``."""


def patch_origins(length: int, patch: int, overlap: int) -> list[int]:
    """Start positions of patches along one axis.

    Parameters
    ----------
    length
        Size of the axis in pixels (at least 1).
    patch
        Patch side.
    overlap
        Minimum overlap between neighbouring patches, ``0 <= overlap < patch``.

    Returns
    -------
    list of int
        ``[0]`` when ``length <= patch`` (the single patch is padded). Otherwise evenly spread
        origins from 0 to exactly ``length - patch`` with steps of at most ``patch - overlap``,
        so every patch lies inside the axis.
    """
    _check_geometry(patch, overlap)
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    if length <= patch:
        return [0]
    span = length - patch
    stride = patch - overlap
    steps = math.ceil(span / stride)
    # round(i * span / steps) in integers: consecutive gaps are at most ceil(span / steps)
    return [(2 * i * span + steps) // (2 * steps) for i in range(steps + 1)]


def _check_geometry(patch: int, overlap: int) -> None:
    if patch < 1:
        raise ValueError(f"patch size must be at least 1, got {patch}")
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap must be in [0, patch size), got {overlap} for patch {patch}")


def _window_1d(patch: int, overlap: int) -> np.ndarray:
    """Raised-cosine ramp over ``overlap`` pixels at both ends, 1 inside, >= WINDOW_FLOOR."""
    weights = np.ones(patch, dtype=np.float64)
    if overlap > 0:
        distance = np.minimum(np.arange(patch), np.arange(patch)[::-1]) + 0.5
        ramp = np.sin(0.5 * np.pi * np.clip(distance / overlap, 0.0, 1.0)) ** 2
        weights = WINDOW_FLOOR + (1.0 - WINDOW_FLOOR) * ramp
    return weights.astype(np.float32)


def blend_window(patch: int, overlap: int) -> np.ndarray:
    """Blending weights for one patch.

    Parameters
    ----------
    patch
        Patch side.
    overlap
        Width of the margin over which the weight ramps down, ``0 <= overlap < patch``.

    Returns
    -------
    numpy.ndarray
        float32 ``(patch, patch)``: 1 in the interior, falling smoothly (raised cosine) to
        ``WINDOW_FLOOR`` (0.001) over ``overlap`` pixels at each side; all ones when
        ``overlap == 0``. Strictly positive, so a pixel covered by one patch only still gets a
        well-defined weighted mean.
    """
    _check_geometry(patch, overlap)
    w = _window_1d(patch, overlap)
    return np.outer(w, w)


def _weight_sum(length: int, origins: Sequence[int], window: np.ndarray) -> np.ndarray:
    """Sum of the 1D windows of all patches along one axis, cropped to the axis."""
    total = np.zeros(length, dtype=np.float32)
    for origin in origins:
        stop = min(origin + len(window), length)
        total[origin:stop] += window[: stop - origin]
    return total


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tiled_apply(
    image: Any,
    patch_fn: PatchFn,
    *,
    patch_size: int,
    overlap: int,
    batch_size: int = 4,
    out_names: Sequence[str] = ("prob",),
    sinks: Mapping[str, RowSink] | None = None,
    keep: KeepFn | None = None,
    stats: dict[str, int] | None = None,
) -> Generator[Progress, None, dict[str, np.ndarray | None]]:
    """Apply ``patch_fn`` to overlapping patches of ``image`` and blend the results.

    A generator: it yields a :class:`~napari_selfloop.core.progress.Progress` before the
    first batch and after each batch (``Progress(done_patches, total_patches, "tiles")``) and returns the result (use
    :func:`~napari_selfloop.core.progress.run_to_completion`, or ``yield from``). Each yield is a point where the caller may
    stop by closing the generator; rows already handed to ``sinks`` stay there, so the caller
    should then abort its sinks (``TiledTiffWriter.abort``).

    Parameters
    ----------
    image
        An image accepted by :func:`~napari_selfloop.core.io.images.check_image` (numpy, memmap,
        dask, zarr). Only one patch at a time is read from it.
    patch_fn
        Called with a float32 batch ``(B, P, P, 3)`` in [0, 1] (``B <= batch_size``; the last
        batch may be smaller) and returns a mapping with at least the keys ``out_names``, each
        an array ``(B, P, P)`` (converted to float32; other keys are ignored). It may run
        anything: the caller converts to torch, moves to a device, applies test-time
        transforms, and returns numpy (``tensor.cpu().numpy()``).
    patch_size, overlap
        Patch side ``P`` and the minimum overlap between neighbours (``0 <= overlap < P``);
        the overlap is also the width of the blending ramp. Patches past the image border are
        filled by symmetric reflection, and images smaller than a patch are padded up to it.
    batch_size
        Patches per call of ``patch_fn``.
    out_names
        Names of the outputs to blend.
    sinks
        Optional ``{name: sink}`` with a ``write_rows(y0, block)`` method for every name in
        ``out_names``: finished float32 rows are written there band by band and the result
        holds ``None`` for each name. Without sinks, the result holds ``(H, W)`` float32 arrays.
    keep
        Optional ``keep(y0, y1, x0, x1) -> bool`` called with each patch's window clipped
        to the image: patches it refuses are not read nor passed to ``patch_fn``, and count
        as 0 in every output (e.g. glass around a slide's tissue).
    stats
        Optional dict that receives ``patches`` (all) and ``computed`` (those kept).

    Yields
    ------
    Progress
        After each batch.

    Returns
    -------
    dict
        ``{name: (H, W) float32 array}``, or ``{name: None}`` when ``sinks`` is given.

    Raises
    ------
    InputError
        For an image the core cannot read (from ``check_image`` / ``read_region_padded``).
    ValueError
        For bad geometry, missing sinks, or a ``patch_fn`` result that lacks a name or has
        the wrong shape.
    """
    names = _check_arguments(patch_size, overlap, batch_size, out_names, sinks)
    info = check_image(image)
    height, width, size = info.height, info.width, patch_size

    ys = patch_origins(height, size, overlap)
    xs = patch_origins(width, size, overlap)
    total = len(ys) * len(xs)
    origins = _kept_origins(ys, xs, size, (height, width), keep)
    if stats is not None:
        stats.update(patches=total, computed=len(origins))
    band = _Band(names, (height, width), ys, xs, _window_1d(size, overlap), sinks)
    logger.debug(
        "tiled_apply: %dx%d image, %d patches of %d (overlap %d), batches of %d",
        height, width, total, size, overlap, batch_size,
    )  # fmt: skip

    done = total - len(origins)  # skipped patches add nothing: all their outputs are 0
    # The count is known before the first batch: a progress bar shows it at once.
    yield Progress(done if origins else total, total, "tiles")
    for batch_origins in _batches(origins, batch_size):
        batch = _read_batch(image, batch_origins, size)
        outputs = patch_fn(batch)
        maps = {name: _output(outputs, name, batch.shape[:3]) for name in names}
        for i, (y, x) in enumerate(batch_origins):
            band.add(y, x, {name: values[i] for name, values in maps.items()})
        del batch, outputs, maps  # results may be views of the batch: free it now
        done += len(batch_origins)
        yield Progress(done, total, "tiles")
    return band.close()


def _check_arguments(
    patch_size: int,
    overlap: int,
    batch_size: int,
    out_names: Sequence[str],
    sinks: Mapping[str, RowSink] | None,
) -> tuple[str, ...]:
    """The output names of :func:`tiled_apply`, once its geometry and sinks are checked."""
    _check_geometry(patch_size, overlap)
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    names = tuple(out_names)
    if not names:
        raise ValueError("out_names must name at least one output")
    if sinks is not None and (missing := [n for n in names if n not in sinks]):
        raise ValueError(f"sinks lacks the outputs {missing}: pass a sink for each of {names}")
    return names


def _kept_origins(
    ys: Sequence[int],
    xs: Sequence[int],
    size: int,
    shape: tuple[int, int],
    keep: KeepFn | None,
) -> list[tuple[int, int]]:
    """The patch origins of the grid ``ys`` x ``xs`` in row order, less those ``keep`` refuses
    (it sees each patch's window clipped to the image)."""
    height, width = shape
    all_origins = [(y, x) for y in ys for x in xs]
    if keep is None:
        return all_origins
    return [
        (y, x) for y, x in all_origins if keep(y, min(y + size, height), x, min(x + size, width))
    ]


def _read_batch(image: Any, origins: Sequence[tuple[int, int]], size: int) -> np.ndarray:
    """The patches at ``origins`` as one float32 batch ``(B, P, P, 3)`` (reflection-padded)."""
    batch = np.empty((len(origins), size, size, 3), dtype=np.float32)
    for i, (y, x) in enumerate(origins):
        batch[i] = read_region_padded(image, y, y + size, x, x + size)
    return batch


class _Band:
    """The accumulator band of :func:`tiled_apply`: ``rows`` image rows from :attr:`y0` on,
    for each output.

    Patches are added in row order (:meth:`add`); rows above a patch's origin are finished
    (no later patch touches them), so they are normalised by the blending weights and handed
    out (:meth:`finish`): to the sinks, or into the in-memory result.
    """

    def __init__(
        self,
        names: tuple[str, ...],
        shape: tuple[int, int],
        ys: Sequence[int],
        xs: Sequence[int],
        window_1d: np.ndarray,
        sinks: Mapping[str, RowSink] | None,
    ) -> None:
        height, width = shape
        self.names, self.width, self.sinks = names, width, sinks
        self.window = np.outer(window_1d, window_1d)
        self.size = len(window_1d)
        # The weights are separable: their sum is the outer product of two 1D sums.
        self.inv_row_weight = 1.0 / _weight_sum(height, ys, window_1d)
        self.inv_col_weight = 1.0 / _weight_sum(width, xs, window_1d)
        self.height = height
        self.rows = min(self.size, height)
        self.acc = {name: np.zeros((self.rows, width), dtype=np.float32) for name in names}
        self.result = (
            None if sinks is not None else {n: np.empty((height, width), np.float32) for n in names}
        )
        self.y0 = 0  # image row of the band's first row

    def add(self, y: int, x: int, patch: Mapping[str, np.ndarray]) -> None:
        """Blend one patch's outputs (``(P, P)`` each) in at image position ``(y, x)``;
        rows above ``y`` are finished first."""
        if y != self.y0:
            self.finish(y)
        h, w = min(self.size, self.height - y), min(self.size, self.width - x)
        for name, values in patch.items():
            self.acc[name][:h, x : x + w] += values[:h, :w] * self.window[:h, :w]

    def finish(self, stop: int) -> None:
        """Normalise rows ``y0 .. stop - 1``, hand them out and shift the band up to ``stop``."""
        if stop - self.y0 > self.rows:  # rows past the band: only skipped patches touched them
            self.finish(self.y0 + self.rows)
            self._hand_out_zeros(stop)
            return
        count = stop - self.y0
        if count <= 0:
            return
        for name, acc in self.acc.items():
            rows = acc[:count]
            rows *= self.inv_row_weight[self.y0 : stop, None]
            rows *= self.inv_col_weight[None, :]
            self._hand_out(name, rows)
            self._shift(acc, count)
        self.y0 = stop

    def close(self) -> dict[str, np.ndarray | None]:
        """Finish every remaining row: the in-memory result, or ``None`` per name with sinks."""
        self.finish(self.height)
        if self.result is None:
            return dict.fromkeys(self.names)
        return dict(self.result)

    def _hand_out(self, name: str, rows: np.ndarray) -> None:
        """Rows of output ``name`` starting at image row ``y0``, to its sink or the result."""
        if self.sinks is not None:
            self.sinks[name].write_rows(self.y0, rows)
        else:
            self.result[name][self.y0 : self.y0 + len(rows)] = rows  # type: ignore[index]

    def _hand_out_zeros(self, stop: int) -> None:
        """Rows ``y0 .. stop - 1`` (the band is empty) as zeros, a band's height at a time."""
        zeros = np.zeros((min(self.rows, stop - self.y0), self.width), np.float32)
        while self.y0 < stop:
            rows = min(len(zeros), stop - self.y0)
            for name in self.names:
                self._hand_out(name, zeros[:rows])
            self.y0 += rows

    def _shift(self, acc: np.ndarray, count: int) -> None:
        """Move the unfinished rows of ``acc`` up by ``count`` and clear the rows freed at the
        bottom (in non-overlapping chunks: no band-sized temporary)."""
        for start in range(count, self.rows, count):
            stop_chunk = min(start + count, self.rows)
            acc[start - count : stop_chunk - count] = acc[start:stop_chunk]
        acc[max(self.rows - count, 0) :] = 0.0


def _output(outputs: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(outputs, Mapping) or name not in outputs:
        keys = list(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise ValueError(f"patch_fn must return a dict with the key {name!r}; got {keys}")
    values = np.asarray(outputs[name], dtype=np.float32)
    if values.shape != shape:
        raise ValueError(f"patch_fn output {name!r} has shape {values.shape}, expected {shape}")
    return values
