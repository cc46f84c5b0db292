"""Fixed-size square tiles of a 2D array: the grid, the tiles a box touches, what changed.

Large correction layers are autosaved tile by tile (:mod:`.autosave`); a
:class:`TileTracker` tells which tiles changed since the last save without reading the
whole array at every save.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

#: Side of the tiles.
TILE = 512


def tile_grid(shape: Sequence[int], tile: int = TILE) -> list[tuple[int, int]]:
    """Every ``(row, column)`` tile index of a 2D array of ``shape``."""
    rows, cols = -(-int(shape[0]) // tile), -(-int(shape[1]) // tile)
    return [(ty, tx) for ty in range(rows) for tx in range(cols)]


def tile_slices(index: tuple[int, int], tile: int = TILE) -> tuple[slice, slice]:
    """The slices of tile ``index = (row, column)``."""
    ty, tx = index
    return slice(ty * tile, (ty + 1) * tile), slice(tx * tile, (tx + 1) * tile)


def tiles_touching(
    box: Sequence[int], shape: Sequence[int], tile: int = TILE
) -> Iterator[tuple[int, int]]:
    """The tiles that ``box = (y0, x0, y1, x1)`` (half-open) overlaps, within ``shape``."""
    y0, x0, y1, x1 = (int(v) for v in box)
    y0, x0 = max(0, y0), max(0, x0)
    y1, x1 = min(int(shape[0]), y1), min(int(shape[1]), x1)
    if y1 <= y0 or x1 <= x0:
        return
    for ty in range(y0 // tile, (y1 - 1) // tile + 1):
        for tx in range(x0 // tile, (x1 - 1) // tile + 1):
            yield ty, tx


def tile_hash(block: np.ndarray) -> str:
    """A short hex hash of a tile's bytes."""
    return hashlib.blake2b(block.tobytes(), digest_size=8).hexdigest()


#: Bytes of a large labels array a :class:`TileTracker` re-reads per save, besides the tiles
#: marked as edited: an edit no event reported (an undo, a script) is found within
#: ``nbytes / SCAN_BYTES`` saves. Arrays up to this size are compared whole at every save.
SCAN_BYTES = 32 * 1024 * 1024


def _crc(block: np.ndarray) -> int:
    data = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
    return zlib.crc32(data)  # type: ignore[arg-type]  # numpy stubs: ndarray is a Buffer only on Python >= 3.12


class TileTracker:
    """Which tiles of a 2D labels array changed since its last save, cheaply.

    It keeps a CRC-32 of every tile as last saved. :meth:`pending` compares the tiles
    marked as edited (:meth:`mark`, from paint events) and, round-robin, further tiles
    worth up to ``budget`` bytes, so a save costs the edits plus a bounded scan rather than
    a pass over the whole array; :meth:`commit` records a successful save. A tile never
    saved always counts as changed.

    Parameters
    ----------
    shape, dtype
        Of the tracked array.
    saved
        The array as it is on disk now (after a restore), or None when nothing is saved.
    """

    def __init__(
        self, shape: Sequence[int], dtype: Any, saved: np.ndarray | None = None, tile: int = TILE
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.tile = tile
        self.grid = tile_grid(self.shape, tile)
        self.crcs: dict[tuple[int, int], int] = {}
        self.marked: set[tuple[int, int]] = set(self.grid)
        self._cursor = 0
        if saved is not None:
            self.crcs = {i: _crc(saved[tile_slices(i, tile)]) for i in self.grid}
            self.marked.clear()

    def fits(self, data: Any) -> bool:
        """Whether ``data`` is the array this tracker follows (same shape and dtype)."""
        return tuple(data.shape) == self.shape and np.dtype(data.dtype) == self.dtype

    def mark(self, box: Sequence[int] | None = None) -> None:
        """Mark the tiles under ``box = (y0, x0, y1, x1)`` (all when None) as edited."""
        if box is None:
            self.marked.update(self.grid)
        else:
            self.marked.update(tiles_touching(box, self.shape, self.tile))

    def pending(
        self, data: np.ndarray, budget: int | None = SCAN_BYTES
    ) -> tuple[set[tuple[int, int]], dict[tuple[int, int], int]]:
        """The tiles checked now and, of those, the changed ones with their new CRC.

        ``budget`` None checks every tile.
        """
        check = set(self.marked)
        if budget is None or data.nbytes <= budget:
            check.update(self.grid)
        else:
            per_tile = self.tile * self.tile * self.dtype.itemsize
            for _ in range(max(1, budget // per_tile)):
                check.add(self.grid[self._cursor])
                self._cursor = (self._cursor + 1) % len(self.grid)
        changed = {}
        for index in check:
            crc = _crc(data[tile_slices(index, self.tile)])
            if self.crcs.get(index) != crc:
                changed[index] = crc
        return check, changed

    def commit(self, checked: set[tuple[int, int]], changed: dict[tuple[int, int], int]) -> None:
        """Record that the ``changed`` tiles were saved (and the ``checked`` are up to date)."""
        self.crcs.update(changed)
        self.marked -= checked
