"""Issue 27 (cosmetic): a note about a file is said once per file, not once per read."""

from __future__ import annotations

import logging

import numpy as np
import tifffile

from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.io.images import open_image
from napari_selfloop.core.store.batch import close_image
from napari_selfloop.core.store.checkpoint import save_checkpoint
from tests.conftest import TINY, run_cli


def _two_series(path):
    rng = np.random.default_rng(0)
    with tifffile.TiffWriter(path) as w:
        w.write(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), photometric="rgb")
        w.write(rng.integers(0, 256, (30, 50), dtype=np.uint8), photometric="minisblack")
    return path


def test_series_choice_is_noted_once_per_file(tmp_path, caplog):
    path = _two_series(tmp_path / "multi.tif")
    with caplog.at_level(logging.INFO, logger="napari_selfloop"):
        for _ in range(3):
            close_image(open_image(path))
    notes = [r for r in caplog.records if "image series" in r.getMessage()]
    assert len(notes) == 1, [r.getMessage() for r in notes]


def test_series_choice_is_noted_again_for_a_changed_file(tmp_path, caplog):
    path = _two_series(tmp_path / "multi.tif")
    with caplog.at_level(logging.INFO, logger="napari_selfloop"):
        close_image(open_image(path))
        _two_series(tmp_path / "other.tif")
        close_image(open_image(tmp_path / "other.tif"))
    notes = [r for r in caplog.records if "image series" in r.getMessage()]
    assert len(notes) == 2


def test_pseudo_label_notes_the_series_choice_once(tmp_path, capsys, one_thread):
    path = _two_series(tmp_path / "multi.tif")
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    code, _, err = run_cli(
        capsys,
        "pseudo-label",
        path,
        "--checkpoint",
        tmp_path / "m.pt",
        "--out",
        tmp_path / "out",
        "--method",
        "softmax",
        "--patch-size",
        "96",
    )
    assert code == 0, err
    assert err.count("holds 2 image series") == 1, err
