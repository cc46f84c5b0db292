"""The gate of the semi-supervised frameworks (``TrainConfig.gate_dice``): unlabelled
images join only once the model segments its labelled patches."""

from __future__ import annotations

import pytest
from test_training import FAST, items

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.training import GATE_WINDOW, TrainConfig, _labelled_dice, train
from napari_selfloop.core.progress import run_to_completion

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(gate: float, iterations: int = GATE_WINDOW + 3, framework: str = "selfloop"):
    cfg = TrainConfig(
        **{**FAST, "iterations": iterations, "gate_dice": gate, "framework": framework}
    )
    model = build_model(ModelConfig(width=8), seed=0)
    result = run_to_completion(
        train(model, items(1), items(2, start=5, masks=False), cfg, device="cpu")
    )
    return result.history


def test_labelled_dice_by_hand():
    import torch

    logits = torch.tensor([[[1.0, -1.0], [1.0, 1.0]]])
    mask = torch.tensor([[[1, 1], [0, 255]]], dtype=torch.uint8)
    # predicted foreground on the labelled pixels: (0,0), (1,0); truth: (0,0), (0,1)
    assert _labelled_dice(logits, mask) == pytest.approx(2 * 1 / (2 + 2))
    assert _labelled_dice(-logits.abs(), torch.zeros_like(mask)) == 1.0  # nothing anywhere


def test_the_gate_opens_after_a_window_of_labelled_batches_that_segment():
    history = [h for h in _run(gate=0.01) if h.get("phase", "train") == "train" and h["step"]]
    opened = [h["step"] for h in history if "unlabelled_from" in h]
    assert opened == [GATE_WINDOW]  # the first step it can: a Dice of 0.01 is reached at once
    assert all(0.0 <= h["labelled_dice"] <= 1.0 for h in history)


def test_a_model_that_does_not_segment_never_opens_it():
    history = _run(gate=0.99)
    assert not [h for h in history if "unlabelled_from" in h]


def test_gate_zero_is_the_papers_schedule_and_supervised_needs_no_gate():
    for gate, framework in ((0.0, "selfloop"), (0.5, "supervised")):
        assert not [h for h in _run(gate, framework=framework) if "unlabelled_from" in h]


def test_gate_is_checked():
    from napari_selfloop.core.errors import InputError

    with pytest.raises(InputError, match="gate_dice"):
        TrainConfig(gate_dice=1.0)
