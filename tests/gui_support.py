"""Helpers for the GUI tests (they need napari's ``make_napari_viewer`` and Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfloop._sample_data import make_lesion, make_nuclei

#: Tiny model and images keep every GUI test to seconds.
TINY_WIDTH = 8


def errors(notes) -> list[str]:
    return [
        str(n.message) for n in notes if str(getattr(n, "severity", "")).lower().endswith("error")
    ]


def wait_run(qtbot, runner, timeout: int = 120_000):
    """Wait until ``runner`` is idle; return its outcome."""
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout)
    qtbot.wait(10)
    return runner.last_outcome


def small_nuclei(size: int = 96, seed: int = 0):
    return make_nuclei(size=size, seed=seed)


def small_lesion(size: int = 96, seed: int = 0):
    return make_lesion(size=size, seed=seed)


def fake_stack() -> np.ndarray:
    return np.zeros((5, 32, 32), np.uint8)


def dock(viewer, widget_class, **kwargs):
    """Create a panel for ``viewer`` and dock it (so it is closed with the viewer)."""
    widget = widget_class(viewer, **kwargs)
    viewer.window.add_dock_widget(widget, name=widget_class.__name__)
    return widget


GUI_MARKS = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
]
