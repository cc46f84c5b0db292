"""What a project is made of, as data: image folders, versioned checkpoints, the done set.

Pure logic shared by the CLI and the plugin's panels (and tested without a window):

- :data:`IMAGE_SUFFIXES`, :func:`image_files`: the image files a folder contributes;
  :func:`list_images` (the CLI: by stem, refusing clashes and empty folders) and
  :func:`folder_images` (Fine-tune: unlabelled images opened lazily, unreadable ones
  skipped with a warning).
- :func:`next_version_path`, :func:`reserve_version`, :func:`release`: versioned
  checkpoint names. Fine-tuning and jigsaw pre-training both write ``BASE_vN.pt`` beside
  the current checkpoint (or ``PROJECT/checkpoints/model_vN.pt`` for a model never saved)
  and make it current. A run *reserves* its file name when it starts, so two runs going at
  once never pick the same name and overwrite each other's result.
- :data:`DONE_KEY`, :func:`is_done`, :func:`mark_done`: the "done" flag of a correction
  (ready for training and export), kept in its metadata mapping.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ..engine.datasets import TrainItem
from ..errors import InputError, SelfloopError
from ..io.images import check_image, open_image

__all__ = [
    "DONE_KEY",
    "IMAGE_SUFFIXES",
    "folder_images",
    "image_files",
    "is_done",
    "list_images",
    "mark_done",
    "next_version_path",
    "release",
    "reserve_version",
]

log = logging.getLogger(__name__)

#: Suffixes of the image files taken from a folder (by the CLI, ``batch`` and Fine-tune).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

#: Metadata key of the "done" flag of a correction.
DONE_KEY = "done"


# -- image folders -------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (:data:`IMAGE_SUFFIXES`, not hidden), sorted by name."""
    return [
        path
        for path in sorted(Path(folder).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and path.is_file()
    ]


def list_images(folder: Path, what: str) -> dict[str, Path]:
    """Image files of a folder by stem (refusing two files with the same stem and an empty folder).

    ``what`` names the folder in messages (``--images``).
    """
    if not folder.is_dir():
        try:
            folder.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(
                    f"{what} folder {folder} is a symbolic link loop (it ends up "
                    "pointing to itself): fix or remove the link"
                ) from exc
        raise InputError(f"{what} folder {folder} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in image_files(folder):
        if path.stem in found:
            raise InputError(
                f"{path.name} and {found[path.stem].name} in {folder} have the same stem: keep one"
            )
        found[path.stem] = path
    if not found:
        raise InputError(f"no PNG, JPEG or TIFF files in {what} folder {folder}")
    return found


def paired_masks(images: dict[str, Path], folder: Path, what: str = "--masks") -> dict[str, Path]:
    """Mask files of ``folder`` by the stem of the image they belong to: ``STEM.*``, or
    ``STEM_mask.*`` (the name export gives them); masks of no image are left out."""
    masks: dict[str, Path] = {}
    for stem, path in list_images(folder, what).items():
        key = stem[:-5] if stem.endswith("_mask") and stem[:-5] in images else stem
        if key in images:
            masks[key] = path
    return masks


def folder_images(folder: Path) -> list[TrainItem]:
    """Unlabelled images of a folder, opened lazily; unreadable ones are skipped with a warning."""
    if not folder.is_dir():
        raise InputError(f"unlabelled folder {folder} does not exist")
    items = []
    for path in image_files(folder):
        try:
            image = open_image(path)
            check_image(image)
        except (SelfloopError, OSError) as e:
            log.warning("skipping %s: %s", path.name, e)
            continue
        items.append(TrainItem(name=path.name, image=image))
    return items


# -- versioned checkpoints -----------------------------------------------------------------

_VERSION = re.compile(r"^(?P<base>.*?)(?:_v(?P<n>\d+))?$")
_RESERVED: set[Path] = set()
_LOCK = threading.RLock()


def versions_folder(current: Path, project: Path) -> Path:
    """Where the versions of checkpoint ``current`` go: beside it, unless it is a bundled
    model (inside the installed package, never written to) or its folder is not writable;
    then ``PROJECT/checkpoints/``."""
    from .bundled import MODELS_DIR

    folder = Path(current).parent
    try:
        bundled = folder.resolve() == MODELS_DIR.resolve()
    except OSError:
        bundled = False
    if bundled or (folder.is_dir() and not os.access(folder, os.W_OK)):
        return Path(project) / "checkpoints"
    return folder


def next_version_path(current: Path | None, project: Path) -> Path:
    """The next free ``BASE_vN.pt`` beside ``current`` (or ``PROJECT/checkpoints/model_vN.pt``;
    a bundled model's versions ``PROJECT/checkpoints/NAME_vN.pt``, :func:`versions_folder`).

    Names reserved by runs still in progress (:func:`reserve_version`) count as taken.
    """
    if current is None:
        folder, base = Path(project) / "checkpoints", "model"
    else:
        folder = versions_folder(current, project)
        match = _VERSION.match(current.stem)
        if match is None:  # only a line break in the name escapes the pattern
            raise InputError(f"{current.name!r} is not a usable checkpoint name: rename it")
        base = match.group("base") or "model"
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


# -- the done set --------------------------------------------------------------------------


def is_done(meta: Mapping[str, Any]) -> bool:
    """Whether the correction with this metadata is marked done."""
    return bool(meta.get(DONE_KEY))


def mark_done(meta: MutableMapping[str, Any], on: bool) -> bool:
    """Set the done flag in ``meta``; return whether it changed."""
    before = is_done(meta)
    meta[DONE_KEY] = bool(on)
    return before != bool(on)
