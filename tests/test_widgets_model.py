"""Model panel: load a checkpoint, new model, device, model card; bad files notify."""

from __future__ import annotations

import pytest
import torch
from gui_support import GUI_MARKS, TINY_WIDTH, dock, errors

from napari_selfloop.core.checkpoint import save_checkpoint
from napari_selfloop.core.model import ModelConfig, build_model
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.model_widget import ModelWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def test_new_model_and_card(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    assert "No model yet" in w.card.text()
    ckpt = w.new_model(width=TINY_WIDTH)
    state = get_state(viewer)
    assert state.checkpoint is ckpt and state.model.config.width == TINY_WIDTH
    assert "not trained yet" in w.card.text() and "not saved yet" in w.card.text()
    assert not errors(notes)


def test_load_checkpoint_and_ensemble(make_napari_viewer, project, notes, tmp_path):
    path = save_checkpoint(
        tmp_path / "m.pt",
        build_model(ModelConfig(width=TINY_WIDTH), seed=1),
        metrics={"val_f1": 0.71},
        data=[{"name": "a.png", "sha256": "x"}],
    )
    other = save_checkpoint(tmp_path / "n.pt", build_model(ModelConfig(width=TINY_WIDTH), seed=2))
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    assert w.load(path) is not None
    state = get_state(viewer)
    assert state.checkpoint.path == path
    text = w.card.text()
    assert "m.pt" in text and "a.png" in text and "val_f1 0.71" in text
    assert w.add_to_ensemble(other) is not None and len(state.ensemble) == 1
    assert "current + 1" in w.ensemble_label.text()
    assert not errors(notes)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "pickle", "truncated"])
def test_unreadable_checkpoint_notifies(make_napari_viewer, project, notes, tmp_path, content):
    bad = tmp_path / "bad.pt"
    if content == "pickle":
        torch.save({"model": object.__new__(ModelConfig)}, bad)
    elif content == "truncated":
        save_checkpoint(bad, build_model(ModelConfig(width=TINY_WIDTH)))
        bad.write_bytes(bad.read_bytes()[:2000])
    else:
        bad.write_bytes(content)
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    w.new_model(width=TINY_WIDTH)
    before = get_state(viewer).checkpoint
    assert w.load(bad) is None
    assert get_state(viewer).checkpoint is before  # the current model stays
    assert errors(notes) and "Could not load the checkpoint" in errors(notes)[-1]
    assert w.load(tmp_path / "missing.pt") is None


def test_device_choice(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    w.device_combo.setCurrentText("cpu")
    assert get_state(viewer).device == "cpu"
    if not torch.cuda.is_available():
        w.device_combo.setCurrentText("cuda")
        assert get_state(viewer).device == "cpu" and w.device_combo.currentText() == "cpu"
        assert "no CUDA GPU" in errors(notes)[-1]
