"""The whole loop on the sample data, through the docked assistant, as a user would do it.

bootstrap mask -> paint a correction -> mark done -> fine-tune -> pseudo-label the next
image -> review its uncertain regions -> export both -> check the files on disk.
"""

from __future__ import annotations

import json

import numpy as np
import tifffile
from gui_support import GUI_MARKS, TINY_WIDTH, errors, wait_run
from qtpy.QtCore import Qt

from napari_selfloop._sample_data import make_nuclei
from napari_selfloop.cli.gui_cmd import setup_viewer
from napari_selfloop.core.store.autosave import AutosaveStore, proposal_key
from napari_selfloop.core.store.checkpoint import load_checkpoint
from napari_selfloop.widgets._autosave import start_autosave
from napari_selfloop.widgets._layers import camera, find_result
from napari_selfloop.widgets._state import get_state

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def test_whole_loop_on_the_sample(make_napari_viewer, project, notes, qtbot, tmp_path):
    viewer = make_napari_viewer()
    app = setup_viewer(viewer, sample="nuclei", width=TINY_WIDTH)
    state = get_state(viewer)
    first_model = state.model

    # 1. Start without a model: a classical mask of the sample tile.
    start = app.panel("Start")
    assert start.run() and wait_run(qtbot, start.runner).status == "done"
    labels = find_result(viewer, "H&E nuclei", "labels")
    assert labels is not None and labels.data.max() > 1  # one id per nucleus

    # 2. Paint corrections (as the brush would): add a nucleus, erase a false one,
    #    and leave a band not reviewed (255 = ignored by training).
    labels.data[10:20, 10:20] = 1
    labels.data[200:215, 200:215] = 0
    labels.data[:, 240:] = 255
    labels.refresh()

    # 3. Review: mark the corrections done.
    review = app.panel("Review")
    review.labels_combo.set_layer(labels.name)
    review.done_check.setChecked(True)
    finetune = app.panel("Fine-tune")
    assert finetune.labelled_list.item(0).checkState() == Qt.CheckState.Checked  # it follows

    # 4. Fine-tune a few iterations: a new checkpoint version becomes the current model.
    viewer.add_image(make_nuclei(size=160, seed=7)[0], name="next tile")
    finetune.iterations_spin.setValue(4)
    finetune.q_spin.setValue(2)
    finetune.patch_combo.setCurrentText("96")
    assert finetune.start() and wait_run(qtbot, finetune.runner).status == "done"
    v1 = project / "checkpoints" / "model_v1.pt"
    assert v1.exists() and state.checkpoint.path == v1 and state.model is not first_model
    ckpt = load_checkpoint(v1)
    assert {d["name"] for d in ckpt.meta["data"]} == {"H&E nuclei", "next tile"}
    assert finetune.plot.values("loss")
    assert "model_v1.pt" in app.panel("Model").card.text()

    # 5. Pseudo-label the next image with the fine-tuned model (self-loop, Q = 2).
    pseudo = app.panel("Pseudo-label")
    pseudo.image_combo.set_layer("next tile")
    pseudo.q_spin.setValue(2)
    assert pseudo.run() and wait_run(qtbot, pseudo.runner).status == "done"
    next_labels = find_result(viewer, "next tile", "labels")
    assert next_labels.data.shape == (160, 160)
    assert next_labels.metadata["selfloop"]["checkpoint"]["path"] == str(v1)
    assert find_result(viewer, "next tile", "uncertainty") is not None

    # 6. Review the uncertain regions of the new pseudo-label (the panel was told).
    assert app.tabs.tabText(app.tabs.currentIndex()) == "Review"
    assert review.labels_combo.currentText() == next_labels.name
    if review.regions:
        region = review.next_region()
        assert np.allclose(camera(viewer).center[-2:], region.centroid, atol=1.0)
        review.settle(0)
        assert "reviewed" in review.counter.text()

    # 7. Export both images, and autosave.
    export = app.panel("Export")
    out = tmp_path / "export"
    export.folder_edit.setText(str(out))
    assert export.export([labels.name, next_labels.name])
    assert wait_run(qtbot, export.runner).status == "done"
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["entries"]}
    assert set(entries) == {"H&E nuclei", "next tile"}
    assert entries["next tile"]["checkpoint"]["path"] == str(v1)
    mask = tifffile.imread(out / entries["H&E nuclei"]["mask"])
    assert (
        mask.shape == (256, 256)
        and (mask[10:20, 10:20] == 1).all()
        and (mask[:, 240:] == 255).all()
    )
    assert tifffile.imread(out / entries["H&E nuclei"]["instances"]).max() >= 10
    geo = json.loads((out / entries["H&E nuclei"]["geojson"]).read_text())
    assert len(geo["features"]) == entries["H&E nuclei"]["objects"]
    assert start_autosave(viewer).save_now() == 2
    # two corrections, each with the record of its last proposal under its own key
    records = dict(AutosaveStore(project).records())
    corrections = [k for k, m in records.items() if "proposal_of" not in m]
    assert len(corrections) == 2 and len(records) == 4
    assert {m["proposal_of"] for m in records.values() if "proposal_of" in m} == set(corrections)
    assert {proposal_key(k) for k in corrections} == set(records) - set(corrections)
    assert not errors(notes)
