"""The manifest, the sample data, the writer and the `gui` command (the README's first command)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from gui_support import GUI_MARKS, TINY_WIDTH, errors, wait_run

from napari_selfloop.cli.gui_cmd import setup_viewer
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.store.checkpoint import save_checkpoint
from napari_selfloop.widgets._layers import find_result
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.assistant import AssistantWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)
ROOT = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_and_complete():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(ROOT / "napari.yaml")
    pm.validate_imports()
    contrib = pm.contributions
    assert {w.display_name for w in contrib.widgets} >= {
        "Self-loop assistant",
        "Model",
        "Fine-tune",
    }
    assert {s.key for s in contrib.sample_data} == {"nuclei", "lesion", "ihc", "slide"}
    assert contrib.writers[0].layer_types == ["labels"]


def test_gui_command_opens_a_sample_ready_to_go(make_napari_viewer, project, notes, qtbot):
    viewer = make_napari_viewer()
    assistant = setup_viewer(viewer, sample="nuclei", width=TINY_WIDTH)
    assert isinstance(assistant, AssistantWidget)
    assert "H&E nuclei" in viewer.layers and "H&E nuclei ground truth" in viewer.layers
    assert get_state(viewer).model is not None
    assert assistant.tabs.tabText(assistant.tabs.currentIndex()) == "Start"
    # Ready to go: the Start panel makes a mask of the sample at once.
    start = assistant.panel("Start")
    assert start.image_combo.currentText() == "H&E nuclei"
    assert start.run() and wait_run(qtbot, start.runner).status == "done"
    assert find_result(viewer, "H&E nuclei", "labels") is not None
    assert assistant.tabs.tabText(assistant.tabs.currentIndex()) == "Review"
    assert not errors(notes)


def test_qt_backend_is_the_one_napari_supports(make_napari_viewer, notes):
    """napari runs on PyQt6, so a shown window has no "PyQt5 backend is deprecated" notice."""
    import qtpy

    assert qtpy.API_NAME == "PyQt6"
    make_napari_viewer(show=True)
    assert not [n for n in notes if "deprecated" in str(n.message)]


def test_gui_command_with_checkpoint_and_lesion(make_napari_viewer, project, notes, tmp_path):
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(ModelConfig(width=TINY_WIDTH)))
    viewer = make_napari_viewer()
    assistant = setup_viewer(
        viewer, sample="lesion", checkpoint=ckpt, device="cpu", project=tmp_path / "p"
    )
    assert get_state(viewer).checkpoint.path == ckpt
    assert get_state(viewer).project_dir == tmp_path / "p"
    assert assistant.tabs.tabText(assistant.tabs.currentIndex()) == "Pseudo-label"
    assert assistant.panel("Start").kind_combo.currentData() == "dermoscopy"
    with pytest.raises(InputError):
        setup_viewer(viewer, images=[tmp_path / "missing.png"])


def test_every_widget_and_sample_from_the_manifest(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    for name in (
        "Model",
        "Start without a model",
        "Pseudo-label",
        "Review uncertain regions",
        "Fine-tune",
        "Export and autosave",
    ):
        _, widget = viewer.window.add_plugin_dock_widget("napari-selfloop", name)
        assert widget is not None
    for key in ("nuclei", "lesion", "ihc"):
        viewer.open_sample("napari-selfloop", key)
    assert {"H&E nuclei", "dermoscopy lesion", "IHC (scikit-image)"} <= {
        layer.name for layer in viewer.layers
    }
    assert viewer.layers["IHC (scikit-image)"].rgb
    assert not errors(notes)


def test_writer_saves_labels(make_napari_viewer, project, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((20, 30), np.uint8)
    data[5:10, 5:10] = 1
    data[0, 0] = 255
    layer = viewer.add_labels(data, name="corr")
    written = layer.save(str(tmp_path / "corr.tif"), plugin="napari-selfloop")
    assert written and np.array_equal(tifffile.imread(tmp_path / "corr.tif"), data)


def test_gui_subcommand_is_registered_and_checks_input(tmp_path, capsys):
    from napari_selfloop.cli import build_parser, main

    args = build_parser().parse_args(["gui", "--sample", "nuclei", "--width", "8"])
    assert args.sample == "nuclei" and args.width == 8
    assert main(["gui", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
