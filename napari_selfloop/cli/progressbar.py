"""Drive a core generator to completion with a terminal progress bar.

Log lines of a run are held back until its work starts (:class:`HeldLog`): a run refused
while it checks its inputs ends with one line on stderr, not with the info lines and library
warnings that came before the refusal. :func:`drive` tells the held logs that the work has
started when the first progress event arrives.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Generator
from typing import Any, TypeVar

from ..core.progress import Progress, run_to_completion

T = TypeVar("T")

_held: list[HeldLog] = []


class HeldLog(logging.Handler):
    """A logging handler that holds records until :meth:`pass_through`, then passes every record on.

    Parameters
    ----------
    target
        The handler that writes the records (a stream handler on stderr).
    hold
        Whether to hold records at first; False passes them on at once.
    """

    def __init__(self, target: logging.Handler, hold: bool = True) -> None:
        super().__init__()
        self.target = target
        self._records: list[logging.LogRecord] | None = [] if hold else None

    def emit(self, record: logging.LogRecord) -> None:
        if self._records is not None:
            self._records.append(record)
        else:
            self.target.handle(record)

    def pass_through(self) -> None:
        """Write the held records and pass later ones on at once."""
        with self.lock:  # type: ignore[union-attr]
            records, self._records = self._records, None
        for record in records or ():
            self.target.handle(record)

    def discard(self) -> None:
        """Drop the held records (a refused run: its one-line error says it all)."""
        with self.lock:  # type: ignore[union-attr]
            if self._records is not None:
                self._records.clear()

    def __enter__(self) -> HeldLog:
        _held.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _held:
            _held.remove(self)
        self.pass_through()


def work_started() -> None:
    """Release the log lines held by the current run (its checks are over)."""
    for handler in list(_held):
        handler.pass_through()


def drive(gen: Generator[Progress, None, T], desc: str, quiet: bool = False) -> T:
    """Exhaust ``gen``, showing its progress on stderr; return its return value.

    The bar appears with the first event (so an early error stays one line) and only
    when stderr is a terminal. The first event also releases held log lines
    (:func:`work_started`).
    """
    bar: Any = None
    started = False
    show = not quiet and sys.stderr.isatty()

    def show_event(event: Progress) -> None:
        nonlocal bar, started
        if not started:
            started = True
            work_started()
        if show and bar is None:
            from tqdm import tqdm

            bar = tqdm(desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)
        if bar is not None:
            if event.total and bar.total != event.total:
                bar.total = event.total
            bar.n = event.done
            if event.message:
                bar.set_postfix_str(event.message, refresh=False)
            bar.refresh()

    try:
        return run_to_completion(gen, on_progress=show_event)
    finally:
        gen.close()
        if bar is not None:
            bar.close()
