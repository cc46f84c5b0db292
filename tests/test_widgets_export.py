"""Export panel: files on disk; autosave while working and restore on reopening."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from gui_support import GUI_MARKS, TINY_WIDTH, dock, errors, small_nuclei, wait_run

from napari_selfloop.widgets._autosave import key_for, start_autosave
from napari_selfloop.widgets._layers import find_result, put_result
from napari_selfloop.widgets.export_widget import ExportWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def _corrections(viewer, name="tile", size=64):
    image = viewer.add_image(small_nuclei(size)[0], name=name)
    mask = np.zeros((size, size), np.uint8)
    mask[5:15, 5:15] = 1
    mask[30:40, 30:50] = 1
    mask[50:55, 50:60] = 255
    return put_result(
        viewer,
        name,
        "labels",
        mask,
        like=image,
        extra_meta={"image_key": key_for(image), "checkpoint": {"path": "m.pt", "sha256": "s"}},
    )


def test_export_writes_files(make_napari_viewer, project, notes, qtbot, tmp_path):
    viewer = make_napari_viewer()
    labels = _corrections(viewer)
    w = dock(viewer, ExportWidget)
    assert w.folder_edit.text() == str(project / "exports")
    out = tmp_path / "exports"
    w.folder_edit.setText(str(out))
    assert w.export() and wait_run(qtbot, w.runner).status == "done"
    mask = tifffile.imread(out / "tile_mask.tif")
    assert np.array_equal(mask, labels.data)
    assert tifffile.imread(out / "tile_instances.tif").max() == 2
    assert len(json.loads((out / "tile.geojson").read_text())["features"]) == 2
    entry = json.loads((out / "manifest.json").read_text())["entries"][0]
    assert (
        entry["checkpoint"]["path"] == "m.pt"
        and entry["image_sha256"] == labels.metadata["selfloop"]["image_key"]
    )
    # "Export all done" with nothing done says so; with one done exports it.
    assert not w.export_done() and "marked done" in errors(notes)[-1]
    labels.metadata["selfloop"]["done"] = True
    w.uncertain_combo.setCurrentIndex(1)  # uncertain -> background
    assert w.export_done() and wait_run(qtbot, w.runner).status == "done"
    assert (tifffile.imread(out / "tile_mask.tif") == 255).sum() == 0


def test_export_to_a_file_path_notifies(make_napari_viewer, project, notes, qtbot, tmp_path):
    viewer = make_napari_viewer()
    _corrections(viewer)
    w = dock(viewer, ExportWidget)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    w.folder_edit.setText(str(blocker))
    assert w.export() and wait_run(qtbot, w.runner).status == "error"
    assert "is a file" in errors(notes)[-1]


def test_autosave_and_restore(make_napari_viewer, project, notes, qtbot):
    viewer = make_napari_viewer()
    labels = _corrections(viewer)
    w = dock(viewer, ExportWidget)
    ctl = start_autosave(viewer)
    assert ctl.timer.isActive() and ctl.timer.interval() <= 60_000
    assert ctl.save_now() == 1
    assert ctl.save_now() == 0  # unchanged: nothing written
    labels.data[0:3, 0:3] = 1  # a correction painted directly into the data
    assert ctl.save_now() == 1
    assert "Autosaved 1 layer" in w.autosave_status.text()
    key = labels.metadata["selfloop"]["image_key"]
    assert (project / "autosave" / f"{key}.tif").exists()
    saved = labels.data.copy()
    # "Crash": the layers are gone; reopening the same pixels under another name restores.
    viewer.layers.clear()
    viewer.add_image(small_nuclei(64)[0], name="reopened")
    restored = find_result(viewer, "reopened", "labels")
    assert restored is not None and np.array_equal(restored.data, saved)
    assert any("Restored your corrections" in str(n.message) for n in notes)
    # A different image does not get them.
    viewer.add_image(small_nuclei(64, seed=5)[0], name="other")
    assert find_result(viewer, "other", "labels") is None
    assert not errors(notes)


def test_autosave_timer_saves_on_its_own(make_napari_viewer, project, notes, qtbot):
    viewer = make_napari_viewer()
    _corrections(viewer)
    ctl = start_autosave(viewer)
    ctl.timer.setInterval(50)
    with qtbot.waitSignal(ctl.saved, timeout=5000):
        pass
    assert list((project / "autosave").glob("*.tif"))


# -- issue 11 -------------------------------------------------------------------------------


def test_gui_with_a_damaged_autosave_docks_and_sets_it_aside(
    make_napari_viewer, notes, qtbot, tmp_path
):
    from napari_selfloop.cli.gui_cmd import setup_viewer
    from napari_selfloop.core.store.autosave import AutosaveStore, image_key
    from napari_selfloop.widgets.assistant import AssistantWidget

    image = small_nuclei(64)[0]
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, image)
    project = tmp_path / "P"
    store = AutosaveStore(project)
    rng = np.random.default_rng(0)
    tif = store.save(image_key(tifffile.imread(path)), rng.integers(0, 2, (64, 64), np.uint8))
    tif.write_bytes(tif.read_bytes()[:-200])  # a truncated save: zlib.error when decoded
    viewer = make_napari_viewer()
    assistant = setup_viewer(viewer, images=[path], project=project, width=TINY_WIDTH)
    assert isinstance(assistant, AssistantWidget)
    assert not tif.exists() and tif.with_name(tif.name + ".damaged").exists()
    assert any("damaged" in str(n.message) for n in notes)
    assert find_result(viewer, "img", "labels") is None
    assert not errors(notes)


def test_large_images_are_hashed_in_the_background(
    make_napari_viewer, project, notes, qtbot, tmp_path, monkeypatch
):
    from napari_selfloop.core.io.images import open_image
    from napari_selfloop.core.store.autosave import AutosaveStore, image_key
    from napari_selfloop.widgets import _autosave

    monkeypatch.setattr(_autosave, "BACKGROUND_HASH_BYTES", 0)
    image = small_nuclei(64)[0]
    tifffile.imwrite(tmp_path / "big.tif", image)
    lazy = open_image(tmp_path / "big.tif")  # memory-mapped
    saved = np.zeros((64, 64), np.uint8)
    saved[3:9, 3:9] = 1
    AutosaveStore(project).save(image_key(image), saved, name="big")
    viewer = make_napari_viewer()
    start_autosave(viewer)
    layer = viewer.add_image(lazy, name="big")
    qtbot.waitUntil(lambda: find_result(viewer, "big", "labels") is not None, timeout=10_000)
    assert np.array_equal(find_result(viewer, "big", "labels").data, saved)
    assert key_for(layer) == image_key(image)
    assert not errors(notes)


def test_export_of_images_with_similar_names_keeps_both(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    a = _corrections(viewer, name="tile 1")
    b = _corrections(viewer, name="tile_1")
    b.data[:] = 0
    w = dock(viewer, ExportWidget)
    out = tmp_path / "exports"
    w.folder_edit.setText(str(out))
    assert w.export([a.name, b.name]) and wait_run(qtbot, w.runner).status == "done"
    entries = json.loads((out / "manifest.json").read_text())["entries"]
    assert sorted(e["name"] for e in entries) == ["tile 1", "tile_1"]
    masks = {e["name"]: tifffile.imread(out / e["mask"]) for e in entries}
    assert np.array_equal(masks["tile 1"], a.data) and not masks["tile_1"].any()
    assert not errors(notes)
