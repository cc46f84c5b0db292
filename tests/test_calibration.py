"""The foreground cut chosen on annotated images and folded into the model's head bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.calibration import (
    apply_calibration,
    calibration_record,
    choose_threshold,
    cut_counts,
)
from napari_selfloop.core.engine.metrics import pixel_counts
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint


def _under_confident(seed: int, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A mask and a probability map that puts true foreground at 0.25-0.6: at 0.5 it
    misses most of it, a cut near 0.25 finds it all."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, n), np.uint8)
    truth[10:30, 12:40] = 1
    prob = rng.uniform(0.0, 0.2, (n, n))
    prob[truth == 1] = rng.uniform(0.25, 0.6, int(truth.sum()))
    return prob.astype(np.float32), truth


def test_cut_counts_match_pixel_counts_at_every_cut():
    prob, truth = _under_confident(0)
    truth[0, :5] = 255  # not labelled: ignored
    cuts = [0.1, 0.3, 0.5, 0.7]
    counts = cut_counts(prob, truth, cuts)
    for row, t in zip(counts, cuts, strict=True):
        assert row.tolist() == pixel_counts(prob > t, truth).tolist()


def test_choose_threshold_finds_the_lower_cut_and_scores_it():
    pairs = [_under_confident(s) for s in range(3)]
    cal = choose_threshold([p for p, _ in pairs], [t for _, t in pairs], objective="dice")
    assert 0.2 <= cal.threshold <= 0.25
    assert cal.after["dice"] == pytest.approx(1.0)
    assert cal.before["dice"] < 0.6  # at 0.5 less than a third of the foreground is found
    assert cal.images == 3 and len(cal.curve) >= 81
    assert cal.bias_shift > 0  # a lower cut raises every logit


def test_a_well_cut_model_keeps_one_half():
    truth = np.zeros((32, 32), np.uint8)
    truth[8:20, 8:20] = 1
    prob = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    cal = choose_threshold([prob], [truth])
    assert cal.threshold == 0.5 and cal.bias_shift == 0.0


def test_bad_calibration_input_is_refused():
    prob, truth = _under_confident(0)
    with pytest.raises(InputError, match="objective"):
        choose_threshold([prob], [truth], objective="accuracy")
    with pytest.raises(InputError, match="one mask per"):
        choose_threshold([prob], [])
    with pytest.raises(InputError, match="shape"):
        choose_threshold([prob], [truth[:10]])
    with pytest.raises(InputError, match="no foreground"):
        choose_threshold([prob], [np.zeros_like(truth)])
    with pytest.raises(InputError, match="between 0 and 1"):
        choose_threshold([prob], [truth], grid=[0.0, 0.4])


def test_folding_the_cut_moves_every_methods_decision(tiny_model, rgb_image, tmp_path):
    """softmax p > t before == p' > 0.5 after, for the real model and pseudo-label path;
    self-loop (whose decoder is the model's) uses the cut too; the record survives a save."""

    def prob(model, method):
        cfg = PseudoLabelConfig(method=method, q=2, patch_size=96, precision="fp32", seed=0)
        return run_to_completion(pseudo_label(rgb_image, model, cfg, device="cpu")).probability

    before = prob(tiny_model, "softmax")
    t = float(np.quantile(before, 0.3))
    assert not 0.49 < t < 0.51
    loops_before = prob(tiny_model, "selfloop")
    shift = apply_calibration(tiny_model, t)
    after = prob(tiny_model, "softmax")
    margin = np.abs(before - t) > 1e-4  # away from the cut, float rounding cannot flip it
    assert np.array_equal((after > 0.5)[margin], (before > t)[margin])
    assert shift == pytest.approx(-np.log(t / (1 - t)))
    assert not np.allclose(prob(tiny_model, "selfloop"), loops_before)

    cal = choose_threshold([before], [(before > t).astype(np.uint8)])
    rec = calibration_record(cal, ["a.png"])
    path = save_checkpoint(tmp_path / "cal.pt", tiny_model, metrics={"calibration": rec})
    loaded = load_checkpoint(path)
    assert loaded.meta["metrics"]["calibration"]["images"] == ["a.png"]
    assert torch.equal(loaded.model.decoder.head.bias, tiny_model.decoder.head.bias)


def test_apply_calibration_refuses_a_cut_outside_0_1(tiny_model):
    bias = tiny_model.decoder.head.bias.detach().clone()
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(InputError, match="between 0 and 1"):
            apply_calibration(tiny_model, bad)
    assert torch.equal(tiny_model.decoder.head.bias, bias)


def test_calibrate_command_writes_a_calibrated_copy(tmp_path, tiny_model, capsys):
    """End to end: images and masks in folders -> a copy whose decision sits at the cut."""
    import tifffile

    from napari_selfloop.cli import main

    src = save_checkpoint(tmp_path / "model.pt", tiny_model, note="mine")
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(1)
    cfg = PseudoLabelConfig(method="softmax", precision="fp32")
    for i in range(2):
        img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        tifffile.imwrite(tmp_path / "img" / f"t{i}.tif", img)
        p = run_to_completion(pseudo_label(img, tiny_model, cfg, device="cpu")).probability
        mask = (p > np.quantile(p, 0.35)).astype(np.uint8)  # the truth lies at a lower cut
        tifffile.imwrite(tmp_path / "masks" / f"t{i}_mask.tif", mask)
    tifffile.imwrite(tmp_path / "img" / "nomask.tif", img)
    out, report = tmp_path / "cal.pt", tmp_path / "cal.json"
    args = ["-q", "calibrate", "--images", str(tmp_path / "img")]
    args += ["--masks", str(tmp_path / "masks"), "--checkpoint", str(src)]
    args += ["--out", str(out), "--json", str(report)]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert line.startswith("cut 0.") and "(dice+balanced_accuracy, 2 images)" in line
    cal = load_checkpoint(out)
    rec = cal.meta["metrics"]["calibration"]
    assert rec["images"] == ["t0.tif", "t1.tif"] and rec["threshold"] != 0.5
    assert rec["after"]["dice"] > rec["before"]["dice"]
    assert cal.meta["parent"] == load_checkpoint(src).sha256 and cal.meta["note"] == "mine"
    shift = float((cal.model.decoder.head.bias - tiny_model.decoder.head.bias).detach())
    assert shift == pytest.approx(rec["bias_shift"], abs=1e-5)
    assert len(__import__("json").loads(report.read_text())["curve"]) >= 81
    # The existing --out is kept unless --force; masks of no image are an error.
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    tifffile.imwrite(tmp_path / "other" / "zzz.tif", mask)
    bad = ["calibrate", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "other")]
    assert main([*bad, "--checkpoint", str(src), "--out", str(tmp_path / "x.pt")]) == 2
    assert "no image in" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_calibrate_names_the_mask_of_the_wrong_size_before_loading(
    tmp_path, tiny_model, capsys, monkeypatch
):
    """Issue 27 (cosmetic): one line that names the file, checked before the model loads."""
    import tifffile

    from napari_selfloop.cli import calibrate_cmd
    from tests.conftest import assert_one_line_error, run_cli

    src = save_checkpoint(tmp_path / "model.pt", tiny_model)
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        tifffile.imwrite(
            tmp_path / "img" / f"{name}.tif", rng.integers(0, 256, (64, 64, 3), np.uint8)
        )
    tifffile.imwrite(tmp_path / "masks" / "a.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(tmp_path / "masks" / "b_mask.tif", np.zeros((40, 50), np.uint8))

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the masks were checked")

    monkeypatch.setattr(calibrate_cmd, "load_checkpoint", no_model, raising=False)
    code, _, err = run_cli(
        capsys,
        "calibrate",
        "--images",
        tmp_path / "img",
        "--masks",
        tmp_path / "masks",
        "--checkpoint",
        src,
        "--out",
        tmp_path / "cal.pt",
    )
    assert_one_line_error(code, err, "b_mask.tif", "(40, 50)", "64x64", "b.tif")
    assert "image 2" not in err
    assert not (tmp_path / "cal.pt").exists()
