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


def relay(gen: Generator[T, Any, R], make_event: Callable[[T], Progress]) -> Generator[Progress, None, R]:
    """Re-yield each item of ``gen`` as ``make_event(item)`` and return ``gen``'s value.

    Use as ``value = yield from relay(inner, to_event)`` to pass an inner job's steps on
    as progress events (each one a cancel point) without unpacking ``StopIteration``.
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield make_event(item)
