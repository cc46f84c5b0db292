"""Start without a model on a slide (issue 9): only the view or rectangle is read, and its
mask goes into a region-sized correction layer placed like the Pseudo-label panel's, which
Pseudo-label, autosave and Export then treat like any region."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from gui_support import GUI_MARKS, TINY_WIDTH, dock, errors, small_nuclei, wait_run
from test_export import rasterise
from test_widgets_slide import lazy_slide

from napari_selfloop.core.io.windows import Window, region_key
from napari_selfloop.core.store.autosave import AutosaveStore
from napari_selfloop.core.store.export import labels_to_mask
from napari_selfloop.widgets._autosave import key_for, save_key, start_autosave
from napari_selfloop.widgets._layers import find_result, result_name, role_of, window_of
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.bootstrap_widget import BootstrapWidget
from napari_selfloop.widgets.export_widget import ExportWidget
from napari_selfloop.widgets.model_widget import ModelWidget
from napari_selfloop.widgets.pseudolabel_widget import PseudoLabelWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def _blobs(y0, x0, height, width, factor=1):
    """Where the synthetic slide has its purple blobs (``lazy_slide``'s texture), in a box."""
    yy, xx = np.mgrid[y0 : y0 + height, x0 : x0 + width].astype(np.float32) * factor
    return np.sin(yy / 23.0) * np.sin(xx / 29.0) > 0.6


def _rectangle(viewer, y0, x0, y1, x1, scale=1.0):
    return viewer.add_shapes(
        [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) * scale],
        shape_type="rectangle",
        name="rect",
    )


def _corrections(viewer):
    return [layer for layer in viewer.layers if role_of(layer) == "labels"]


def test_a_rectangle_and_the_view_of_a_slide_get_region_sized_masks(
    make_napari_viewer, project, notes, qtbot
):
    viewer = make_napari_viewer()
    image = viewer.add_image(lazy_slide(), multiscale=True, rgb=True, name="slide")
    w = dock(viewer, BootstrapWidget)
    assert w.area_combo.currentIndex() == 1  # a slide: the current view, not the whole of it
    w.set_kind("he")
    shapes = _rectangle(viewer, 5000, 6000, 5384, 6384)
    w.area_combo.setCurrentIndex(2)
    w.shapes_combo.set_layer(shapes.name)
    tracemalloc.start()
    try:
        assert w.run()
        assert wait_run(qtbot, w.runner).status == "done"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Level 0 is 16384 x 16384 RGB (768 MiB; as float, 6 GiB): what is traced is the
    # region's analysis and dask making the tiles under it.
    assert peak < 160 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    window = Window(5000, 6000, 384, 384)
    labels = find_result(viewer, "slide", "labels", window)
    assert labels is not None and _corrections(viewer) == [labels]
    assert labels.data.shape == (384, 384) and labels.data.nbytes == 384 * 384 * 4  # uint32 ids
    assert tuple(labels.translate) == (5000, 6000) and tuple(labels.scale) == (1, 1)
    assert labels.name == result_name("slide", "labels", window)  # the Pseudo-label panel's name
    assert "[5000:5384, 6000:6384]" in labels.name
    meta = labels.metadata["selfloop"]
    assert window_of(labels) == window and meta["bootstrap"] == "he" and meta["done"] is False
    assert meta["autosave_key"] == region_key(key_for(image), window)
    assert meta["proposal"].shape == (384, 384)
    # No probability or uncertainty maps: a classical mask has none.
    assert find_result(viewer, "slide", "probability", window) is None
    # The mask is of the slide's pixels under the rectangle: its blobs, where they are.
    truth = _blobs(5000, 6000, 384, 384)
    mask = (labels.data != 0) & (labels.data != 255)  # any nucleus
    assert (mask & truth).sum() / truth.sum() > 0.8
    assert (mask & ~truth).sum() / max(1, mask.sum()) < 0.2
    assert "[5000:5384, 6000:6384]" in w.runner.status.text()

    # The current view, zoomed in elsewhere: a second layer of the view's size.
    cam = viewer.scene.camera
    cam.center = (12000, 3000)
    cam.zoom = max(viewer.canvas.size) / 300
    w.area_combo.setCurrentIndex(1)
    y0, x0, y1, x1 = w.box(image)
    assert 0 < y1 - y0 <= 400 and 0 < x1 - x0 <= 400
    assert w.run() and wait_run(qtbot, w.runner).status == "done"
    view = find_result(viewer, "slide", "labels", Window(y0, x0, y1 - y0, x1 - x0))
    assert view is not None and view is not labels
    assert view.data.shape == (y1 - y0, x1 - x0) and tuple(view.translate) == (y0, x0)
    truth = _blobs(y0, x0, y1 - y0, x1 - x0)
    assert (((view.data != 0) & (view.data != 255)) & truth).sum() / truth.sum() > 0.8
    assert all(layer.data.size <= 400 * 400 for layer in _corrections(viewer))

    # The whole slide is refused, with what to do instead; nothing is read.
    w.area_combo.setCurrentIndex(0)
    assert not w.run()
    assert "zoom in" in errors(notes)[-1]
    assert len(_corrections(viewer)) == 2


def test_a_region_mask_is_kept_by_pseudo_label_autosaved_and_exported_in_slide_coordinates(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    image = viewer.add_image(
        lazy_slide(),
        multiscale=True,
        rgb=True,
        name="slide",
        scale=(0.25, 0.25),
        units=("um", "um"),
    )
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    get_state(viewer).checkpoint.meta["pixel_size_um"] = 0.5  # a model trained at 20x
    w = dock(viewer, BootstrapWidget)
    w.set_kind("he")
    shapes = _rectangle(viewer, 4001, 8003, 4401, 8403, scale=0.25)  # world units: microns
    w.area_combo.setCurrentIndex(2)
    w.shapes_combo.set_layer(shapes.name)
    assert w.run() and wait_run(qtbot, w.runner).status == "done"
    (labels,) = _corrections(viewer)
    window = window_of(labels)
    # At the model's pixel size: level 1 (0.5 um/px), snapped to its grid, as Pseudo-label does.
    assert (window.level, window.factor, window.y0, window.x0) == (1, 2.0, 4000, 8002)
    assert labels.data.shape == window.shape == (201, 201)
    assert np.allclose(labels.scale, (0.5, 0.5))
    assert np.allclose(labels.translate, (0.25 * 4000.5, 0.25 * 8002.5))
    assert labels.metadata["selfloop"]["pixel_size_um"] == pytest.approx(0.5)
    assert "0.5 µm/px" in w.runner.status.text()
    truth = _blobs(2000, 4001, 201, 201, factor=2)  # level 1's pixels: centres at 2 y + 0.5
    assert (((labels.data != 0) & (labels.data != 255)) & truth).sum() / truth.sum() > 0.7

    # The user corrects part of it; Pseudo-label of the same rectangle fills the same layer
    # and keeps what was painted.
    before = np.array(labels.data)
    added = np.zeros(before.shape, bool)
    added[10:30, 10:30] = before[10:30, 10:30] == 0
    erased = np.zeros(before.shape, bool)
    erased[100:160, 100:160] = (before[100:160, 100:160] != 0) & (before[100:160, 100:160] != 255)
    assert added.any() and erased.any()
    labels.data_setitem(tuple(np.argwhere(added).T), 1)
    labels.data_setitem(tuple(np.argwhere(erased).T), 0)
    painted = np.array(labels.data)
    panel = dock(viewer, PseudoLabelWidget)
    panel.method_combo.setCurrentText("softmax")
    panel.area_combo.setCurrentIndex(2)
    panel.shapes_combo.set_layer(shapes.name)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    assert _corrections(viewer) == [labels]
    assert find_result(viewer, "slide", "probability", window).data.shape == window.shape
    assert (labels.data[added] == 1).all() and (labels.data[erased] == 0).all()
    labels.data = painted  # back to the corrected bootstrap mask

    # Autosave keeps it as a region of the slide.
    ctl = start_autosave(viewer)
    assert ctl.save_now() == 1
    record = dict(AutosaveStore(project).records())[save_key(labels)]
    assert record["image_key"] == key_for(image) and Window.from_meta(record["window"]) == window

    # Export: its mask at its pixel size, its GeoJSON in slide pixels.
    export = dock(viewer, ExportWidget)
    out = tmp_path / "exports"
    export.folder_edit.setText(str(out))
    export.labels_combo.set_layer(labels.name)
    assert export.export() and wait_run(qtbot, export.runner).status == "done"
    entry = json.loads((out / "manifest.json").read_text())["entries"][-1]
    assert entry["region"]["box"] == list(window.box) and entry["pixel_size_um"] == pytest.approx(
        0.5
    )
    features = json.loads((out / entry["geojson"]).read_text())["features"]
    y0, x0, y1, x1 = window.box
    back = rasterise(features, (y1 - y0, x1 - x0), origin=(y0, x0)) > 0
    assert np.array_equal(back, np.kron(labels_to_mask(painted) == 1, np.ones((2, 2), bool)))
    assert not errors(notes)


def test_a_rerun_keeps_painted_pixels_and_a_small_image_rectangle_fills_its_box(
    make_napari_viewer, project, notes, qtbot
):
    viewer = make_napari_viewer()
    viewer.add_image(lazy_slide(), multiscale=True, rgb=True, name="slide")
    w = dock(viewer, BootstrapWidget)
    w.set_kind("he")
    shapes = _rectangle(viewer, 300, 700, 460, 900)
    w.area_combo.setCurrentIndex(2)
    w.shapes_combo.set_layer(shapes.name)
    assert w.run() and wait_run(qtbot, w.runner).status == "done"
    (labels,) = _corrections(viewer)
    labels.data_setitem(tuple(np.mgrid[0:12, 0:12].reshape(2, -1)), 255)  # marked uncertain
    assert w.run() and wait_run(qtbot, w.runner).status == "done"
    assert _corrections(viewer) == [labels]  # the same region's layer, updated in place
    assert (labels.data[0:12, 0:12] == 255).all()
    assert any("kept the 144 pixel(s)" in str(n.message) for n in notes)

    # A small image is not worked on by region: a rectangle fills its box of the
    # full-size layer, and the rest stays uncertain (255).
    nuclei, _ = small_nuclei(128)
    viewer.add_image(nuclei, name="tile")
    w.image_combo.set_layer("tile")
    small = _rectangle(viewer, 20, 30, 90, 110)
    w.shapes_combo.set_layer(small.name)
    assert w.run() and wait_run(qtbot, w.runner).status == "done"
    tile = find_result(viewer, "tile", "labels")
    assert tile.data.shape == (128, 128) and window_of(tile) is None
    assert 255 not in set(np.unique(tile.data[20:90, 30:110]).tolist())  # all decided
    assert (tile.data[:20] == 255).all() and (tile.data[:, 110:] == 255).all()
    assert not errors(notes)
