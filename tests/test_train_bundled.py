"""The bundled models' recipe script: its splits keep the test images out of every choice."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def recipe_script():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("train_bundled")
    finally:
        sys.path.remove(str(BENCHMARKS))


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
