"""The ``napari-selfloop`` command line: the core, headless.

Errors in the input end the run with one line on stderr and exit code 2; no traceback. Log
lines and library warnings (tifffile, Pillow, PyTorch) are held back until the work starts,
so a refusal is that one line. Ctrl-C, SIGTERM and SIGHUP end a run (but the GUI's) the same
way: the temporary files being written are removed, one line says so, and the exit code is
128 plus the signal number (130 for Ctrl-C). ``init``, ``pretrain``, ``train`` and
``pseudo-label`` sweep the stale temporaries of ours that killed runs left in the folder they
write to (:func:`~napari_selfloop.core.atomic.sweep_stale_temporaries`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence

from .. import __version__
from ..core.errors import SelfloopError
from . import (
    batch_cmd,
    calibrate_cmd,
    evaluate_cmd,
    evaluate_jigsaw_cmd,
    export_cmd,
    gui_cmd,
    init_cmd,
    models_cmd,
    pretrain_cmd,
    progressbar,
    pseudolabel_cmd,
    train_cmd,
)

#: Sub-command modules; each has ``add_parser(subparsers)`` that sets ``func``.
COMMANDS = (
    init_cmd,
    pretrain_cmd,
    pseudolabel_cmd,
    batch_cmd,
    train_cmd,
    calibrate_cmd,
    evaluate_cmd,
    evaluate_jigsaw_cmd,
    export_cmd,
    models_cmd,
    gui_cmd,
)

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


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="napari-selfloop",
        description="Self-loop uncertainty pseudo-labels (Li et al., MICCAI 2020), headless.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-selfloop`` console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
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
