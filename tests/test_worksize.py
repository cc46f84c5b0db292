"""Models with a work size: images resized to it for the model, outputs back at their size."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_selfloop.core.engine.datasets import TrainItem, check_items
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pretrain import evaluate_jigsaw
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label
from napari_selfloop.core.engine.training import TrainConfig, train
from napari_selfloop.core.engine.work_size import (
    from_work_size,
    mask_to_work_size,
    to_work_size,
    work_shape,
)
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from napari_selfloop.core.store.modelcard import model_card
from tests.conftest import TINY, assert_one_line_error, run_cli

SIZED = dataclasses.replace(TINY, work_size=96)


@pytest.fixture
def image():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    img[100:200, 50:150] = (200, 60, 90)
    return img


def _pair(seed: int = 0):
    """The same weights with and without a work size."""
    sized = build_model(SIZED, seed=seed).eval()
    plain = build_model(TINY, seed=seed).eval()
    plain.load_state_dict(sized.state_dict())
    return sized, plain


def test_resizing_keeps_the_aspect_ratio_and_dtype(image):
    assert work_shape(image.shape, None) is None
    assert work_shape((96, 40), 96) is None
    assert work_shape(image.shape, 96) == (96, 64)
    small = to_work_size(image, 96)
    assert small.shape == (96, 64, 3) and small.dtype == np.uint8
    # the purple block is still purple where it lies (anti-aliased, not sampled)
    assert np.abs(small[48, 32].astype(int) - (200, 60, 90)).max() <= 2
    assert to_work_size(image, None) is image
    back = from_work_size(np.ones((96, 64), np.float32), image.shape)
    assert back.shape == (300, 200) and back.dtype == np.float32
    with pytest.raises(InputError, match="too large"):
        work_shape((20000, 100), 96)


def test_a_mask_keeps_its_unlabelled_pixels_and_majority_labels():
    mask = np.full((300, 300), 255, np.uint8)
    mask[:150] = 0
    mask[:150, :150] = 1
    small = mask_to_work_size(mask, 96)
    assert small.shape == (96, 96) and set(np.unique(small)) == {0, 1, 255}
    assert (small[:40, :40] == 1).all() and (small[:40, 56:] == 0).all()
    assert (small[56:] == 255).all()


def test_pseudo_label_runs_at_the_work_size_and_returns_the_image_size(image):
    sized, plain = _pair()
    cfg = PseudoLabelConfig(method="mc-dropout", q=3, patch_size=96)
    got = run_to_completion(pseudo_label(image, sized, cfg, device="cpu"))
    ref = run_to_completion(pseudo_label(to_work_size(image, 96), plain, cfg, device="cpu"))
    assert got.info["work_shape"] == (96, 64)
    assert got.probability.shape == got.uncertainty.shape == got.mask.shape == (300, 200)
    np.testing.assert_allclose(
        got.probability, np.clip(from_work_size(ref.probability, image.shape), 0, 1), atol=1e-6
    )
    np.testing.assert_allclose(
        got.uncertainty, from_work_size(ref.uncertainty, image.shape), atol=1e-6
    )
    assert set(np.unique(got.mask)) <= {0, 1, 255}
    # an image already at the work size is not resized
    same = run_to_completion(pseudo_label(to_work_size(image, 96), sized, cfg, device="cpu"))
    assert "work_shape" not in same.info
    np.testing.assert_array_equal(same.probability, ref.probability)


def test_a_region_is_seen_at_the_whole_image_scale(image):
    """A view or rectangle of an image is resized by the whole image's factor, so the model
    sees it at the scale it learned (not magnified to fill the work size)."""
    assert work_shape((150, 100), 96, source=(300, 200)) == (48, 32)
    assert work_shape((96, 50), 96, source=(96, 64)) is None  # the whole image is at scale
    sized, plain = _pair()
    cfg = PseudoLabelConfig(method="softmax", patch_size=96)
    region = image[60:210, 20:120]
    got = run_to_completion(
        pseudo_label(region, sized, cfg, device="cpu", source_shape=image.shape[:2])
    )
    assert got.info["work_shape"] == (48, 32)
    assert got.probability.shape == (150, 100)
    small = to_work_size(region, 96, source=image.shape[:2])
    assert small.shape == (48, 32, 3)
    ref = run_to_completion(pseudo_label(small, plain, cfg, device="cpu"))
    np.testing.assert_allclose(
        got.probability, np.clip(from_work_size(ref.probability, region.shape), 0, 1), atol=1e-6
    )
    # without the source shape the region fills the work size (the old, magnified view)
    alone = run_to_completion(pseudo_label(region, sized, cfg, device="cpu"))
    assert alone.info["work_shape"] == (96, 64)


def test_sinks_receive_the_image_size_outputs_and_slides_are_refused(image):
    sized, _ = _pair()
    cfg = PseudoLabelConfig(method="softmax", patch_size=96)
    full = run_to_completion(pseudo_label(image, sized, cfg, device="cpu"))

    class Rows:
        def __init__(self):
            self.blocks = []

        def write_rows(self, y0, block):
            self.blocks.append((y0, np.array(block)))

    sinks = {"prob": Rows(), "uncertainty": Rows(), "mask": Rows()}
    streamed = run_to_completion(pseudo_label(image, sized, cfg, device="cpu", sinks=sinks))
    assert streamed.probability is None and streamed.mask is None
    for name, attr in (("prob", "probability"), ("uncertainty", "uncertainty"), ("mask", "mask")):
        rows = sinks[name].blocks
        assert [y0 for y0, _ in rows] == [0]
        np.testing.assert_array_equal(np.concatenate([b for _, b in rows]), getattr(full, attr))
    with pytest.raises(InputError, match="slide"):
        run_to_completion(pseudo_label(image, sized, cfg, keep=lambda *a: True))


def test_an_ensemble_needs_one_work_size(image):
    sized, plain = _pair()
    with pytest.raises(InputError, match="different image sizes"):
        run_to_completion(pseudo_label(image, [sized, plain], PseudoLabelConfig(method="ensemble")))


def test_training_and_the_jigsaw_see_the_resized_images(image, tmp_path, one_thread):
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[100:200, 50:150] = 1
    items = check_items([TrainItem("a", image, mask)], "labelled", need_masks=True, work_size=96)
    plain = check_items([TrainItem("a", image, mask)], "labelled", need_masks=True)
    assert items[0].image.shape == (96, 64, 3) and items[0].mask.shape == (96, 64)
    assert (items[0].height, items[0].width) == (96, 64)
    assert items[0].sha256 == plain[0].sha256  # the record names the image as given
    assert items[0].labelled_pixels == 96 * 64

    model = build_model(SIZED, seed=0)
    cfg = TrainConfig(framework="supervised", iterations=2, patch_size=96, batch_size=2)
    out = tmp_path / "t.pt"
    run_to_completion(train(model, [TrainItem("a", image, mask)], [], cfg, device="cpu", out=out))
    ckpt = load_checkpoint(out)
    assert ckpt.config.work_size == 96
    assert ckpt.meta["data"][0]["sha256"] == plain[0].sha256
    r = run_to_completion(evaluate_jigsaw(model, [image], puzzles=4, patch_size=96, device="cpu"))
    assert np.isfinite(r["loss"])


def test_the_work_size_survives_a_checkpoint_and_old_ones_have_none(tmp_path):
    save_checkpoint(tmp_path / "s.pt", build_model(SIZED, seed=0))
    assert load_checkpoint(tmp_path / "s.pt").config.work_size == 96
    old = {k: v for k, v in TINY.to_dict().items() if k != "work_size"}
    assert ModelConfig.from_dict(old).work_size is None
    for bad in (10, 96.0, "96", True):
        with pytest.raises(InputError, match="work size"):
            ModelConfig(work_size=bad)


def test_cli_pseudo_label_writes_outputs_at_the_image_size(image, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(image).save(tmp_path / "lesion.png")
    save_checkpoint(tmp_path / "sized.pt", build_model(SIZED, seed=0))
    code, _, err = run_cli(
        capsys, "-q", "pseudo-label", "lesion.png", "--checkpoint", "sized.pt", "--out", "out"
    )
    assert code == 0, err
    for kind in ("prob", "uncertainty", "mask"):
        assert tifffile.imread(tmp_path / "out" / f"lesion_{kind}.tif").shape == (300, 200)
    code, _, err = run_cli(
        capsys,
        "pseudo-label",
        "lesion.png",
        "--checkpoint",
        "sized.pt",
        "--tissue-only",
        "--out",
        "out2",
    )
    assert_one_line_error(code, err, "slide")


def test_init_work_size_and_the_model_card(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "init", "--out", "w.pt", "--width", "8", "--work-size", "192")
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "w.pt")
    assert ckpt.config.work_size == 192
    assert "resized to 192 px" in model_card(ckpt)
    code, _, err = run_cli(capsys, "init", "--out", "x.pt", "--work-size", "20")
    assert_one_line_error(code, err, "work size", "96")
