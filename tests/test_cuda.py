"""The engine on a CUDA GPU gives what it gives on the CPU (skipped without one; run by
``scripts/gpu_check.sh`` on a lent GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label
from napari_selfloop.core.engine.training import TrainConfig, TrainItem, train
from napari_selfloop.core.progress import run_to_completion

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _image(seed: int = 0, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for cy, cx in rng.integers(12, size - 12, (12, 2)):
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1
    img = np.where(mask[..., None] == 1, (90, 40, 140), (230, 200, 220)).astype(np.int16)
    img += rng.integers(-12, 12, img.shape).astype(np.int16)
    return np.clip(img, 0, 255).astype(np.uint8), mask


@pytest.mark.parametrize("method", ["softmax", "mc-dropout", "selfloop"])
def test_pseudo_label_on_cuda_matches_the_cpu(method):
    model = build_model(ModelConfig(width=16, instance_output="distance"), seed=0).eval()
    img, _ = _image()
    cfg = PseudoLabelConfig(method=method, q=3, precision="fp32", seed=0)
    cpu = run_to_completion(pseudo_label(img, model, cfg, device="cpu", instances=True))
    gpu = run_to_completion(pseudo_label(img, model, cfg, device="cuda", instances=True))
    assert str(gpu.info["device"]).startswith("cuda")
    if method == "mc-dropout":  # the dropout masks come from another generator on the GPU
        assert np.abs(gpu.probability - cpu.probability).mean() < 0.05
        return
    # (convolutions may run in TF32 on the GPU: a few thousandths apart)
    np.testing.assert_allclose(gpu.probability, cpu.probability, atol=1e-2)
    np.testing.assert_allclose(gpu.aux, cpu.aux, atol=1e-2)
    assert (gpu.mask != cpu.mask).mean() < 0.01


def test_training_on_cuda_lowers_the_loss():
    model = build_model(ModelConfig(width=16, instance_output="distance"), seed=0)
    img, mask = _image(1)
    cfg = TrainConfig(framework="selfloop", iterations=30, patch_size=96, batch_size=4, lr=3e-3)
    result = run_to_completion(
        train(
            model, [TrainItem("a", img, mask)], [TrainItem("b", _image(2)[0])], cfg, device="cuda"
        )
    )
    losses = [h["loss_seg"] for h in result.history if "loss_seg" in h]
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])
