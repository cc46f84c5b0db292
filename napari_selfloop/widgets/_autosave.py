"""Autosave of correction layers while the user works, and restore on reopening an image.

One :class:`AutosaveController` per viewer, owned by its state (:meth:`._state.SelfloopState.start_autosave`). Every
``INTERVAL_MS`` it saves each correction Labels layer whose content changed since its last
save to ``PROJECT/autosave/`` (via :class:`napari_selfloop.core.autosave.AutosaveStore`,
atomically), so a crash loses at most that interval of work. Only what changed is read and
written: a :class:`~napari_selfloop.core.tiles.TileTracker` per layer follows napari's
paint events and re-checks a bounded number of further tiles per save, and large labels
are stored as tiles of which only the changed ones are rewritten. The correction layers of
regions of a slide are saved each on its own (keyed by the slide and the region).

When an image layer is added whose pixels match saved corrections, they come back as its
correction layer (and the regions saved for it as theirs). The match is on a hash of every
pixel (of a pyramid: :func:`~napari_selfloop.core.autosave.slide_key`), computed in a
background thread for large images. A damaged save is set aside with a warning; restoring
never stops an image from opening or a panel from docking.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.autosave import AutosaveStore, image_key, proposal_key, slide_key
from ..core.errors import SelfloopError
from ..core.tiles import SCAN_BYTES, TileTracker
from ..core.window import Window
from ._layers import (
    PAINTED,
    PROPOSAL,
    find_result,
    image_data,
    is_correction,
    is_source_image,
    meta_of,
    proposal_record,
    put_result,
    set_proposal_record,
    source_of,
    window_of,
)
from ._runner import error_message
from ._slide import levels_of
from ._state import SelfloopState

log = logging.getLogger(__name__)

#: Save every 30 s: a crash loses at most half a minute of corrections.
INTERVAL_MS = 30_000


#: Images of more bytes than this are hashed in a background thread when opened.
BACKGROUND_HASH_BYTES = 64 * 1024 * 1024


def content_key(image: Image, cancelled: Callable[[], bool] | None = None) -> str:
    """The content key of an image layer: every pixel, or of a pyramid a sample (slide_key)."""
    if image.multiscale:
        return slide_key(levels_of(image), cancelled)
    return image_key(image_data(image), cancelled)


class _KeyJob:
    """The content key of one image layer, being computed in a background thread."""

    def __init__(self, image: Image, on_done: Any) -> None:
        self.layer = weakref.ref(image)
        self.layer_id = id(image)
        self.done = threading.Event()
        self.key: str | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._on_done = on_done
        self.thread = threading.Thread(
            target=self._run, args=(image,), name="selfloop-image-key", daemon=True
        )

    def _run(self, image: Image) -> None:
        try:
            self.key = content_key(image, cancelled=lambda: self.cancelled)
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

    The key covers every pixel (:func:`~napari_selfloop.core.autosave.image_key`; of a
    pyramid, :func:`~napari_selfloop.core.autosave.slide_key`). If it is being computed in
    the background (large images, see :meth:`AutosaveController.restore`), this waits for
    that instead of reading the image a second time.
    """
    key = _cached_key(image)
    if key is None:
        job = _job_of(image)
        key = job.result() if job is not None else content_key(image)
        image.metadata["selfloop_image"]["key"] = key
    return key


def save_key(layer: Layer) -> str | None:
    """The autosave key of a correction layer: its region's, else its image's."""
    meta = meta_of(layer)
    key = meta.get("autosave_key") or meta.get("image_key")
    return key if isinstance(key, str) and key else None


def _paint_boxes(atoms: Any) -> list[tuple[int, int, int, int]] | None:
    """The (y0, x0, y1, x1) boxes a napari paint event's history atoms changed; None if unknown."""
    boxes = []
    try:
        for atom in atoms:
            key = getattr(atom, "slice_key", None)
            if key is not None:  # napari's masked atom: a bounding box of slices
                ys, xs = key[-2], key[-1]
                boxes.append((ys.start or 0, xs.start or 0, ys.stop, xs.stop))
                continue
            ys, xs = (np.asarray(i) for i in atom[0][-2:])  # (indices, old, new)
            if ys.size:
                boxes.append((int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1))
    except (TypeError, ValueError, IndexError, AttributeError):
        return None
    if any(v is None for box in boxes for v in box):
        return None
    return boxes


class AutosaveController(QObject):
    """Saves changed correction layers on a timer and restores them for reopened images."""

    saved = Signal(int)  # number of layers written
    _key_ready = Signal(object)  # a _KeyJob finished (emitted from its thread)

    def __init__(self, viewer: Any, state: SelfloopState, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__()
        self._viewer = weakref.ref(viewer)
        self.state = state
        self._trackers: dict[str, TileTracker] = {}
        # The proposal record (PROPOSAL, PAINTED objects) last saved for each key.
        self._proposals: dict[str, tuple[Any, Any]] = {}
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
            self._watch(layer)
            if is_source_image(layer):
                self.restore(layer)

    def _project_changed(self, *_: Any) -> None:
        self._trackers.clear()
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
        """Save every changed correction layer; returns how many were written.

        Only tiles found changed are written (see :class:`TileTracker`); ``force`` checks
        every tile and writes each layer's record even when nothing changed.
        """
        viewer = self._viewer()
        if viewer is None:
            self.timer.stop()
            return 0
        if not self.enabled and not force:
            return 0
        written = 0
        store = self.store
        for layer in list(viewer.layers):
            if not is_correction(layer):
                continue
            key = save_key(layer)
            data = layer.data
            if not key or not isinstance(data, np.ndarray) or data.ndim != 2:
                continue
            tracker = self._trackers.get(key)
            if tracker is None or not tracker.fits(data):
                tracker = self._trackers[key] = TileTracker(data.shape, data.dtype)
            checked, changed = tracker.pending(data, None if force else SCAN_BYTES)
            if not changed and not force:
                tracker.commit(checked, changed)
                written += self._save_proposal(key, layer)
                continue
            meta = meta_of(layer)
            extra = {"layer": layer.name}
            if window_of(layer) is not None:
                extra.update(
                    image_key=meta.get("image_key"),
                    window=meta.get("window"),
                    pixel_size_um=meta.get("pixel_size_um"),
                )
            try:
                store.save(
                    key,
                    data,
                    name=source_of(layer) or layer.name,
                    extra=extra,
                    tiles=changed.keys(),
                )
            except (SelfloopError, OSError) as e:
                self._report_failure(e)
                continue
            self._last_error = None
            tracker.commit(checked, changed)
            written += 1
            self._save_proposal(key, layer)
        if written:
            self.last_saved_at = _dt.datetime.now()
            self.saved.emit(written)
        return written

    def _report_failure(self, error: BaseException) -> None:
        message = f"autosave failed: {error_message(error)}"
        if message != self._last_error:  # say it once, not every 30 s
            show_error(message)
            self._last_error = message

    def _save_proposal(self, key: str, layer: Layer) -> int:
        """Save the layer's proposal record when it changed since its last save (1 if
        written): a restored layer then still tells the user's pixels from the proposal's."""
        meta = meta_of(layer)
        current = (meta.get(PROPOSAL), meta.get(PAINTED))
        last = self._proposals.get(key)
        if last is not None and last[0] is current[0] and last[1] is current[1]:
            return 0
        record = proposal_record(layer)
        if record is None:
            return 0
        try:
            self.store.save(proposal_key(key), record, name=layer.name, extra={"proposal_of": key})
        except (SelfloopError, OSError) as e:
            self._report_failure(e)
            return 0
        self._proposals[key] = current
        return 1

    def _restore_proposal(self, key: str, layer: Layer) -> None:
        """Give a restored layer its saved proposal record, if there is one that fits."""
        restored = self.store.load(proposal_key(key))
        if restored is not None and set_proposal_record(layer, restored.labels):
            meta = meta_of(layer)
            self._proposals[key] = (meta.get(PROPOSAL), meta.get(PAINTED))

    def mark_saved(self, key: str, data: np.ndarray) -> None:
        """Record ``data`` as already on disk for ``key`` (after a restore)."""
        data = np.asarray(data)
        self._trackers[key] = TileTracker(data.shape, data.dtype, saved=data)

    def _watch(self, layer: Layer) -> None:
        """Follow a Labels layer's edits, so a save reads and writes only the edited tiles."""
        if isinstance(layer, Labels):
            ref = weakref.ref(layer)
            layer.events.paint.connect(lambda event: self._edited(ref(), event.value))
            layer.events.data.connect(lambda event: self._edited(ref(), None))

    def _edited(self, layer: Layer | None, atoms: Any) -> None:
        if layer is None or not is_correction(layer):
            return
        tracker = self._trackers.get(save_key(layer) or "")
        if tracker is None:
            return  # never saved: its first save writes every tile anyway
        boxes = None if atoms is None else _paint_boxes(atoms)
        if boxes is None:
            tracker.mark()
        for box in boxes or ():
            tracker.mark(box)

    def _on_inserted(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if isinstance(layer, Layer):
            self._watch(layer)
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
                if image.multiscale or _image_bytes(data) > BACKGROUND_HASH_BYTES:
                    self._hash_in_background(image)
                    return None
                key = key_for(image)
            return self._restore_key(viewer, image, data, key)
        except Exception as e:  # an autosave must never break opening an image
            log.warning("could not restore corrections for %s", image.name, exc_info=True)
            show_warning(
                f"Could not restore autosaved corrections for '{image.name}': {error_message(e)}"
            )
            return None

    def _hash_in_background(self, image: Image) -> None:
        if _job_of(image) is not None:
            return
        ref = weakref.ref(self)

        def finished(job: _KeyJob) -> None:  # in the job's thread: hand over to the main one
            me = ref()
            if me is not None:
                with contextlib.suppress(RuntimeError):  # deleted with its viewer
                    me._key_ready.emit(job)

        job = _KeyJob(image, finished)
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
        layer = (
            None if restored is None else self._restore_whole(viewer, image, data, key, restored)
        )
        regions = self._restore_regions(viewer, image, data, key, store)
        if store.set_aside or store.missing:
            names = [p.name for p in store.set_aside + store.missing]
            show_warning(
                f"The autosaved corrections for '{image.name}' were damaged and could not be "
                f"restored (fully); set aside as {', '.join(names)} in {store.folder}"
            )
        return layer if layer is not None else (regions[0] if regions else None)

    def _restore_regions(
        self, viewer: Any, image: Image, data: Any, key: str, store: AutosaveStore
    ) -> list[Layer]:
        """Bring back the saved correction layers of regions of ``image``."""
        height, width = (int(s) for s in data.shape[:2])
        layers = []
        for rkey, meta in list(store.records()):
            window = Window.from_meta(meta.get("window"))
            if meta.get("image_key") != key or window is None or rkey == key:
                continue
            if (
                window.y0 >= height
                or window.x0 >= width
                or find_result(viewer, image.name, "labels", window) is not None
            ):
                continue
            restored = store.load(rkey)
            if restored is None or restored.labels.shape != window.shape:
                continue
            layer = put_result(
                viewer,
                image.name,
                "labels",
                restored.labels,
                like=image,
                window=window,
                extra_meta={
                    "image_key": key,
                    "autosave_key": rkey,
                    "pixel_size_um": meta.get("pixel_size_um"),
                    "restored": restored.meta.get("saved"),
                },
            )
            self.mark_saved(rkey, restored.labels)
            self._restore_proposal(rkey, layer)
            layers.append(layer)
        if layers:
            show_info(f"Restored the corrections of {len(layers)} region(s) of '{image.name}'")
        return layers

    def _restore_whole(
        self, viewer: Any, image: Image, data: Any, key: str, restored: Any
    ) -> Layer | None:
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
        self._restore_proposal(key, layer)
        show_info(
            f"Restored corrections for '{image.name}' (autosaved {restored.meta.get('saved', '?')})"
        )
        return layer


def _image_bytes(data: Any) -> int:
    try:
        return (
            int(np.prod([int(s) for s in data.shape], dtype=np.int64))
            * np.dtype(data.dtype).itemsize
        )
    except (TypeError, ValueError):
        return 0
