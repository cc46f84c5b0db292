"""Versioned checkpoint names shared by the panels that write new models.

Fine-tuning and jigsaw pre-training both write ``BASE_vN.pt`` beside the current checkpoint
(or ``PROJECT/checkpoints/model_vN.pt`` for a model never saved) and make it current. A run
*reserves* its file name when it starts, so two runs going at once (Fine-tune and
pre-training in two panels) never pick the same name and overwrite each other's result.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

_VERSION = re.compile(r"^(?P<base>.*?)(?:_v(?P<n>\d+))?$")
_RESERVED: set[Path] = set()
_LOCK = threading.RLock()


def next_version_path(current: Path | None, project: Path) -> Path:
    """The next free ``BASE_vN.pt`` beside ``current`` (or ``PROJECT/checkpoints/model_vN.pt``).

    Names reserved by runs still in progress (:func:`reserve_version`) count as taken.
    """
    if current is None:
        folder, base = Path(project) / "checkpoints", "model"
    else:
        folder = current.parent
        base = _VERSION.match(current.stem).group("base") or "model"
    taken = [0]
    existing = list(folder.glob(f"{base}_v*.pt")) if folder.is_dir() else []
    with _LOCK:
        existing += [p for p in _RESERVED if p.parent == folder]
    for p in existing:
        m = _VERSION.match(p.stem)
        if m and m.group("n") and m.group("base") == base and p.suffix == ".pt":
            taken.append(int(m.group("n")))
    if current is not None:
        m = _VERSION.match(current.stem)
        if m and m.group("n"):
            taken.append(int(m.group("n")))
    return folder / f"{base}_v{max(taken) + 1}.pt"


def reserve_version(current: Path | None, project: Path) -> Path:
    """:func:`next_version_path`, held for one run (create its folder; :func:`release` it after)."""
    with _LOCK:
        path = next_version_path(current, project)
        _RESERVED.add(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        release(path)
        raise
    return path


def release(path: Path | None) -> None:
    """End a reservation made by :func:`reserve_version` (the file, if written, stays taken)."""
    if path is not None:
        with _LOCK:
            _RESERVED.discard(path)
