"""Two windows (in one napari, or two napari processes) on one image and one project:
neither replaces the other's autosave; the second is told; both come back (issue 27)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from gui_support import GUI_MARKS, errors, small_nuclei

from napari_selfloop.core.store.autosave import AutosaveStore, image_key
from napari_selfloop.widgets._autosave import OTHER_WINDOW, key_for, start_autosave
from napari_selfloop.widgets._layers import find_result, is_correction, put_result

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def _mask(value: int, size: int = 64) -> np.ndarray:
    mask = np.full((size, size), 255, np.uint8)
    mask[value : value + 10, 5:20] = 1
    mask[40:50, value : value + 5] = 0
    return mask


def _open(make_napari_viewer, name="tile"):
    viewer = make_napari_viewer()
    ctl = start_autosave(viewer)
    image = viewer.add_image(small_nuclei(64)[0], name=name)
    return viewer, ctl, image


def _correct(viewer, image, mask):
    layer = find_result(viewer, image.name, "labels")
    if layer is None:
        return put_result(
            viewer,
            image.name,
            "labels",
            mask.copy(),
            like=image,
            extra_meta={"image_key": key_for(image)},
        )
    layer.data = mask.copy()
    return layer


def _warnings(notes, words):
    return [str(n.message) for n in notes if words in str(n.message)]


def test_two_viewers_on_one_image_keep_both_autosaves(make_napari_viewer, project, notes, qtbot):
    project.mkdir()
    key = image_key(small_nuclei(64)[0])
    v1, c1, img1 = _open(make_napari_viewer)
    assert not _warnings(notes, "is open in")
    v2, c2, img2 = _open(make_napari_viewer)
    told = _warnings(notes, "is open in another window of this napari")
    assert len(told) == 1 and "'tile'" in told[0] and "autosaved separately" in told[0]
    first, second = _mask(3), _mask(20)
    _correct(v1, img1, first)
    _correct(v2, img2, second)
    assert c1.save_now() == 1 and c2.save_now() == 1
    store = AutosaveStore(project)
    assert np.array_equal(store.load(key).labels, first)  # the second did not replace it
    ((skey, meta),) = store.session_saves(key)
    assert meta["session"] == c2.session and np.array_equal(store.load(skey).labels, second)
    # The second window keeps its own key, also after the first window has closed.
    v1.close()
    _correct(v2, img2, _mask(30))
    assert c2.save_now() == 1
    assert np.array_equal(store.load(key).labels, first)
    assert np.array_equal(store.load(skey).labels, _mask(30))
    v2.close()
    # Reopened: the first window's work is the correction layer, the second's is offered.
    v3, c3, img3 = _open(make_napari_viewer, name="again")
    restored = find_result(v3, "again", "labels")
    assert np.array_equal(restored.data, first)
    (other,) = [layer for layer in v3.layers if OTHER_WINDOW in layer.metadata]
    assert np.array_equal(other.data, _mask(30)) and not is_correction(other)
    assert "from another window" in other.name
    offered = _warnings(notes, "Another window autosaved other corrections for 'again'")
    assert len(offered) == 1 and other.name in offered[0]
    # Edits to the offered layer are saved under its own key; deleting the layer discards it.
    other.data = _mask(33)
    assert c3.save_now() == 1
    assert np.array_equal(store.load(skey).labels, _mask(33))
    assert store.session_saves(key)[0][1]["session_of"] == key
    v3.layers.remove(other)
    qtbot.waitUntil(lambda: store.load(skey) is None, timeout=5000)
    assert store.session_saves(key) == [] and np.array_equal(store.load(key).labels, first)
    assert not errors(notes)


def test_closing_a_window_keeps_the_offered_corrections(make_napari_viewer, project, notes, qtbot):
    project.mkdir()
    key = image_key(small_nuclei(64)[0])
    v1, c1, img1 = _open(make_napari_viewer)
    v2, c2, img2 = _open(make_napari_viewer)
    _correct(v1, img1, _mask(3))
    _correct(v2, img2, _mask(20))
    assert c1.save_now() == 1 and c2.save_now() == 1
    v1.close()
    v2.close()
    v3, c3, _ = _open(make_napari_viewer)
    assert any(OTHER_WINDOW in layer.metadata for layer in v3.layers)
    v3.close()  # closing removes every layer: that is not deleting the offered one
    qtbot.wait(50)
    store = AutosaveStore(project)
    assert len(store.session_saves(key)) == 1
    assert np.array_equal(store.load(key).labels, _mask(3))
    assert not errors(notes)


_OTHER_NAPARI = textwrap.dedent(
    """
    import sys
    import numpy as np
    import napari
    from napari_selfloop._sample_data import make_nuclei
    from napari_selfloop.widgets._autosave import key_for, start_autosave
    from napari_selfloop.widgets._layers import put_result

    viewer = napari.Viewer(show=False)
    ctl = start_autosave(viewer)
    image = viewer.add_image(make_nuclei(size=64, seed=0)[0], name="tile")
    mask = np.full((64, 64), 255, np.uint8)
    mask[7:17, 5:20] = 1
    put_result(viewer, "tile", "labels", mask, like=image,
               extra_meta={"image_key": key_for(image)})
    assert ctl.save_now() == 1
    print("ready", flush=True)
    sys.stdin.readline()  # held open until the test kills it (a crash)
    """
)


def test_a_second_napari_process_is_told_and_neither_loses_work(
    make_napari_viewer, project, notes, qtbot
):
    project.mkdir()
    key = image_key(small_nuclei(64)[0])
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER_NAPARI],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = other.stdout.readline()
        assert line.strip() == "ready", other.stderr.read() if other.poll() is not None else line
        theirs = AutosaveStore(project).load(key).labels
        viewer, ctl, image = _open(make_napari_viewer)
        told = _warnings(notes, f"is open in another napari (process {other.pid})")
        assert len(told) == 1
        # It starts from the other window's last save, and saves beside it.
        layer = find_result(viewer, "tile", "labels")
        assert np.array_equal(layer.data, theirs)
        mine = _mask(25)
        layer.data = mine.copy()
        assert ctl.save_now() == 1
        store = AutosaveStore(project)
        assert np.array_equal(store.load(key).labels, theirs)
        ((skey, _),) = store.session_saves(key)
        assert np.array_equal(store.load(skey).labels, mine)
    finally:
        other.kill()  # the other napari crashes: its claim goes with it
        other.communicate(timeout=60)
    viewer.close()
    v2, _, _ = _open(make_napari_viewer)
    assert np.array_equal(find_result(v2, "tile", "labels").data, theirs)
    (offered,) = [layer for layer in v2.layers if OTHER_WINDOW in layer.metadata]
    assert np.array_equal(offered.data, mine)
    assert not errors(notes)


def test_a_session_save_alone_becomes_the_correction_layer(
    make_napari_viewer, project, notes, qtbot
):
    project.mkdir()
    key = image_key(small_nuclei(64)[0])
    holder = AutosaveStore(project).claim(key, "elsewhere")  # a window that never saved
    v1, c1, img1 = _open(make_napari_viewer)
    _correct(v1, img1, _mask(11))
    assert c1.save_now() == 1
    holder.release()
    v1.close()
    store = AutosaveStore(project)
    assert store.load(key) is None and len(store.session_saves(key)) == 1
    v2, _, _ = _open(make_napari_viewer, name="back")
    layer = find_result(v2, "back", "labels")
    assert layer is not None and np.array_equal(layer.data, _mask(11))
    assert not [x for x in v2.layers if OTHER_WINDOW in x.metadata]
    assert np.array_equal(store.load(key).labels, _mask(11)) and store.session_saves(key) == []
    assert any("that another window autosaved" in str(n.message) for n in notes)
    assert not errors(notes)
