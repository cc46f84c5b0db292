"""``bench_hitl.py --blends`` scores what ``train --blend`` gives, without another fine-tune."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.training import TrainConfig, TrainItem, train
from napari_selfloop.core.progress import run_to_completion
from tests.benchmark_support import import_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")

REGION = 96


def _grid_of_nuclei(n: int = 128, step: int = 12, r: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like image with a grid of small purple discs (one id each) and its labels."""
    rng = np.random.default_rng(0)
    img = rng.integers(190, 230, size=(n, n, 3)).astype(np.uint8)
    labels = np.zeros((n, n), np.int32)
    yy, xx = np.mgrid[:n, :n]
    k = 0
    for cy in range(6, n - 4, step):
        for cx in range(6, n - 4, step):
            k += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    img[labels > 0] = (95, 45, 160)
    return img, labels


def _fine_tuned(base, d, blend: float):
    """``base`` fine-tuned on the corrected region of ``d``, as ``bench_hitl.fine_tune``
    gives it to ``train`` (one id per nucleus there, 255 elsewhere)."""
    bench = import_benchmark("bench_hitl")
    model = build_model(base.config, seed=1)
    model.load_state_dict(base.state_dict())
    ids = np.zeros(d["labels"].shape, np.int64)
    ids[:REGION, :REGION] = bench.region_ids(d, REGION)
    mask = np.full(ids.shape, 255, np.uint8)
    mask[:REGION, :REGION] = ids[:REGION, :REGION] > 0
    cfg = TrainConfig(iterations=4, patch_size=96, batch_size=2, blend=blend)
    item = TrainItem("g.png", d["image"], mask, instances=ids)
    run_to_completion(train(model, [item], [], cfg, device="cpu"))
    return model


def test_in_process_blend_is_what_train_blend_gives():
    bench = import_benchmark("bench_hitl")
    img, labels = _grid_of_nuclei()
    d = {"image": img, "labels": labels, "name": "g.png"}
    base = build_model(ModelConfig(width=8, instance_output="distance"), seed=0)
    whole = TrainItem("w.png", img, (labels > 0).astype(np.uint8), instances=labels)
    cfg = TrainConfig(iterations=4, patch_size=96, batch_size=2, instance_rule="keep")
    run_to_completion(train(base, [whole], [], cfg, device="cpu"))  # a trained base model
    tuned = _fine_tuned(base, d, 1.0)
    by_train = _fine_tuned(base, d, 0.4)
    scored = bench.blended_model(base, tuned, 0.4, d, REGION, rule=True)
    for k, v in by_train.state_dict().items():
        torch.testing.assert_close(scored.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    chosen = (by_train.config.instance_marker, by_train.config.instance_min_fraction)
    assert chosen[0] is not None  # train chose the watershed's settings on the region
    assert (scored.config.instance_marker, scored.config.instance_min_fraction) == chosen
