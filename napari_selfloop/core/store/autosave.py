"""Autosave of corrections, keyed by the image's content, so a crash loses little work.

Corrections are stored in ``PROJECT/autosave/`` under a ``KEY`` derived from the image's
pixels (:func:`image_key`; :func:`slide_key` for a pyramid, and
:func:`~..io.windows.region_key` for one region of it): reopening the same image, whatever its
file name, finds its corrections again, and an image that differs in any pixel does not.

Two layouts, chosen by size:

``KEY.tif`` + ``KEY.json``
    Labels up to :data:`SINGLE_FILE_BYTES`: the whole array, zlib-compressed, and a record
    of what it belongs to and when it was saved. Both are written atomically (the TIFF
    first, then the JSON), so a crash during a save leaves the previous save.
``KEY.tiles/`` + ``KEY.json``
    Larger labels, cut into :data:`TILE` x :data:`TILE` tiles. Each tile is a file named
    after its position and the hash of its content (``Y_X-HASH.z``, zlib-compressed bytes),
    and the JSON record lists the tile files that make up the save. A save writes only the
    tiles whose content changed (new names, so nothing in use is overwritten), then the
    record (atomically), then removes the files no record uses: a crash at any point leaves
    the previous save whole.

A save found damaged anyway (a disk error, a copy cut short) is set aside (renamed to
``NAME.damaged``) with a warning, never fatal; of a tiled save only the damaged tiles are
lost (they come back as 255, "uncertain"). The plugin saves every 30 seconds while there
are unsaved changes.

Several processes may share one project folder (two napari windows, a script):

* A save, a load and a delete of one key hold an exclusive lock (``flock`` on
  ``.locks/KEY.lock``) for their whole length, so one save's clean-up never removes the tiles that
  another process's save of the same key has just written and listed; of two processes
  saving one key, the last save is found whole.
* A window that works on an image *claims* its key (:meth:`AutosaveStore.claim`: a lock on
  ``.locks/KEY.owner`` held as long as the window lives; the operating system drops it when the
  process ends, so a crashed window leaves no stale claim). A second window that finds
  the key claimed saves its corrections under its own :func:`session_key` (its record
  says ``session_of``), never over the first window's; such saves whose window is gone
  are found with :meth:`AutosaveStore.session_saves`. See ``docs/autosave.md``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, InputError
from ..io.atomic import atomic_path, write_json, write_tiff
from .dirty_tiles import TILE, tile_grid, tile_hash, tile_slices

log = logging.getLogger(__name__)

#: Bytes read per step when hashing a lazy or memory-mapped image.
HASH_BLOCK_BYTES = 16 * 1024 * 1024
#: Labels of at most this many bytes are saved as one TIFF; larger ones as tiles.
SINGLE_FILE_BYTES = 4 * 1024 * 1024
#: ``format`` of the record of a tiled save.
TILED_FORMAT = "napari-selfloop-autosave-tiles"
#: What a tile that cannot be read comes back as: 255, "uncertain" (not looked at yet).
LOST_TILE_VALUE = 255
#: Level-0 tiles :func:`slide_key` reads, as fractions of the height and width.
_SLIDE_SAMPLES = ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75))
_TILE_FILE = re.compile(r"^(\d+)_(\d+)-([0-9a-f]{16})\.z$")
#: Seconds a save, load or delete waits for another process's save of the same key.
LOCK_TIMEOUT = 120.0

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks (see docs/autosave.md)
    fcntl = None  # type: ignore[assignment]


def session_key(key: str, session: str) -> str:
    """The key under which the window ``session`` saves the corrections of ``key`` when
    another live window holds ``key`` (see :meth:`AutosaveStore.claim`)."""
    return hashlib.sha256(f"{key}:session:{session}".encode()).hexdigest()[:24]


def new_session() -> str:
    """A fresh id for one window's autosave session: the process id and a random part."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Claim:
    """One window's hold on an autosave key: an exclusive ``flock`` on ``KEY.owner``.

    The lock lasts until :meth:`release` or the end of the process (the operating system
    drops it then, also after a crash). Where locks are not available (Windows, a file
    system without ``flock``) a claim always succeeds and protects nothing (``locked`` is
    False).
    """

    def __init__(self, key: str, path: Path, fd: int | None) -> None:
        self.key = key
        self.path = path
        self._fd = fd

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let another window claim the key (the ``KEY.owner`` file stays: removing it
        could let two windows lock two different files of the same name)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.release()


def proposal_key(key: str) -> str:
    """The key under which the record of the last pseudo-label proposal written into the
    corrections saved under ``key`` is kept (so that a restored layer still tells the
    user's pixels from the proposal's)."""
    return hashlib.sha256(f"{key}:proposal".encode()).hexdigest()[:24]


def image_key(image: Any, cancelled: Callable[[], bool] | None = None) -> str:
    """A short hex key for an image's whole pixel content.

    The SHA-256 of the shape, the dtype and every pixel: two images that differ in any
    pixel get different keys. Lazy and memory-mapped arrays (dask, zarr, ``numpy.memmap``)
    are read band by band of rows (about 16 MB at a time), never whole, and get the same
    key as the same pixels in memory. Hashing a large image takes a while (about a second
    per GB read): the plugin does it in a background thread. ``cancelled``, if given, is
    polled between bands; when it returns True the hashing stops with
    :class:`~..errors.Cancelled`.
    """
    h = hashlib.sha256()
    shape = tuple(int(s) for s in image.shape)
    h.update(repr((shape, str(np.dtype(image.dtype)))).encode())
    _hash_rows(h, image, cancelled)
    return h.hexdigest()[:24]


def _hash_rows(h: Any, image: Any, cancelled: Callable[[], bool] | None) -> None:
    if type(image) is np.ndarray:  # in memory: no copy when contiguous
        h.update(np.ascontiguousarray(image).reshape(-1).view(np.uint8))
        return
    shape = tuple(int(s) for s in image.shape)
    height = shape[0] if shape else 0
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(image.dtype).itemsize)
    rows = max(1, HASH_BLOCK_BYTES // row_bytes)
    for y in range(0, height, rows):
        if cancelled is not None and cancelled():
            raise Cancelled("hashing the image was cancelled")
        band = np.ascontiguousarray(np.asarray(image[y : y + rows]))
        h.update(band.reshape(-1).view(np.uint8))


def slide_key(
    levels: Sequence[Any], cancelled: Callable[[], bool] | None = None, sample: int = 256
) -> str:
    """A short hex key for a pyramid (a whole slide), read in well under a second.

    Hashing every pixel of a slide would mean decoding gigabytes, so the key covers the
    shape and dtype of every level, every pixel of the smallest level, and five
    ``sample`` x ``sample`` tiles of full resolution (the centre and the centres of the
    four quadrants). Two scans of different tissue differ there; a slide is never edited
    in place. A single level (``len(levels) == 1``) gets :func:`image_key`.
    """
    if len(levels) == 1:
        return image_key(levels[0], cancelled)
    h = hashlib.sha256(b"slide")
    shapes = [tuple(int(s) for s in lvl.shape) for lvl in levels]
    h.update(repr((shapes, [str(np.dtype(lvl.dtype)) for lvl in levels])).encode())
    smallest = min(range(len(levels)), key=lambda k: int(np.prod(shapes[k], dtype=np.int64)))
    _hash_rows(h, levels[smallest], cancelled)
    height, width = shapes[0][:2]
    for fy, fx in _SLIDE_SAMPLES:
        y = max(0, min(height - sample, int(height * fy) - sample // 2))
        x = max(0, min(width - sample, int(width * fx) - sample // 2))
        tile = np.ascontiguousarray(np.asarray(levels[0][y : y + sample, x : x + sample]))
        h.update(tile.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy stubs: ndarray is a Buffer only on Python >= 3.12
    return h.hexdigest()[:24]


@dataclass
class Restored:
    """Corrections found for an image: the Labels array and the saved record."""

    labels: np.ndarray
    meta: dict[str, Any]


class AutosaveStore:
    """Corrections of many images in one project folder.

    Parameters
    ----------
    project
        The project folder; corrections go to its ``autosave`` subfolder (created on the
        first save).
    """

    def __init__(self, project: str | Path) -> None:
        self.project = Path(project)
        self.folder = self.project / "autosave"
        #: Lock files (``KEY.lock``, ``KEY.owner``; empty or a few bytes, never removed).
        self.locks = self.folder / ".locks"
        #: Damaged saves this store renamed out of the way (see :meth:`load`).
        self.set_aside: list[Path] = []
        #: Tile files a tiled save listed but that were not there (see :meth:`load`).
        self.missing: list[Path] = []

    def _paths(self, key: str) -> tuple[Path, Path]:
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise InputError(f"invalid autosave key {key!r}")
        return self.folder / f"{key}.tif", self.folder / f"{key}.json"

    def _tile_dir(self, key: str) -> Path:
        return self.folder / f"{key}.tiles"

    @contextlib.contextmanager
    def _locked(self, key: str, create: bool) -> Iterator[None]:
        """Hold the exclusive lock of ``key`` (``KEY.lock``) while the block runs.

        Waits up to :data:`LOCK_TIMEOUT` seconds for another process's save of the same
        key, then fails with an OSError that says so. Where no lock can be had (no
        ``flock``, a read-only folder when ``create`` is False) the block runs unlocked.
        """
        self._paths(key)  # checks the key
        if fcntl is None:
            yield
            return
        path = self.locks / f"{key}.lock"
        if create:
            self.locks.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if create:
                raise OSError(e.errno, f"could not write {path}: {e.strerror}") from e
            yield  # a read-only project: reading without a lock is all there is
            return
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OSError(
                            f"the autosave {key} in {self.folder} has been busy for "
                            f"{LOCK_TIMEOUT:.0f} s (another process is saving it): "
                            "trying again at the next save"
                        ) from None
                    time.sleep(0.02)
                except OSError:  # a file system without flock: nothing to coordinate with
                    break
            yield
        finally:
            os.close(fd)

    def claim(self, key: str, session: str = "") -> Claim | None:
        """Claim ``key`` for this window; None when another live window holds it.

        The claim is an exclusive ``flock`` on ``KEY.owner``, held until
        :meth:`Claim.release` or the end of the process, and not re-entrant: a second
        claim of the same key fails even within one process. The owner file records the
        process id, host and ``session`` (:meth:`claimed_by` reads them, for the message
        the second window shows). Creates the autosave folder.
        """
        self._paths(key)
        path = self.locks / f"{key}.owner"
        if fcntl is None:
            return Claim(key, path, None)
        self.locks.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OSError(e.errno, f"could not write {path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:  # no flock on this file system: nothing to claim against
            os.close(fd)
            return Claim(key, path, None)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "session": session,
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with contextlib.suppress(OSError):  # only for the message another window shows
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        return Claim(key, path, fd)

    def claimed_by(self, key: str) -> dict[str, Any]:
        """What the owner file of ``key`` says about the window that claimed it last
        (``pid``, ``host``, ``session``, ``since``; empty when unreadable)."""
        self._paths(key)
        try:
            holder = json.loads((self.locks / f"{key}.owner").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def session_saves(self, key: str) -> list[tuple[str, dict[str, Any]]]:
        """``(session key, record)`` of every save another window made of ``key`` under
        its own :func:`session_key` (oldest first). Whether its window still runs is told
        by :meth:`claim` of the session key."""
        found = [
            (skey, meta)
            for skey, meta in self.records()
            if meta.get("session_of") == key and skey != key
        ]
        return sorted(found, key=lambda item: str(item[1].get("saved", "")))

    def save(
        self,
        key: str,
        labels: np.ndarray,
        *,
        name: str = "",
        extra: dict[str, Any] | None = None,
        tiles: Iterable[tuple[int, int]] | None = None,
    ) -> Path:
        """Save ``labels`` for the image with ``key``; returns the file that records it.

        Labels of at most :data:`SINGLE_FILE_BYTES` are written whole (``KEY.tif``,
        returned); larger ones as tiles (``KEY.json`` returned), of which only those whose
        content differs from the previous save are written. ``tiles``, if given, are the
        only tiles that may have changed since the previous save of ``key`` (the caller
        tracks edits); None compares every tile.
        """
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise InputError(f"can only autosave 2D labels, got shape {labels.shape}")
        if self.project.exists() and not self.project.is_dir():
            raise InputError(f"project folder {self.project} is a file: choose a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked(key, create=True):
            return self._save(key, labels, name, extra, tiles)

    def _save(
        self,
        key: str,
        labels: np.ndarray,
        name: str,
        extra: dict[str, Any] | None,
        tiles: Iterable[tuple[int, int]] | None,
    ) -> Path:
        tif, meta_path = self._paths(key)
        meta = {
            "key": key,
            "name": name,
            "shape": [int(s) for s in labels.shape],
            "dtype": str(labels.dtype),
            "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        if labels.nbytes > SINGLE_FILE_BYTES:
            self._save_tiles(key, labels, meta, tiles)
            if tif.exists():  # an earlier single-file save of the same key
                tif.unlink(missing_ok=True)
            log.debug("autosaved %s (%s) as tiles in %s", name, key, self.folder)
            return meta_path
        write_tiff(tif, labels, compression="zlib")
        write_json(meta_path, meta)
        shutil.rmtree(self._tile_dir(key), ignore_errors=True)
        log.debug("autosaved %s (%s) to %s", name, key, tif)
        return tif

    def _save_tiles(
        self,
        key: str,
        labels: np.ndarray,
        meta: dict[str, Any],
        tiles: Iterable[tuple[int, int]] | None,
    ) -> None:
        _, meta_path = self._paths(key)
        folder = self._tile_dir(key)
        folder.mkdir(exist_ok=True)
        before = self._tiled_record(meta_path, labels)
        files: dict[str, str] = dict(before["tiles"]) if before else {}
        grid = tile_grid(labels.shape)
        todo = grid if (tiles is None or before is None) else sorted(set(tiles) & set(grid))
        for index in todo:
            block = np.ascontiguousarray(labels[tile_slices(index)])
            digest = tile_hash(block)
            name = f"{index[0]}_{index[1]}"
            path = folder / f"{name}-{digest}.z"
            if files.get(name) == digest and path.exists():
                continue
            with atomic_path(path) as tmp:
                tmp.write_bytes(zlib.compress(block.tobytes(), 1))
            files[name] = digest
        write_json(meta_path, {**meta, "format": TILED_FORMAT, "tile": TILE, "tiles": files})
        keep = {f"{name}-{digest}.z" for name, digest in files.items()}
        for path in folder.iterdir():  # the files no record uses any more
            if _TILE_FILE.match(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)

    def _tiled_record(self, meta_path: Path, labels: np.ndarray) -> dict[str, Any] | None:
        """The previous tiled record of the same shape and dtype, if any."""
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (
            isinstance(meta, dict)
            and meta.get("format") == TILED_FORMAT
            and meta.get("tile") == TILE
            and isinstance(meta.get("tiles"), dict)
            and meta.get("shape") == [int(s) for s in labels.shape]
            and meta.get("dtype") == str(labels.dtype)
        ):
            return meta
        return None

    def load(self, key: str) -> Restored | None:
        """The saved corrections for ``key``, or None when there are none.

        A damaged save (a truncated or corrupt TIFF, a TIFF that is not 2D, JSON that does
        not parse) is never fatal: its files are renamed to ``KEY.tif.damaged`` /
        ``KEY.json.damaged`` (kept for inspection, no longer found), a warning is logged and
        the renamed paths are added to :attr:`set_aside`. When only the JSON record of a
        single-file save is damaged, the corrections are still restored (without their
        record). Of a tiled save, a damaged tile is set aside alone and comes back as
        :data:`LOST_TILE_VALUE`.
        """
        self._paths(key)
        if not self.folder.is_dir():
            return None
        with self._locked(key, create=False):
            return self._load(key)

    def _load(self, key: str) -> Restored | None:
        import tifffile

        tif, meta_path = self._paths(key)
        if not tif.exists():
            return self._load_tiles(key) if meta_path.exists() else None
        try:
            labels = np.asarray(tifffile.imread(tif))
            problem = None if labels.ndim == 2 else f"it holds shape {labels.shape}, not a 2D mask"
        except Exception as e:  # tifffile / zlib / imagecodecs raise many types for bad files
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            moved = [p for p in (self._set_aside(tif), self._set_aside(meta_path)) if p]
            log.warning(
                "autosave %s is damaged (%s): set aside as %s",
                tif,
                problem,
                ", ".join(p.name for p in moved) or "(could not rename it)",
            )
            return None
        meta: dict[str, Any] = {}
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError(f"a {type(meta).__name__}, not an object")
            except (OSError, ValueError) as e:
                moved_meta = self._set_aside(meta_path)
                log.warning(
                    "autosave record %s is damaged (%s): set aside as %s",
                    meta_path,
                    e,
                    moved_meta.name if moved_meta else "(could not rename it)",
                )
                meta = {}
        return Restored(labels=labels, meta=meta)

    def _load_tiles(self, key: str) -> Restored | None:
        _, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != TILED_FORMAT:
                return None  # a record without its TIFF: nothing to restore
            shape = tuple(int(s) for s in meta["shape"])
            dtype = np.dtype(meta["dtype"])
            tile = int(meta["tile"])
            files = meta["tiles"]
            if len(shape) != 2 or min(shape) < 1 or tile < 1 or not isinstance(files, dict):
                raise ValueError(f"shape {shape}, tile {tile}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            moved = self._set_aside(meta_path)
            log.warning(
                "autosave record %s is damaged (%s): set aside as %s",
                meta_path,
                e,
                moved.name if moved else "(could not rename it)",
            )
            return None
        labels = np.full(shape, LOST_TILE_VALUE, dtype)
        folder = self._tile_dir(key)
        for index in tile_grid(shape, tile):
            name = f"{index[0]}_{index[1]}"
            digest = files.get(name)
            path = folder / f"{name}-{digest}.z"
            window = labels[tile_slices(index, tile)]
            try:
                block = np.frombuffer(zlib.decompress(path.read_bytes()), dtype)
                block = block.reshape(window.shape)
                if tile_hash(block) != digest:
                    raise ValueError("its content does not match its hash")
            except (OSError, ValueError, zlib.error) as e:
                moved = self._set_aside(path) if path.exists() else None
                log.warning(
                    "autosave tile %s of %s is damaged or missing (%s)%s: its pixels "
                    "come back as uncertain",
                    name,
                    key,
                    e,
                    f"; set aside as {moved.name}" if moved else "",
                )
                if moved is None:
                    self.missing.append(path)
                continue
            window[...] = block
        return Restored(labels=labels, meta={k: v for k, v in meta.items() if k != "tiles"})

    def _set_aside(self, path: Path) -> Path | None:
        """Rename a damaged file to ``NAME.damaged`` (``.damaged-2`` ... if taken)."""
        if not path.exists():
            return None
        for i in range(1, 1000):
            target = path.with_name(f"{path.name}.damaged" + (f"-{i}" if i > 1 else ""))
            if target.exists():
                continue
            try:
                os.replace(path, target)
            except OSError as e:
                log.warning("could not set aside %s: %s", path, e)
                return None
            self.set_aside.append(target)
            return target
        return None

    def delete(self, key: str) -> None:
        """Forget the corrections for ``key``."""
        self._paths(key)
        if not self.folder.is_dir():
            return
        with self._locked(key, create=False):
            for p in self._paths(key):
                p.unlink(missing_ok=True)
            shutil.rmtree(self._tile_dir(key), ignore_errors=True)

    def keys(self) -> list[str]:
        """Keys that have saved corrections."""
        if not self.folder.is_dir():
            return []
        keys = {p.stem for p in self.folder.glob("*.tif") if not p.name.startswith(".")}
        keys |= {key for key, meta in self.records() if meta.get("format") == TILED_FORMAT}
        return sorted(keys)

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(key, record)`` of every save whose JSON record can be read (others skipped)."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.json")):
            key = path.stem
            if path.name.startswith(".") or not all(c in "0123456789abcdef" for c in key):
                continue
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(meta, dict):
                yield key, meta
