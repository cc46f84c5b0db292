"""Autosave of corrections, keyed by the image's content, so a crash loses little work.

Corrections are stored in ``PROJECT/autosave/KEY.tif`` (the Labels array, zlib-compressed)
and ``PROJECT/autosave/KEY.json`` (what it belongs to and when it was saved), where ``KEY``
is derived from the image's pixels (:func:`image_key`): reopening the same image, whatever
its file name, finds its corrections again. Both files are written atomically (the TIFF
first, then the JSON that points at it), so a crash during a save leaves the previous save.
The plugin saves every 30 seconds while there are unsaved changes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .imageio import write_json, write_tiff

log = logging.getLogger(__name__)

#: Arrays up to this many bytes are hashed whole; larger (or lazy) ones by a sample.
FULL_HASH_BYTES = 256 * 1024 * 1024
SAMPLE_WINDOWS = 8


def image_key(image: Any) -> str:
    """A short hex key for an image's pixel content.

    Numpy arrays up to 256 MB are hashed whole; larger or lazy arrays (dask, zarr,
    memory-mapped files) by their shape, dtype and an 8x8 grid of 64x64 windows, so that
    hashing never reads the whole of a huge image.
    """
    h = hashlib.sha256()
    shape = tuple(int(s) for s in image.shape)
    h.update(repr((shape, str(np.dtype(image.dtype)))).encode())
    if (
        isinstance(image, np.ndarray)
        and not isinstance(image, np.memmap)
        and image.nbytes <= FULL_HASH_BYTES
    ):
        h.update(np.ascontiguousarray(image).tobytes())
    else:
        height, width = shape[0], shape[1]
        for y in np.linspace(0, max(0, height - 64), SAMPLE_WINDOWS).astype(int):
            for x in np.linspace(0, max(0, width - 64), SAMPLE_WINDOWS).astype(int):
                h.update(np.ascontiguousarray(np.asarray(image[y : y + 64, x : x + 64])).tobytes())
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
        """The saved corrections for ``key``, or None when there are none (or unreadable)."""
        import tifffile

        tif, meta_path = self._paths(key)
        if not tif.exists():
            return None
        try:
            labels = tifffile.imread(tif)
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        except (OSError, ValueError) as e:  # tifffile raises ValueError-derived errors
            log.warning("ignoring unreadable autosave %s: %s", tif, e)
            return None
        if labels.ndim != 2:
            log.warning("ignoring autosave %s with shape %s", tif, labels.shape)
            return None
        return Restored(labels=labels, meta=meta)

    def delete(self, key: str) -> None:
        """Forget the corrections for ``key``."""
        for p in self._paths(key):
            p.unlink(missing_ok=True)

    def keys(self) -> list[str]:
        """Keys that have saved corrections."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.tif") if not p.name.startswith("."))
