"""Writing results atomically: temporaries in the target's folder, fsync, ``os.replace``.

:func:`atomic_path`, :func:`write_tiff` and :func:`write_json` write to a temporary file in
the target's directory, fsync it and ``os.replace`` it onto the target, so a crash or a
full disk never leaves a partial file where a good one was (large images are streamed by
:class:`.tiled_tiff.TiledTiffWriter`, with the same temporaries). A temporary file is
named ``.NAME.tmp-XXXXXXXX`` and, where the platform has ``flock``, stays locked while it
is written; :func:`sweep_stale_temporaries` removes the ones a killed run left behind
(unlocked, ours, and older than an hour), never one that a concurrent run is writing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError

__all__ = [
    "STALE_TEMP_AGE",
    "TEMP_NAME",
    "atomic_path",
    "check_output_folder",
    "sweep_stale_temporaries",
    "write_json",
    "write_tiff",
]

logger = logging.getLogger(__name__)


_umask_lock = threading.Lock()
_umask_cache: list[int] = []


def _default_mode() -> int:
    """File mode a newly created file would get (0o666 minus the umask)."""
    with _umask_lock:
        if not _umask_cache:
            current = os.umask(0o022)
            os.umask(current)
            _umask_cache.append(current)
    return 0o666 & ~_umask_cache[0]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        _fsync_path(directory)


def _nearly_full(directory: Path) -> bool:
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return False
    return stats.f_bavail * stats.f_frsize < 2**20


#: Set on an OSError whose message already names the file and says why: not wrapped again.
_SAID = "_napari_selfloop_write_error"


def _final_name(path: Path) -> Path:
    """The file a temporary of ours (``.NAME.tmp-XXXXXXXX``) stands for; others as they are."""
    if TEMP_NAME.match(path.name):
        return path.with_name(path.name[1 : path.name.rindex(".tmp-")])
    return path


def _write_error(path: Path, exc: OSError) -> OSError:
    """An OSError of the same kind whose message names the target path.

    Short writes (numpy's ``tofile``, used by tifffile, raises ``OSError`` without an errno)
    on a nearly full file system are reported as ``ENOSPC``. Call this before removing the
    temporary file, while the space it took is still in use. An error this already made (a
    write nested in another, as export's set of files is) keeps its one reason, naming the
    file that failed, not each file around it; a temporary is named by its final name.
    """
    if getattr(exc, _SAID, False):
        return _said(OSError(exc.errno, exc.strerror))
    code = exc.errno
    if code is None and _nearly_full(path.parent):
        code = errno.ENOSPC
    reason = exc.strerror or str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk or quota is full: free some space or write elsewhere)"
    return _said(OSError(code, f"could not write {_final_name(path)}: {reason}"))


def _said(error: OSError) -> OSError:
    setattr(error, _SAID, True)
    return error


def check_output_folder(out: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse, before any work, a folder path that can be neither made nor written into.

    A symbolic link loop (on the path or anywhere above it), a link that points nowhere, a
    file where a folder is wanted: one-line InputError naming ``option``. A folder that does
    not exist yet (below folders or working links) is fine. Nothing is created.
    """
    out = Path(out)
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{option} {out} goes through a symbolic link that points back to itself (a "
                "link loop): fix or remove the link, or pick another folder"
            ) from None
        if exc.errno == errno.ENOTDIR:
            raise InputError(
                f"{option} {out}: a part of the path is a file, not a folder: pick another folder"
            ) from None
        raise InputError(
            f"{option} {out} cannot be used ({exc.strerror or exc}): pick another folder"
        ) from None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{option} {out} is a file, not a folder: pick a folder")
        return
    for path in (out, *out.parents):
        if os.path.lexists(path) and not os.path.exists(path):
            try:
                target = f" to {os.readlink(path)}"
            except OSError:
                target = ""
            raise InputError(
                f"{option} {out}: {path} is a link{target}, which does not exist: create its "
                "target, remove the link or pick another folder"
            )
        if os.path.exists(path):
            return


#: Our temporary files: ``.NAME.tmp-`` and the 8 characters ``tempfile.mkstemp`` draws.
TEMP_NAME = re.compile(r"^\..+\.tmp-[a-z0-9_]{8}$")
#: Temporaries of ours older than this (seconds) are left-overs of a killed run.
STALE_TEMP_AGE = 3600.0

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, the age alone decides
    fcntl = None  # type: ignore[assignment]


def _lock(fd: int) -> bool:
    """Take an exclusive advisory lock on ``fd`` without waiting; False when it is held."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock: the age alone decides
        return True
    return True


def _new_temp(path: Path) -> Path:
    tmp, fd = _new_locked_temp(path)
    if fd is not None:
        os.close(fd)
    return tmp


def _new_locked_temp(path: Path) -> tuple[Path, int | None]:
    """Create ``.NAME.tmp-XXXXXXXX`` next to ``path``; return it and an open, locked fd.

    The lock (``flock``, held as long as the descriptor is open) tells
    :func:`sweep_stale_temporaries` in any process that the file is being written. Without
    ``flock`` (Windows, where an open file cannot be renamed either) the file is closed at
    once and the descriptor is None.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    if fcntl is None:
        os.close(fd)
        return Path(tmp), None
    _lock(fd)
    return Path(tmp), fd


def sweep_stale_temporaries(
    folder: str | os.PathLike[str], min_age: float = STALE_TEMP_AGE
) -> list[Path]:
    """Remove temporary files a killed run of ours left in ``folder``; return those removed.

    Only regular files (not links) named like ours (``.NAME.tmp-XXXXXXXX``, see
    :func:`atomic_path`), owned by this user, not modified for ``min_age`` seconds and not
    locked by a writer (a run still writing holds a lock on its temporaries) are removed, so
    a concurrent run's files are never touched. Anything that cannot be looked at or removed
    is left as it is; this never raises.

    Parameters
    ----------
    folder
        The folder to sweep (not its sub-folders).
    min_age
        Seconds since the last modification after which a temporary counts as stale.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    uid = os.getuid() if hasattr(os, "getuid") else None
    for name in names:
        if not TEMP_NAME.match(name):
            continue
        path = Path(folder) / name
        try:
            st = os.lstat(path)
            if (
                not stat.S_ISREG(st.st_mode)
                or now - st.st_mtime < min_age
                or (uid is not None and st.st_uid != uid)
            ):
                continue
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            same = os.fstat(fd).st_ino == st.st_ino
            if same and _lock(fd):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed:
        logger.info(
            "removed %d stale temporary file(s) left by an interrupted run in %s",
            len(removed),
            folder,
        )
    return removed


def _install(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, give it the target's permissions and rename it onto ``path``."""
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = _default_mode()
    os.chmod(tmp, mode)
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success, move it onto ``path`` atomically.

    The temporary file is named ``.NAME.tmp-<random>`` in the same directory (so the final rename
    never crosses file systems). When the ``with`` block finishes, the file is fsynced and
    ``os.replace``-d onto ``path``; on any exception it is removed and an existing file at
    ``path`` is left untouched.

    Parameters
    ----------
    path
        The final destination.

    Yields
    ------
    pathlib.Path
        The temporary path to write to (it exists, empty, when the block starts).

    Raises
    ------
    OSError
        When writing, syncing or renaming fails (a full disk, a read-only folder ...); the
        message names ``path``. Other exceptions from the block propagate unchanged.
    """
    path = Path(path)
    tmp, fd = _new_locked_temp(path)
    try:
        yield tmp
        _install(tmp, path)
    except OSError as exc:
        error = _write_error(path, exc)
        _remove_quietly(tmp)
        raise error from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_tiff(path: str | os.PathLike[str], array: npt.ArrayLike, **kwargs: Any) -> Path:
    """Write ``array`` to a TIFF file atomically.

    Parameters
    ----------
    path
        Destination file.
    array
        The image (2D, or 3D with channels last).
    **kwargs
        Passed to ``tifffile.imwrite`` (e.g. ``compression="zlib"``, ``photometric=...``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import tifffile

    data = np.asarray(array)
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8) atomically.

    The object is serialised before anything is written, so an unserialisable value leaves no
    file behind.

    Parameters
    ----------
    path
        Destination file.
    obj
        Any JSON-serialisable value.
    indent
        Indentation of the output.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
