"""Review panel: ranked uncertain regions, Next centres and zooms, counter, settle."""

from __future__ import annotations

import numpy as np
from gui_support import GUI_MARKS, dock, errors

from napari_selfloop.widgets._layers import camera, put_result
from napari_selfloop.widgets.review_widget import ReviewWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def _viewer_with_corrections(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((120, 160), np.uint8), name="img")
    mask = np.zeros((120, 160), np.uint8)
    unc = np.zeros((120, 160), np.float32)
    mask[10:20, 10:20] = 255  # 100 px x 0.1 = 10
    unc[10:20, 10:20] = 0.1
    mask[80:86, 120:130] = 255  # 60 px x 0.4 = 24 -> first
    unc[80:86, 120:130] = 0.4
    mask[50:52, 60:62] = 255  # 4 px x 0.2 -> last
    unc[50:52, 60:62] = 0.2
    put_result(viewer, "img", "uncertainty", unc)
    put_result(viewer, "img", "labels", mask, extra_meta={"image_key": "ab"})
    return viewer


def test_next_region_centres_zooms_and_counts(make_napari_viewer, project, notes, qtbot):
    viewer = _viewer_with_corrections(make_napari_viewer)
    w = dock(viewer, ReviewWidget)
    regions = w.find_regions()
    assert [r.bbox for r in regions] == [(80, 120, 86, 130), (10, 10, 20, 20), (50, 60, 52, 62)]
    assert "0 reviewed (settled), 3 left" in w.counter.text()
    # The list says what its numbers are: undecided pixels, and how unsure on average.
    assert w.region_list.item(0).text() == "#1  60 px undecided  ·  model 40% unsure"
    assert w.region_list.item(1).text() == "#2  100 px undecided  ·  model 10% unsure"
    first = w.next_region()
    assert first is regions[0]
    cam = camera(viewer)
    assert np.allclose(cam.center[-2:], (82.5, 124.5), atol=0.6)
    assert cam.zoom > 1  # zoomed in on a small region
    # Visiting a region does not count it as reviewed.
    assert (
        "Region 1 of 3" in w.counter.text() and "0 reviewed (settled), 3 left" in w.counter.text()
    )
    w.next_button.click()
    assert w.current == 1 and np.allclose(cam.center[-2:], (14.5, 14.5), atol=0.6)
    # Settling sets the region's yellow pixels, counts it, and moves on to the next one.
    assert w.settle(1) == 100
    labels = viewer.layers["img [corrections]"]
    assert (labels.data[10:20, 10:20] == 1).all()
    assert w.current == 2 and "Region 3 of 3 · 1 reviewed (settled), 2 left" in w.counter.text()
    assert w.region_list.item(1).text().endswith("settled ✓")
    assert np.allclose(cam.center[-2:], (50.5, 60.5), atol=0.6)
    # Painting the rest of a region with the brush settles it as well.
    labels.data_setitem(tuple(np.mgrid[50:52, 60:62].reshape(2, -1)), 0)
    qtbot.waitUntil(lambda: 2 in w.settled)
    assert "2 reviewed (settled), 1 left" in w.counter.text()
    # The last one, by its button: nothing is left, and the panel says what to do next.
    w.go_to(0)
    w.bg_button.click()
    assert (labels.data[80:86, 120:130] == 0).all()
    assert "0 left" in w.counter.text() and not w.next_button.isEnabled()
    assert any("settled" in n.message for n in notes)
    assert w.next_region() is None
    w.go_to(2)
    w.previous_region()
    assert "Region 2 of 3" in w.counter.text()
    # A fresh search finds nothing left to settle.
    assert w.find_regions() == []
    assert not errors(notes)


def test_done_flag_and_no_layer(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    w = dock(viewer, ReviewWidget)
    assert w.find_regions() == []
    assert "no correction layer" in errors(notes)[-1]
    viewer.add_image(np.zeros((30, 30), np.uint8), name="img")
    put_result(viewer, "img", "labels", np.zeros((30, 30), np.uint8))
    w.labels_combo.set_layer("img [corrections]")
    w.done_check.setChecked(True)
    assert viewer.layers["img [corrections]"].metadata["selfloop"]["done"] is True
    assert w.find_regions() == [] and "No uncertain regions" in w.counter.text()
