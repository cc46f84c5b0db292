"""Review panel: ranked uncertain regions and unsure nuclei, Next centres and zooms,
counter, one-click settling (one undo step each), keys."""

from __future__ import annotations

import numpy as np
from gui_support import GUI_MARKS, dock, errors

from napari_selfloop.widgets._layers import camera, put_result, role_of
from napari_selfloop.widgets.review_widget import ReviewWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def _viewer_with_regions(make_napari_viewer):
    """A plain 0/1/255 layer with three uncertain regions and no nuclei."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((120, 160), np.uint8), name="img")
    mask = np.zeros((120, 160), np.uint8)
    unc = np.zeros((120, 160), np.float32)
    mask[10:20, 10:20] = 255  # 100 px at 0.1 -> last
    unc[10:20, 10:20] = 0.1
    mask[80:86, 120:130] = 255  # 60 px at 0.4 -> first
    unc[80:86, 120:130] = 0.4
    mask[50:52, 60:62] = 255  # 4 px at 0.2
    unc[50:52, 60:62] = 0.2
    put_result(viewer, "img", "uncertainty", unc)
    put_result(viewer, "img", "labels", mask, extra_meta={"image_key": "ab"})
    return viewer


def _viewer_with_nuclei(make_napari_viewer):
    """A uint32 layer with five nuclei (ids 1, 2, 3, 4 and 256), an uncertain region
    touching nucleus 1 and one apart from every nucleus."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((120, 160), np.uint8), name="img")
    labels = np.zeros((120, 160), np.uint32)
    unc = np.full((120, 160), 0.02, np.float32)
    for nid, (y, x), u in (
        (1, (10, 10), 0.1),
        (2, (40, 40), 0.6),
        (3, (80, 20), 0.1),
        (256, (60, 100), 0.35),
        (4, (90, 130), 0.1),
    ):
        labels[y : y + 10, x : x + 10] = nid
        unc[y : y + 10, x : x + 10] = u
    labels[20:23, 10:20] = 255  # touches nucleus 1: 30 px at 0.8
    unc[20:23, 10:20] = 0.8
    labels[100:106, 60:66] = 255  # apart: 36 px at 0.5
    unc[100:106, 60:66] = 0.5
    put_result(viewer, "img", "uncertainty", unc)
    put_result(viewer, "img", "labels", labels)
    return viewer


def _undo_restores(layer, before, w, qtbot, index):
    """Ctrl+Z takes the last settle back in one step, and the item is open again."""
    layer.undo()
    assert np.array_equal(layer.data, before)
    qtbot.waitUntil(lambda: index not in w.settled)


def test_nuclei_and_regions_ranked_and_settled_in_one_click(
    make_napari_viewer, project, notes, qtbot
):
    viewer = _viewer_with_nuclei(make_napari_viewer)
    w = dock(viewer, ReviewWidget)
    layer = viewer.layers["img [corrections]"]
    items = w.find_regions()
    # Mean uncertainty of all nucleus pixels is 0.25: nuclei 2 and 256 are above it.
    assert [(it.kind, it.number) for it in items] == [
        ("region", 0),
        ("nucleus", 2),
        ("region", 0),
        ("nucleus", 256),
    ]
    assert [w.region_list.item(i).text() for i in range(4)] == [
        "#1  region  ·  30 px undecided  ·  model 80% unsure",
        "#2  nucleus 2  ·  model 60% unsure",
        "#3  region  ·  36 px undecided  ·  model 50% unsure",
        "#4  nucleus 256  ·  model 35% unsure",
    ]
    assert "0 reviewed (settled), 4 left" in w.counter.text()
    assert not w.fg_button.isEnabled()

    # 1. The region touching nucleus 1: "Region is nucleus" joins it to nucleus 1.
    assert w.next_region() is items[0]
    assert (w.fg_button.text(), w.bg_button.text()) == ("Region is nucleus", "Region is background")
    assert "[Y]" in w.fg_button.toolTip() and "[R]" in w.bg_button.toolTip()
    assert "Item 1 of 4: region · 0 reviewed (settled), 4 left" in w.counter.text()
    (box,) = [la for la in viewer.layers if role_of(la) == "review"]
    assert np.allclose(box.data[0].min(0), (20 - 2.5, 10 - 2.5))
    before = np.array(layer.data, copy=True)
    w.fg_button.click()
    assert (layer.data[20:23, 10:20] == 1).all()
    assert np.array_equal(layer.data[:20], before[:20]) and np.array_equal(
        layer.data[23:], before[23:]
    )
    # ... and moves on to the next item, a nucleus: the buttons say what they do to it.
    assert w.current == 1 and 0 in w.settled
    assert (w.fg_button.text(), w.bg_button.text()) == ("Keep nucleus", "Not a nucleus")
    assert "Item 2 of 4: nucleus 2 · 1 reviewed (settled), 3 left" in w.counter.text()
    assert np.allclose(camera(viewer).center[-2:], (44.5, 44.5), atol=0.6)
    assert w.region_list.item(0).text().endswith("settled ✓")
    _undo_restores(layer, before, w, qtbot, 0)
    w.go_to(0)
    w.fg_button.click()

    # 2. Nucleus 2: "Not a nucleus" deletes it and moves on.
    assert w.current == 1
    before = np.array(layer.data, copy=True)
    w.bg_button.click()
    assert (layer.data[40:50, 40:50] == 0).all() and (layer.data != 2).all()
    assert w.current == 2 and 1 in w.settled
    assert (w.fg_button.text(), w.bg_button.text()) == ("Region is nucleus", "Region is background")
    _undo_restores(layer, before, w, qtbot, 1)
    w.go_to(1)
    w.bg_button.click()

    # 3. The region apart from every nucleus: "Region is nucleus" makes a new nucleus.
    assert w.current == 2
    before = np.array(layer.data, copy=True)
    assert w.settle(True) == 36
    assert (layer.data[100:106, 60:66] == 257).all()  # the next id after 256
    _undo_restores(layer, before, w, qtbot, 2)
    w.go_to(2)
    w.fg_button.click()

    # 4. Nucleus 256: "Keep nucleus" settles it without changing a pixel.
    assert w.current == 3
    before = np.array(layer.data, copy=True)
    w.fg_button.click()
    assert np.array_equal(layer.data, before)
    assert w.region_list.item(3).text().endswith("kept ✓")
    assert "4 reviewed (settled), 0 left" in w.counter.text()
    assert not w.next_button.isEnabled()
    assert any("settled" in str(n.message) for n in notes)
    assert w.next_region() is None
    w.previous_region()
    assert "Item 3 of 4" in w.counter.text()
    assert not errors(notes)


def test_a_nucleus_painted_over_counts_as_settled_and_keys(
    make_napari_viewer, project, notes, qtbot
):
    viewer = _viewer_with_nuclei(make_napari_viewer)
    w = dock(viewer, ReviewWidget)
    layer = viewer.layers["img [corrections]"]
    w.find_regions()
    # The brush takes part of nucleus 256 away: its id is gone from where it was.
    layer.data_setitem(tuple(np.mgrid[60:62, 100:110].reshape(2, -1)), 0)
    qtbot.waitUntil(lambda: 3 in w.settled)
    assert "1 reviewed (settled), 3 left" in w.counter.text()
    # ... and undo opens it again.
    layer.undo()
    qtbot.waitUntil(lambda: 3 not in w.settled)
    # A nucleus growing (a piece joining it) is not settled by that.
    w.go_to(0)
    w.settle(True, advance=False)
    assert 0 in w.settled and not ({1, 2, 3} & w.settled)
    # Keys on the canvas: G goes to the next item, R settles it as background (Not a
    # nucleus), Y as nucleus (Region is nucleus).
    keys = viewer.window._qt_viewer._key_map_handler
    keys.press_key("G")
    assert w.current == 1
    keys.press_key("R")
    assert (layer.data[40:50, 40:50] == 0).all() and w.current == 2
    keys.press_key("Y")
    assert (layer.data[100:106, 60:66] == 257).all() and w.current == 3
    assert not errors(notes)


def test_plain_mask_regions_settle_as_1_and_0(make_napari_viewer, project, notes, qtbot):
    viewer = _viewer_with_regions(make_napari_viewer)
    layer = viewer.layers["img [corrections]"]
    assert layer.data.dtype == np.uint8
    # A nucleus (a piece of 1) next to the first region.
    layer.data[20:25, 10:20] = 1
    w = dock(viewer, ReviewWidget)
    items = w.find_regions()
    # No nucleus ids: only the regions, by mean uncertainty.
    assert [it.bbox for it in items] == [(80, 120, 86, 130), (50, 60, 52, 62), (10, 10, 20, 20)]
    assert w.region_list.item(0).text() == "#1  region  ·  60 px undecided  ·  model 40% unsure"
    assert w.region_list.item(2).text() == "#3  region  ·  100 px undecided  ·  model 10% unsure"
    first = w.next_region()
    assert first is items[0]
    cam = camera(viewer)
    assert np.allclose(cam.center[-2:], (82.5, 124.5), atol=0.6)
    assert cam.zoom > 1  # zoomed in on a small region
    # Visiting a region does not count it as reviewed.
    assert "Item 1 of 3: region · 0 reviewed (settled), 3 left" in w.counter.text()
    # A region apart from every nucleus, settled as nucleus, is painted 1 (a new piece).
    before = np.array(layer.data, copy=True)
    w.fg_button.click()
    assert (layer.data[80:86, 120:130] == 1).all() and set(np.unique(layer.data)) == {0, 1, 255}
    assert w.current == 1 and "1 reviewed (settled), 2 left" in w.counter.text()
    _undo_restores(layer, before, w, qtbot, 0)
    w.go_to(0)
    w.fg_button.click()
    # Painting a region with the brush settles it as well.
    layer.data_setitem(tuple(np.mgrid[50:52, 60:62].reshape(2, -1)), 0)
    qtbot.waitUntil(lambda: 1 in w.settled)
    assert "2 reviewed (settled), 1 left" in w.counter.text()
    # The region touching the nucleus joins it (1); background is 0; one undo each.
    w.go_to(2)
    before = np.array(layer.data, copy=True)
    assert w.settle(1, advance=False) == 100
    assert (layer.data[10:20, 10:20] == 1).all() and set(np.unique(layer.data)) == {0, 1}
    _undo_restores(layer, before, w, qtbot, 2)
    w.bg_button.click()
    assert (layer.data[10:20, 10:20] == 0).all()
    assert "0 left" in w.counter.text() and not w.next_button.isEnabled()
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
    assert w.find_regions() == [] and "Nothing to review" in w.counter.text()
