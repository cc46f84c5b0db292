"""Per-viewer state shared by the panels: the current model, device and project folder.

Every panel docked in one viewer sees the same :class:`SelfloopState` (from
:func:`get_state`); panels react to its psygnal signals instead of talking to each other.
The state holds no reference to the viewer, so a closed viewer is garbage-collected.
"""

from __future__ import annotations

import datetime as _dt
import os
import weakref
from pathlib import Path
from typing import Any

from psygnal import Signal

from ..core.checkpoint import Checkpoint
from ..core.model import ResUNet

#: Environment variable that overrides the default project folder.
PROJECT_ENV = "NAPARI_SELFLOOP_PROJECT"


def default_project_dir() -> Path:
    """``$NAPARI_SELFLOOP_PROJECT``, else ``~/napari-selfloop``."""
    env = os.environ.get(PROJECT_ENV)
    return Path(env).expanduser() if env else Path.home() / "napari-selfloop"


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
        self.autosave: Any = None  # widgets._autosave.AutosaveController, set on first use

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

    def set_device(self, device: str) -> None:
        if device != self.device:
            self.device = device
            self.device_changed.emit(device)

    def set_project_dir(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        if path != self.project_dir:
            self.project_dir = path
            self.project_changed.emit(path)


_STATES: weakref.WeakKeyDictionary[Any, SelfloopState] = weakref.WeakKeyDictionary()


def get_state(viewer: Any) -> SelfloopState:
    """The state shared by the panels of ``viewer`` (created on first use)."""
    state = _STATES.get(viewer)
    if state is None:
        state = SelfloopState()
        _STATES[viewer] = state
    return state
