"""Slide-grade TIFF outputs: tiled, compressed, with a pyramid and the physical pixel size.

:class:`TiledTiffWriter` takes rows in order (``write_rows(y0, block)``, the row-sink interface
of :func:`..engine.sliding_window.tiled_apply`) and streams them as compressed tiles into a temporary file
next to the target, which :meth:`~TiledTiffWriter.commit` installs atomically (fsync, then
rename: the same temporaries, locks and disk-full messages as :func:`.atomic.atomic_path`).
:func:`write_tiled_tiff` writes a whole array-like (numpy, dask, zarr: read band by band).

Layout of a written file
    Level 0 is the first page, tiled (``tile`` x ``tile``, 256 by default) and compressed
    (``zlib``/deflate by default; ``zstd``, ``lzw`` or ``none``). When the image is large
    (longest side at least :data:`PYRAMID_THRESHOLD` with ``pyramid="auto"``), half-resolution
    levels follow as SubIFDs of the first page, down to a longest side of at most
    :data:`PYRAMID_MIN_SIDE`, as QuPath, Bio-Formats and tifffile read them. Every page carries
    its pixel size as TIFF resolution tags (pixels per centimetre); an OME-TIFF (a path ending
    in ``.ome.tif``/``.ome.tiff``, or ``ome=True``) also carries ``PhysicalSizeX/Y`` in µm.
    Plain TIFFs keep ``metadata`` as tifffile's JSON description of the first page.

Memory and disk
    At most two bands of ``tile`` rows of the full-resolution level are held: the one
    being filled and the one the writing thread is compressing. Sub-resolution levels are made from those bands as they
    arrive and spooled, compressed, to an anonymous temporary file in the target's folder
    (it has no name and vanishes with the process), then written after level 0.

Rows must arrive in order: a block may start after the last row written (the gap reads back
as 0), never before it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import tempfile
import threading
import weakref
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from .atomic import _install, _new_locked_temp, _remove_quietly, _write_error

__all__ = [
    "COMPRESSIONS",
    "PYRAMID_MIN_SIDE",
    "PYRAMID_THRESHOLD",
    "TiledTiffWriter",
    "pyramid_shapes",
    "write_tiled_tiff",
]

logger = logging.getLogger(__name__)

#: Compression names accepted (``none`` or None: uncompressed).
COMPRESSIONS = ("zlib", "zstd", "lzw", "jpeg", "none")
#: ``pyramid="auto"`` adds sub-resolutions when the longest side is at least this many pixels.
PYRAMID_THRESHOLD = 4096
#: Sub-resolutions are added until the longest side is at most this many pixels.
PYRAMID_MIN_SIDE = 1024
#: Bands in flight between the caller and the writing thread.
_QUEUE_DEPTH = 1
#: Most bands of level 0 alive at once: the one being filled and the one being compressed.
_BANDS = 2
_END = object()
_ABORT = object()


class _Aborted(Exception):
    """Raised inside the writing thread to stop tifffile when the writer is aborted."""


def pyramid_shapes(
    height: int, width: int, pyramid: bool | int | str = "auto"
) -> list[tuple[int, int]]:
    """The (height, width) of every level a writer with these settings makes, level 0 first.

    Parameters
    ----------
    height, width
        Size of the full-resolution image.
    pyramid
        ``"auto"``: sub-resolutions when the longest side is at least :data:`PYRAMID_THRESHOLD`;
        True: sub-resolutions whatever the size; False or 0: none; an int: that many.
        Each level halves the previous one (rounding up) until the longest side is at most
        :data:`PYRAMID_MIN_SIDE` (or the requested count is reached, or a side would be 1).
    """
    shapes = [(int(height), int(width))]
    if pyramid == "auto":
        wanted = math.inf if max(height, width) >= PYRAMID_THRESHOLD else 0
    elif isinstance(pyramid, bool):
        wanted = math.inf if pyramid else 0
    elif isinstance(pyramid, int) and pyramid >= 0:
        wanted = pyramid
    else:
        raise InputError(f"pyramid must be 'auto', True, False or a count >= 0, got {pyramid!r}")
    explicit = pyramid is not True and pyramid != "auto"
    while len(shapes) - 1 < wanted:
        h, w = shapes[-1]
        if min(h, w) <= 1 or (not explicit and max(h, w) <= PYRAMID_MIN_SIDE):
            break
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _downsample(rows: np.ndarray, method: str) -> np.ndarray:
    """Halve a block of rows (even count, or the last odd row) in both directions.

    ``mean`` averages each 2x2 block (an odd last row or column is repeated) in a wider type
    than the pixels' (uint16 sums for uint8, rounded), never in float64 copies of the band.
    """
    if method == "nearest":
        return rows[::2, ::2]
    h, w = rows.shape[:2]
    if h % 2 or w % 2:
        pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (rows.ndim - 2)
        rows = np.pad(rows, pad, mode="edge")
    if rows.dtype.kind in "biu":
        wide = np.uint16 if rows.dtype.itemsize == 1 and rows.dtype.kind != "i" else np.float64
        total: np.ndarray = rows[0::2, 0::2].astype(wide)
        for dy, dx in ((0, 1), (1, 0), (1, 1)):
            total += rows[dy::2, dx::2]
        if wide is np.uint16:
            return ((total + 2) // 4).astype(rows.dtype)
        return np.rint(total / 4).astype(rows.dtype)
    total = rows[0::2, 0::2].astype(rows.dtype, copy=True)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        total += rows[dy::2, dx::2]
    total *= 0.25
    return total


class _Level:
    """One sub-resolution: receives its rows in order, spools them compressed, feeds the next."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype,
        folder: Path,
        method: str,
        below: _Level | None,
    ) -> None:
        self.shape, self.dtype, self.method, self.below = shape, dtype, method, below
        self.file = tempfile.TemporaryFile(dir=folder, prefix=".selfloop-level-")  # noqa: SIM115
        self.chunks: list[tuple[int, int, int]] = []  # (offset, compressed bytes, rows)
        self.offset = 0
        self.rows = 0
        self.pending: np.ndarray | None = None  # an odd row waiting for its partner

    def add(self, rows: np.ndarray) -> None:
        rows = rows[:, : self.shape[1]]
        data = zlib.compress(np.ascontiguousarray(rows).tobytes(), 1)
        self.file.write(data)
        self.chunks.append((self.offset, len(data), rows.shape[0]))
        self.offset += len(data)
        self.rows += rows.shape[0]
        if self.below is None:
            return
        if self.pending is not None:
            rows = np.concatenate([self.pending, rows])
            self.pending = None
        even = rows.shape[0] - rows.shape[0] % 2
        if rows.shape[0] % 2:
            self.pending = rows[even:].copy()
        if even:
            self.below.add(_downsample(rows[:even], self.method))

    def finish(self) -> None:
        if self.below is None:
            return
        if self.pending is not None:
            self.below.add(_downsample(self.pending, self.method))
            self.pending = None
        self.below.finish()

    def tiles(self, tile: int) -> Iterator[np.ndarray]:
        """The level's tiles, row-major (the last column and row are partial)."""
        self.file.flush()
        fd = self.file.fileno()
        row_shape = self.shape[1:]
        band: list[np.ndarray] = []
        count = 0
        for offset, nbytes, rows in self.chunks:
            data = zlib.decompress(os.pread(fd, nbytes, offset))
            band.append(np.frombuffer(data, self.dtype).reshape(rows, *row_shape))
            count += rows
            while count >= tile:
                block = np.concatenate(band) if len(band) > 1 else band[0]
                yield from _tiles_of(block[:tile], tile)
                band, count = ([block[tile:]] if count > tile else []), count - tile
        if count:
            yield from _tiles_of(np.concatenate(band), tile)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


def _tiles_of(band: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    for x in range(0, band.shape[1], tile):
        yield band[:, x : x + tile]


class _State:
    """What the writing thread and the clean-up share (never the writer itself)."""

    def __init__(self, tmp: Path, fd: int | None) -> None:
        self.tmp = tmp
        self.fds: list[int] = [] if fd is None else [fd]
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.finished = False  # the thread wrote every level
        self.bands = threading.Semaphore(_BANDS - 1)  # bands the caller may hand over
        self.levels_ready = threading.Event()  # the spools are complete (or the writer aborted)
        self.aborted = False
        self.levels: list[_Level] = []

    def stop_thread(self) -> None:
        thread = self.thread
        if thread is None:
            return
        self.aborted = True
        self.levels_ready.set()
        while thread.is_alive():
            try:
                self.queue.put(_ABORT, timeout=0.05)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.queue.get_nowait()
        thread.join()
        self.thread = None

    def discard(self) -> None:
        """Stop the thread, remove the temporary file and the spools (idempotent)."""
        self.stop_thread()
        for level in self.levels:
            level.close()
        while self.fds:
            with contextlib.suppress(OSError):
                os.close(self.fds.pop())
        _remove_quietly(self.tmp)


def _queue_tiles(state: _State, tile: int) -> Iterator[np.ndarray]:
    while True:
        item = state.queue.get()
        if item is _END:
            return
        if item is _ABORT:
            raise _Aborted
        yield from _tiles_of(item, tile)
        del item
        state.bands.release()


def _write_thread(
    state: _State,
    options: dict[str, Any],
    levels: list[tuple[int, ...]],
    resolutions: list[tuple[float, float] | None],
) -> None:
    import tifffile

    try:
        ome = options.pop("ome")
        with tifffile.TiffWriter(state.tmp, bigtiff=options.pop("bigtiff"), ome=ome) as tif:
            metadata = options.pop("metadata")
            # shaped files need each level's shape
            level_metadata: dict[str, Any] | None = None if ome else {}
            tile = options["tile"][0]
            tif.write(
                _queue_tiles(state, tile),
                shape=levels[0],
                subifds=len(levels) - 1,
                metadata=metadata,
                **_resolution(resolutions[0]),
                **options,
            )
            if len(levels) > 1:
                state.levels_ready.wait()  # the caller finishes the spools in commit()
                if state.aborted:
                    raise _Aborted
            for shape, resolution, level in zip(
                levels[1:], resolutions[1:], state.levels, strict=True
            ):
                tif.write(
                    level.tiles(tile),
                    shape=shape,
                    subfiletype=1,
                    metadata=level_metadata,
                    **_resolution(resolution),
                    **options,
                )
        state.finished = True
    except _Aborted:
        pass
    except BaseException as exc:  # handed to the caller, who raises it
        state.error = exc
        with contextlib.suppress(queue.Empty):  # unblock a producer waiting on a full queue
            while True:
                state.queue.get_nowait()


def _resolution(res: tuple[float, float] | None) -> dict[str, Any]:
    if res is None:
        return {}
    return {"resolution": res, "resolutionunit": "CENTIMETER"}


class TiledTiffWriter:
    """Stream an image, rows in order, into a tiled, compressed (OME-)TIFF, atomically.

    Parameters
    ----------
    path
        Destination file. Nothing appears there until :meth:`commit`; an existing file stays
        as it is until then (and after :meth:`abort`).
    height, width
        Image size in pixels.
    dtype
        Pixel type (bool, unsigned or signed integers, float16/32/64).
    channels
        1 (a 2D image) or the number of samples per pixel (3: RGB when uint8).
    pixel_size_um
        Microns per pixel of the full-resolution level, or None when unknown (then no
        resolution tags and no OME physical size are written).
    compression
        ``zlib`` (deflate, default: read everywhere), ``zstd``, ``lzw``, ``jpeg`` (lossy,
        uint8 gray or RGB) or ``none``/None.
    tile
        Tile side, a multiple of 16.
    pyramid
        ``"auto"``, True, False or a number of sub-resolutions (see :func:`pyramid_shapes`).
    metadata
        Plain JSON values kept in a plain TIFF's description (tifffile's shaped metadata),
        e.g. ``{datasets.SELFLOOP_MASK_TAG: "0/1/255"}``. OME-TIFFs carry only ``Name``.
    ome
        Write OME-XML; None: when ``path`` ends in ``.ome.tif`` or ``.ome.tiff``.
    downsample
        How sub-resolutions are made: ``mean`` (2x2 average), ``nearest`` (every other
        pixel: right for labels and masks), or ``auto`` (mean for floats, nearest otherwise).
    quality
        Compression level: JPEG quality (1-100; ``jpeg`` is lossy and for uint8 images
        only), or the zlib/zstd level; None: the codec's default.
    predictor
        Store differences of horizontal neighbours (TIFF predictor 2, read everywhere) before
        compressing: smaller files for smooth integer maps (probabilities), not for labels.

    Use it as a context manager (commit on success, abort on an exception) or call
    :meth:`commit` / :meth:`abort`. Rows never written read back as 0.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        height: int,
        width: int,
        dtype: npt.DTypeLike,
        *,
        channels: int = 1,
        pixel_size_um: float | None = None,
        compression: str | None = "zlib",
        tile: int = 256,
        pyramid: bool | int | str = "auto",
        metadata: dict[str, Any] | None = None,
        ome: bool | None = None,
        downsample: str = "auto",
        quality: int | None = None,
        predictor: bool = False,
    ) -> None:
        self.path = Path(path)
        self.height, self.width, self.channels = int(height), int(width), int(channels)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.tile = int(tile)
        self._check(compression, pixel_size_um, downsample)
        self.pixel_size_um = None if pixel_size_um is None else float(pixel_size_um)
        self.compression = None if compression in (None, "none") else compression
        self.quality = quality
        self.predictor = bool(predictor)
        if self.predictor and (self.compression in (None, "jpeg") or self.dtype.kind not in "biu"):
            raise InputError(
                "the horizontal predictor is for zlib, zstd or LZW compressed integer pixels"
            )
        if self.compression == "jpeg" and not (self.dtype == np.uint8 and self.channels in (1, 3)):
            raise InputError(
                "JPEG compression needs uint8 gray or RGB pixels, got "
                f"{self.dtype.name} with {self.channels} channel(s)"
            )
        method = (
            downsample
            if downsample != "auto"
            else ("mean" if self.dtype.kind == "f" else "nearest")
        )
        self.ome = (
            self.path.name.lower().endswith((".ome.tif", ".ome.tiff")) if ome is None else bool(ome)
        )
        self.shapes = pyramid_shapes(self.height, self.width, pyramid)
        self._metadata = dict(metadata or {})
        self._row_shape: tuple[int, ...] = (
            (self.width,) if self.channels == 1 else (self.width, self.channels)
        )
        self._band = np.zeros((min(self.tile, self.height), *self._row_shape), self.dtype)
        self._band_y0 = 0  # image row of self._band[0]
        self._next = 0  # first row not yet written
        tmp, fd = _new_locked_temp(self.path)
        self._state = _State(tmp, fd)
        self._finalizer = weakref.finalize(self, _State.discard, self._state)
        try:
            below = None
            for shape in reversed(self.shapes[1:]):
                below = _Level(
                    (*shape, *self._row_shape[1:]), self.dtype, self.path.parent, method, below
                )
                self._state.levels.insert(0, below)
        except OSError as exc:
            error = _write_error(self.path, exc)
            self._finalizer()
            raise error from exc
        self._start_thread()

    def _check(self, compression: str | None, pixel_size_um: float | None, downsample: str) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(f"a TIFF needs a positive size, got {self.height}x{self.width}")
        if self.dtype.kind not in "biuf" or self.dtype.itemsize > 8:
            raise InputError(f"cannot write pixel type {self.dtype.name} to a TIFF")
        if self.channels < 1:
            raise InputError(f"channels must be at least 1, got {self.channels}")
        if self.tile < 16 or self.tile % 16:
            raise InputError(f"the tile side must be a multiple of 16, got {self.tile}")
        if compression is not None and compression not in COMPRESSIONS:
            raise InputError(
                f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}"
            )
        if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise InputError(
                f"the pixel size must be a positive number of microns, got {pixel_size_um}"
            )
        if downsample not in ("auto", "mean", "nearest"):
            raise InputError(f"downsample must be auto, mean or nearest, got {downsample!r}")

    def _options(self) -> dict[str, Any]:
        nbytes = self.height * self.width * self.channels * self.dtype.itemsize
        photometric = "rgb" if self.channels in (3, 4) and self.dtype == np.uint8 else "minisblack"
        options: dict[str, Any] = {
            "dtype": self.dtype,
            "tile": (self.tile, self.tile),
            "compression": self.compression,
            "compressionargs": None if self.quality is None else {"level": int(self.quality)},
            "predictor": "horizontal" if self.predictor else None,
            "photometric": photometric,
            "planarconfig": "contig" if self.channels > 1 else None,
            "maxworkers": 1,
            "bigtiff": nbytes * 4 // 3 > 2**32 - 2**25,
            "ome": self.ome,
        }
        if photometric == "rgb" and self.channels == 4:
            options["extrasamples"] = ("unassalpha",)
        if self.ome:
            axes = "YX" if self.channels == 1 else ("YXS" if photometric == "rgb" else "YXC")
            meta: dict[str, Any] = {"axes": axes}
            if self.pixel_size_um is not None:
                meta.update(
                    PhysicalSizeX=self.pixel_size_um,
                    PhysicalSizeXUnit="µm",
                    PhysicalSizeY=self.pixel_size_um,
                    PhysicalSizeYUnit="µm",
                )
            if self._metadata.get("Name"):
                meta["Name"] = str(self._metadata["Name"])
            options["metadata"] = meta
        else:
            options["metadata"] = dict(self._metadata)
        return options

    def _resolutions(self) -> list[tuple[float, float] | None]:
        if self.pixel_size_um is None:
            return [None] * len(self.shapes)
        out: list[tuple[float, float] | None] = []
        for h, w in self.shapes:
            # microns per pixel of this level, exact per axis: level 0's times the size ratio
            um_x = self.pixel_size_um * self.width / w
            um_y = self.pixel_size_um * self.height / h
            out.append((1e4 / um_x, 1e4 / um_y))  # pixels per centimetre
        return out

    def _start_thread(self) -> None:
        options = self._options()
        shapes = [(h, w, *self._row_shape[1:]) for h, w in self.shapes]
        thread = threading.Thread(
            target=_write_thread,
            args=(self._state, options, shapes, self._resolutions()),
            name=f"tiff-writer:{self.path.name}",
            daemon=True,
        )
        self._state.thread = thread
        thread.start()

    # ---------------------------------------------------------------------------- writing

    @property
    def closed(self) -> bool:
        """True after :meth:`commit` or :meth:`abort`."""
        return not self._finalizer.alive

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the full-resolution image (``(H, W)`` or ``(H, W, C)``)."""
        return (self.height, *self._row_shape)

    def write_rows(self, y0: int, block: npt.ArrayLike) -> None:
        """Write rows ``y0 .. y0 + len(block) - 1``.

        Parameters
        ----------
        y0
            First row: at or after the end of the rows written so far (rows skipped read
            back as 0).
        block
            Shape ``(rows, width)`` (or ``(rows, width, channels)``). Converted to the
            writer's dtype; float values are not silently truncated into an integer file.

        Raises
        ------
        OSError
            When writing fails (e.g. a full disk); the temporary file is then removed.
        ValueError
            For a block of the wrong shape, out of order or outside the image.
        """
        if self.closed:
            raise RuntimeError(f"the TIFF writer for {self.path} is already closed")
        block = np.asarray(block)
        if block.ndim == 3 and self.channels == 1 and block.shape[2] == 1:
            block = block[..., 0]
        if block.shape[1:] != self._row_shape:
            raise ValueError(
                f"expected rows of shape (n, {', '.join(map(str, self._row_shape))}), got "
                f"{block.shape} for {self.path}"
            )
        y0, rows = int(y0), block.shape[0]
        if y0 < self._next:
            raise ValueError(
                f"rows must come in order: got row {y0} after row {self._next - 1} of {self.path}"
            )
        if y0 + rows > self.height:
            raise ValueError(
                f"rows {y0}..{y0 + rows - 1} are outside 0..{self.height - 1} of {self.path}"
            )
        if self.dtype.kind in "biu" and block.dtype.kind == "f":
            raise ValueError(
                f"{self.path} stores {self.dtype.name}; got {block.dtype.name} rows: "
                "scale and convert them first"
            )
        self._skip_to(y0)
        done = 0
        while done < rows:
            at = y0 + done - self._band_y0
            take = min(rows - done, self._band.shape[0] - at)
            self._band[at : at + take] = block[done : done + take]
            done += take
            self._next = y0 + done
            if at + take == self._band.shape[0]:
                self._push_band()

    def _skip_to(self, y0: int) -> None:
        """Leave rows ``self._next .. y0 - 1`` at 0 (whole bands are pushed as zeros)."""
        while self._next < y0:
            end = min(y0, self._band_y0 + self._band.shape[0])
            self._next = end
            if end == self._band_y0 + self._band.shape[0]:
                self._push_band()

    def _push_band(self) -> None:
        """Hand the full band to the writing thread and the pyramid; start the next band."""
        band = self._band
        state = self._state
        try:
            if state.levels:
                state.levels[0].add(_downsample(band, state.levels[0].method))
            while not state.bands.acquire(timeout=0.1):  # wait for the thread to free a band
                if state.error is not None or state.thread is None or not state.thread.is_alive():
                    raise self._thread_error()
            state.queue.put(band)  # never blocks: a band was free, so the queue is empty
        except OSError as exc:
            error = _write_error(self.path, exc)
            self._finalizer()
            raise error from exc
        except BaseException:
            self._finalizer()
            raise
        self._band_y0 += band.shape[0]
        rows = min(self.tile, self.height - self._band_y0)
        self._band = np.zeros((max(rows, 0), *self._row_shape), self.dtype)

    def _thread_error(self) -> BaseException:
        error = self._state.error
        if error is None:
            return OSError(f"the writing thread of {self.path} stopped")
        return error

    def commit(self) -> Path:
        """Finish every level, flush to disk and move the file onto ``path``.

        Returns
        -------
        pathlib.Path
            The final path.

        Raises
        ------
        OSError
            When writing, syncing or renaming fails (the message names ``path``); the
            temporary file is removed and ``path`` is left as it was.
        """
        if self.closed:
            raise RuntimeError(f"the TIFF writer for {self.path} is already closed")
        missing = self.height - self._next
        if missing:
            logger.warning(
                "%s: %d of %d rows were never written (left 0)", self.path, missing, self.height
            )
            self._skip_to(self.height)
        state = self._state
        try:
            if state.levels:
                state.levels[0].finish()
                for level in state.levels:
                    level.file.flush()
            state.levels_ready.set()
            # tifffile stops reading tiles after the last one, so the end mark may not be taken
            while not state.finished:
                if state.error is not None or state.thread is None or not state.thread.is_alive():
                    if state.finished:
                        break
                    raise self._thread_error()
                try:
                    state.queue.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue
            thread = state.thread
            assert thread is not None  # set in __init__, cleared only once the writer is closed
            thread.join()
            state.thread = None
            if state.error is not None:
                raise self._thread_error()
            fd = state.fds.pop() if state.fds else None
            if fd is not None:
                os.close(fd)
            _install(state.tmp, self.path)
        except OSError as exc:
            error = _write_error(self.path, exc)
            self._finalizer()
            raise error from exc
        except BaseException:
            self._finalizer()
            raise
        for level in state.levels:
            level.close()
        self._finalizer.detach()
        return self.path

    def abort(self) -> None:
        """Discard the temporary file (idempotent); ``path`` is left as it was."""
        self._finalizer()

    def __enter__(self) -> TiledTiffWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if not self.closed:
                self.commit()
        else:
            self.abort()


def write_tiled_tiff(
    path: str | os.PathLike[str],
    data: Any,
    *,
    pixel_size_um: float | None = None,
    compression: str | None = "zlib",
    tile: int = 256,
    pyramid: bool | int | str = "auto",
    metadata: dict[str, Any] | None = None,
    ome: bool | None = None,
    downsample: str = "auto",
    quality: int | None = None,
    predictor: bool = False,
) -> Path:
    """Write an image to a tiled, compressed (OME-)TIFF with a pyramid when large, atomically.

    Parameters
    ----------
    path
        Destination file (``.ome.tif`` writes OME-XML with the physical pixel size).
    data
        The image, ``(H, W)`` or ``(H, W, C)``: a numpy array or any lazy array-like with
        ``shape``, ``dtype`` and slicing (dask, zarr, a memmap). It is read ``tile`` rows at
        a time, so a lazy array is never held whole.
    pixel_size_um, compression, tile, pyramid, metadata, ome, downsample, quality, predictor
        As for :class:`TiledTiffWriter`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        For data that is not a 2D image (with channels last) or of an unsupported type.
    OSError
        When writing fails (a full disk ...): nothing is left at ``path`` but what was there.
    """
    if not (hasattr(data, "shape") and hasattr(data, "dtype")):
        data = np.asarray(data)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) not in (2, 3):
        raise InputError(f"expected a 2D image (H, W) or (H, W, C), got shape {shape}")
    channels = 1 if len(shape) == 2 else shape[2]
    with TiledTiffWriter(
        path,
        shape[0],
        shape[1],
        data.dtype,
        channels=channels,
        pixel_size_um=pixel_size_um,
        compression=compression,
        tile=tile,
        pyramid=pyramid,
        metadata=metadata,
        ome=ome,
        downsample=downsample,
        quality=quality,
        predictor=predictor,
    ) as writer:
        for y in range(0, shape[0], writer.tile):
            writer.write_rows(y, np.asarray(data[y : y + writer.tile]))
    return Path(path)
