"""Autosave of corrections, keyed by the image's content, so a crash loses little work.

Corrections are stored in ``PROJECT/autosave/KEY.tif`` (the Labels array, zlib-compressed)
and ``PROJECT/autosave/KEY.json`` (what it belongs to and when it was saved), where ``KEY``
is derived from all of the image's pixels (:func:`image_key`): reopening the same image,
whatever its file name, finds its corrections again, and an image that differs in any
pixel does not. Both files are written atomically (the TIFF first, then the JSON that
points at it), so a crash during a save leaves the previous save. A save found damaged
anyway (a disk error, a copy cut short) is renamed to ``KEY.tif.damaged`` with a warning,
never fatal. The plugin saves every 30 seconds while there are unsaved changes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Cancelled, InputError
from .imageio import write_json, write_tiff

log = logging.getLogger(__name__)

#: Bytes read per step when hashing a lazy or memory-mapped image.
HASH_BLOCK_BYTES = 16 * 1024 * 1024


def image_key(image: Any, cancelled: Callable[[], bool] | None = None) -> str:
    """A short hex key for an image's whole pixel content.

    The SHA-256 of the shape, the dtype and every pixel: two images that differ in any
    pixel get different keys. Lazy and memory-mapped arrays (dask, zarr, ``numpy.memmap``)
    are read band by band of rows (about 16 MB at a time), never whole, and get the same
    key as the same pixels in memory. Hashing a large image takes a while (about a second
    per GB read): the plugin does it in a background thread. ``cancelled``, if given, is
    polled between bands; when it returns True the hashing stops with
    :class:`~.errors.Cancelled`.
    """
    h = hashlib.sha256()
    shape = tuple(int(s) for s in image.shape)
    h.update(repr((shape, str(np.dtype(image.dtype)))).encode())
    if type(image) is np.ndarray:  # in memory: no copy when contiguous
        h.update(np.ascontiguousarray(image).reshape(-1).view(np.uint8))
        return h.hexdigest()[:24]
    height = shape[0] if shape else 0
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(image.dtype).itemsize)
    rows = max(1, HASH_BLOCK_BYTES // row_bytes)
    for y in range(0, height, rows):
        if cancelled is not None and cancelled():
            raise Cancelled("hashing the image was cancelled")
        band = np.ascontiguousarray(np.asarray(image[y : y + rows]))
        h.update(band.reshape(-1).view(np.uint8))
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
        #: Damaged saves this store renamed out of the way (see :meth:`load`).
        self.set_aside: list[Path] = []

    def _paths(self, key: str) -> tuple[Path, Path]:
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise InputError(f"invalid autosave key {key!r}")
        return self.folder / f"{key}.tif", self.folder / f"{key}.json"

    def save(
        self, key: str, labels: np.ndarray, *, name: str = "", extra: dict[str, Any] | None = None
    ) -> Path:
        """Save ``labels`` for the image with ``key``; returns the TIFF's path."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise InputError(f"can only autosave 2D labels, got shape {labels.shape}")
        if self.project.exists() and not self.project.is_dir():
            raise InputError(f"project folder {self.project} is a file: choose a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        tif, meta_path = self._paths(key)
        write_tiff(tif, labels, compression="zlib")
        meta = {
            "key": key,
            "name": name,
            "shape": [int(s) for s in labels.shape],
            "dtype": str(labels.dtype),
            "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        write_json(meta_path, meta)
        log.debug("autosaved %s (%s) to %s", name, key, tif)
        return tif

    def load(self, key: str) -> Restored | None:
        """The saved corrections for ``key``, or None when there are none.

        A damaged save (a truncated or corrupt TIFF, a TIFF that is not 2D, JSON that does
        not parse) is never fatal: its files are renamed to ``KEY.tif.damaged`` /
        ``KEY.json.damaged`` (kept for inspection, no longer found), a warning is logged and
        the renamed paths are added to :attr:`set_aside`. When only the JSON record is
        damaged, the corrections are still restored (without their record).
        """
        import tifffile

        tif, meta_path = self._paths(key)
        if not tif.exists():
            return None
        try:
            labels = np.asarray(tifffile.imread(tif))
            problem = None if labels.ndim == 2 else f"it holds shape {labels.shape}, not a 2D mask"
        except Exception as e:  # tifffile / zlib / imagecodecs raise many types for bad files
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            moved = [p for p in (self._set_aside(tif), self._set_aside(meta_path)) if p]
            log.warning("autosave %s is damaged (%s): set aside as %s", tif, problem,
                        ", ".join(p.name for p in moved) or "(could not rename it)")
            return None
        meta: dict[str, Any] = {}
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError(f"a {type(meta).__name__}, not an object")
            except (OSError, ValueError) as e:
                moved_meta = self._set_aside(meta_path)
                log.warning("autosave record %s is damaged (%s): set aside as %s", meta_path, e,
                            moved_meta.name if moved_meta else "(could not rename it)")
                meta = {}
        return Restored(labels=labels, meta=meta)

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
        for p in self._paths(key):
            p.unlink(missing_ok=True)

    def keys(self) -> list[str]:
        """Keys that have saved corrections."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.tif") if not p.name.startswith("."))
