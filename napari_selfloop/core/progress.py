"""Progress events yielded by the core's long-running generators."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """One step of a long job.

    Parameters
    ----------
    done, total
        Steps finished so far and steps in all (``total`` may be 0 when unknown).
    message
        A short human-readable description of the current stage.
    data
        Extra values for plots and logs (losses, learning rate, metrics ...).
    """

    done: int
    total: int
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def relay(
    gen: Generator[T, Any, R],
    make_event: Callable[[T], Any] | None = None,
    *,
    check: Callable[[], None] | None = None,
) -> Generator[Any, None, R]:
    """Re-yield each item of ``gen`` (as ``make_event(item)`` if given); return ``gen``'s value.

    This is the one loop that steps a core generator; :func:`run_to_completion`, the
    plugin's worker (``widgets._runner``) and the CLI's progress bar all go through it.
    Use as ``value = yield from relay(inner, to_event)`` to pass an inner job's steps on
    as progress events (each one a cancel point) without unpacking ``StopIteration``.

    Parameters
    ----------
    gen
        The generator to step.
    make_event
        Turns each item into the event passed on (default: the item itself).
    check
        Called before each step; it stops the run by raising (the plugin's Cancel).
    """
    while True:
        if check is not None:
            check()
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield item if make_event is None else make_event(item)


def run_to_completion(
    gen: Generator[T, Any, R], on_progress: Callable[[T], None] | None = None
) -> R:
    """Exhaust a progress generator and return its return value.

    Parameters
    ----------
    gen
        A generator such as :func:`.engine.sliding_window.tiled_apply`'s or :func:`.engine.training.train`'s.
    on_progress
        Optional callback for each yielded event.
    """
    result: list[R] = []

    def capture() -> Generator[T, None, None]:
        result.append((yield from relay(gen)))

    for event in capture():
        if on_progress is not None:
            on_progress(event)
    return result[0]
