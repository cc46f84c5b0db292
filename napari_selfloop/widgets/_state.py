"""Per-viewer state shared by the panels: the current model, device and project folder.

Every panel docked in one viewer sees the same :class:`SelfloopState` (from
:func:`get_state`); panels react to its psygnal signals instead of talking to each other.
The state holds no reference to the viewer, so a closed viewer is garbage-collected.

The state also keeps the viewer's autosave once a panel has started it
(:func:`._autosave.start_autosave`); this module does not know how autosave works (it only
needs :class:`Autosave`'s two members), so it imports nothing of it.
"""

from __future__ import annotations

import datetime as _dt
import os
import weakref
from pathlib import Path
from typing import Any, Protocol

from psygnal import Signal

from ..core.engine.model import ResUNet
from ..core.store.checkpoint import Checkpoint
from ..core.store.project import is_done, mark_done

#: Environment variable that overrides the default project folder.
PROJECT_ENV = "NAPARI_SELFLOOP_PROJECT"


def default_project_dir() -> Path:
    """``$NAPARI_SELFLOOP_PROJECT``, else ``~/napari-selfloop``."""
    env = os.environ.get(PROJECT_ENV)
    return Path(env).expanduser() if env else Path.home() / "napari-selfloop"


class Autosave(Protocol):
    """What the state knows of a viewer's autosave (:class:`._autosave.AutosaveController`)."""

    enabled: bool

    def save_now(self, force: bool = False) -> int: ...


class SelfloopState:
    """What the panels of one viewer share.

    Signals
    -------
    model_changed(Checkpoint | None)
        A checkpoint was loaded, a new model started, or fine-tuning made a new version.
    ensemble_changed(list)
        Extra checkpoints for the ``ensemble`` method changed.
    device_changed(str)
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    project_changed(Path)
        The project folder (autosave, exports, new checkpoints) changed.
    labels_updated(str)
        A correction Labels layer (by name) got new content from a run.
    done_changed(str)
        A correction layer (by name) was marked done or not done.
    """

    model_changed = Signal(object)
    ensemble_changed = Signal(object)
    device_changed = Signal(str)
    project_changed = Signal(object)
    labels_updated = Signal(str)
    done_changed = Signal(str)

    def __init__(self) -> None:
        self.checkpoint: Checkpoint | None = None
        self.ensemble: list[Checkpoint] = []
        self.device: str = "auto"
        self.project_dir: Path = default_project_dir()
        self._autosave: Autosave | None = None

    @property
    def autosave(self) -> Autosave:
        """The viewer's autosave (started by the first panel: ``_autosave.start_autosave``)."""
        if self._autosave is None:
            raise RuntimeError("autosave is not running: start it with start_autosave(viewer)")
        return self._autosave

    @property
    def autosave_started(self) -> bool:
        return self._autosave is not None

    def attach_autosave(self, autosave: Autosave) -> None:
        """Keep the viewer's autosave (once: a second one is refused)."""
        if self._autosave is not None:
            raise RuntimeError("this viewer's autosave is already running")
        self._autosave = autosave

    @property
    def model(self) -> ResUNet | None:
        return None if self.checkpoint is None else self.checkpoint.model

    def set_checkpoint(self, ckpt: Checkpoint | None) -> None:
        self.checkpoint = ckpt
        self.model_changed.emit(ckpt)

    def new_checkpoint(self, model: ResUNet, note: str = "new model") -> Checkpoint:
        """Make an unsaved ``model`` current (a fresh initialisation)."""
        meta = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "note": note,
            "data": [],
            "metrics": {},
        }
        ckpt = Checkpoint(model=model.eval(), meta=meta, path=None)
        self.set_checkpoint(ckpt)
        return ckpt

    def set_done(self, layer: Any, on: bool) -> None:
        """Mark a correction layer done (ready for training and export) or not; the one writer.

        The flag is data in the layer's metadata (:func:`~napari_selfloop.core.store.project.
        mark_done`); ``done_changed`` is emitted whenever this is called, so every panel
        shows the same state.
        """
        mark_done(_meta(layer), on)
        self.done_changed.emit(layer.name)

    @staticmethod
    def is_done(layer: Any) -> bool:
        """Whether a correction layer is marked done."""
        return is_done(_meta(layer))

    def set_device(self, device: str) -> None:
        if device != self.device:
            self.device = device
            self.device_changed.emit(device)

    def set_project_dir(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        if path != self.project_dir:
            self.project_dir = path
            self.project_changed.emit(path)


def _meta(layer: Any) -> dict[str, Any]:
    from ._layers import meta_of  # _layers needs napari's layer classes; keep this module light

    return meta_of(layer)


_STATES: weakref.WeakKeyDictionary[Any, SelfloopState] = weakref.WeakKeyDictionary()


def get_state(viewer: Any) -> SelfloopState:
    """The state shared by the panels of ``viewer`` (created on first use; starts nothing:
    the panels start the viewer's autosave with :func:`._autosave.start_autosave`)."""
    state = _STATES.get(viewer)
    if state is None:
        state = SelfloopState()
        _STATES[viewer] = state
    return state
