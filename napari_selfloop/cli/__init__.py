"""The ``napari-selfloop`` command line: the core, headless.

Errors in the input end the run with one line on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..core.errors import SelfloopError
from . import (
    evaluate_cmd,
    evaluate_jigsaw_cmd,
    gui_cmd,
    init_cmd,
    pretrain_cmd,
    pseudolabel_cmd,
    train_cmd,
)

#: Sub-command modules; each has ``add_parser(subparsers)`` that sets ``func``.
COMMANDS = (init_cmd, pretrain_cmd, pseudolabel_cmd, train_cmd, evaluate_cmd, evaluate_jigsaw_cmd,
            gui_cmd)

log = logging.getLogger("napari_selfloop")


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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except SelfloopError as e:
        print(f"napari-selfloop {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"napari-selfloop {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-selfloop {args.command}: interrupted; nothing partial was written",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
