"""The first view of a new user (issue 26): the tile in view after docking, no panel cut
off, colours that read, the correction layer on top after a restore, and a restore that
says so with how to start clean."""

from __future__ import annotations

import numpy as np
import pytest
from gui_support import GUI_MARKS, TINY_WIDTH, errors, wait_run

from napari_selfloop.cli.gui_cmd import first_window_size, setup_viewer
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pseudolabel import UNCERTAIN
from napari_selfloop.core.store.checkpoint import save_checkpoint
from napari_selfloop.widgets._layers import (
    FOREGROUND,
    ROLES,
    camera,
    find_result,
    put_result,
)
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.assistant import whole_view

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)

#: napari's first window without a window manager.
NAPARI_FIRST = (1090, 630)


@pytest.fixture
def tiny_ckpt(tmp_path):
    model = build_model(ModelConfig(width=TINY_WIDTH, dropout=0.2), seed=0)
    return save_checkpoint(tmp_path / "tiny.pt", model)


def _shown(make_napari_viewer, qtbot, size=NAPARI_FIRST):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*size)
    qtbot.wait(50)
    return viewer


def _layer_order(viewer, source):
    index = {role: viewer.layers.index(find_result(viewer, source, role)) for role in ROLES}
    return sorted(ROLES, key=index.get)


@pytest.mark.parametrize("size", [NAPARI_FIRST, (1280, 720), (1920, 1080)])
def test_docking_fits_the_tile_and_no_panel_is_cut_off(
    make_napari_viewer, project, notes, qtbot, tiny_ckpt, size
):
    viewer = _shown(make_napari_viewer, qtbot, size)
    app = setup_viewer(viewer, sample="nuclei", checkpoint=tiny_ckpt, device="cpu")
    # The dock took its share of the canvas; the view is refitted once the window settles.
    qtbot.waitUntil(lambda: whole_view(viewer), timeout=5000)
    qtbot.wait(500)
    assert whole_view(viewer)
    for i in range(app.tabs.count()):
        app.tabs.setCurrentIndex(i)
        qtbot.wait(20)
        scroll = app.tabs.widget(i)
        assert not scroll.horizontalScrollBar().isVisible(), app.tabs.tabText(i)
    app.show_tab("Model")
    qtbot.wait(20)
    model = app.panel("Model")
    scroll = app.tabs.currentWidget()
    button = model.bundled_button
    right = button.mapTo(scroll.viewport(), button.rect().topRight()).x()
    assert button.isVisible() and right < scroll.viewport().width()
    assert model.summary.width() <= scroll.viewport().width()
    assert not errors(notes)


def test_docking_keeps_a_view_the_user_zoomed(make_napari_viewer, project, notes, qtbot):
    from napari_selfloop.widgets.assistant import AssistantWidget

    viewer = _shown(make_napari_viewer, qtbot)
    viewer.add_image(np.zeros((256, 256), np.uint8), name="tile")
    cam = camera(viewer)
    cam.zoom *= 4
    qtbot.wait(20)
    assert not whole_view(viewer)
    zoom = cam.zoom
    viewer.window.add_dock_widget(AssistantWidget(viewer), name="assistant", area="right")
    qtbot.wait(600)
    assert cam.zoom == zoom


def test_a_first_window_fills_most_of_the_screen(make_napari_viewer, qtbot):
    viewer = _shown(make_napari_viewer, qtbot)
    window = viewer.window._qt_window
    assert first_window_size(viewer, saved=(1000, 600)) is None  # the user's size is kept
    area = window.screen().availableGeometry()
    size = first_window_size(viewer, saved=None)
    if size is not None:
        assert size[0] >= 0.9 * area.width() and size[1] >= 0.9 * area.height()
    assert window.width() <= area.width() and window.height() <= area.height()


def test_colours_read_on_stained_tissue(make_napari_viewer, project):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="img", rgb=True)
    mask = np.full((32, 32), UNCERTAIN, np.uint8)
    mask[:10] = FOREGROUND
    labels = put_result(viewer, "img", "labels", mask)
    unc = put_result(viewer, "img", "uncertainty", np.linspace(0, 1, 1024).reshape(32, 32))
    # Uncertain pixels are opaque yellow at full layer opacity (no blend into eosin pink);
    # the foreground is see-through.
    assert labels.opacity == 1.0
    yellow = labels.colormap.map(np.array([UNCERTAIN]))[0]
    cyan = labels.colormap.map(np.array([FOREGROUND]))[0]
    assert yellow[3] == 1.0 and yellow[0] > 0.9 and yellow[1] > 0.8 and yellow[2] < 0.2
    assert 0.3 <= cyan[3] <= 0.7
    # The uncertainty map: transparent where sure, opaque yellow where least sure (no magenta).
    assert unc.blending == "translucent" and unc.opacity == 1.0
    # Shown (under the corrections) with a wide kernel, so thin uncertain rims still show
    # when a whole tile is zoomed out below one screen pixel per image pixel.
    assert unc.visible and unc.interpolation2d == "spline36"
    low, high = unc.colormap.map(np.array([0.0, 1.0]))
    assert low[3] == 0.0 and high[3] == 1.0 and high[2] < 0.2
    # The correction layer stays above the maps made after it.
    assert viewer.layers.index(labels) > viewer.layers.index(unc)


def test_second_launch_restores_says_so_and_keeps_corrections_on_top(
    make_napari_viewer, project, notes, qtbot, tiny_ckpt
):
    first = make_napari_viewer()
    app = setup_viewer(
        first, sample="nuclei", checkpoint=tiny_ckpt, device="cpu", pseudo_label=True
    )
    assert wait_run(qtbot, app.panel("Pseudo-label").runner).status == "done"
    labels = find_result(first, "H&E nuclei", "labels")
    assert _layer_order(first, "H&E nuclei") == ["probability", "uncertainty", "labels"]
    labels.data[:20, :20] = FOREGROUND  # the user's corrections
    labels.refresh()
    assert get_state(first).autosave.save_now(force=True) == 1
    painted = labels.data[:20, :20].copy()
    first.close()
    notes.clear()

    second = make_napari_viewer()
    app = setup_viewer(
        second, sample="nuclei", checkpoint=tiny_ckpt, device="cpu", pseudo_label=True
    )
    assert wait_run(qtbot, app.panel("Pseudo-label").runner).status == "done"
    # The notification says where the corrections came from and how to start clean.
    restored = [str(n.message) for n in notes if "Restored your corrections" in str(n.message)]
    assert len(restored) == 1
    assert "earlier session" in restored[0] and str(project / "autosave") in restored[0]
    assert "To start clean" in restored[0] and "--project" in restored[0]
    # The corrections are kept, and stay on top of the maps made after the restore.
    labels = find_result(second, "H&E nuclei", "labels")
    assert np.array_equal(labels.data[:20, :20], painted)
    assert _layer_order(second, "H&E nuclei") == ["probability", "uncertainty", "labels"]
    assert not errors(notes)
