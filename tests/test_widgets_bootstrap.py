"""Start without a model: an initial mask into the correction layer."""

from __future__ import annotations

import numpy as np
from gui_support import GUI_MARKS, dock, errors, fake_stack, small_lesion, small_nuclei, wait_run

from napari_selfloop.core.corrections.nuclei import labels_instances
from napari_selfloop.widgets._layers import find_result
from napari_selfloop.widgets.bootstrap_widget import BootstrapWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def test_bootstrap_he_and_dermoscopy(make_napari_viewer, project, notes, qtbot):
    viewer = make_napari_viewer()
    nuclei, truth = small_nuclei(128)
    viewer.add_image(nuclei, name="nuclei")
    w = dock(viewer, BootstrapWidget)
    assert w.run() and wait_run(qtbot, w.runner).status == "done"
    labels = find_result(viewer, "nuclei", "labels")
    assert labels.data.shape == (128, 128) and 255 not in set(np.unique(labels.data))
    # Each nucleus has an id of its own.
    assert len(np.unique(labels.data)) - 1 == int(labels_instances(labels.data).max()) > 1
    overlap = ((labels.data > 0) & (truth > 0)).sum() / (truth > 0).sum()
    assert overlap > 0.8
    assert labels.metadata["selfloop"]["bootstrap"] == "he" and "nuclei" in w.runner.status.text()
    # The lesion with an explicit recipe; a second run on the same image updates in place.
    lesion, _ = small_lesion(96)
    viewer.add_image(lesion, name="lesion")
    w.image_combo.set_layer("lesion")
    w.set_kind("dermoscopy")
    assert w.run() and wait_run(qtbot, w.runner).status == "done"
    assert w.run() and wait_run(qtbot, w.runner).status == "done"
    assert len([layer for layer in viewer.layers if "lesion" in layer.name]) == 2
    assert find_result(viewer, "lesion", "labels").metadata["selfloop"]["bootstrap"] == "dermoscopy"
    assert not errors(notes)


def test_bootstrap_bad_input(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    w = dock(viewer, BootstrapWidget)
    assert not w.run() and "no image layer" in errors(notes)[-1]
    viewer.add_image(fake_stack(), name="stack")
    assert not w.run() and "pick one plane" in errors(notes)[-1]
