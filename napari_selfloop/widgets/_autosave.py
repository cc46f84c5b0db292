"""Autosave of correction layers while the user works, and restore on reopening an image.

One :class:`AutosaveController` per viewer (see :func:`autosave_for`). Every
``INTERVAL_MS`` it saves each correction Labels layer whose content changed since its last
save to ``PROJECT/autosave/`` (via :class:`napari_selfloop.core.autosave.AutosaveStore`,
atomically), so a crash loses at most that interval of work. When an image layer is added
whose pixels match saved corrections, they come back as its correction layer.
"""

from __future__ import annotations

import datetime as _dt
import logging
import weakref
import zlib
from typing import Any

import numpy as np
from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.autosave import AutosaveStore, image_key
from ..core.errors import SelfloopError
from ._layers import (
    find_result,
    image_data,
    is_correction,
    is_source_image,
    meta_of,
    put_result,
    source_of,
)
from ._runner import error_message
from ._state import SelfloopState, get_state

log = logging.getLogger(__name__)

#: Save every 30 s: a crash loses at most half a minute of corrections.
INTERVAL_MS = 30_000


def key_for(image: Image) -> str:
    """The content key of an image layer (cached in its metadata)."""
    meta = image.metadata.setdefault("selfloop_image", {})
    key = meta.get("key")
    if key is None:
        key = image_key(image_data(image))
        meta["key"] = key
    return key


def _checksum(data: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(data).view(np.uint8).ravel()) ^ hash(data.shape)


class AutosaveController(QObject):
    """Saves changed correction layers on a timer and restores them for reopened images."""

    saved = Signal(int)  # number of layers written

    def __init__(self, viewer: Any, state: SelfloopState, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__()
        self._viewer = weakref.ref(viewer)
        self.state = state
        self._last: dict[str, int] = {}
        self._last_error: str | None = None
        self.last_saved_at: _dt.datetime | None = None
        self.enabled = True
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.save_now)
        self.timer.start()
        viewer.layers.events.inserted.connect(self._on_inserted)
        state.project_changed.connect(self._project_changed)
        for layer in list(viewer.layers):  # images opened before the first panel
            if is_source_image(layer):
                self.restore(layer)

    def _project_changed(self, *_: Any) -> None:
        self._last.clear()
        viewer = self._viewer()
        for layer in list(viewer.layers) if viewer is not None else []:
            if is_source_image(layer):
                self.restore(layer)

    @property
    def store(self) -> AutosaveStore:
        return AutosaveStore(self.state.project_dir)

    def set_enabled(self, on: bool) -> None:
        self.enabled = bool(on)
        if on:
            self.timer.start()
        else:
            self.timer.stop()

    def save_now(self, force: bool = False) -> int:
        """Save every changed correction layer; returns how many were written."""
        viewer = self._viewer()
        if viewer is None:
            self.timer.stop()
            return 0
        if not self.enabled and not force:
            return 0
        written = 0
        for layer in list(viewer.layers):
            if not is_correction(layer):
                continue
            key = meta_of(layer).get("image_key")
            data = layer.data
            if not key or not isinstance(data, np.ndarray) or data.ndim != 2:
                continue
            crc = _checksum(data)
            if not force and self._last.get(key) == crc:
                continue
            try:
                self.store.save(
                    key, data, name=source_of(layer) or layer.name, extra={"layer": layer.name}
                )
            except (SelfloopError, OSError) as e:
                message = f"autosave failed: {error_message(e)}"
                if message != self._last_error:  # say it once, not every 30 s
                    show_error(message)
                    self._last_error = message
                continue
            self._last_error = None
            self._last[key] = crc
            written += 1
        if written:
            self.last_saved_at = _dt.datetime.now()
            self.saved.emit(written)
        return written

    def mark_saved(self, key: str, data: np.ndarray) -> None:
        """Record ``data`` as already on disk for ``key`` (after a restore)."""
        self._last[key] = _checksum(np.asarray(data))

    def _on_inserted(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if isinstance(layer, Layer) and is_source_image(layer):
            self.restore(layer)

    def restore(self, image: Image) -> Layer | None:
        """Bring back saved corrections for ``image`` if there are any; returns the layer."""
        viewer = self._viewer()
        if viewer is None or not self.enabled:
            return None
        try:
            data = image_data(image)
            key = key_for(image)
        except SelfloopError:
            return None  # not an image we work on (a stack ...); the panels will say so
        restored = self.store.load(key)
        if restored is None:
            return None
        if restored.labels.shape != tuple(data.shape[:2]):
            log.warning(
                "autosave %s has shape %s, image %s: ignored",
                key,
                restored.labels.shape,
                data.shape,
            )
            return None
        if find_result(viewer, image.name, "labels") is not None:
            return None
        layer = put_result(
            viewer,
            image.name,
            "labels",
            restored.labels,
            extra_meta={"image_key": key, "restored": restored.meta.get("saved")},
            like=image,
        )
        self.mark_saved(key, restored.labels)
        show_info(
            f"Restored corrections for '{image.name}' (autosaved {restored.meta.get('saved', '?')})"
        )
        return layer


def autosave_for(viewer: Any) -> AutosaveController:
    """The viewer's autosave controller (started on first use)."""
    state = get_state(viewer)
    if state.autosave is None:
        state.autosave = AutosaveController(viewer, state)
    return state.autosave
