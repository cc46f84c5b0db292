"""The ``napari-selfloop`` command line: the core, headless.

Errors in the input end the run with one line on stderr and exit code 2; no traceback. Log
lines and library warnings (tifffile, Pillow, PyTorch) are held back until the work starts,
so a refusal is that one line. Ctrl-C, SIGTERM and SIGHUP end a run (but the GUI's) the same
way: the temporary files being written are removed, one line says so, and the exit code is
128 plus the signal number (130 for Ctrl-C). ``init``, ``pretrain``, ``train`` and
``pseudo-label`` sweep the stale temporaries of ours that killed runs left in the folder they
write to (:func:`~napari_selfloop.core.io.atomic.sweep_stale_temporaries`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence

from .. import __version__
from ..core.errors import SelfloopError
from . import progressbar
from .commands import MODULES, SUMMARIES

log = logging.getLogger("napari_selfloop")

#: Sub-commands that run an event loop until the window is closed: their log lines are shown
#: at once, and SIGTERM / SIGHUP keep their default action (a Python handler would only run,
#: and raise into a Qt callback, when the event loop next calls Python).
GUI_COMMANDS = ("gui",)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every clean-up runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (a KeyboardInterrupt) for a while.

    Only signals whose handler is the default one are taken over (``nohup`` sets SIGHUP to
    ignored: it stays ignored), and only in the main thread. After the first signal, later
    ones are ignored so that the clean-up it started can finish.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if raised:
            return
        raised.append(signum)
        raise Terminated(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) if "\n" in str(text) else str(text)


@contextlib.contextmanager
def _logging(verbose: bool, hold: bool) -> Iterator[progressbar.HeldLog]:
    """Log to stderr, one line per record, warnings included; hold lines until work starts."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    held = progressbar.HeldLog(stream, hold=hold and not verbose)
    root = logging.getLogger()
    level = root.level
    root.addHandler(held)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    shown = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: object = None,
        line: str | None = None,
    ) -> None:
        text = str(message).strip().splitlines()
        logging.getLogger("py.warnings").warning(
            "warning: %s%s", category.__name__, f": {text[0]}" if text else ""
        )

    warnings.showwarning = show
    try:
        with held:
            yield held
    finally:
        warnings.showwarning = shown
        root.removeHandler(held)
        root.setLevel(level)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``napari-selfloop`` parser.

    With ``command`` (a sub-command's name), only that sub-command's module is imported and
    its options defined; the others are listed by name and summary only, so ``--help``,
    ``--version`` and a light command such as ``models`` do not import torch. Without it,
    every sub-command is defined in full.
    """
    parser = _OneLineParser(
        prog="napari-selfloop",
        description="Self-loop uncertainty pseudo-labels (Li et al., MICCAI 2020), headless.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True
    for name, module in MODULES.items():
        if command is None or name == command:
            importlib.import_module(f"{__name__}.{module}").add_parser(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name], add_help=False)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names: its first word that is not an option (the top-level
    options take no values); None when there is none or it is not a sub-command."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in MODULES else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-selfloop`` console script; returns the exit code."""
    try:
        words = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(_command_in(words) or "").parse_args(words)
    except argparse.ArgumentError as e:  # raised instead of exiting by some Pythons
        print(f"napari-selfloop: error: {e} (see --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, --version and usage errors
        return int(e.code or 0)
    prefix = f"napari-selfloop {args.command}"
    gui = args.command in GUI_COMMANDS
    with _logging(args.verbose, hold=not gui) as held:
        try:
            with contextlib.nullcontext() if gui else signals_as_interrupts():
                return int(args.func(args) or 0)
        except SelfloopError as e:
            held.discard()
            print(f"{prefix}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        except OSError as e:
            held.discard()
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            print(f"{prefix}: error: {_one_line(e.strerror or e)}{where}", file=sys.stderr)
            return 2
        except Terminated as e:
            held.pass_through()
            print(f"{prefix}: terminated by {e.name}; nothing partial was written", file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:
            held.pass_through()
            print(f"{prefix}: interrupted; nothing partial was written", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
