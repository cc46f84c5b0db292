"""Autosave of correction layers while the user works, and restore on reopening an image.

One :class:`AutosaveController` per viewer (see :func:`autosave_for`). Every
``INTERVAL_MS`` it saves each correction Labels layer whose content changed since its last
save to ``PROJECT/autosave/`` (via :class:`napari_selfloop.core.autosave.AutosaveStore`,
atomically), so a crash loses at most that interval of work. When an image layer is added
whose pixels match saved corrections, they come back as its correction layer. The match is
on a hash of every pixel; for large images it is computed in a background thread. A damaged
save is set aside with a warning; restoring never stops an image from opening or a panel
from docking.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import threading
import weakref
import zlib
from typing import Any

import numpy as np
from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_info, show_warning
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


#: Images of more bytes than this are hashed in a background thread when opened.
BACKGROUND_HASH_BYTES = 64 * 1024 * 1024


class _KeyJob:
    """The content key of one image layer, being computed in a background thread."""

    def __init__(self, image: Image, data: Any, on_done: Any) -> None:
        self.layer = weakref.ref(image)
        self.layer_id = id(image)
        self.done = threading.Event()
        self.key: str | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._on_done = on_done
        self.thread = threading.Thread(
            target=self._run, args=(data,), name="selfloop-image-key", daemon=True
        )

    def _run(self, data: Any) -> None:
        try:
            self.key = image_key(data, cancelled=lambda: self.cancelled)
        except BaseException as e:  # reported to whoever waits for the key
            self.error = e
        finally:
            self.done.set()
            self._on_done(self)

    def result(self) -> str:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.key is not None
        return self.key


_jobs: dict[int, _KeyJob] = {}
_jobs_lock = threading.Lock()


def _job_of(image: Image) -> _KeyJob | None:
    with _jobs_lock:
        job = _jobs.get(id(image))
    return job if job is not None and job.layer() is image else None


def _cached_key(image: Image) -> str | None:
    meta = image.metadata.setdefault("selfloop_image", {})
    key = meta.get("key")
    return key if isinstance(key, str) else None


def key_for(image: Image) -> str:
    """The content key of an image layer (cached in its metadata).

    The key covers every pixel (:func:`~napari_selfloop.core.autosave.image_key`). If it is
    being computed in the background (large images, see :meth:`AutosaveController.restore`),
    this waits for that instead of reading the image a second time.
    """
    key = _cached_key(image)
    if key is None:
        job = _job_of(image)
        key = job.result() if job is not None else image_key(image_data(image))
        image.metadata["selfloop_image"]["key"] = key
    return key


def _checksum(data: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(data).view(np.uint8).ravel()) ^ hash(data.shape)


class AutosaveController(QObject):
    """Saves changed correction layers on a timer and restores them for reopened images."""

    saved = Signal(int)  # number of layers written
    _key_ready = Signal(object)  # a _KeyJob finished (emitted from its thread)

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
        self._key_ready.connect(self._key_done)  # queued: runs in the main thread
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
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
        """Bring back saved corrections for ``image`` if there are any; returns the layer.

        Never raises: a damaged save is set aside with a warning (see
        :meth:`AutosaveStore.load`), anything else unexpected is reported as a warning, so
        opening an image or docking a panel never fails because of an autosave. The key of
        an image larger than :data:`BACKGROUND_HASH_BYTES` that is not yet known is computed
        in a background thread; its corrections come back when that finishes (None now).
        """
        viewer = self._viewer()
        if viewer is None or not self.enabled:
            return None
        try:
            data = image_data(image)
        except SelfloopError:
            return None  # not an image we work on (a stack ...); the panels will say so
        try:
            key = _cached_key(image)
            if key is None:
                if _image_bytes(data) > BACKGROUND_HASH_BYTES:
                    self._hash_in_background(image, data)
                    return None
                key = key_for(image)
            return self._restore_key(viewer, image, data, key)
        except Exception as e:  # an autosave must never break opening an image
            log.warning("could not restore corrections for %s", image.name, exc_info=True)
            show_warning(f"Could not restore autosaved corrections for '{image.name}': "
                         f"{error_message(e)}")
            return None

    def _hash_in_background(self, image: Image, data: Any) -> None:
        if _job_of(image) is not None:
            return
        ref = weakref.ref(self)

        def finished(job: _KeyJob) -> None:  # in the job's thread: hand over to the main one
            me = ref()
            if me is not None:
                with contextlib.suppress(RuntimeError):  # deleted with its viewer
                    me._key_ready.emit(job)

        job = _KeyJob(image, data, finished)
        with _jobs_lock:
            _jobs[id(image)] = job
        job.thread.start()

    def _on_removed(self, event: Any) -> None:
        job = _job_of(getattr(event, "value", None))
        if job is not None:
            job.cancelled = True  # stop reading an image that is gone

    def _key_done(self, job: _KeyJob) -> None:
        with _jobs_lock:
            if _jobs.get(job.layer_id) is job:
                del _jobs[job.layer_id]
        image = job.layer()
        if image is None or job.key is None:
            if job.error is not None and not isinstance(job.error, SelfloopError):
                log.warning("could not hash an image for autosave: %s", job.error)
            return
        image.metadata.setdefault("selfloop_image", {}).setdefault("key", job.key)
        viewer = self._viewer()
        if viewer is not None and image in viewer.layers:
            self.restore(image)

    def _restore_key(self, viewer: Any, image: Image, data: Any, key: str) -> Layer | None:
        store = self.store
        restored = store.load(key)
        if store.set_aside:
            show_warning(
                f"The autosaved corrections for '{image.name}' were damaged and could not be "
                f"restored (fully); set aside as {', '.join(p.name for p in store.set_aside)} "
                f"in {store.folder}"
            )
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


def _image_bytes(data: Any) -> int:
    try:
        return int(np.prod([int(s) for s in data.shape], dtype=np.int64)) * np.dtype(
            data.dtype
        ).itemsize
    except (TypeError, ValueError):
        return 0


def autosave_for(viewer: Any) -> AutosaveController:
    """The viewer's autosave controller (started on first use)."""
    state = get_state(viewer)
    if state.autosave is None:
        state.autosave = AutosaveController(viewer, state)
    return state.autosave
