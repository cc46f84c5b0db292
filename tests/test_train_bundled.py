"""The bundled models' recipe script: its splits keep the test images out of every choice."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from benchmark_support import import_benchmark


@pytest.fixture(scope="module")
def recipe_script():
    return import_benchmark("train_bundled")


@pytest.mark.parametrize("n, n_test, n_val", [(74, 14, 14), (30, 6, 6), (74, 0, 10)])
def test_validation_images_come_from_the_training_images_only(recipe_script, n, n_test, n_val):
    train, val, test = recipe_script.three_way_split(n, n_test, n_val, seed=0)
    plain_train, _, plain_test = recipe_script.three_way_split(n, n_test, 0, seed=0)
    assert test == plain_test  # the measured runs' test images, whatever --val is
    assert len(val) == n_val and len(test) == n_test and len(train) == n - n_test - n_val
    assert set(val) <= set(plain_train) and not set(val) & set(test)
    assert sorted(train + val + test) == list(range(n))
    assert recipe_script.three_way_split(n, n_test, n_val, seed=0) == (train, val, test)


def test_too_many_validation_images_are_refused(recipe_script):
    with pytest.raises(SystemExit, match="only 4 training images"):
        recipe_script.three_way_split(10, 6, 4, seed=0)


def test_validation_results_are_not_taken_for_held_out_ones(recipe_script, tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("test14", "test14_val14_600_base", "continued_test14"):
        (results / f"bundled_lesion-dermoscopy_{name}.json").write_text("{}")
    monkeypatch.setattr(recipe_script, "HERE", tmp_path)
    assert [p.name for p in recipe_script.heldout_files("lesion-dermoscopy")] == [
        "bundled_lesion-dermoscopy_test14.json"
    ]


def test_calibration_needs_a_validation_run_with_a_chosen_cut(
    recipe_script, tmp_path, monkeypatch, capsys
):
    val = tmp_path / "val.json"
    val.write_text('{"pseudo_labels": {}}')  # a results file of a run that chose no cut
    argv = ["train_bundled.py", "nuclei-he", "--work", str(tmp_path / "w")]
    monkeypatch.setattr(sys, "argv", [*argv, "--calibration", str(val)])
    with pytest.raises(SystemExit) as e:
        recipe_script.main()
    assert e.value.code == 2 and "no chosen cut in it (run with --val)" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_selfloop_step_needs_a_validation_run_with_a_sweep(
    recipe_script, tmp_path, monkeypatch, capsys
):
    val = tmp_path / "val.json"
    val.write_text('{"calibration": {"threshold": 0.5}}')  # a validation run with no sweep
    argv = ["train_bundled.py", "nuclei-he", "--work", str(tmp_path / "w")]
    monkeypatch.setattr(sys, "argv", [*argv, "--selfloop-step", str(val)])
    with pytest.raises(SystemExit) as e:
        recipe_script.main()
    assert e.value.code == 2 and "no step sweep in it" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", [*argv, "--selfloop-step", str(val), "--step-lrs", "1e-4"])
    with pytest.raises(SystemExit) as e:
        recipe_script.main()
    assert e.value.code == 2 and "give one of them" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_step_sweep_scores_each_step_once_and_chooses_from_them(recipe_script, monkeypatch):
    """The real sweep on a tiny model: one row per method and step, kept on a rerun (which
    adds only new steps), and the choice recorded with the validation images."""
    from napari_selfloop.core.engine import step_size as stepsize
    from napari_selfloop.core.engine.model import ModelConfig, build_model

    rng = np.random.default_rng(0)
    test = []
    for i in range(2):
        image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        mask = np.zeros((96, 96), np.uint8)
        mask[20:50, 30:70] = 1
        test.append({"name": f"v{i}.png", "image": image, "mask": mask})
    model = build_model(ModelConfig(width=8), seed=0).eval()
    methods = []
    real = stepsize.pseudo_label
    monkeypatch.setattr(
        stepsize,
        "pseudo_label",
        lambda im, m, cfg, **kw: methods.append(cfg.method) or real(im, m, cfg, **kw),
    )
    monkeypatch.setattr(recipe_script, "DEFAULT_PATCH", 96)
    report: dict = {}
    recipe_script.step_sweep(model, test, report, lambda: None, [1e-4])
    assert list(report["selfloop_steps"]) == ["softmax", "no-ss", "0.0001"]
    for row in report["selfloop_steps"].values():
        assert set(row) == {"f1", "balanced_accuracy", "top5", "top10", "top20"}
        assert 0 <= row["f1"] <= 100 and 0 <= row["top5"] <= row["top10"] <= row["top20"] <= 100
    chosen = report["selfloop_step"]
    assert chosen["images"] == ["v0.png", "v1.png"] and set(chosen["candidates"]) == {"0.0001"}
    assert methods.count("selfloop") == 2 and methods.count("softmax") == 2  # one per image
    methods.clear()
    recipe_script.step_sweep(model, test, report, lambda: None, [1e-4, 1e-3])
    assert methods == ["softmax", "softmax", "selfloop", "selfloop"]
    assert "0.001" in report["selfloop_steps"]


def test_the_card_takes_the_held_out_figures_of_the_file_given(recipe_script, tmp_path):
    results = tmp_path / "step_test6.json"
    results.write_text(
        '{"test_images": ["a", "b"], "selfloop_step": {"step": 1e-05}, "pseudo_labels": '
        '{"softmax": {"f1": 77.4, "balanced_accuracy": 85.2}, "selfloop": {"f1": 77.9}}, '
        '"jigsaw": {"576": {"loss": 1.36, "top1": 77.0}}}'
    )
    summary = recipe_script.heldout_summary("nuclei-he", results)
    assert summary == {
        "images": 2,
        "selfloop_step": 1e-05,
        "softmax_f1": 77.4,
        "softmax_balanced_accuracy": 85.2,
        "selfloop_f1": 77.9,
        "jigsaw_loss": 1.36,
        "jigsaw_top1": 77.0,
    }
