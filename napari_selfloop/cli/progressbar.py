"""Drive a core generator to completion with a terminal progress bar."""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any, TypeVar

from ..core.progress import Progress

T = TypeVar("T")


def drive(gen: Generator[Progress, None, T], desc: str, quiet: bool = False) -> T:
    """Exhaust ``gen``, showing its progress on stderr; return its return value.

    The bar appears with the first event (so an early error stays one line) and only
    when stderr is a terminal.
    """
    bar: Any = None
    show = not quiet and sys.stderr.isatty()
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
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
    finally:
        gen.close()
        if bar is not None:
            bar.close()
