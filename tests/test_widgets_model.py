"""Model panel: load a checkpoint, new model, device, model card; bad files notify;
the jigsaw line (at-chance warning) and jigsaw pre-training (new version, Cancel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_state, state_snapshot
from gui_support import (
    GUI_MARKS,
    TINY_WIDTH,
    dock,
    errors,
    fake_stack,
    small_nuclei,
    wait_run,
)

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pretrain import PretrainConfig, at_chance
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from napari_selfloop.widgets._jigsaw import (
    AT_CHANCE_WARNING,
    CHECK_PUZZLES,
    check_patch,
    segmentation_trained,
)
from napari_selfloop.widgets._state import get_state
from napari_selfloop.widgets.model_widget import ModelWidget

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def test_new_model_and_card(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    assert "No model yet" in w.card.text()
    ckpt = w.new_model(width=TINY_WIDTH)
    state = get_state(viewer)
    assert state.checkpoint is ckpt and state.model.config.width == TINY_WIDTH
    assert "not trained yet" in w.card.text() and "not saved yet" in w.card.text()
    assert not errors(notes)


def test_load_checkpoint_and_ensemble(make_napari_viewer, project, notes, tmp_path):
    path = save_checkpoint(
        tmp_path / "m.pt",
        build_model(ModelConfig(width=TINY_WIDTH), seed=1),
        metrics={"val_f1": 0.71},
        data=[{"name": "a.png", "sha256": "x"}],
    )
    other = save_checkpoint(tmp_path / "n.pt", build_model(ModelConfig(width=TINY_WIDTH), seed=2))
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    assert w.load(path) is not None
    state = get_state(viewer)
    assert state.checkpoint.path == path
    text = w.card.text()
    assert "m.pt" in text and "a.png" in text and "val_f1 0.71" in text
    assert w.add_to_ensemble(other) is not None and len(state.ensemble) == 1
    assert "current + 1" in w.ensemble_label.text()
    assert not errors(notes)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "pickle", "truncated"])
def test_unreadable_checkpoint_notifies(make_napari_viewer, project, notes, tmp_path, content):
    bad = tmp_path / "bad.pt"
    if content == "pickle":
        torch.save({"model": object.__new__(ModelConfig)}, bad)
    elif content == "truncated":
        save_checkpoint(bad, build_model(ModelConfig(width=TINY_WIDTH)))
        bad.write_bytes(bad.read_bytes()[:2000])
    else:
        bad.write_bytes(content)
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    w.new_model(width=TINY_WIDTH)
    before = get_state(viewer).checkpoint
    assert w.load(bad) is None
    assert get_state(viewer).checkpoint is before  # the current model stays
    assert errors(notes) and "Could not load the checkpoint" in errors(notes)[-1]
    assert w.load(tmp_path / "missing.pt") is None


def test_device_choice(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    w.device_combo.setCurrentText("cpu")
    assert get_state(viewer).device == "cpu"
    if not torch.cuda.is_available():
        w.device_combo.setCurrentText("cuda")
        assert get_state(viewer).device == "cpu" and w.device_combo.currentText() == "cpu"
        assert "no CUDA GPU" in errors(notes)[-1]


# -- the jigsaw line and jigsaw pre-training ------------------------------------------------


def warnings(notes) -> list[str]:
    return [
        str(n.message) for n in notes if str(getattr(n, "severity", "")).lower().endswith("warning")
    ]


def _jigsaw_viewer(make_napari_viewer, *, gray=False):
    viewer = make_napari_viewer()
    viewer.add_image(small_nuclei(96)[0], name="tile")
    if gray:
        viewer.add_image(small_nuclei(96, seed=1)[0].mean(-1).astype(np.uint8), name="gray")
    return viewer


def _checked(qtbot, panel, viewer, timeout=120_000):
    """Wait until the jigsaw line holds a result for the current model."""
    qtbot.waitUntil(
        lambda: (
            panel.result_for is not None
            and panel.result_for[0] is get_state(viewer).checkpoint
            and not panel.check_runner.running
        ),
        timeout=timeout,
    )
    return panel.result


def _idle(qtbot, panel):
    """Let the automatic check of a newly current model end before the test does."""
    qtbot.waitUntil(
        lambda: not panel.check_runner.running and not panel.pretrain_runner.running,
        timeout=120_000,
    )


def test_check_patch_and_segmentation_trained():
    trained_at = {"metrics": {"jigsaw_patch_size": 384}}
    assert check_patch(trained_at, 1000, 800) == 384
    assert check_patch(trained_at, 300, 1000) == 288  # fits in the image
    assert check_patch(trained_at, 50, 50) == 96
    assert check_patch({}, 1000, 1000) == 96  # not recorded: 96
    assert not segmentation_trained({"data": []})
    assert segmentation_trained({"data": [{"name": "a", "role": "labelled"}]})
    jig = {"data": [{"name": "a", "role": "jigsaw"}], "training": {"kind": "jigsaw-pretrain"}}
    assert not segmentation_trained({**jig, "training": {**jig["training"], "config": {}}})
    assert segmentation_trained(
        {**jig, "training": {**jig["training"], "config": {"freeze_encoder": True}}}
    )


def test_jigsaw_line_warns_for_fresh_model(make_napari_viewer, project, notes, qtbot):
    viewer = _jigsaw_viewer(make_napari_viewer)
    w = dock(viewer, ModelWidget)
    panel = w.jigsaw
    assert panel.iterations_spin.value() == PretrainConfig().iterations
    w.new_model(width=TINY_WIDTH)
    assert not panel.freeze_check.isChecked()  # a fresh model: the encoder may learn
    result = _checked(qtbot, panel, viewer)
    assert result["puzzles"] == CHECK_PUZZLES and result["patch_size"] == 96
    assert at_chance(result["loss"], result["chance_loss"])
    text = panel.label.text()
    assert text.startswith("Jigsaw (self-supervised task) on 'tile'") and "L_SS" in text
    assert "top-1" in text and "not learned" in text
    assert not panel.warning.isHidden() and panel.warning.text() == AT_CHANCE_WARNING
    warned = [n for n in warnings(notes) if AT_CHANCE_WARNING in n]
    assert len(warned) == 1
    # Checking again (the button) gives the same line, and no second notification.
    panel.check_button.click()
    qtbot.waitUntil(lambda: not panel.check_runner.running, timeout=120_000)
    assert panel.result == result
    assert len([n for n in warnings(notes) if AT_CHANCE_WARNING in n]) == 1
    assert not errors(notes)


def test_jigsaw_line_waits_for_an_image(make_napari_viewer, project, notes, qtbot):
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    w.new_model(width=TINY_WIDTH)
    assert "open an image" in w.jigsaw.label.text() and not w.jigsaw.check_runner.running
    viewer.add_image(fake_stack(), name="stack")  # not a 2D image: still waiting
    assert "open an image" in w.jigsaw.label.text()
    viewer.add_image(small_nuclei(96)[0], name="tile")
    _checked(qtbot, w.jigsaw, viewer)
    assert "on 'tile'" in w.jigsaw.label.text()
    assert not errors(notes)


def test_pretrain_on_open_images_makes_new_current_version(
    make_napari_viewer, project, notes, qtbot
):
    viewer = _jigsaw_viewer(make_napari_viewer, gray=True)
    w = dock(viewer, ModelWidget)
    w.new_model(width=TINY_WIDTH)
    panel = w.jigsaw
    old = get_state(viewer).checkpoint
    snapshot = state_snapshot(old.model)
    _checked(qtbot, panel, viewer)
    panel.iterations_spin.setValue(3)
    panel.pretrain_button.click()
    assert panel.pretrain_runner.running and not panel.pretrain_button.isEnabled()
    assert wait_run(qtbot, panel.pretrain_runner).status == "done"
    out = project / "checkpoints" / "model_v1.pt"
    current = get_state(viewer).checkpoint
    assert out.exists() and current.path == out and panel.last_checkpoint == out
    training = current.meta["training"]
    assert training["kind"] == "jigsaw-pretrain" and training["step"] == 3
    assert training["config"]["iterations"] == 3 and not training["config"]["freeze_encoder"]
    assert {d["name"] for d in current.meta["data"]} == {"tile", "gray"}
    assert load_checkpoint(out).meta["training"]["kind"] == "jigsaw-pretrain"
    assert_same_state(old.model, snapshot)  # the previous model was not trained in place
    assert "Pre-trained 3 steps" in panel.result_label.text()
    assert "model_v1.pt (now the current model)" in panel.result_label.text()
    assert "jigsaw pre-trained (3 steps) on 2 image(s)" in w.card.text()
    assert "jigsaw_loss" not in w.card.text()
    assert panel.pretrain_button.isEnabled() and not panel.freeze_check.isChecked()
    # The jigsaw line is checked again for the new model, on the active image ...
    _checked(qtbot, panel, viewer)
    assert panel.label.text().startswith("Jigsaw (self-supervised task) on 'gray'")
    # ... and on another one when it is selected and the button pressed.
    viewer.layers.selection.active = viewer.layers["tile"]
    panel.check_button.click()
    qtbot.waitUntil(lambda: panel.result_for[1] == "tile", timeout=120_000)
    assert panel.label.text().startswith("Jigsaw (self-supervised task) on 'tile'")
    # The same file loaded again is not announced again.
    shown = len([n for n in warnings(notes) if AT_CHANCE_WARNING in n])
    assert w.load(out) is not None
    _checked(qtbot, panel, viewer)
    assert len([n for n in warnings(notes) if AT_CHANCE_WARNING in n]) == shown
    # A second run makes the next version beside it.
    assert panel.pretrain() and wait_run(qtbot, panel.pretrain_runner).status == "done"
    assert get_state(viewer).checkpoint.path == project / "checkpoints" / "model_v2.pt"
    _idle(qtbot, panel)
    assert not errors(notes)


def test_pretrain_keeps_segmentation_of_a_trained_model(
    make_napari_viewer, project, notes, qtbot, tmp_path
):
    path = save_checkpoint(
        tmp_path / "trained.pt",
        build_model(ModelConfig(width=TINY_WIDTH), seed=3),
        data=[{"name": "a.png", "sha256": "x", "role": "labelled"}],
    )
    viewer = _jigsaw_viewer(make_napari_viewer)
    w = dock(viewer, ModelWidget)
    w.load(path)
    panel = w.jigsaw
    assert panel.freeze_check.isChecked()  # trained: keep the segmentation by default
    _checked(qtbot, panel, viewer)
    panel.iterations_spin.setValue(2)
    assert panel.pretrain() and wait_run(qtbot, panel.pretrain_runner).status == "done"
    new = get_state(viewer).checkpoint
    assert new.path == tmp_path / "trained_v1.pt"  # next to the current checkpoint
    assert new.meta["training"]["config"]["freeze_encoder"]
    assert new.meta["parent"] == load_checkpoint(path).sha256
    before, after = load_checkpoint(path).model.state_dict(), new.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("jigsaw_head.") for k in changed)
    assert panel.freeze_check.isChecked()  # still a model worth keeping
    _idle(qtbot, panel)
    assert not errors(notes)


def test_cancel_pretraining_keeps_the_steps_done(make_napari_viewer, project, notes, qtbot):
    viewer = _jigsaw_viewer(make_napari_viewer)
    w = dock(viewer, ModelWidget)
    w.new_model(width=TINY_WIDTH)
    panel = w.jigsaw
    old = get_state(viewer).checkpoint
    snapshot = state_snapshot(old.model)
    panel.iterations_spin.setValue(100_000)
    assert panel.pretrain()
    qtbot.waitUntil(lambda: panel._steps >= 2, timeout=120_000)
    panel.pretrain_runner.cancel_button.click()
    assert wait_run(qtbot, panel.pretrain_runner, timeout=60_000).status == "cancelled"
    assert not panel.pretrain_runner.running and panel.pretrain_button.isEnabled()
    out = project / "checkpoints" / "model_v1.pt"
    current = get_state(viewer).checkpoint
    assert current.path == out and current is not old
    saved = load_checkpoint(out)  # a complete checkpoint of the steps done
    steps = saved.meta["training"]["step"]
    assert 2 <= steps < 100_000 and saved.meta["training"]["kind"] == "jigsaw-pretrain"
    assert f"Stopped after {steps} steps" in panel.result_label.text()
    assert_same_state(old.model, snapshot)
    _idle(qtbot, panel)
    assert not errors(notes)


def test_cancel_at_once_leaves_a_sensible_model(make_napari_viewer, project, notes, qtbot):
    viewer = _jigsaw_viewer(make_napari_viewer)
    w = dock(viewer, ModelWidget)
    w.new_model(width=TINY_WIDTH)
    panel = w.jigsaw
    old = get_state(viewer).checkpoint
    panel.iterations_spin.setValue(100_000)
    assert panel.pretrain()
    panel.pretrain_runner.cancel()
    assert wait_run(qtbot, panel.pretrain_runner, timeout=60_000).status == "cancelled"
    assert panel.pretrain_button.isEnabled()
    out = project / "checkpoints" / "model_v1.pt"
    current = get_state(viewer).checkpoint
    if out.exists():  # stopped after a step: that step is kept, complete
        assert current.path == out and load_checkpoint(out).meta["training"]["step"] >= 1
    else:  # stopped before the first step: nothing changed
        assert current is old and "unchanged" in panel.result_label.text()
    _idle(qtbot, panel)
    assert not errors(notes)


def test_pretrain_refuses_without_model_or_images(make_napari_viewer, project, notes):
    viewer = make_napari_viewer()
    w = dock(viewer, ModelWidget)
    assert not w.jigsaw.pretrain() and "no model" in errors(notes)[-1]
    w.new_model(width=TINY_WIDTH)
    assert not w.jigsaw.pretrain() and "no image is open" in errors(notes)[-1]
    assert not (project / "checkpoints").exists() or not any((project / "checkpoints").iterdir())
