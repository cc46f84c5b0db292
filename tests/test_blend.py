"""``TrainConfig.blend``: a fine-tune that ends between the starting and the trained weights."""

from __future__ import annotations

import pytest
import torch

from napari_selfloop.cli import main
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.training import (
    FINETUNE_BLEND,
    TrainConfig,
    blended_state,
    resolved_modes,
    train,
)
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store.checkpoint import load_checkpoint
from tests.test_cli_train import FAST, folders  # noqa: F401  (a fixture)
from tests.test_training import items

pytestmark = pytest.mark.usefixtures("one_thread")


def test_blended_state_moves_floats_and_keeps_counters():
    start = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3), "h": torch.ones(2).half()}
    trained = {
        "w": torch.tensor([4.0, -2.0]),
        "n": torch.tensor(10),
        "h": torch.full((2,), 3.0).half(),
    }
    out = blended_state(start, trained, 0.25)
    assert torch.equal(out["w"], torch.tensor([1.0, 1.0]))
    assert out["n"].item() == 10  # a batch counter is not a weight: the trained one
    assert out["h"].dtype == torch.float16 and torch.equal(out["h"], torch.full((2,), 1.5).half())
    assert torch.equal(blended_state(start, trained, 1.0)["w"], trained["w"])
    with pytest.raises(ValueError, match="same network"):
        blended_state({"w": start["w"]}, trained, 0.5)


def _fine_tune(blend: float | None, out=None) -> tuple[dict, dict]:
    """A trained tiny model fine-tuned with ``blend``: its weights before and after."""
    model = build_model(ModelConfig(width=8), seed=0)
    cfg = TrainConfig(iterations=4, patch_size=96, batch_size=2, validate_every=2)
    run_to_completion(train(model, items(2), [], cfg, device="cpu"))  # now a trained model
    start = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = TrainConfig(iterations=4, patch_size=96, batch_size=2, validate_every=2, blend=blend)
    run_to_completion(train(model, items(2, start=5), [], tuned, device="cpu", out=out))
    return start, model.state_dict()


def test_train_ends_at_the_blend_of_start_and_trained(tmp_path):
    start, full = _fine_tune(1.0)
    start_again, half = _fine_tune(0.5, out=tmp_path / "half.pt")
    _, auto = _fine_tune(None, out=tmp_path / "auto.pt")
    assert all(torch.equal(start[k], start_again[k]) for k in start)  # the same run twice
    moved = [
        k for k in start if start[k].is_floating_point() and not torch.equal(start[k], full[k])
    ]
    assert moved  # the fine-tune learned something, and blending halves it
    for k in moved:
        expected = start[k] + 0.5 * (full[k] - start[k])
        torch.testing.assert_close(half[k], expected, rtol=1e-5, atol=1e-6)
    saved = load_checkpoint(tmp_path / "half.pt")
    assert saved.meta["metrics"]["blend"] == 0.5
    assert saved.meta["training"]["config"]["blend"] == 0.5
    for k in moved:
        torch.testing.assert_close(saved.model.state_dict()[k], half[k].cpu())
    # auto: a fine-tune of a trained model ends at FINETUNE_BLEND of what it learned.
    assert (
        load_checkpoint(tmp_path / "auto.pt").meta["training"]["config"]["blend"] == FINETUNE_BLEND
    )
    for k in moved:
        expected = start[k] + FINETUNE_BLEND * (full[k] - start[k])
        torch.testing.assert_close(auto[k], expected, rtol=1e-5, atol=1e-6)


def test_auto_blend_is_for_fine_tuning_a_trained_model_only(tmp_path):
    new = build_model(ModelConfig(width=8), seed=0)
    assert resolved_modes(TrainConfig(), new).blend == 1.0  # a new model keeps all it learns
    cfg = TrainConfig(iterations=2, patch_size=96, batch_size=2)
    run_to_completion(train(new, items(1), [], cfg, device="cpu", out=tmp_path / "m.pt"))
    trained = new
    assert resolved_modes(TrainConfig(), trained).blend == FINETUNE_BLEND
    assert resolved_modes(TrainConfig(), trained, resuming=True).blend == 1.0
    assert resolved_modes(TrainConfig(blend=0.6), trained).blend == 0.6
    # A resumed fine-tune (auto) runs: it keeps all it learned since the checkpoint.
    more = TrainConfig(iterations=3, patch_size=96, batch_size=2)
    out = tmp_path / "more.pt"
    run_to_completion(train(trained, items(1), [], more, resume=tmp_path / "m.pt", out=out))
    assert load_checkpoint(out).meta["training"]["config"]["blend"] == 1.0


def test_blend_refusals(tmp_path):
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(InputError, match=r"blend is a fraction in \(0, 1\]"):
            TrainConfig(blend=bad)
    model = build_model(ModelConfig(width=8), seed=0)
    cfg = TrainConfig(iterations=2, patch_size=96, batch_size=2)
    run_to_completion(train(model, items(1), [], cfg, device="cpu", out=tmp_path / "m.pt"))
    with pytest.raises(InputError, match="resumed run no longer has"):
        train(model, items(1), [], TrainConfig(iterations=4, blend=0.5), resume=tmp_path / "m.pt")


def test_train_command_blends(folders):  # noqa: F811
    args = ["-q", "train", "--images", str(folders / "images")]
    args += ["--masks", str(folders / "masks"), "--labeled", "a", *FAST]
    assert main([*args, "--out", str(folders / "new.pt")]) == 0
    assert load_checkpoint(folders / "new.pt").meta["training"]["config"]["blend"] == 1.0
    tuned = folders / "tuned.pt"
    extra = ["--checkpoint", str(folders / "new.pt"), "--blend", "0.3"]
    assert main([*args, *extra, "--out", str(tuned)]) == 0
    meta = load_checkpoint(tuned).meta
    assert meta["training"]["config"]["blend"] == 0.3 and meta["metrics"]["blend"] == 0.3


def test_a_stopped_fine_tune_keeps_its_best_weights_unblended(tmp_path):
    model = build_model(ModelConfig(width=8), seed=0)
    cfg = TrainConfig(iterations=4, patch_size=96, batch_size=2, validate_every=2)
    run_to_completion(train(model, items(2), [], cfg, device="cpu"))  # a trained model
    start = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "stopped.pt"
    tuned = TrainConfig(iterations=8, patch_size=96, batch_size=2, validate_every=2)
    events = train(model, items(2, start=5), [], tuned, device="cpu", out=out)
    for event in events:
        if event.data["phase"] == "train" and event.data["step"] == 5:
            break  # the panel's Stop: the generator is closed
    events.close()
    saved = load_checkpoint(out)
    assert saved.meta["training"]["config"]["blend"] == FINETUNE_BLEND  # auto, as it ran
    assert "blend" not in saved.meta["metrics"]  # ... but never applied
    best = saved.model.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v.cpu(), best[k])  # the best weights, in memory and out
    assert any(not torch.equal(start[k], best[k]) for k in start if start[k].is_floating_point())
