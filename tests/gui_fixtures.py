"""Fixtures for the GUI tests, loaded with ``pytest_plugins = ("gui_fixtures",)``."""

from __future__ import annotations

import pytest


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A fresh project folder (autosave, exports, checkpoints) for each test."""
    path = tmp_path / "project"
    monkeypatch.setenv("NAPARI_SELFLOOP_PROJECT", str(path))
    return path


@pytest.fixture
def notes():
    """Every napari notification shown during the test (``.message``, ``.severity``)."""
    from napari.utils.notifications import notification_manager

    got = []

    def record(event):
        got.append(event.value if hasattr(event, "value") else event)

    notification_manager.notification_ready.connect(record)
    yield got
    notification_manager.notification_ready.disconnect(record)
