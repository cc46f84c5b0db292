"""``gui --checkpoint`` with a checkpoint whose record is damaged: one line, no abort
(issue 27 item 8)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from gui_support import GUI_MARKS, TINY_WIDTH, errors

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.store.checkpoint import save_checkpoint

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def _damaged(path):
    save_checkpoint(path, build_model(ModelConfig(width=TINY_WIDTH), seed=0))
    payload = torch.load(path, weights_only=True)
    payload["data"] = ["a.png", "b.png"]  # a list of names, not of records
    torch.save(payload, path)
    return path


def test_a_damaged_record_is_one_notification(make_napari_viewer, project, notes, tmp_path):
    from napari_selfloop.cli.gui_cmd import setup_viewer

    viewer = make_napari_viewer()
    with pytest.raises(InputError, match="could not load"):
        setup_viewer(viewer, checkpoint=_damaged(tmp_path / "bad.pt"), width=TINY_WIDTH)
    (message,) = errors(notes)
    assert "data record is not a list of records" in message


def test_the_gui_command_with_a_damaged_record_exits_with_one_line(tmp_path, project):
    bad = _damaged(tmp_path / "bad.pt")
    done = subprocess.run(
        [sys.executable, "-m", "napari_selfloop.cli", "gui", "--checkpoint", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "could not load" in done.stderr
