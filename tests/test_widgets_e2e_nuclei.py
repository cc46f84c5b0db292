"""Correcting nuclei, end to end, as a pathologist would through the docked assistant.

pseudo-label the sample with the bundled nuclei model -> split a merged pair, delete a
false nucleus, add a missed one (the nucleus tools, by mouse presses) -> mark done ->
fine-tune -> export -> the instances TIFF and the GeoJSON hold exactly the user's nuclei
-> close the viewer; a new one restores the same ids from autosave.
"""

from __future__ import annotations

import json

import numpy as np
import tifffile
from gui_support import GUI_MARKS, errors, wait_run
from scipy import ndimage as ndi
from test_widgets_nuclei_tools import press

from napari_selfloop.cli.gui_cmd import setup_viewer
from napari_selfloop.core.engine.pseudolabel import UNCERTAIN
from napari_selfloop.widgets._autosave import start_autosave
from napari_selfloop.widgets._layers import find_result
from napari_selfloop.widgets._state import get_state

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)

IMAGE = "H&E nuclei"


def ids_of(data: np.ndarray) -> set[int]:
    return set(np.unique(data).tolist()) - {0, UNCERTAIN}


def far_apart_inside(pixels: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two pixels of an object, near the two ends of its long axis (where a person would
    click the two nuclei of a merged pair)."""
    ys, xs = np.nonzero(pixels)
    pts = np.stack([ys, xs], 1).astype(float)
    centred = pts - pts.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    along = centred @ axis
    lo, hi = np.quantile(along, [0.15, 0.85])
    a = pts[np.argmin(np.abs(along - lo))]
    b = pts[np.argmin(np.abs(along - hi))]
    return (int(a[0]), int(a[1])), (int(b[0]), int(b[1]))


def test_correct_nuclei_fine_tune_export_and_restore(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    app = setup_viewer(viewer, sample="nuclei", checkpoint="nuclei-he", device="cpu")
    pseudo = app.panel("Pseudo-label")
    pseudo.method_combo.setCurrentText("softmax")
    assert pseudo.run() and wait_run(qtbot, pseudo.runner).status == "done"
    labels = find_result(viewer, IMAGE, "labels")
    data = np.asarray(labels.data)
    proposed = ids_of(data)
    assert labels.data.dtype == np.uint32 and len(proposed) >= 10  # one id per nucleus

    tools = app.tools
    areas = {i: int((data == i).sum()) for i in proposed}
    # 1. Split the largest object (a merged pair, as the user sees it) between its ends.
    pair = max(areas, key=areas.get)
    first, second = far_apart_inside(data == pair)
    tools.set_tool("split")
    press(labels, *first)
    press(labels, *second)
    other = int(labels.data[second])
    assert labels.data[first] == pair and other not in proposed | {0, UNCERTAIN}
    # 2. Delete the smallest object (a false nucleus).
    false = min((i for i in proposed if i != pair), key=areas.get)
    at = tuple(int(v) for v in np.argwhere(labels.data == false)[0])
    tools.set_tool("delete")
    press(labels, *at)
    assert false not in ids_of(labels.data)
    # 3. Add a missed nucleus where there is nothing, far from every nucleus.
    free = np.asarray(labels.data) == 0
    where = np.unravel_index(np.argmax(ndi.distance_transform_edt(free)), free.shape)
    tools.set_tool("add")
    press(labels, *where)
    added = int(labels.data[where])
    assert added not in proposed | {0, UNCERTAIN, other}
    tools.set_tool(None)
    expected = (proposed - {false}) | {other, added}
    assert ids_of(labels.data) == expected
    corrected = np.array(labels.data)

    # 4. Mark done, fine-tune a few steps: the corrections are what it learns from.
    app.panel("Review").labels_combo.set_layer(labels.name)
    app.panel("Review").done_check.setChecked(True)
    finetune = app.panel("Fine-tune")
    finetune.iterations_spin.setValue(2)
    finetune.patch_combo.setCurrentText("96")
    assert finetune.start() and wait_run(qtbot, finetune.runner, 300_000).status == "done"
    new_model = finetune.last_checkpoint
    assert new_model is not None and new_model.exists()
    assert get_state(viewer).checkpoint.path == new_model
    np.testing.assert_array_equal(labels.data, corrected)

    # 5. Export: the instances and the GeoJSON are exactly the user's nuclei.
    export = app.panel("Export")
    out = tmp_path / "export"
    export.folder_edit.setText(str(out))
    assert export.export([labels.name]) and wait_run(qtbot, export.runner).status == "done"
    entry = json.loads((out / "manifest.json").read_text())["entries"][0]
    instances = tifffile.imread(out / entry["instances"])
    assert ids_of(instances) == expected and entry["objects"] == len(expected)
    for i in (pair, other, added):
        np.testing.assert_array_equal(instances == i, corrected == i)
    features = json.loads((out / entry["geojson"]).read_text())["features"]
    assert len(features) == len(expected)
    assert {int(f["properties"]["name"]) for f in features} == expected
    assert {f["properties"]["measurements"]["Label"] for f in features} == expected
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    mask = tifffile.imread(out / entry["mask"])
    np.testing.assert_array_equal(mask == 1, np.isin(corrected, list(expected)))

    # 6. Autosave, close, open again: the same ids come back.
    assert start_autosave(viewer).save_now(force=True) >= 1
    viewer.close()
    again = make_napari_viewer()
    setup_viewer(again, sample="nuclei", checkpoint="nuclei-he", device="cpu")
    restored = find_result(again, IMAGE, "labels")
    assert restored is not None and restored.data.dtype == np.uint32
    np.testing.assert_array_equal(restored.data, corrected)
    assert not errors(notes)
