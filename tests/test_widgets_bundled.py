"""Bundled models in the plugin: the Model panel's choice and the `gui` command's automatic
pick (tiny stand-ins for the shipped files, so each test takes seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from gui_support import GUI_MARKS, dock, errors, small_lesion, small_nuclei, wait_run
from test_bundled import make_bundled

from napari_selfloop.cli.gui_cmd import setup_viewer
from napari_selfloop.core.store import bundled
from napari_selfloop.core.store.bundled import BUNDLED
from napari_selfloop.widgets._layers import find_result
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.model_widget import ModelWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


@pytest.fixture
def tiny_models(tmp_path, monkeypatch):
    for seed, name in enumerate(BUNDLED):
        make_bundled(tmp_path, name, seed)
    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path / "models")
    return tmp_path / "models"


def test_model_panel_uses_a_bundled_model_and_suggests_the_fitting_one(
    make_napari_viewer, project, notes, tiny_models, qtbot
):
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    assert [w.bundled_combo.itemText(i) for i in range(w.bundled_combo.count())] == list(BUNDLED)
    assert "bundled model" in w.card.text()
    viewer.add_image(small_lesion(size=192)[0], name="lesion", rgb=True)
    assert w.bundled_combo.currentText() == "lesion-dermoscopy"
    viewer.add_image(small_nuclei(size=192)[0], name="he", rgb=True)
    assert w.bundled_combo.currentText() == "nuclei-he"
    w.bundled_button.click()
    ckpt = get_state(viewer).checkpoint
    assert ckpt is not None and ckpt.path == tiny_models / "nuclei-he.pt"
    assert "bundled model nuclei-he" in w.card.text()
    assert (
        "CC BY-NC-SA 4.0" in w.card.text()
        and "on 2 unseen images: softmax Dice 80.0" in w.card.text()
    )
    # Plain words first, the licence prominent; the ML card waits behind Details.
    summary = w.summary.text()
    assert "nuclei-he: bundled model" in summary and "NON-COMMERCIAL USE ONLY" in summary
    assert "How good:" in summary and "80 % (Dice score" in summary
    assert "L_SS" not in summary and "AJI" not in summary
    assert not w.summary.isHidden() and w.card.isHidden()
    w.details_button.click()
    assert not w.card.isHidden() and w.details_button.isChecked()
    w.show_details(False)
    assert w.card.isHidden() and not w.details_button.isChecked()
    wait_run(qtbot, w.jigsaw.check_runner)  # the automatic jigsaw check of the new model
    assert not errors(notes)


def test_model_panel_reports_a_missing_or_damaged_bundled_file(
    make_napari_viewer, project, notes, tiny_models, qtbot
):
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    assert w.load_bundled("lesion-dermoscopy") is not None
    path = tiny_models / "nuclei-he.pt"
    path.write_bytes(path.read_bytes()[:1000])
    assert w.load_bundled("nuclei-he") is None
    assert any("damaged" in e and "reinstall" in e for e in errors(notes))
    path.unlink()
    assert w.load_bundled("nuclei-he") is None
    assert any("missing" in e for e in errors(notes))
    # The model that was current stays current.
    assert get_state(viewer).checkpoint.path == tiny_models / "lesion-dermoscopy.pt"
    wait_run(qtbot, w.jigsaw.check_runner)


def test_gui_command_picks_the_fitting_bundled_model_and_pseudo_labels(
    make_napari_viewer, project, notes, tiny_models, tmp_path, qtbot
):
    viewer = make_napari_viewer()
    assistant = setup_viewer(
        viewer, sample="nuclei", checkpoint="auto", device="cpu", pseudo_label=True
    )
    assert get_state(viewer).checkpoint.path == tiny_models / "nuclei-he.pt"
    assert assistant.tabs.tabText(assistant.tabs.currentIndex()) == "Pseudo-label"
    panel = assistant.panel("Pseudo-label")
    assert wait_run(qtbot, panel.runner).status == "done"
    assert find_result(viewer, "H&E nuclei", "labels") is not None
    assert not errors(notes)

    lesion_file = tmp_path / "lesion.tif"
    tifffile.imwrite(lesion_file, small_lesion(size=256)[0])
    viewer2 = make_napari_viewer()
    assistant2 = setup_viewer(viewer2, images=[lesion_file], checkpoint="auto", device="cpu")
    assert get_state(viewer2).checkpoint.path == tiny_models / "lesion-dermoscopy.pt"
    for a in (assistant, assistant2):
        wait_run(qtbot, a.panel("Model").jigsaw.check_runner)


def test_gui_command_without_bundled_files_starts_untrained(
    make_napari_viewer, project, notes, tiny_models
):
    for path in tiny_models.iterdir():
        path.unlink()
    viewer = make_napari_viewer()
    viewer.add_image(np.asarray(small_nuclei(size=128)[0]), name="he", rgb=True)
    assistant = setup_viewer(viewer, checkpoint="auto", width=8)
    assert get_state(viewer).checkpoint.path is None  # a new, untrained model
    assert assistant.tabs.tabText(assistant.tabs.currentIndex()) == "Start"


def test_gui_command_opens_a_slide_lazily_with_the_he_model(
    make_napari_viewer, project, notes, tiny_models, synthetic_slide, qtbot
):
    viewer = make_napari_viewer()
    assistant = setup_viewer(viewer, images=[synthetic_slide], checkpoint="auto", device="cpu")
    wait_run(qtbot, assistant.panel("Model").jigsaw.check_runner)  # the automatic jigsaw check
    layer = viewer.layers[0]
    assert layer.multiscale and not isinstance(layer.data[0], np.ndarray)  # lazy levels
    assert get_state(viewer).checkpoint.path == tiny_models / "nuclei-he.pt"
    assert not errors(notes)
