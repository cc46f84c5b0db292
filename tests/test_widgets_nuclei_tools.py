"""Nucleus tools on a real viewer: each tool through a real mouse press on the correction
layer, the layer's ids afterwards, and napari's undo restoring the state before."""

from __future__ import annotations

import numpy as np
import pytest
from gui_support import GUI_MARKS, dock
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_press_callbacks
from napari.utils.key_bindings import coerce_keybinding

from napari_selfloop.core.engine.pseudolabel import UNCERTAIN
from napari_selfloop.widgets._layers import find_result, propose_labels
from napari_selfloop.widgets.nuclei_tools import NucleusTools

pytestmark = GUI_MARKS


class _Press:
    """The fields of napari's mouse press event that a layer's drag callbacks read."""

    def __init__(self, position):
        self.type = "mouse_press"
        self.is_dragging = False
        self.position = position
        self.view_direction = None
        self.dims_displayed = (0, 1)
        self.dims_point = (0, 0)
        self.button = 1
        self.modifiers = ()
        self.handled = False


def press(layer, y: float, x: float) -> None:
    """A left click at data pixel (y, x), through the layer's own mouse callbacks."""
    mouse_press_callbacks(layer, ReadOnlyWrapper(_Press(tuple(layer.data_to_world((y, x))))))


def _nuclei_mask():
    """Two touching nuclei (a merged pair in the proposal), one apart, an uncertain rim."""
    mask = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    pair = ((yy - 20) ** 2 + (xx - 16) ** 2 <= 36) | ((yy - 20) ** 2 + (xx - 27) ** 2 <= 36)
    lone = (yy - 45) ** 2 + (xx - 45) ** 2 <= 25
    mask[pair | lone] = 1
    mask[58:62, 2:8] = UNCERTAIN
    return mask


@pytest.fixture
def setup(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    layer = propose_labels(viewer, "img", _nuclei_mask()).layer
    prob = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    prob[(yy - 45) ** 2 + (xx - 12) ** 2 <= 16] = 0.9  # a nucleus the proposal missed
    viewer.add_image(
        prob,
        name="img [probability]",
        metadata={"selfloop": {"role": "probability", "source": "img"}},
    )
    tools = dock(viewer, NucleusTools)
    viewer.layers.selection.active = layer
    return viewer, layer, tools


def _ids(layer) -> set[int]:
    values = set(np.unique(layer.data).tolist())
    return values - {0, UNCERTAIN}


def test_the_proposal_has_one_id_per_nucleus(setup):
    viewer, layer, tools = setup
    assert layer.data.dtype == np.uint32
    assert _ids(layer) == {1, 2}  # the merged pair is one nucleus, the lone one another
    assert find_result(viewer, "img", "labels") is layer


def test_delete_and_undo(setup):
    viewer, layer, tools = setup
    before = np.array(layer.data)
    tools.set_tool("delete")
    assert layer.mode == "pan_zoom"
    lone = int(layer.data[45, 45])
    press(layer, 45, 45)
    assert lone not in _ids(layer) and layer.data[45, 45] == 0
    assert "Deleted nucleus" in tools.status.text()
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_split_by_two_clicks_and_undo(setup):
    viewer, layer, tools = setup
    before = np.array(layer.data)
    pair = int(layer.data[20, 16])
    tools.set_tool("split")
    press(layer, 20, 14)
    assert "now click" in tools.status.text()
    press(layer, 20, 29)
    left, right = int(layer.data[20, 14]), int(layer.data[20, 29])
    assert left == pair and right not in (0, pair, UNCERTAIN)
    assert _ids(layer) == {1, 2, right}
    # the cut is at the neck between the two discs (x 21-22)
    assert set(np.unique(layer.data[20, 10:21]).tolist()) == {pair}
    assert set(np.unique(layer.data[20, 23:33]).tolist()) == {right}
    assert layer.selected_label == right
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_merge_two_nuclei_and_undo(setup):
    viewer, layer, tools = setup
    before = np.array(layer.data)
    pair = int(layer.data[20, 16])
    tools.set_tool("merge")
    press(layer, 20, 16)
    press(layer, 45, 45)
    assert _ids(layer) == {pair} and layer.data[45, 45] == pair
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_add_grows_from_the_probability_or_a_disc(setup):
    viewer, layer, tools = setup
    before = np.array(layer.data)
    tools.set_tool("add")
    press(layer, 45, 12)
    new = int(layer.data[45, 12])
    assert new not in (0, UNCERTAIN) and new not in before
    grown = layer.data == new
    # the model's blob (a disc of radius 4: 49 pixels), not a guess
    assert grown.sum() == 49 and "model's probability" in tools.status.text()
    press(layer, 5, 55)  # the model sees nothing there: a small disc
    disc = int(layer.data[5, 55])
    assert disc not in (0, UNCERTAIN, new) and "disc" in tools.status.text()
    press(layer, 45, 45)  # on a nucleus: refused, nothing changes
    assert "already nucleus" in tools.status.text()
    layer.undo()
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_mark_uncertain_and_undo(setup):
    viewer, layer, tools = setup
    before = np.array(layer.data)
    tools.set_tool("uncertain")
    press(layer, 45, 45)
    assert layer.data[45, 45] == UNCERTAIN and _ids(layer) == {1}
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_clicks_off_a_nucleus_say_why_and_change_nothing(setup):
    viewer, layer, tools = setup
    before = np.array(layer.data)
    for tool in ("delete", "split", "merge", "uncertain"):
        tools.set_tool(tool)
        press(layer, 2, 60)
        assert "no nucleus at pixel" in tools.status.text(), tool
    tools.set_tool("split")
    press(layer, 20, 16)
    press(layer, 45, 45)  # the second click on another nucleus
    assert "not part of it" in tools.status.text()
    np.testing.assert_array_equal(layer.data, before)
    tools.set_tool(None)
    press(layer, 45, 45)  # no tool: a click does nothing
    np.testing.assert_array_equal(layer.data, before)


def test_shortcuts_and_brushes(setup):
    viewer, layer, tools = setup

    def key(name):
        layer.keymap[coerce_keybinding(name)](layer)

    for name in ("D", "S", "J", "A", "U", "N", "K"):
        assert coerce_keybinding(name) in layer.keymap, name
    key("D")
    assert tools.tool == "delete" and tools.buttons["delete"].isChecked()
    key("D")  # the same key again: off
    assert tools.tool is None and not tools.buttons["delete"].isChecked()
    key("N")
    assert layer.mode == "paint" and layer.selected_label == 3
    key("S")
    assert tools.tool == "split" and layer.mode == "pan_zoom"
    layer.mode = "paint"  # choosing napari's own tool switches ours off
    assert tools.tool is None
    key("K")
    assert layer.selected_label == UNCERTAIN and layer.mode == "paint"
    for name, shortcut in (("delete", "D"), ("split", "S"), ("new", "N"), ("uncertain_brush", "K")):
        assert f"Shortcut: {shortcut}" in tools.buttons[name].toolTip()
    assert "yellow = uncertain" in tools.legend.text()


def test_a_new_proposal_keeps_the_nuclei_the_user_edited(setup):
    viewer, layer, tools = setup
    pair = int(layer.data[20, 16])
    tools.set_tool("split")
    press(layer, 20, 14)
    press(layer, 20, 29)
    right = int(layer.data[20, 29])
    tools.set_tool("delete")
    press(layer, 45, 45)
    edited = np.array(layer.data)
    # The same proposal again (a re-run): the split pair keeps both ids, the deleted nucleus
    # stays deleted, the uncertain rim the user never touched is proposed again.
    merge = propose_labels(viewer, "img", _nuclei_mask())
    assert merge.layer is layer
    np.testing.assert_array_equal(layer.data == pair, edited == pair)
    np.testing.assert_array_equal(layer.data == right, edited == right)
    assert layer.data[45, 45] == 0
    assert (layer.data[58:62, 2:8] == UNCERTAIN).all()


def test_tools_work_on_a_region_placed_over_a_slide(setup):
    """A region's correction layer is scaled and translated over its slide: a click in the
    slide's coordinates edits the nucleus under it."""
    viewer, layer, tools = setup
    layer.scale = (4.0, 4.0)
    layer.translate = (5000.0, 6000.0)
    tools.set_tool("delete")
    lone = int(layer.data[45, 45])
    event = _Press((5000.0 + 4 * 45, 6000.0 + 4 * 45))  # the slide's full-resolution pixels
    mouse_press_callbacks(layer, ReadOnlyWrapper(event))
    assert lone not in _ids(layer)
