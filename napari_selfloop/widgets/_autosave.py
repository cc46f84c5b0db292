"""Autosave of correction layers while the user works, and restore on reopening an image.

One :class:`AutosaveController` per viewer, started by the panels (:func:`start_autosave`)
and kept by the viewer's state (:attr:`._state.SelfloopState.autosave`). Every
``INTERVAL_MS`` it saves each correction Labels layer whose content changed since its last
save to ``PROJECT/autosave/`` (via :class:`napari_selfloop.core.store.autosave.AutosaveStore`,
atomically), so a crash loses at most that interval of work. Only what changed is read and
written: a :class:`~napari_selfloop.core.store.dirty_tiles.TileTracker` per layer follows napari's
paint events and re-checks a bounded number of further tiles per save, and large labels
are stored as tiles of which only the changed ones are rewritten. The correction layers of
regions of a slide are saved each on its own (keyed by the slide and the region).

When an image layer is added whose pixels match saved corrections, they come back as its
correction layer (and the regions saved for it as theirs). The match is on a hash of every
pixel (of a pyramid: :func:`~napari_selfloop.core.store.autosave.slide_key`), computed in a
background thread for large images. A damaged save is set aside with a warning; restoring
never stops an image from opening or a panel from docking.

Two windows on one image and project never overwrite each other's saves (see
``docs/autosave.md``): the first window to open or save an image claims its key
(:meth:`~napari_selfloop.core.store.autosave.AutosaveStore.claim`); a second one is told, in a
notification, that the image is open elsewhere, and saves its corrections under a key of
its own session. When the image is opened again, the saves of windows that are gone come
back: as the correction layer if there is none, else as a layer of their own
(``IMAGE [corrections] from another window (...)``), kept saved until the user deletes it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import socket
import weakref
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.corrections.nuclei import next_id
from ..core.errors import SelfloopError
from ..core.io.windows import Window
from ..core.store.autosave import (
    AutosaveStore,
    Claim,
    new_session,
    proposal_key,
    session_key,
)
from ..core.store.dirty_tiles import SCAN_BYTES, TileTracker
from ._area import correction_record
from ._image_key import KeyJob, cached_key, forget_job, hash_in_background, job_of, key_for
from ._layers import (
    CORRECTION_OPACITY,
    PAINTED,
    PROPOSAL,
    correction_colormap,
    find_result,
    image_data,
    is_correction,
    is_source_image,
    meta_of,
    proposal_record,
    put_result,
    result_name,
    set_proposal_record,
    source_of,
    window_of,
)
from ._runner import error_message
from ._slide import placement
from ._state import SelfloopState, get_state

log = logging.getLogger(__name__)

#: Save every 30 s: a crash loses at most half a minute of corrections.
INTERVAL_MS = 30_000


#: Images of more bytes than this are hashed in a background thread when opened.
BACKGROUND_HASH_BYTES = 64 * 1024 * 1024
#: Metadata key of a layer holding another window's corrections (see the module's doc).
OTHER_WINDOW = "selfloop_other_window"
#: Fields of a save's record that the store writes itself (not copied when a save moves).
_RECORD_FIELDS = ("key", "name", "shape", "dtype", "saved", "format", "tile", "tiles")


def save_key(layer: Layer) -> str | None:
    """The autosave key of a correction layer: its region's, else its image's."""
    meta = meta_of(layer)
    key = meta.get("autosave_key") or meta.get("image_key")
    return key if isinstance(key, str) and key else None


def other_window_of(layer: Layer) -> dict[str, Any] | None:
    """The record of a layer that holds another window's corrections (None for others)."""
    meta = layer.metadata.get(OTHER_WINDOW) if isinstance(layer.metadata, dict) else None
    return meta if isinstance(meta, dict) and isinstance(meta.get("key"), str) else None


def _holder_text(holder: dict[str, Any]) -> str:
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int):
        return "another window"
    if pid == os.getpid():
        return "another window of this napari"
    if isinstance(host, str) and host and host != socket.gethostname():
        return f"another napari (process {pid} on {host})"
    return f"another napari (process {pid})"


def _window_open(viewer: Any) -> bool:
    """Whether ``viewer``'s window is still open (napari's close removes it after the layers)."""
    window = getattr(viewer, "window", None)
    return window is not None and hasattr(window, "_qt_window")


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


def start_autosave(viewer: Any) -> AutosaveController:
    """Start autosaving ``viewer``'s corrections (once per viewer: later calls return the
    running one). Each panel calls this when it is made; it restores the corrections of
    the images already open."""
    state = get_state(viewer)
    if not state.autosave_started:
        state.attach_autosave(AutosaveController(viewer, state))
    controller = state.autosave
    assert isinstance(controller, AutosaveController)
    return controller


class AutosaveController(QObject):
    """Saves changed correction layers on a timer and restores them for reopened images."""

    saved = Signal(int)  # number of layers written
    _key_ready = Signal(object)  # a KeyJob finished (emitted from its thread)

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
        #: This window's session: its saves of keys another window holds go under
        #: ``session_key(key, session)``.
        self.session = new_session()
        self._claims: dict[str, Claim] = {}
        self._redirect: dict[str, str] = {}  # key held elsewhere -> this session's key
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
        self.release_claims()
        self._redirect.clear()
        viewer = self._viewer()
        for layer in list(viewer.layers) if viewer is not None else []:
            if is_source_image(layer):
                self.restore(layer)

    @property
    def store(self) -> AutosaveStore:
        return AutosaveStore(self.state.project_dir)

    def release_claims(self, keep: set[str] | None = None) -> None:
        """Let other windows claim the keys this one holds (all but ``keep``)."""
        for key in list(self._claims):
            if keep is None or key not in keep:
                self._claims.pop(key).release()

    def target(self, key: str, name: str = "") -> str:
        """The key this window saves the corrections of ``key`` under.

        ``key`` itself when this window holds it (claimed now if free); when another live
        window holds it, this window's own :func:`session_key` for it from then on (the
        user is told once, in a notification naming ``name``), so neither window's saves
        replace the other's. A key that cannot be claimed (a read-only project) is used as
        it is; saving there fails and says so.
        """
        if key in self._redirect:
            return self._redirect[key]
        if key in self._claims:
            return key
        store = self.store
        try:
            claim = store.claim(key, self.session)
        except (OSError, SelfloopError) as e:
            log.debug("could not claim autosave %s: %s", key, e)
            return key
        if claim is not None:
            self._claims[key] = claim
            return key
        own = session_key(key, self.session)
        with contextlib.suppress(OSError, SelfloopError):
            mine = store.claim(own, self.session)
            if mine is not None:
                self._claims[own] = mine
        self._redirect[key] = own
        what = f"'{name}'" if name else "This image"
        show_warning(
            f"{what} is open in {_holder_text(store.claimed_by(key))} with the same project "
            f"folder ({self.state.project_dir}): the corrections made in this window are "
            "autosaved separately, never over that window's, and offered when the image is "
            "opened again"
        )
        return own

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
            self.release_claims()
            return 0
        if not self.enabled and not force:
            return 0
        written = 0
        store = self.store
        self._release_unused(viewer)
        for layer in list(viewer.layers):
            other = other_window_of(layer) if isinstance(layer, Labels) else None
            if not is_correction(layer) and other is None:
                continue
            key = other["key"] if other is not None else save_key(layer)
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
            if other is not None:
                target, extra = key, dict(other.get("record") or {})
                name = str(other.get("name") or layer.name)
            else:
                target, extra = self._save_record(layer, key)
                name = source_of(layer) or layer.name
            try:
                store.save(target, data, name=name, extra=extra, tiles=changed.keys())
            except (SelfloopError, OSError) as e:
                self._report_failure(e)
                continue
            self._last_error = None
            tracker.commit(checked, changed)
            written += 1
            if other is None:
                self._save_proposal(key, layer)
        if written:
            self.last_saved_at = _dt.datetime.now()
            self.saved.emit(written)
        return written

    def _save_record(self, layer: Layer, key: str) -> tuple[str, dict[str, Any]]:
        """The key a correction layer is saved under now, and the fields of its record."""
        meta = meta_of(layer)
        extra: dict[str, Any] = {"layer": layer.name}
        if window_of(layer) is not None:
            extra.update(
                image_key=meta.get("image_key"),
                window=meta.get("window"),
                pixel_size_um=meta.get("pixel_size_um"),
            )
        target = self.target(key, source_of(layer) or layer.name)
        if target != key:
            extra.update(session_of=key, session=self.session)
        return target, extra

    def _release_unused(self, viewer: Any) -> None:
        """Release the claims of keys no layer of the viewer uses any more."""
        used: set[str] = set()
        for layer in viewer.layers:
            other = other_window_of(layer) if isinstance(layer, Labels) else None
            key = (
                other["key"]
                if other is not None
                else save_key(layer)
                if is_correction(layer)
                else cached_key(layer)
                if is_source_image(layer)
                else None
            )
            if key:
                used.update((key, self._redirect.get(key, key)))
        self.release_claims(keep=used)

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
        target = self._redirect.get(key, key)
        try:
            self.store.save(
                proposal_key(target), record, name=layer.name, extra={"proposal_of": target}
            )
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
            key = cached_key(image)
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
        if job_of(image) is not None:
            return
        ref = weakref.ref(self)

        def finished(job: KeyJob) -> None:  # in the job's thread: hand over to the main one
            me = ref()
            if me is not None:
                with contextlib.suppress(RuntimeError):  # deleted with its viewer
                    me._key_ready.emit(job)

        hash_in_background(image, finished)

    def _on_removed(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        job = job_of(layer)
        if job is not None:
            job.cancelled = True  # stop reading an image that is gone
        other = other_window_of(layer) if isinstance(layer, Labels) else None
        if other is not None:
            # Closing the viewer removes every layer too: decide once the event loop runs
            # again, when a closing window is gone (then the save is kept).
            ref, me = weakref.ref(layer), weakref.ref(self)
            QTimer.singleShot(0, lambda: (c := me()) is not None and c._discard(ref(), other))
        viewer = self._viewer()
        if viewer is not None:  # a closed window (all layers removed) holds no key any more
            self._release_unused(viewer)

    def _discard(self, layer: Layer | None, other: dict[str, Any]) -> None:
        """Delete the save of another window's corrections whose layer the user deleted."""
        viewer = self._viewer()
        if (
            viewer is None
            or not _window_open(viewer)
            or (layer is not None and layer in viewer.layers)
        ):
            return
        skey = other["key"]
        store = self.store
        claim = self._claims.pop(skey, None)
        try:
            if claim is None:
                claim = store.claim(skey, self.session)
            if claim is None:
                return  # another window has taken these corrections up meanwhile
            store.delete(skey)
            store.delete(proposal_key(skey))
        except (OSError, SelfloopError) as e:
            show_warning(f"Could not discard the other window's corrections: {error_message(e)}")
            return
        finally:
            if claim is not None:
                claim.release()
        self._trackers.pop(skey, None)
        show_info(f"Discarded the corrections another window had saved for '{other.get('name')}'")

    def _key_done(self, job: KeyJob) -> None:
        forget_job(job)
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
        if store.project.is_dir():
            self.target(key, image.name)  # claim the image now; a second window is told
        restored = store.load(key)
        layer = (
            None if restored is None else self._restore_whole(viewer, image, data, key, restored)
        )
        regions = self._restore_regions(viewer, image, data, key, store)
        others = self._restore_sessions(viewer, image, data, key, store)
        if layer is None:
            layer = next((o for o in others if is_correction(o)), None)
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
            if (
                meta.get("image_key") != key
                or window is None
                or rkey == key
                or meta.get("session_of") is not None
            ):
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
                extra_meta=correction_record(
                    key,
                    window,
                    autosave_key=rkey,
                    pixel_size_um=meta.get("pixel_size_um"),
                    restored=restored.meta.get("saved"),
                ),
            )
            self.mark_saved(rkey, restored.labels)
            self._restore_proposal(rkey, layer)
            layers.append(layer)
        if layers:
            show_info(f"Restored the corrections of {len(layers)} region(s) of '{image.name}'")
        return layers

    def _restore_sessions(
        self, viewer: Any, image: Image, data: Any, key: str, store: AutosaveStore
    ) -> list[Layer]:
        """Bring back what windows that are gone saved of ``image`` under their sessions.

        Only a window that holds the image's (or region's) own key does this. A session
        save whose image or region has no correction layer here becomes that layer (moved
        to the key of the image or region); otherwise it comes back as a layer of its own,
        which this window then keeps saved (under the session key) until the user deletes it.
        """
        height, width = (int(s) for s in data.shape[:2])
        layers: list[Layer] = []
        for skey, meta in list(store.records()):
            of = meta.get("session_of")
            if (
                not isinstance(of, str)
                or skey in self._claims
                or meta.get("session") == self.session
            ):
                continue
            window = Window.from_meta(meta.get("window"))
            if window is None and of != key:
                continue
            if window is not None and (
                meta.get("image_key") != key or window.y0 >= height or window.x0 >= width
            ):
                continue
            if self.target(of, image.name) != of:
                continue  # another live window holds the image: it offers these
            claim = store.claim(skey, self.session)
            if claim is None:
                continue  # its window is still open
            restored = store.load(skey)
            want = window.shape if window is not None else (height, width)
            if restored is None or restored.labels.shape != want:
                claim.release()
                continue
            layer = self._restore_session(viewer, image, key, of, skey, window, restored, claim)
            if layer is not None:
                layers.append(layer)
        return layers

    def _restore_session(
        self,
        viewer: Any,
        image: Image,
        key: str,
        of: str,
        skey: str,
        window: Window | None,
        restored: Any,
        claim: Claim,
    ) -> Layer | None:
        store = self.store
        saved = restored.meta.get("saved", "?")
        record = {
            k: v
            for k, v in restored.meta.items()
            if k not in _RECORD_FIELDS and k not in ("session_of", "session")
        }
        main = find_result(viewer, image.name, "labels", window)
        if main is None:  # nothing of this image here: the other window's work is it
            store.save(of, restored.labels, name=image.name, extra=record)
            proposal = store.load(proposal_key(skey))
            if proposal is not None:
                store.save(
                    proposal_key(of), proposal.labels, name=image.name, extra={"proposal_of": of}
                )
            store.delete(skey)
            store.delete(proposal_key(skey))
            claim.release()
            layer = put_result(
                viewer,
                image.name,
                "labels",
                restored.labels,
                like=image,
                window=window,
                extra_meta=correction_record(
                    key,
                    window,
                    autosave_key=of,
                    pixel_size_um=restored.meta.get("pixel_size_um"),
                    restored=saved,
                ),
            )
            self.mark_saved(of, restored.labels)
            self._restore_proposal(of, layer)
            show_info(
                f"Restored corrections for '{image.name}' that another window autosaved ({saved})"
            )
            return layer
        self._claims[skey] = claim
        name = f"{result_name(image.name, 'labels', window)} from another window ({saved})"
        layer = viewer.add_labels(
            restored.labels,
            name=name,
            colormap=correction_colormap(next_id(restored.labels) - 1),
            opacity=CORRECTION_OPACITY,
            metadata={
                OTHER_WINDOW: {
                    "key": skey,
                    "of": of,
                    "name": image.name,
                    "saved": saved,
                    "record": {**record, "session_of": of, "session": restored.meta.get("session")},
                }
            },
            **placement(image, window),
        )
        self.mark_saved(skey, restored.labels)
        show_warning(
            f"Another window autosaved other corrections for '{image.name}' ({saved}): they are "
            f"in layer '{layer.name}'. Compare them with '{main.name}' and paint what you keep "
            "there; they stay saved until you delete that layer"
        )
        return layer

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
            extra_meta=correction_record(key, restored=restored.meta.get("saved")),
            like=image,
        )
        self.mark_saved(key, restored.labels)
        self._restore_proposal(key, layer)
        show_info(restored_note(image.name, layer.name, restored.meta.get("saved"), self.store))
        return layer


def when(saved: Any) -> str:
    """An autosave's time (UTC ISO text) in the user's local time, minutes only."""
    try:
        return _dt.datetime.fromisoformat(str(saved)).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(saved or "?")


def restored_note(image: str, layer: str, saved: Any, store: Any) -> str:
    """The notification of a restore: what came back, from where, and how to start clean
    (a second ``gui --sample`` brings back the first one's corrections; issue 26)."""
    return (
        f"Restored your corrections of '{image}' from an earlier session (autosaved "
        f"{when(saved)} in {store.folder}). To start clean, delete the layer '{layer}' and "
        "pseudo-label again (the next autosave replaces the old one), or start with another "
        "project folder: napari-selfloop gui --project FOLDER"
    )


def _image_bytes(data: Any) -> int:
    try:
        return (
            int(np.prod([int(s) for s in data.shape], dtype=np.int64))
            * np.dtype(data.dtype).itemsize
        )
    except (TypeError, ValueError):
        return 0
