"""Slides in the plugin (issue 9): region-sized results, placed in slide coordinates;
several regions corrected, autosaved by region and exported in slide coordinates."""

from __future__ import annotations

import json
import tracemalloc
import uuid

import dask.array as da
import numpy as np
import pytest
from gui_support import GUI_MARKS, TINY_WIDTH, dock, errors, wait_run
from test_export import rasterise

from napari_selfloop.core.io.windows import Window
from napari_selfloop.core.store.autosave import AutosaveStore
from napari_selfloop.core.store.export import labels_to_mask
from napari_selfloop.widgets._autosave import key_for, save_key, start_autosave
from napari_selfloop.widgets._layers import companion, find_result, put_result, role_of, window_of
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.export_widget import ExportWidget
from napari_selfloop.widgets.model_widget import ModelWidget
from napari_selfloop.widgets.pseudolabel_widget import PseudoLabelWidget
from napari_selfloop.widgets.review_widget import ReviewWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)

TILE = 512


def _texture(block_info=None, factor=1):
    """Pixels of one block of a synthetic slide: pink tissue with purple blobs (level-0 coords)."""
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) * factor
    blob = (np.sin(yy / 23.0) * np.sin(xx / 29.0) > 0.6).astype(np.float32)
    r = 230 - 120 * blob + 10 * np.sin(xx / 7.0)
    g = 180 - 130 * blob
    b = 210 - 40 * blob
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def lazy_slide(size: int = 16384, levels: int = 5) -> list[da.Array]:
    """A pyramid of dask arrays whose tiles are made only when read (nothing held)."""
    out = []
    for k in range(levels):
        side = size // 2**k
        n = -(-side // TILE)
        chunks = ((TILE,) * (n - 1) + (side - TILE * (n - 1),),) * 2 + ((3,),)
        out.append(da.map_blocks(_texture, chunks=chunks, dtype=np.uint8, factor=2**k))
    return out


def _setup(make_napari_viewer, **image_kwargs):
    viewer = make_napari_viewer()
    image = viewer.add_image(lazy_slide(), multiscale=True, rgb=True, name="slide", **image_kwargs)
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    panel = dock(viewer, PseudoLabelWidget)
    panel.method_combo.setCurrentText("softmax")
    return viewer, image, panel


def _rectangle(viewer, y0, x0, y1, x1, scale=1.0):
    return viewer.add_shapes(
        [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) * scale],
        shape_type="rectangle",
        name="rect",
    )


def _messages(notes):
    return [str(n.message) for n in notes]


def test_a_rectangle_and_the_view_of_a_slide_get_region_sized_layers(
    make_napari_viewer, project, notes, qtbot
):
    viewer, image, panel = _setup(make_napari_viewer)
    shapes = _rectangle(viewer, 5000, 6000, 5384, 6384)
    panel.area_combo.setCurrentIndex(2)
    panel.shapes_combo.set_layer(shapes.name)
    tracemalloc.start()
    try:
        assert panel.run()
        assert wait_run(qtbot, panel.runner).status == "done"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Full-size result layers of this slide would take 2.3 GiB (the labels alone 256 MiB);
    # what is traced here is mostly dask making the slide's tiles (and the Model panel's
    # check of the model on the open images), not the results.
    assert peak < 160 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    window = Window(5000, 6000, 384, 384)
    layers = {
        role: find_result(viewer, "slide", role, window)
        for role in ("probability", "uncertainty", "labels")
    }
    for role, layer in layers.items():
        assert layer is not None, role
        assert layer.data.shape == (384, 384), role
        assert tuple(layer.translate) == (5000, 6000) and tuple(layer.scale) == (1, 1)
        assert "[5000:5384, 6000:6384]" in layer.name
    assert layers["probability"].data.nbytes == 384 * 384 * 4
    assert layers["labels"].data.nbytes == 384 * 384 * 4  # uint32 nucleus ids
    proposal = layers["labels"].metadata["selfloop"]["proposal"]
    assert proposal.shape == (384, 384)
    assert any("no pixel size" in m for m in _messages(notes))

    # The current view: zoomed in elsewhere, a second set of layers of the view's size.
    cam = viewer.scene.camera
    cam.center = (12000, 3000)
    cam.zoom = max(viewer.canvas.size) / 300
    panel.area_combo.setCurrentIndex(1)
    y0, x0, y1, x1 = panel.box(image)
    assert 0 < y1 - y0 <= 400 and 0 < x1 - x0 <= 400
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    view = find_result(viewer, "slide", "labels", Window(y0, x0, y1 - y0, x1 - x0))
    assert view is not None and view is not layers["labels"]
    assert view.data.shape == (y1 - y0, x1 - x0) and tuple(view.translate) == (y0, x0)
    assert companion(viewer, view, "uncertainty").data.shape == view.data.shape
    results = [
        layer
        for layer in viewer.layers
        if role_of(layer) in ("probability", "uncertainty", "labels")
    ]
    assert len(results) == 6
    assert all(layer.data.size <= 400 * 400 for layer in results)
    # Re-running the first rectangle updates its layers in place.
    panel.area_combo.setCurrentIndex(2)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    assert find_result(viewer, "slide", "labels", window) is layers["labels"]
    assert len([la for la in viewer.layers if role_of(la) == "labels"]) == 2
    # The whole slide is refused with what to do instead.
    panel.area_combo.setCurrentIndex(0)
    assert not panel.run()
    assert "zoom in" in errors(notes)[-1] and "pseudo-label" in errors(notes)[-1]


def test_a_slide_is_read_at_the_models_pixel_size(make_napari_viewer, project, notes, qtbot):
    viewer, image, panel = _setup(make_napari_viewer, scale=(0.25, 0.25), units=("um", "um"))
    get_state(viewer).checkpoint.meta["pixel_size_um"] = 0.5  # a model trained at 20x
    shapes = _rectangle(viewer, 4001, 8003, 4401, 8403, scale=0.25)  # world units: microns
    panel.area_combo.setCurrentIndex(2)
    panel.shapes_combo.set_layer(shapes.name)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    labels = next(la for la in viewer.layers if role_of(la) == "labels")
    window = window_of(labels)
    # Level 1 (0.5 um/px), snapped to its pixel grid: 201 x 201 of its pixels.
    assert (window.level, window.factor, window.y0, window.x0) == (1, 2.0, 4000, 8002)
    assert labels.data.shape == window.shape == (201, 201)
    assert np.allclose(labels.scale, (0.5, 0.5))
    # Its pixel 0 covers slide pixels 4000-4001: centred at 4000.5 slide pixels, in microns.
    assert np.allclose(labels.translate, (0.25 * 4000.5, 0.25 * 8002.5))
    assert labels.metadata["selfloop"]["pixel_size_um"] == pytest.approx(0.5)
    assert "0.5 µm/px" in panel.runner.status.text()
    assert not any("no pixel size" in m for m in _messages(notes))
    assert not errors(notes)


def _paint(labels, rng):
    """Correct a region like a user: nuclei painted as discs, the rest settled as background."""
    from skimage.draw import disk

    h, w = labels.data.shape
    truth = np.zeros((h, w), np.uint8)
    for _ in range(6):
        rr, cc = disk(
            (rng.integers(10, h - 10), rng.integers(10, w - 10)), rng.integers(4, 9), shape=(h, w)
        )
        truth[rr, cc] = 1
    ys, xs = np.nonzero(np.ones((h, w), bool))
    labels.data_setitem((ys, xs), truth.ravel())  # one undoable stroke
    return truth


def test_regions_are_corrected_autosaved_and_exported_in_slide_coordinates(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    import shapely

    viewer, image, panel = _setup(make_napari_viewer, scale=(0.25, 0.25), units=("um", "um"))
    get_state(viewer).checkpoint.meta["pixel_size_um"] = 0.5
    panel.area_combo.setCurrentIndex(2)
    regions = [(2000, 3000, 2200, 3240), (9000, 500, 9160, 700)]
    for y0, x0, y1, x1 in regions:
        shapes = _rectangle(viewer, y0, x0, y1, x1, scale=0.25)
        panel.shapes_combo.set_layer(shapes.name)
        assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    corrections = [la for la in viewer.layers if role_of(la) == "labels"]
    assert len(corrections) == 2
    rng = np.random.default_rng(0)
    truths = [_paint(layer, rng) for layer in corrections]
    # Review finds what is left uncertain in a region and shows it where it is on the slide.
    review = dock(viewer, ReviewWidget)
    review.labels_combo.set_layer(corrections[0].name)
    corrections[0].data_setitem(tuple(np.mgrid[20:26, 30:36].reshape(2, -1)), 255)
    (left,) = review.find_regions()
    assert left.bbox == (20, 30, 26, 36)
    review.next_region()
    assert np.allclose(viewer.scene.camera.center[-2:], corrections[0].data_to_world((22.5, 32.5)))
    assert review.settle(1) == 36
    truths[0][20:26, 30:36] = 1

    # Autosave: each region on its own, keyed by the slide and the region.
    ctl = start_autosave(viewer)
    assert ctl.save_now() == 2
    slide_key = key_for(image)
    store = AutosaveStore(project)
    records = {k: m for k, m in store.records()}
    for layer in corrections:
        record = records[save_key(layer)]
        assert record["image_key"] == slide_key and Window.from_meta(record["window"]) == window_of(
            layer
        )
    assert ctl.save_now() == 0  # nothing changed since

    # Export: masks of each region with its pixel size; GeoJSON in slide pixels.
    w = dock(viewer, ExportWidget)
    out = tmp_path / "exports"
    w.folder_edit.setText(str(out))
    assert w.object_combo.currentData() == "detection"  # nuclei
    for layer, truth in zip(corrections, truths, strict=True):
        w.labels_combo.set_layer(layer.name)
        assert w.export() and wait_run(qtbot, w.runner).status == "done"
        window = window_of(layer)
        entry = json.loads((out / "manifest.json").read_text())["entries"][-1]
        assert entry["region"]["box"] == list(window.box) and entry[
            "pixel_size_um"
        ] == pytest.approx(0.5)
        features = json.loads((out / entry["geojson"]).read_text())["features"]
        assert features and all(f["properties"]["objectType"] == "detection" for f in features)
        for f in features:
            assert uuid.UUID(f["id"]).version == 4
            assert shapely.geometry.shape(f["geometry"]).is_valid
        # Back to a mask in slide pixels: it is the corrected region, 2 x 2 per region pixel.
        y0, x0, y1, x1 = window.box
        back = rasterise(features, (y1 - y0, x1 - x0), origin=(y0, x0)) > 0
        expected = np.kron(labels_to_mask(np.asarray(layer.data)) == 1, np.ones((2, 2), bool))
        assert np.array_equal(back, expected)
        assert (truth == 1).sum() * 4 == back.sum()

    # Reopening the slide brings both regions back where they were.
    painted = {window_of(la): np.array(la.data) for la in corrections}
    for layer in list(viewer.layers):
        if layer is not image:
            viewer.layers.remove(layer)
    viewer.layers.remove(image)
    again = viewer.add_image(
        lazy_slide(),
        multiscale=True,
        rgb=True,
        name="slide",
        scale=(0.25, 0.25),
        units=("um", "um"),
    )
    qtbot.waitUntil(
        lambda: len([la for la in viewer.layers if role_of(la) == "labels"]) == 2, timeout=20_000
    )
    for layer in (la for la in viewer.layers if role_of(la) == "labels"):
        assert np.array_equal(layer.data, painted[window_of(layer)])
        assert np.allclose(layer.scale, (0.5, 0.5))
    assert key_for(again) == slide_key
    assert not errors(notes)


def test_large_region_labels_autosave_only_the_painted_tiles(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    image = viewer.add_image(lazy_slide(), multiscale=True, rgb=True, name="slide")
    ctl = start_autosave(viewer)
    window = Window(0, 0, 2600, 2600)  # 6.4 MB: saved as 36 tiles
    labels = put_result(
        viewer,
        "slide",
        "labels",
        np.full(window.shape, 255, np.uint8),
        like=image,
        window=window,
        extra_meta={"image_key": key_for(image), "autosave_key": "ab" * 12},
    )
    assert ctl.save_now() == 1
    tiles = project / "autosave" / f"{'ab' * 12}.tiles"
    before = {p.name for p in tiles.iterdir()}
    assert len(before) == 36
    labels.data_setitem((np.array([1300, 1301]), np.array([2000, 2000])), 1)  # a brush stroke
    ctl.timer.stop()
    assert ctl.save_now() == 1
    after = {p.name for p in tiles.iterdir()}
    assert len(after) == 36 and len(after - before) == 1  # one tile rewritten
    assert AutosaveStore(project).load("ab" * 12).labels[1300, 2000] == 1
    # An undo (no paint event) is still saved: a region this size is re-checked whole.
    labels.undo()
    assert ctl.save_now() == 1
    assert AutosaveStore(project).load("ab" * 12).labels[1300, 2000] == 255
    assert not errors(notes)


def test_fine_tuning_uses_the_corrected_regions(make_napari_viewer, project, notes, qtbot):
    from napari_selfloop.widgets.finetune_widget import FineTuneWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(lazy_slide(), multiscale=True, rgb=True, name="slide")
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    key = key_for(image)
    windows = [Window(1000, 1000, 120, 130), Window(4000, 2000, 100, 100, 4.0, 2)]
    for i, window in enumerate(windows):
        mask = np.zeros(window.shape, np.uint8)
        mask[20:60, 30:70] = 1
        put_result(
            viewer,
            "slide",
            "labels",
            mask,
            like=image,
            window=window,
            extra_meta={"image_key": key, "done": i == 0},
        )
    panel = dock(viewer, FineTuneWidget)
    panel.iterations_spin.setValue(2)
    panel.patch_combo.setCurrentText("96")
    labelled = panel._labelled()
    assert [item.image.shape for item in labelled] == [(120, 130, 3)]  # the done region only
    unlabelled = panel._unlabelled(labelled)
    assert [item.image.shape for item in unlabelled] == [(100, 100, 3)]  # never the whole slide
    assert panel.start()
    assert wait_run(qtbot, panel.runner, timeout=300_000).status == "done"
    assert panel.last_checkpoint is not None and panel.last_checkpoint.exists()
    assert not errors(notes)


def test_a_4096_image_in_memory_gets_region_sized_layers(make_napari_viewer, project, notes, qtbot):
    """The case of issue 9: a 384 x 384 rectangle of a 4096 x 4096 layer."""
    viewer = make_napari_viewer()
    image = np.random.default_rng(0).integers(0, 255, (4096, 4096), dtype=np.uint8)
    viewer.add_image(image, name="big", translate=(100, 200))
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    panel = dock(viewer, PseudoLabelWidget)
    panel.method_combo.setCurrentText("softmax")
    shapes = _rectangle(viewer, 1100, 2200, 1484, 2584)  # world: the layer starts at (100, 200)
    panel.area_combo.setCurrentIndex(2)
    panel.shapes_combo.set_layer(shapes.name)
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    results = [
        la for la in viewer.layers if role_of(la) in ("probability", "uncertainty", "labels")
    ]
    assert len(results) == 3
    for layer in results:
        assert layer.data.shape == (384, 384)
        assert tuple(layer.translate) == (1100, 2200)  # the image's translate and the box
    assert not errors(notes)


def test_a_jpeg_slide_opens_lazily_and_pseudo_labels_its_view_only(
    make_napari_viewer, project, notes, qtbot, synthetic_slide
):
    """Opening a JPEG pyramidal TIFF with the plugin's reader: quick, lazy; the view only."""
    import time

    viewer = make_napari_viewer()
    dock(viewer, ModelWidget).new_model(width=TINY_WIDTH)
    get_state(viewer).checkpoint.meta["pixel_size_um"] = 0.25  # the slide's
    panel = dock(viewer, PseudoLabelWidget)
    panel.method_combo.setCurrentText("softmax")
    t0 = time.perf_counter()
    (image,) = viewer.open(str(synthetic_slide), plugin="napari-selfloop")
    qtbot.wait(50)  # let the canvas draw it
    assert time.perf_counter() - t0 < 5.0
    assert image.multiscale and all(type(level) is not np.ndarray for level in image.data)
    # Opened again with its memory traced (slower): nothing near the slide's size is read.
    viewer.layers.remove(image)
    tracemalloc.start()
    try:
        (image,) = viewer.open(str(synthetic_slide), plugin="napari-selfloop")
        qtbot.wait(50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # level 0 alone is 48 MiB
    assert np.allclose(image.scale, (0.25, 0.25))
    cam = viewer.scene.camera
    cam.center = (2048 * 0.25, 2500 * 0.25)
    cam.zoom = max(viewer.canvas.size) / (300 * 0.25)
    panel.area_combo.setCurrentIndex(1)
    y0, x0, y1, x1 = panel.box(image)
    assert 0 < (y1 - y0) * (x1 - x0) <= 300 * 300
    assert panel.run() and wait_run(qtbot, panel.runner).status == "done"
    window = Window(y0, x0, y1 - y0, x1 - x0)
    for role in ("probability", "uncertainty", "labels"):
        layer = find_result(viewer, image.name, role, window)
        assert layer.data.shape == (y1 - y0, x1 - x0)
        assert np.allclose(layer.translate, (y0 * 0.25, x0 * 0.25))
        assert np.allclose(layer.scale, (0.25, 0.25))
    assert "0.25 µm/px" in panel.runner.status.text()
    assert not errors(notes)
