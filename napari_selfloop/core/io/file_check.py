"""The check at the door of every input file: is it a regular file, can it be read, what kind.

:func:`check_input_file` refuses at once, in one line naming the path, anything that is not an
existing regular file (a folder, a named pipe, a device, a broken link, a link loop), before a
reader opens it and hangs or says something obscure. :func:`read_head` reads a file's first
bytes without ever blocking, and :func:`image_kind` names the format they start (the kind of a
file is told by its first bytes, never by its name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from ..errors import InputError

__all__ = [
    "JPEG_MAGIC",
    "PNG_MAGIC",
    "TIFF_MAGICS",
    "check_input_file",
    "image_kind",
    "read_head",
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF

_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def image_kind(head: bytes) -> str | None:
    """``TIFF``, ``PNG`` or ``JPEG`` for a file starting with ``head``, None for another."""
    if head.startswith(TIFF_MAGICS):
        return "TIFF"
    if head.startswith(PNG_MAGIC):
        return "PNG"
    if head.startswith(JPEG_MAGIC):
        return "JPEG"
    return None


def _not_regular(mode: int, path: Path, what: str) -> InputError | None:
    """The complaint about a file of ``mode`` that is not a regular file (None when it is)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return InputError(f"{path} is a folder, not {what}: pick a file inside it")
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return InputError(
        f"{path} is {kind}, not {what}: save the data to a regular file and pass that"
    )


def _stat_problem(path: Path, exc: OSError) -> InputError:
    """A one-line complaint about a path whose ``os.stat`` failed."""
    code = exc.errno
    if code == errno.ELOOP:
        return InputError(
            f"{path} is a symbolic link loop (it ends up pointing to itself): "
            "fix or remove the link"
        )
    if code == errno.ENOENT:
        with contextlib.suppress(OSError):
            if os.path.islink(path):
                return InputError(
                    f"{path} is a broken symbolic link (to {os.readlink(path)}, "
                    "which does not exist): fix or remove the link"
                )
        return InputError(f"{path} does not exist: check the file name and folder")
    if code == errno.ENOTDIR:
        return InputError(f"{path} does not exist (a folder in the path is a file): check the path")
    return InputError(f"could not read {path}: {exc.strerror or exc}")


def check_input_file(path: str | os.PathLike[str], what: str = "an image file") -> Path:
    """Refuse at once a path that is not an existing regular file, in one line naming it.

    ``os.stat`` is asked before anything opens the file, so a named pipe (FIFO), a socket or
    a device is refused instead of hanging a reader, a symbolic link loop is called one (not
    "does not exist"), and a broken link names its target.

    Parameters
    ----------
    path
        The file to check.
    what
        What the file should be, for the message ("an image file", "a checkpoint file").

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        When the path is missing, a broken link or a link loop, a folder, or not a regular
        file, or cannot be looked at (permissions).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _stat_problem(path, exc) from exc
    problem = _not_regular(mode, path, what)
    if problem is not None:
        raise problem
    return path


def read_head(path: Path, size: int, what: str = "an image file") -> bytes:
    """The first ``size`` bytes of a regular file, never blocking on a FIFO or a device.

    The file is opened without blocking and checked with ``fstat`` on the open descriptor,
    so it cannot be swapped for a pipe between the check and the read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            raise _stat_problem(path, exc) from exc
        raise InputError(f"could not read {path}: {exc.strerror or exc}") from exc
    try:
        problem = _not_regular(os.fstat(fd).st_mode, path, what)
        if problem is not None:
            raise problem
        return os.read(fd, size)
    except OSError as exc:
        raise InputError(f"could not read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
