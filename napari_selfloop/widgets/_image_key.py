"""The content key of an image layer: what its corrections are saved and found under.

The key covers every pixel (:func:`~napari_selfloop.core.store.autosave.image_key`; of a
pyramid, a sample: :func:`~napari_selfloop.core.store.autosave.slide_key`) and is cached in
the layer's metadata. A large image's key is computed in a background thread
(:func:`hash_in_background`, started by the autosave when the image opens); whoever needs
the key meanwhile (:func:`key_for`) waits for that instead of reading the image twice.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from napari.layers import Image

from ..core.store.autosave import image_key, slide_key
from ._layers import image_data
from ._slide import levels_of


def content_key(image: Image, cancelled: Callable[[], bool] | None = None) -> str:
    """The content key of an image layer: every pixel, or of a pyramid a sample (slide_key)."""
    if image.multiscale:
        return slide_key(levels_of(image), cancelled)
    return image_key(image_data(image), cancelled)


class KeyJob:
    """The content key of one image layer, being computed in a background thread."""

    def __init__(self, image: Image, on_done: Callable[[KeyJob], Any]) -> None:
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


_jobs: dict[int, KeyJob] = {}
_jobs_lock = threading.Lock()


def job_of(image: Any) -> KeyJob | None:
    """The background job computing ``image``'s key, if one is registered."""
    with _jobs_lock:
        job = _jobs.get(id(image))
    return job if job is not None and job.layer() is image else None


def hash_in_background(image: Image, on_done: Callable[[KeyJob], Any]) -> KeyJob | None:
    """Start computing ``image``'s key in a thread that calls ``on_done(job)`` (in that
    thread) when it ends; None, and nothing started, when a job for it is running."""
    if job_of(image) is not None:
        return None
    job = KeyJob(image, on_done)
    with _jobs_lock:
        _jobs[id(image)] = job
    job.thread.start()
    return job


def forget_job(job: KeyJob) -> None:
    """Drop a finished job from the register (if it is still the one of its image)."""
    with _jobs_lock:
        if _jobs.get(job.layer_id) is job:
            del _jobs[job.layer_id]


def cached_key(image: Image) -> str | None:
    """``image``'s key if it is known (cached in its metadata), else None."""
    meta = image.metadata.setdefault("selfloop_image", {})
    key = meta.get("key")
    return key if isinstance(key, str) else None


def key_for(image: Image) -> str:
    """The content key of an image layer (cached in its metadata).

    If it is being computed in the background, this waits for that instead of reading the
    image a second time.
    """
    key = cached_key(image)
    if key is None:
        job = job_of(image)
        key = job.result() if job is not None else content_key(image)
        image.metadata["selfloop_image"]["key"] = key
    return key
