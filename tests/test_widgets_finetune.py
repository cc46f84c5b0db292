"""Fine-tune panel: labelled = corrections marked done; new checkpoint versions; Stop."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_state, state_snapshot
from gui_support import GUI_MARKS, TINY_WIDTH, dock, errors, small_nuclei, wait_run
from qtpy.QtCore import Qt

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from napari_selfloop.widgets._autosave import start_autosave
from napari_selfloop.widgets._layers import put_result
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.finetune_widget import FineTuneWidget
from napari_selfloop.widgets.model_widget import ModelWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def _viewer(make_napari_viewer, size=96):
    viewer = make_napari_viewer()
    image, truth = small_nuclei(size)
    layer = viewer.add_image(image, name="tile")
    viewer.add_image(small_nuclei(size, seed=1)[0], name="unlabelled")
    mask = (truth > 0).astype(np.uint8)
    mask[: size // 3] = 255  # a partial correction
    put_result(viewer, "tile", "labels", mask, like=layer, extra_meta={"image_key": "aa"})
    return viewer


def test_finetune_saves_versions_and_makes_them_current(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    viewer = _viewer(make_napari_viewer)
    first = save_checkpoint(tmp_path / "model.pt", build_model(ModelConfig(width=TINY_WIDTH)))
    dock(viewer, ModelWidget).load(first)
    old = get_state(viewer).model
    snapshot = state_snapshot(old)
    w = dock(viewer, FineTuneWidget)
    assert w.labelled_list.count() == 1
    assert not w.start() and "marked done" in errors(notes)[-1]
    w.labelled_list.item(0).setCheckState(Qt.CheckState.Checked)
    assert viewer.layers["tile [corrections]"].metadata["selfloop"]["done"]
    w.iterations_spin.setValue(3)
    w.q_spin.setValue(1)
    w.patch_combo.setCurrentText("96")
    assert w.start()
    assert wait_run(qtbot, w.runner).status == "done"
    assert len(w.plot.values("loss")) == 3
    v1 = tmp_path / "model_v1.pt"
    assert v1.exists() and get_state(viewer).checkpoint.path == v1
    ckpt = load_checkpoint(v1)
    assert ckpt.meta["parent"] == load_checkpoint(first).sha256
    assert {d["name"] for d in ckpt.meta["data"]} >= {"tile", "unlabelled"}
    assert_same_state(old, snapshot)  # the previous model object was not trained in place
    # A second run makes v2 next to it.
    assert w.start() and wait_run(qtbot, w.runner).status == "done"
    assert get_state(viewer).checkpoint.path == tmp_path / "model_v2.pt"
    assert "model_v2.pt" in w.result_label.text()
    assert len(errors(notes)) == 1  # only the "nothing marked done" one


def test_stop_keeps_best_and_leaves_old_model(make_napari_viewer, project, notes, qtbot):
    viewer = _viewer(make_napari_viewer)
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    old = get_state(viewer).model
    snapshot = state_snapshot(old)
    w = dock(viewer, FineTuneWidget)
    w.set_done("tile [corrections]")
    w.iterations_spin.setValue(400)  # evaluates every 50 steps
    w.q_spin.setValue(1)
    w.patch_combo.setCurrentText("96")
    assert w.start()
    qtbot.waitUntil(lambda: len(w.plot.values("loss")) >= 2, timeout=60_000)
    w.runner.cancel()
    outcome = wait_run(qtbot, w.runner, timeout=15_000)
    assert outcome.status == "cancelled"
    assert_same_state(old, snapshot)
    assert get_state(viewer).model is old  # stopped before any evaluation: nothing kept
    assert "unchanged" in w.result_label.text()
    assert not (project / "checkpoints" / "model_v1.pt").exists()
    assert not errors(notes)


def test_stop_after_an_evaluation_keeps_the_best(make_napari_viewer, project, notes, qtbot):
    viewer = _viewer(make_napari_viewer)
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    old = get_state(viewer).model
    w = dock(viewer, FineTuneWidget)
    w.set_done("tile [corrections]")
    w.iterations_spin.setValue(8)  # evaluates every 2 steps
    w.q_spin.setValue(1)
    w.patch_combo.setCurrentText("96")
    out = project / "checkpoints" / "model_v1.pt"
    assert w.start()
    qtbot.waitUntil(out.exists, timeout=60_000)
    w.runner.cancel()
    assert wait_run(qtbot, w.runner, timeout=15_000).status == "cancelled"
    current = get_state(viewer).checkpoint
    assert current.path == out and current.model is not old
    assert "Stopped; kept" in w.result_label.text()
    assert not errors(notes)


def test_finetune_bad_input(make_napari_viewer, project, notes, tmp_path):
    viewer = _viewer(make_napari_viewer)
    w = dock(viewer, FineTuneWidget)
    w.set_done("tile [corrections]")
    assert not w.start() and "no model" in errors(notes)[-1]
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    w.folder_edit.setText(str(tmp_path / "missing"))
    assert not w.start() and "does not exist" in errors(notes)[-1]
    w.folder_edit.setText("")
    viewer.layers["tile [corrections]"].data = np.zeros((10, 10), np.uint8)
    assert not w.start() and "shape" in errors(notes)[-1]


@pytest.mark.parametrize("fill", [255])
def test_all_unlabelled_mask_is_refused(make_napari_viewer, project, notes, qtbot, fill):
    viewer = _viewer(make_napari_viewer)
    viewer.layers["tile [corrections]"].data = np.full((96, 96), fill, np.uint8)
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    w = dock(viewer, FineTuneWidget)
    w.set_done("tile [corrections]")
    assert w.start()
    assert wait_run(qtbot, w.runner).status == "error"
    assert "no pixel" in errors(notes)[-1]


def test_a_correction_without_foreground_keeps_255_as_not_labelled(make_napari_viewer, project):
    """The mask rule of train/evaluate (0/255 only = binary) must not turn a correction's
    uncertain pixels into foreground: in a correction layer 255 is always uncertain."""
    from napari_selfloop.core.engine.datasets import check_items

    viewer = make_napari_viewer()
    image = viewer.add_image(small_nuclei(48)[0], name="tile")
    mask = np.zeros((48, 48), np.uint8)
    mask[:20] = 255  # every foreground pixel erased; the rest still uncertain
    put_result(viewer, "tile", "labels", mask, like=image, extra_meta={"done": True})
    w = dock(viewer, FineTuneWidget)
    (prepared,) = check_items(w._labelled(), "labelled", need_masks=True)
    assert np.array_equal(prepared.mask, mask)
    assert prepared.labelled_pixels == int((mask == 0).sum())


def test_done_goes_through_the_state(make_napari_viewer, project):
    """state.set_done is the one writer of the done flag; every panel hears done_changed."""
    from napari_selfloop.core.engine.training import TrainConfig
    from napari_selfloop.widgets._layers import is_correction

    viewer = _viewer(make_napari_viewer)
    w = dock(viewer, FineTuneWidget)
    state = get_state(viewer)
    assert state.autosave is start_autosave(viewer)  # one per viewer
    seen = []
    state.done_changed.connect(seen.append)
    layer = next(layer for layer in viewer.layers if is_correction(layer))
    state.set_done(layer, True)
    assert seen == [layer.name] and state.is_done(layer)
    assert w.labelled_list.item(0).checkState() == Qt.CheckState.Checked
    w.labelled_list.item(0).setCheckState(Qt.CheckState.Unchecked)
    assert seen == [layer.name, layer.name] and not state.is_done(layer)
    # The panel's defaults are TrainConfig's.
    d = TrainConfig()
    assert (w.iterations_spin.value(), w.q_spin.value(), int(w.patch_combo.currentText())) == (
        d.iterations,
        d.q,
        d.patch_size,
    )
    assert w.lr_spin.value() == pytest.approx(d.lr)


def test_training_form_is_built_from_its_mapping(qtbot):
    """The training form, declared in TRAIN_FIELDS: plain Qt controls with the ranges, steps
    and tooltips the panel always had, TrainConfig's defaults, and its values read back by
    field name into the same TrainConfig."""
    from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox, QWidget

    from napari_selfloop.core.engine.training import FRAMEWORKS, TrainConfig
    from napari_selfloop.widgets._form import add_rows, build_controls, read_values
    from napari_selfloop.widgets.finetune_widget import GUI_MAX_Q, TRAIN_FIELDS

    d = TrainConfig()
    c = build_controls(TRAIN_FIELDS, d)
    assert [type(c[n]) for n in TRAIN_FIELDS] == [
        QComboBox,
        QSpinBox,
        QSpinBox,
        QDoubleSpinBox,
        QComboBox,
        QDoubleSpinBox,
    ]
    assert [c["framework"].itemText(i) for i in range(c["framework"].count())] == list(FRAMEWORKS)
    assert [c["patch_size"].itemText(i) for i in range(4)] == ["96", "192", "288", "384"]
    assert (c["iterations"].minimum(), c["iterations"].maximum()) == (1, 100_000)
    assert (c["q"].minimum(), c["q"].maximum()) == (1, GUI_MAX_Q)
    lr = c["lr"]
    assert (lr.decimals(), lr.minimum(), lr.maximum(), lr.singleStep()) == (5, 1e-5, 0.1, 1e-4)
    assert c["patch_size"].toolTip() == "Side of the training patches (multiples of 96)"
    blend = c["blend"]
    assert (blend.decimals(), blend.minimum(), blend.maximum(), blend.singleStep()) == (
        2,
        0.0,
        1.0,
        0.05,
    )
    assert d.blend is None and blend.text() == "auto"  # its minimum stands for auto
    assert read_values(TRAIN_FIELDS, c) == {
        "framework": d.framework,
        "iterations": d.iterations,
        "q": d.q,
        "lr": pytest.approx(d.lr),
        "patch_size": d.patch_size,
        "blend": None,
    }
    c["patch_size"].setCurrentText("96")
    c["blend"].setValue(0.5)
    assert TrainConfig(**read_values(TRAIN_FIELDS, c)).blend == pytest.approx(0.5)
    c["framework"].setCurrentText("selfloop")
    values = read_values(TRAIN_FIELDS, c)
    assert values["patch_size"] == 96 and values["framework"] == "selfloop"
    holder = QWidget()
    qtbot.addWidget(holder)
    form = QFormLayout(holder)
    add_rows(form, TRAIN_FIELDS, c)
    labels = [form.itemAt(i, QFormLayout.ItemRole.LabelRole).widget().text() for i in range(6)]
    assert labels == ["Framework", "Iterations", "Q", "Learning rate", "Patch size", "Blend"]


def test_the_result_says_when_the_pseudo_labels_drifted(make_napari_viewer, project):
    from napari_selfloop.core.engine.training import TrainResult

    w = dock(_viewer(make_napari_viewer), FineTuneWidget)
    history = [{"step": 1}, {"step": 60, "unlabelled_until": 60}, {"step": 80}]
    w._done(TrainResult(best_step=50, best_metric=0.5, metric_name="train_seg_loss", steps=80))
    assert "drifted" not in w.result_label.text()
    w._done(
        TrainResult(
            best_step=50, best_metric=0.5, metric_name="train_seg_loss", steps=80, history=history
        )
    )
    assert "drifted at step 60" in w.result_label.text()
