"""Pseudo-label panel: results as layers, updated in place; areas; cancel; bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import assert_same_state, state_snapshot
from gui_support import GUI_MARKS, TINY_WIDTH, dock, errors, fake_stack, small_nuclei, wait_run

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig
from napari_selfloop.core.store.export import labels_to_mask
from napari_selfloop.widgets._autosave import start_autosave
from napari_selfloop.widgets._layers import find_result, role_of
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.model_widget import ModelWidget
from napari_selfloop.widgets.pseudolabel_widget import PseudoLabelWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def _setup(make_napari_viewer, size=96):
    viewer = make_napari_viewer()
    image, _ = small_nuclei(size)
    viewer.add_image(image, name="tile")
    model = dock(viewer, ModelWidget)
    model.new_model(width=TINY_WIDTH)
    panel = dock(viewer, PseudoLabelWidget)
    panel.q_spin.setValue(2)
    return viewer, panel


def test_results_as_layers_updated_in_place(make_napari_viewer, project, notes, qtbot):
    viewer, panel = _setup(make_napari_viewer)
    assert panel.image_combo.currentText() == "tile"
    assert panel.run()
    assert wait_run(qtbot, panel.runner).status == "done"
    roles = sorted(role_of(layer) or "" for layer in viewer.layers)
    assert roles == ["", "labels", "probability", "uncertainty"]
    labels = find_result(viewer, "tile", "labels")
    prob = find_result(viewer, "tile", "probability")
    assert labels.data.shape == (96, 96) and labels.data.dtype == np.uint32
    # One id per nucleus (any value but 0 and 255), uncertain pixels 255.
    assert set(np.unique(labels_to_mask(labels.data))) <= {0, 1, 255}
    assert prob.data.dtype == np.float32 and 0 <= prob.data.min() <= prob.data.max() <= 1
    # A re-run with another method updates the same three layers.
    panel.method_combo.setCurrentText("softmax")
    assert panel.run()
    assert wait_run(qtbot, panel.runner).status == "done"
    assert len(viewer.layers) == 4 and find_result(viewer, "tile", "labels") is labels
    assert labels.metadata["selfloop"]["method"] == "softmax"
    assert not errors(notes)


def test_rectangle_and_view_areas(make_napari_viewer, project, notes, qtbot):
    viewer, panel = _setup(make_napari_viewer)
    panel.method_combo.setCurrentText("softmax")
    shapes = viewer.add_shapes(
        [np.array([[10, 20], [10, 60], [50, 60], [50, 20]])], shape_type="rectangle"
    )
    panel.area_combo.setCurrentIndex(2)
    panel.shapes_combo.set_layer(shapes.name)
    assert panel.box(viewer.layers["tile"]) == (10, 20, 50, 60)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    labels = find_result(viewer, "tile", "labels").data
    # Outside the rectangle the new layer starts as "uncertain" (not looked at yet).
    assert (labels[:10] == 255).all() and (labels[:, :20] == 255).all()
    prob = find_result(viewer, "tile", "probability").data
    assert (prob[:10] == 0).all() and prob[10:50, 20:60].any()
    # Current view: zoomed in on the centre gives a box inside the image.
    viewer.scene.camera.center = (48, 48)
    viewer.scene.camera.zoom = 20
    panel.area_combo.setCurrentIndex(1)
    y0, x0, y1, x1 = panel.box(viewer.layers["tile"])
    assert 0 < y0 < 48 < y1 < 96 and 0 < x0 < 48 < x1 < 96
    assert not errors(notes)


def test_a_rectangle_is_seen_at_the_whole_image_scale_by_a_work_size_model(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    """A model with a work size sees a rectangle at the scale of the whole image (the core's
    ``source_shape``), not magnified to fill its work size."""
    from napari_selfloop.core.engine.pseudolabel import pseudo_label
    from napari_selfloop.core.progress import run_to_completion
    from napari_selfloop.core.store.checkpoint import save_checkpoint

    viewer = make_napari_viewer()
    image = np.random.default_rng(5).integers(0, 256, (288, 192, 3), dtype=np.uint8)
    image[60:135, 45:105] = (120, 40, 160)
    viewer.add_image(image, name="photo")
    net = build_model(ModelConfig(width=TINY_WIDTH, work_size=96), seed=1)
    save_checkpoint(tmp_path / "sized.pt", net)
    assert dock(viewer, ModelWidget).load(tmp_path / "sized.pt") is not None
    panel = dock(viewer, PseudoLabelWidget)
    panel.method_combo.setCurrentText("softmax")
    shapes = viewer.add_shapes(
        [np.array([[0, 0], [0, 144], [180, 144], [180, 0]])], shape_type="rectangle"
    )
    panel.area_combo.setCurrentIndex(2)
    panel.shapes_combo.set_layer(shapes.name)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    got = find_result(viewer, "photo", "probability").data[:180, :144]
    cfg, region = panel.config(), image[:180, :144]
    at_scale = run_to_completion(pseudo_label(region, net, cfg, source_shape=(288, 192)))
    magnified = run_to_completion(pseudo_label(region, net, cfg))
    assert at_scale.info["work_shape"] == (60, 48) and magnified.info["work_shape"] == (96, 77)
    np.testing.assert_allclose(got, at_scale.probability, atol=1e-5)
    assert np.abs(got - magnified.probability).max() > 1e-3
    assert not errors(notes)


def test_cancel_leaves_model_unchanged_and_viewer_usable(make_napari_viewer, project, notes, qtbot):
    viewer, panel = _setup(make_napari_viewer, size=600)
    model = get_state(viewer).model
    snapshot = state_snapshot(model)
    panel.q_spin.setValue(3)
    assert panel.run()
    qtbot.waitUntil(lambda: panel.runner.progress.maximum() > 1, timeout=60_000)  # first step done
    panel.runner.cancel()
    outcome = wait_run(qtbot, panel.runner, timeout=15_000)
    assert outcome.status == "cancelled"
    assert_same_state(model, snapshot)
    assert find_result(viewer, "tile", "labels") is None  # nothing half-shown
    # The viewer and the panel still work.
    viewer.add_points([[5, 5]])
    panel.method_combo.setCurrentText("softmax")
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    assert not errors(notes)


def test_cancel_takes_effect_mid_step(make_napari_viewer, project, notes, qtbot):
    """Cancel during a long step (a whole patch of Q updates) stops within a forward pass."""
    viewer, panel = _setup(make_napari_viewer, size=400)
    model = get_state(viewer).model
    snapshot = state_snapshot(model)
    panel.q_spin.setValue(50)  # one step = 50 self-loop updates of one patch
    assert panel.run()
    qtbot.wait(300)
    assert panel.runner.running
    t0 = time.perf_counter()
    panel.runner.cancel()
    assert wait_run(qtbot, panel.runner, timeout=15_000).status == "cancelled"
    assert time.perf_counter() - t0 < 5.0
    assert_same_state(model, snapshot)
    assert all(not m._forward_pre_hooks for m in model.modules())  # the cancel hooks are gone
    assert not errors(notes)


def test_bad_input_notifies(make_napari_viewer, project, notes, qtbot):
    viewer = make_napari_viewer()
    panel = dock(viewer, PseudoLabelWidget)
    assert not panel.run()
    assert "no image layer" in errors(notes)[-1]
    viewer.add_image(fake_stack(), name="stack")
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    panel.image_combo.set_layer("stack")
    assert not panel.run()
    assert "stack" in errors(notes)[-1] and "pick one plane" in errors(notes)[-1]
    viewer.add_image(small_nuclei(64)[0], name="tile")
    viewer.add_labels(
        np.zeros((10, 10), np.uint8),
        name="wrong",
        metadata={"selfloop": {"role": "labels", "source": "tile"}},
    )
    panel.image_combo.set_layer("tile")
    assert not panel.run()
    assert "shape" in errors(notes)[-1]
    # No model.
    get_state(viewer).set_checkpoint(None)
    viewer.layers.remove("wrong")
    assert not panel.run()
    assert "no model" in errors(notes)[-1]
    # A rectangle outside the image.
    get_state(viewer).new_checkpoint(build_model(ModelConfig(width=TINY_WIDTH)))
    viewer.add_shapes(
        [np.array([[500, 500], [500, 600], [600, 600], [600, 500]])], shape_type="rectangle"
    )
    panel.area_combo.setCurrentIndex(2)
    assert not panel.run()
    assert "does not overlap" in errors(notes)[-1]


def test_defaults_come_from_the_core_config(make_napari_viewer, project):
    viewer = make_napari_viewer()
    panel = dock(viewer, PseudoLabelWidget)
    d = PseudoLabelConfig()
    assert panel.method_combo.currentText() == d.method
    assert panel.q_spin.value() == d.q
    assert panel.threshold_spin.value() == pytest.approx(d.threshold)
    config = panel.config()
    assert (config.lr, config.step_rule, config.seed, config.rotation, config.grid_shift) == (
        d.lr,
        d.step_rule,
        d.seed,
        d.rotation,
        d.grid_shift,
    )


def _infos(notes) -> list[str]:
    return [str(n.message) for n in notes]


def _propose_and_paint(make_napari_viewer, qtbot):
    """A softmax proposal (threshold 0.51) on the tile, then 400 pixels painted by the user,
    each to another value than the proposal's. Returns the viewer, panel, correction layer,
    the first proposal and the painted block (rows 30-50, columns 40-60)."""
    viewer, panel = _setup(make_napari_viewer)
    panel.method_combo.setCurrentText("softmax")
    panel.threshold_spin.setValue(0.51)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    labels = find_result(viewer, "tile", "labels")
    first = np.array(labels.data, copy=True)
    yy, xx = np.mgrid[30:50, 40:60]
    painted = np.where(first[30:50, 40:60] == 1, 0, 1).astype(np.uint8)
    labels.data_setitem((yy.ravel(), xx.ravel()), painted.ravel())
    return viewer, panel, labels, first, painted


def test_a_rerun_keeps_the_pixels_the_user_painted(make_napari_viewer, project, notes, qtbot):
    """Issue 11 item 2: painted corrections survive a second pseudo-label run, "done" is not
    cleared silently, and the autosave then holds the painted pixels, not a fresh proposal."""
    from napari_selfloop.core.engine.pseudolabel import confidence_mask
    from napari_selfloop.core.store.autosave import AutosaveStore
    from napari_selfloop.widgets._autosave import key_for

    # The user paints 400 pixels (each to another value than the proposal's) and marks done.
    viewer, panel, labels, first, painted = _propose_and_paint(make_napari_viewer, qtbot)
    assert np.count_nonzero(labels.data != first) == 400
    labels.metadata["selfloop"]["done"] = True
    # The same run again changes nothing: the layer stays done.
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    assert (labels.data[30:50, 40:60] == painted).all() and labels.metadata["selfloop"]["done"]
    assert any("kept the 400 pixel(s)" in m for m in _infos(notes))
    # Another proposal (a stricter threshold) goes only where the user has not painted.
    panel.threshold_spin.setValue(0.99)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    assert find_result(viewer, "tile", "labels") is labels
    assert (labels.data[30:50, 40:60] == painted).all()
    expected = confidence_mask(find_result(viewer, "tile", "probability").data, 0.99)
    outside = np.ones(labels.data.shape, bool)
    outside[30:50, 40:60] = False
    assert (labels.data[outside] == expected[outside]).all()
    assert (expected != first).any()  # the proposal did change ...
    assert not labels.metadata["selfloop"]["done"]  # ... so "done" is cleared, and the user told
    assert any("no longer marked done" in m for m in _infos(notes))
    # The next autosave writes the painted pixels, not the fresh proposal.
    assert start_autosave(viewer).save_now(force=True) >= 1
    saved = AutosaveStore(project).load(key_for(viewer.layers["tile"]))
    assert (saved.labels[30:50, 40:60] == painted).all()
    assert not errors(notes)


def test_a_rerun_over_unrecorded_corrections_keeps_every_labelled_pixel(
    make_napari_viewer, project, notes, qtbot
):
    """A correction layer with no record of its proposal (restored from autosave, made by
    hand): every labelled pixel counts as the user's; the proposal fills only the 255s."""
    viewer, panel = _setup(make_napari_viewer)
    panel.method_combo.setCurrentText("softmax")
    panel.threshold_spin.setValue(0.51)
    mine = np.full((96, 96), 255, np.uint8)
    mine[10:30, 10:30] = 1
    mine[60:80, 60:80] = 0
    viewer.add_labels(
        mine.copy(),
        name="restored",
        metadata={"selfloop": {"role": "labels", "source": "tile", "done": True}},
    )
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    labels = find_result(viewer, "tile", "labels")
    assert labels.name == "restored"
    decided = mine != 255
    assert (labels.data[decided] == mine[decided]).all()
    assert any("kept the 800 pixel(s)" in m and "no record" in m for m in _infos(notes))
    assert not errors(notes)


def test_a_restored_layer_still_tells_the_painted_pixels_from_the_proposal(
    make_napari_viewer, project, notes, qtbot
):
    """The autosave keeps the record of the last proposal: after a crash and a restore, a new
    run keeps only the pixels the user painted and replaces the rest of the old proposal."""
    from napari_selfloop.core.engine.pseudolabel import confidence_mask
    from napari_selfloop.core.store.autosave import AutosaveStore, proposal_key
    from napari_selfloop.widgets._autosave import key_for
    from napari_selfloop.widgets._layers import user_painted

    viewer, panel, labels, _, painted = _propose_and_paint(make_napari_viewer, qtbot)
    # A second, stricter run: the 400 painted pixels are recorded as the user's.
    panel.threshold_spin.setValue(0.9)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    ctl = start_autosave(viewer)
    assert ctl.save_now() >= 1
    key = key_for(viewer.layers["tile"])
    assert AutosaveStore(project).load(proposal_key(key)) is not None
    assert ctl.save_now() == 0  # nothing changed: neither the labels nor the record
    saved = np.array(labels.data, copy=True)
    # "Crash": the layers are gone; the same image opened again gets its corrections back ...
    image = viewer.layers["tile"].data
    viewer.layers.clear()
    viewer.add_image(image, name="tile")
    restored = find_result(viewer, "tile", "labels")
    assert restored is not None and np.array_equal(restored.data, saved)
    # ... and still knows which pixels are the user's.
    mine, recorded = user_painted(restored)
    assert recorded and np.count_nonzero(mine) == 400 and mine[30:50, 40:60].all()
    # A run with another threshold replaces the old proposal everywhere else.
    panel.image_combo.setCurrentText("tile")
    panel.threshold_spin.setValue(0.99)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    labels = find_result(viewer, "tile", "labels")
    expected = confidence_mask(find_result(viewer, "tile", "probability").data, 0.99)
    outside = np.ones(expected.shape, bool)
    outside[30:50, 40:60] = False
    assert (labels.data[30:50, 40:60] == painted).all()
    assert (labels.data[outside] == expected[outside]).all()
    assert not any("no record" in m for m in _infos(notes))
    assert not errors(notes)


def test_an_implausible_proposal_is_a_plain_words_warning(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    """A model whose training record says "sparse tissue" but that marks every pixel:
    the panel warns in plain words (notification and status line); a model whose record
    covers the proposal stays quiet."""
    from napari_selfloop.core.engine.plausibility import RECORD_KEY
    from napari_selfloop.core.store.checkpoint import save_checkpoint

    viewer = make_napari_viewer()
    viewer.add_image(small_nuclei(96)[0], name="tile")
    net = build_model(ModelConfig(width=TINY_WIDTH), seed=0)
    net.decoder.head.bias.data.fill_(20.0)  # foreground everywhere
    sparse, covered = tmp_path / "sparse.pt", tmp_path / "covered.pt"
    save_checkpoint(sparse, net, metrics={RECORD_KEY: {"share": [0.1, 0.3], "images": 3}})
    save_checkpoint(covered, net, metrics={RECORD_KEY: {"share": [0.1, 1.0], "images": 3}})
    model = dock(viewer, ModelWidget)
    assert model.load(sparse) is not None
    panel = dock(viewer, PseudoLabelWidget)
    panel.method_combo.setCurrentText("softmax")
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    warned = [n for n in notes if "may not know this tissue" in str(n.message)]
    assert len(warned) == 1 and "100 %" in str(warned[0].message)
    assert "may not know this tissue" in panel.runner.status.text()
    notes.clear()
    assert model.load(covered) is not None
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    assert not [n for n in notes if "may not know" in str(n.message)]
    assert "may not know" not in panel.runner.status.text()


def test_a_model_unsure_of_its_foreground_is_warned_of_with_the_default_method(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    """Share within the record, but the model far less sure of what it calls nucleus
    than on its training images: the panel's default method (MC dropout) still warns,
    since the figure comes from the plain prediction."""
    from napari_selfloop.core.engine.plausibility import RECORD_KEY
    from napari_selfloop.core.store.checkpoint import save_checkpoint

    viewer = make_napari_viewer()
    viewer.add_image(small_nuclei(96)[0], name="tile")
    net = build_model(ModelConfig(width=TINY_WIDTH), seed=0)
    net.decoder.head.bias.data[0] = 1.0  # foreground at about 0.7 everywhere: unsure
    path = tmp_path / "unsure.pt"
    record = {"share": [0.1, 1.0], "images": 3, "fg_entropy": [0.2, 0.3]}
    save_checkpoint(path, net, metrics={RECORD_KEY: record})
    model = dock(viewer, ModelWidget)
    assert model.load(path) is not None
    panel = dock(viewer, PseudoLabelWidget)
    assert panel.method_combo.currentText() == "mc-dropout"
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    warned = [n for n in notes if "may not know this tissue" in str(n.message)]
    assert len(warned) == 1 and "less sure" in str(warned[0].message)
    assert "may not know this tissue" in panel.runner.status.text()
