"""Checkpoints record the pixel size they were trained at (``pixel_size_um``)."""

from __future__ import annotations

import math

import pytest
import torch

from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.errors import CheckpointError
from napari_selfloop.core.store.checkpoint import META_KEYS, load_checkpoint, save_checkpoint
from napari_selfloop.core.store.modelcard import model_card
from tests.conftest import TINY


def test_pixel_size_round_trip_and_card(tmp_path):
    assert "pixel_size_um" in META_KEYS
    model = build_model(TINY, seed=0)
    save_checkpoint(tmp_path / "a.pt", model, pixel_size_um=0.25)
    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert ckpt.pixel_size_um == 0.25 and isinstance(ckpt.meta["pixel_size_um"], float)
    assert "trained at 0.25 µm/px" in model_card(ckpt)
    save_checkpoint(tmp_path / "b.pt", model)
    ckpt = load_checkpoint(tmp_path / "b.pt")
    assert ckpt.pixel_size_um is None
    assert "pixel size not recorded" in model_card(ckpt)


@pytest.mark.parametrize("value", [0.0, -0.5, math.nan, math.inf, 1e6, "0.25", True])
def test_a_bad_pixel_size_is_refused_on_save(tmp_path, value):
    with pytest.raises(CheckpointError, match="pixel size"):
        save_checkpoint(tmp_path / "a.pt", build_model(TINY, seed=0), pixel_size_um=value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [-1.0, "big", [0.25]])
def test_a_tampered_pixel_size_is_refused_on_load(tmp_path, value):
    path = save_checkpoint(tmp_path / "a.pt", build_model(TINY, seed=0), pixel_size_um=0.5)
    payload = torch.load(path, weights_only=True)
    payload["pixel_size_um"] = value
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"a.pt: its pixel size .* is not a number"):
        load_checkpoint(path)


def test_checkpoints_without_the_key_still_load(tmp_path):
    """Files written before pixel sizes were recorded have no key at all."""
    path = save_checkpoint(tmp_path / "a.pt", build_model(TINY, seed=0))
    payload = torch.load(path, weights_only=True)
    del payload["pixel_size_um"]
    torch.save(payload, path)
    assert load_checkpoint(path).pixel_size_um is None


def test_training_and_pretraining_keep_the_starting_pixel_size(tmp_path):
    """A model fine-tuned or pre-trained from a checkpoint at 0.25 um/px keeps working at
    0.25 um/px (the CLI's train and pretrain pass it on), and a resumed run keeps its own."""
    import numpy as np

    from napari_selfloop.cli import main
    from napari_selfloop.core.engine.datasets import TrainItem
    from napari_selfloop.core.engine.pretrain import PretrainConfig, pretrain_jigsaw
    from napari_selfloop.core.engine.training import TrainConfig, train
    from napari_selfloop.core.progress import run_to_completion

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 96, 3), np.uint8)
    mask = (rng.random((96, 96)) > 0.5).astype(np.uint8)
    start = save_checkpoint(tmp_path / "start.pt", build_model(TINY, seed=0), pixel_size_um=0.25)
    ck = load_checkpoint(start)
    cfg = TrainConfig(
        framework="supervised", iterations=2, patch_size=96, batch_size=1, validate_every=1
    )
    run_to_completion(
        train(
            ck.model,
            [TrainItem("a", image, mask)],
            [],
            cfg,
            device="cpu",
            out=tmp_path / "t.pt",
            pixel_size_um=ck.pixel_size_um,
        )
    )
    assert load_checkpoint(tmp_path / "t.pt").pixel_size_um == 0.25
    run_to_completion(
        train(
            build_model(TINY),
            [TrainItem("a", image, mask)],
            [],
            TrainConfig(**{**cfg.to_dict(), "iterations": 3}),
            device="cpu",
            out=tmp_path / "t2.pt",
            resume=tmp_path / "t.pt",
        )
    )
    assert load_checkpoint(tmp_path / "t2.pt").pixel_size_um == 0.25
    run_to_completion(
        pretrain_jigsaw(
            load_checkpoint(start).model,
            [TrainItem("a", image, None)],
            PretrainConfig(iterations=1, patch_size=96, batch_size=2),
            device="cpu",
            out=tmp_path / "p.pt",
            pixel_size_um=0.25,
        )
    )
    assert load_checkpoint(tmp_path / "p.pt").pixel_size_um == 0.25
    folder = tmp_path / "imgs"
    folder.mkdir()
    import tifffile

    tifffile.imwrite(folder / "a.tif", image)
    assert (
        main(
            [
                "pretrain",
                "--images",
                str(folder),
                "--checkpoint",
                str(start),
                "--out",
                str(tmp_path / "c.pt"),
                "--iterations",
                "1",
                "--patch-size",
                "96",
            ]
        )
        == 0
    )
    assert load_checkpoint(tmp_path / "c.pt").pixel_size_um == 0.25
