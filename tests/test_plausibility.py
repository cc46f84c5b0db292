"""The plausibility warning: recorded at training, quiet in range, plain words out of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.plausibility import (
    RECORD_KEY,
    image_figures,
    merge_ranges,
    plausibility_warning,
    record_of,
    tissue_range,
)
from napari_selfloop.core.engine.training import TrainConfig, TrainItem, train
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import run_cli

RECORD = {"share": [0.1, 0.4], "median_area": [100.0, 300.0], "images": 3}


def discs(n, r, size=200):
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        cy, cx = rng.integers(r, size - r, 2)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = i
    return labels


def test_figures_and_ranges():
    labels = discs(10, 6)
    f = image_figures(labels > 0, labels)
    assert f["share"] == pytest.approx((labels > 0).mean())
    assert f["median_area"] == pytest.approx(np.median(np.bincount(labels.ravel())[1:]))
    assert math.isnan(image_figures(labels > 0, discs(2, 6))["median_area"])  # too few objects
    r = tissue_range([{"share": 0.2, "median_area": 50.0}, {"share": 0.3, "median_area": 80.0}])
    assert r == {"share": [0.2, 0.3], "median_area": [50.0, 80.0], "images": 2}
    merged = merge_ranges(r, RECORD, {"share": "damaged"})
    assert merged["share"] == [0.1, 0.4] and merged["median_area"] == [50.0, 300.0]


def test_quiet_in_range_and_plain_words_out_of_it():
    assert plausibility_warning({"share": 0.35, "median_area": 250.0}, RECORD) is None
    # the unseen-organ case: most of the image marked, in large merged objects
    w = plausibility_warning({"share": 0.73, "median_area": 4000.0}, RECORD)
    assert w.startswith("This model may not know this tissue")
    assert "73 %" in w and "13 times as large" in w and "Fine-tune" in w
    assert "times as large" in plausibility_warning({"share": 0.2, "median_area": 1000.0}, RECORD)
    # no record, or a damaged one (file content): no warning, never a crash
    assert plausibility_warning({"share": 0.9, "median_area": 1e5}, None) is None
    assert plausibility_warning({"share": 0.9}, {"share": [0.4, 0.1]}) is None
    assert record_of({"metrics": {RECORD_KEY: ["x"]}}) is None
    assert record_of({"metrics": "x"}) is None


def test_training_records_the_labelled_tissue_and_the_parents(tmp_path):
    rng = np.random.default_rng(0)
    labels = discs(12, 8, 128)
    image = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
    model = build_model(ModelConfig(width=8), seed=0)
    out = tmp_path / "m.pt"
    parent = {"share": [0.05, 0.5], "median_area": [40.0, 90.0], "images": 5}
    cfg = TrainConfig(framework="supervised", iterations=2, patch_size=96, batch_size=1)
    run_to_completion(
        train(
            model,
            [TrainItem("a", image, (labels > 0).astype(np.uint8))],
            [],
            cfg,
            out=out,
            tissue=parent,
        )
    )
    record = record_of(load_checkpoint(out).meta)
    share = float((labels > 0).mean())
    assert record["share"] == [0.05, 0.5]  # the parent's range holds this image's share
    assert record["median_area"][1] >= np.median(np.bincount(labels.ravel())[1:]) - 1
    assert record["images"] == 6 and 0.05 <= share <= 0.5


def test_cli_pseudo_label_warns_in_one_line_when_the_proposal_is_implausible(tmp_path, capsys):
    model = build_model(ModelConfig(width=8), seed=0)
    # A model whose foreground bias marks every pixel, with a record of sparse tissue.
    model.decoder.head.bias.data.fill_(20.0)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(
        ckpt, model, metrics={RECORD_KEY: {"share": [0.1, 0.3], "median_area": None, "images": 1}}
    )
    tifffile.imwrite(tmp_path / "tile.tif", np.full((96, 96, 3), 120, np.uint8))
    code, _, err = run_cli(
        capsys,
        "pseudo-label",
        tmp_path / "tile.tif",
        "--checkpoint",
        ckpt,
        "--out",
        tmp_path / "out",
        "--method",
        "softmax",
    )
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "may not know this tissue" in ln]
    assert len(lines) == 1 and "100 %" in lines[0] and lines[0].startswith("tile.tif")
    # the same model with a record that covers it: quiet
    save_checkpoint(ckpt, model, metrics={RECORD_KEY: {"share": [0.1, 1.0], "images": 1}})
    code, _, err = run_cli(
        capsys,
        "pseudo-label",
        tmp_path / "tile.tif",
        "--checkpoint",
        ckpt,
        "--out",
        tmp_path / "out2",
        "--method",
        "softmax",
    )
    assert code == 0 and "may not know" not in err
