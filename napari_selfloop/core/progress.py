"""Progress events yielded by the core's long-running generators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
