"""The plausibility warning: recorded at training, quiet in range, plain words out of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.plausibility import (
    ENTROPY_MARGIN,
    MIN_FG_PIXELS,
    RECORD_KEY,
    fg_entropy,
    image_figures,
    merge_ranges,
    plausibility_warning,
    record_of,
    tissue_range,
    with_entropy,
)
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label
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


def test_the_models_certainty_figure_its_range_and_its_warning():
    assert fg_entropy(np.array([300.0, 1000.0])) != fg_entropy(np.array([300.0, 1000.0]))  # NaN
    assert fg_entropy(np.array([0.3 * MIN_FG_PIXELS, MIN_FG_PIXELS])) == pytest.approx(0.3)
    record = with_entropy(RECORD, [0.2, float("nan"), 0.3])
    assert record["fg_entropy"] == [0.2, 0.3] and record["share"] == RECORD["share"]
    assert with_entropy(record, [0.25, 0.5])["fg_entropy"] == [0.2, 0.5]  # joined, not replaced
    assert with_entropy(RECORD, [float("nan")]) == RECORD  # nothing measured: unchanged
    merged = merge_ranges(record, {**RECORD, "fg_entropy": [0.1, 0.25]}, RECORD)
    assert merged["fg_entropy"] == [0.1, 0.3]
    in_range = {"share": 0.3, "median_area": 200.0}
    # the unseen-organ case of the benchmark: share and size in range, the model unsure
    assert (
        plausibility_warning({**in_range, "fg_entropy": 0.3 * ENTROPY_MARGIN - 1e-3}, record)
        is None
    )
    w = plausibility_warning({**in_range, "fg_entropy": 0.45}, record)
    assert w.startswith("This model may not know this tissue") and "less sure" in w
    assert "0.45" in w and "0.30" in w and "Fine-tune" in w
    assert plausibility_warning({**in_range, "fg_entropy": float("nan")}, record) is None
    assert plausibility_warning({**in_range, "fg_entropy": 0.9}, RECORD) is None  # not recorded
    assert record_of({"metrics": {RECORD_KEY: {**RECORD, "fg_entropy": [0.5, 0.1]}}}) is None


def _binary_entropy(p):
    p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


@pytest.mark.parametrize("method", ["mc-dropout", "selfloop"])
def test_the_certainty_comes_from_the_plain_prediction_whatever_the_method(method):
    model = build_model(ModelConfig(width=8), seed=0)
    model.decoder.head.bias.data[0] = 1.0  # mostly foreground, not saturated
    image = (np.random.default_rng(1).random((96, 96, 3)) * 255).astype(np.uint8)

    def figure(name):
        cfg = PseudoLabelConfig(method=name, q=3, seed=0)
        return run_to_completion(pseudo_label(image, model, cfg, device="cpu"))

    plain = figure("softmax")
    p = plain.probability  # one patch: the per-patch sums are the image's
    fg = p >= 0.5
    assert fg.sum() >= MIN_FG_PIXELS
    expected = _binary_entropy(p)[fg].mean()
    assert plain.info["figures"]["fg_entropy"] == pytest.approx(expected, rel=1e-4)
    other = figure(method)
    assert other.info["figures"]["fg_entropy"] == pytest.approx(expected, rel=1e-4)
    # ... while the method's own averaged probability is a different map
    assert not np.allclose(other.probability, p)
    # without the measurement: no plain pass, no figure, the same proposal
    cfg = PseudoLabelConfig(method=method, q=3, seed=0, certainty=False)
    skipped = run_to_completion(pseudo_label(image, model, cfg, device="cpu"))
    assert "fg_entropy" not in (skipped.info.get("figures") or {})
    np.testing.assert_array_equal(skipped.probability, other.probability)


def test_training_records_the_labelled_tissue_and_the_parents(tmp_path):
    rng = np.random.default_rng(0)
    labels = discs(12, 8, 128)
    image = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
    model = build_model(ModelConfig(width=8), seed=0)
    model.decoder.head.bias.data[0] = 2.0  # enough foreground for a certainty figure
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
    # the trained model's own certainty on the image it was trained on (whole: all labelled)
    trained = load_checkpoint(out).model
    own = run_to_completion(pseudo_label(image, trained, PseudoLabelConfig(), device="cpu"))
    figure = own.info["figures"]["fg_entropy"]
    assert record["fg_entropy"] == [round(figure, 4), round(figure, 4)]


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


def test_cli_warns_when_the_model_is_unsure_of_its_foreground_whatever_the_method(tmp_path, capsys):
    """Share and size within the record, but the model far less sure of what it calls
    foreground than on its training images: the unseen-organ case of the benchmark."""
    model = build_model(ModelConfig(width=8), seed=0)
    model.decoder.head.bias.data[0] = 1.0  # foreground at about 0.7: unsure
    ckpt = tmp_path / "m.pt"
    record = {"share": [0.1, 1.0], "median_area": None, "images": 2, "fg_entropy": [0.2, 0.3]}
    save_checkpoint(ckpt, model, metrics={RECORD_KEY: record})
    tifffile.imwrite(tmp_path / "tile.tif", np.full((96, 96, 3), 120, np.uint8))
    for n, method in enumerate(("softmax", "mc-dropout")):
        code, _, err = run_cli(
            capsys,
            "pseudo-label",
            tmp_path / "tile.tif",
            "--checkpoint",
            ckpt,
            "--out",
            tmp_path / f"out{n}",
            "--method",
            method,
            "--q",
            "2",
        )
        assert code == 0, err
        lines = [ln for ln in err.splitlines() if "may not know this tissue" in ln]
        assert len(lines) == 1 and "less sure" in lines[0], (method, err)
