"""Jigsaw pre-training and evaluation: the task is learned, resumable, checked at the door."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.datasets import TrainItem
from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.engine.pretrain import (
    PRETRAIN_KIND,
    PretrainConfig,
    at_chance,
    evaluate_jigsaw,
    pretrain_jigsaw,
)
from napari_selfloop.core.errors import CheckpointError, InputError
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store.checkpoint import load_checkpoint
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def gradient_image(seed: int, n: int = 160) -> np.ndarray:
    """Colour ramps (red along x, green along y) with noise: where a tile came from is
    written in its colour, so a working jigsaw learner gets below chance fast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n] / n
    img = np.stack([xx, yy, 0.5 + 0.1 * rng.standard_normal((n, n))], -1)
    return (np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1) * 255).astype(np.uint8)


def test_positive_control_learns_the_jigsaw_below_chance(tmp_path):
    """Learnability: on images where a tile's slot is visible, pre-training must beat chance
    (ln 100 = 4.61) on held-out puzzles within a minute on one CPU thread."""
    model = build_model(TINY, seed=0)
    images = [TrainItem(f"g{i}", gradient_image(i)) for i in range(3)]
    held_out = [gradient_image(10 + i) for i in range(2)]
    before = run_to_completion(evaluate_jigsaw(model, held_out, puzzles=64, device="cpu"))
    assert before["loss"] > before["chance_loss"] - 0.3  # an untrained head is near chance
    cfg = PretrainConfig(
        iterations=250, patch_size=96, batch_size=16, lr=3e-3, save_every=1000, window=20
    )
    result = run_to_completion(
        pretrain_jigsaw(model, images, cfg, device="cpu", out=tmp_path / "j.pt")
    )
    after = run_to_completion(evaluate_jigsaw(model, held_out, puzzles=64, device="cpu"))
    assert after["chance_loss"] == pytest.approx(math.log(100))
    assert after["loss"] < after["chance_loss"] - 0.5, after
    assert after["top1"] > 0.1
    assert not at_chance(after["loss"], after["chance_loss"]) and at_chance(
        before["loss"], before["chance_loss"]
    )
    assert result.loss < result.chance_loss and result.steps == 250
    ck = load_checkpoint(tmp_path / "j.pt")
    assert ck.meta["training"]["kind"] == PRETRAIN_KIND and ck.meta["training"]["step"] == 250
    assert ck.meta["metrics"]["jigsaw_patch_size"] == 96
    assert ck.meta["metrics"]["jigsaw_rotation"] == "none"


def test_pretraining_leaves_the_decoder_alone_and_freeze_keeps_the_encoder():
    model = build_model(TINY, seed=0)
    dec0 = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    enc0 = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head0 = model.jigsaw_head.fc.weight.detach().clone()
    run_to_completion(
        pretrain_jigsaw(
            model,
            [TrainItem("g", gradient_image(0))],
            PretrainConfig(iterations=3, patch_size=96, batch_size=4, freeze_encoder=True),
            device="cpu",
        )
    )
    assert all(torch.equal(v, dec0[k]) for k, v in model.decoder.state_dict().items())
    assert all(torch.equal(v, enc0[k]) for k, v in model.encoder.state_dict().items())
    assert not torch.equal(model.jigsaw_head.fc.weight, head0)
    run_to_completion(
        pretrain_jigsaw(
            model,
            [TrainItem("g", gradient_image(0))],
            PretrainConfig(iterations=3, patch_size=96, batch_size=4),
            device="cpu",
        )
    )
    assert all(torch.equal(v, dec0[k]) for k, v in model.decoder.state_dict().items())
    assert any(not torch.equal(v, enc0[k]) for k, v in model.encoder.state_dict().items())


def test_cancel_then_resume_reaches_the_end(tmp_path):
    out = tmp_path / "p.pt"
    cfg = PretrainConfig(iterations=6, patch_size=96, batch_size=4, save_every=100)
    images = [TrainItem("g", gradient_image(0))]
    gen = pretrain_jigsaw(build_model(TINY, seed=0), images, cfg, device="cpu", out=out)
    for _ in range(2):
        next(gen)
    gen.close()  # cancel: the checkpoint holds the weights so far
    ck = load_checkpoint(out)
    assert ck.meta["training"]["step"] == 2 and ck.meta["training"]["optimizer"]
    gen = pretrain_jigsaw(build_model(TINY, seed=0), images, cfg, device="cpu", out=out, resume=out)
    result = run_to_completion(gen)
    assert result.steps == 4 and load_checkpoint(out).meta["training"]["step"] == 6


def test_evaluate_is_deterministic_and_leaves_the_model_unchanged(tiny_model):
    images = [gradient_image(0), gradient_image(1, 100)]
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    a = run_to_completion(evaluate_jigsaw(tiny_model, images, puzzles=40, seed=3, device="cpu"))
    b = run_to_completion(evaluate_jigsaw(tiny_model, images, puzzles=40, seed=3, device="cpu"))
    assert a == b and a["puzzles"] == 40 and a["rotation"] == "none" and a["patch_size"] == 96
    assert all(torch.equal(v, state[k]) for k, v in tiny_model.state_dict().items())
    tiny = run_to_completion(
        evaluate_jigsaw(tiny_model, [gradient_image(2, 20)], puzzles=5, device="cpu")
    )
    assert tiny["puzzles"] == 5  # an image smaller than a patch is padded by reflection


def test_bad_input_is_refused_with_one_line(tmp_path):
    model = build_model(TINY, seed=0)
    with pytest.raises(InputError, match="no images"):
        pretrain_jigsaw(model, [], PretrainConfig())
    with pytest.raises(InputError, match="multiple of 96"):
        PretrainConfig(patch_size=100)
    with pytest.raises(InputError, match="folder"):
        pretrain_jigsaw(model, [TrainItem("g", gradient_image(0))], out=tmp_path / "nope" / "x.pt")
    with pytest.raises(InputError, match="3D|2D|shape"):
        pretrain_jigsaw(model, [TrainItem("s", np.zeros((4, 50, 50, 3), np.uint8))])
    with pytest.raises(InputError, match="at least 1"):
        run_to_completion(evaluate_jigsaw(model, [gradient_image(0)], puzzles=0))
    from napari_selfloop.core.store.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "plain.pt", model)
    with pytest.raises(CheckpointError, match="not written by jigsaw pre-training"):
        pretrain_jigsaw(model, [TrainItem("g", gradient_image(0))], resume=tmp_path / "plain.pt")


def test_thin_models_on_large_patches_do_not_crash_the_process():
    """PyTorch 2.13's CPU backward of a channels-last 1x1 stride-2 convolution from 8
    channels segfaults at 72 px and up; thin models run in the default format on the CPU."""
    from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label

    model = build_model(TINY, seed=0)
    image = gradient_image(0, 300)
    cfg = PretrainConfig(iterations=2, patch_size=288, batch_size=9, multiscale=False)
    assert (
        run_to_completion(pretrain_jigsaw(model, [TrainItem("g", image)], cfg, device="cpu")).steps
        == 2
    )
    r = run_to_completion(
        pseudo_label(image, model, PseudoLabelConfig(q=1, patch_size=288), device="cpu")
    )
    assert r.probability.shape == image.shape[:2]
