"""A model's own self-loop step: chosen on a validation sweep, kept in its config, used
whenever no step is given."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfloop.core.engine.model import ModelConfig
from napari_selfloop.core.engine.pseudolabel import DEFAULT_STEP_LR, PseudoLabelConfig, pseudo_label
from napari_selfloop.core.engine.step_size import choose_selfloop_step, set_selfloop_step
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from napari_selfloop.core.store.modelcard import model_card


def row(f1: float, ba: float, capture: tuple[float, float, float]) -> dict[str, float]:
    return {"f1": f1, "balanced_accuracy": ba, **dict(zip(("top5", "top10", "top20"), capture))}


SWEEP = {
    "softmax": row(81.0, 89.0, (24.0, 42.0, 68.0)),
    "no-ss": row(82.0, 89.5, (30.0, 50.0, 75.0)),  # context only: never chosen
    "1e-05": row(81.0, 89.0, (25.0, 43.0, 69.0)),
    "0.0001": row(80.6, 88.6, (26.0, 44.0, 70.0)),  # within 0.5 points: eligible, best
    "0.001": row(75.0, 85.0, (40.0, 60.0, 80.0)),  # best capture, but loses 6 points
}


def test_the_step_that_keeps_up_with_softmax_and_captures_most_is_chosen():
    rec = choose_selfloop_step(SWEEP)
    assert rec["step"] == 1e-4
    assert set(rec["candidates"]) == {"1e-05", "0.0001", "0.001"}
    assert rec["candidates"]["0.001"]["eligible"] is False
    assert rec["candidates"]["0.0001"]["capture"] == pytest.approx(46.667, abs=1e-3)
    assert rec["softmax"]["capture"] == pytest.approx(44.667, abs=1e-3)
    # A tighter tolerance leaves only the smallest step.
    assert choose_selfloop_step(SWEEP, tolerance=0.3)["step"] == 1e-5


def test_a_tie_goes_to_the_smaller_step_and_none_eligible_chooses_none():
    tie = {**SWEEP, "3e-05": SWEEP["0.0001"]}
    assert choose_selfloop_step(tie)["step"] == 3e-5
    losing = {"softmax": SWEEP["softmax"], "0.001": SWEEP["0.001"]}
    rec = choose_selfloop_step(losing)
    assert rec["step"] is None and rec["candidates"]["0.001"]["eligible"] is False


def test_bad_sweeps_are_refused():
    with pytest.raises(InputError, match="no softmax row"):
        choose_selfloop_step({"0.001": SWEEP["0.001"]})
    with pytest.raises(InputError, match="no step sizes"):
        choose_selfloop_step({"softmax": SWEEP["softmax"], "no-ss": SWEEP["no-ss"]})
    with pytest.raises(InputError, match="'0.001' lacks top10, top20"):
        choose_selfloop_step({**SWEEP, "0.001": {"f1": 1, "balanced_accuracy": 1, "top5": 1}})
    with pytest.raises(InputError, match="tolerance"):
        choose_selfloop_step(SWEEP, tolerance=-1)


def test_the_step_is_checked_kept_in_checkpoints_and_not_part_of_the_network(tmp_path, tiny_model):
    for bad in (0.0, -1e-3, 0.5, float("nan"), "1e-3", True):
        with pytest.raises(InputError, match="self-loop step|selfloop lr"):
            ModelConfig(width=8, selfloop_lr=bad)
    with pytest.raises(InputError, match="self-loop step"):
        set_selfloop_step(tiny_model, 1.0)
    assert tiny_model.config.selfloop_lr is None
    set_selfloop_step(tiny_model, 3e-5)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", tiny_model))
    assert loaded.config.selfloop_lr == 3e-5
    # Checkpoints from before the field load with no step; same network either way.
    old = {k: v for k, v in tiny_model.config.to_dict().items() if k != "selfloop_lr"}
    assert ModelConfig.from_dict(old).selfloop_lr is None
    assert ModelConfig.from_dict(old).same_network(tiny_model.config)
    assert ModelConfig.from_dict(old) != tiny_model.config
    assert not ModelConfig(width=8).same_network(ModelConfig(width=16))


def test_pseudo_labels_use_the_models_step_unless_one_is_given(tiny_model, rgb_image):
    def run(lr):
        cfg = PseudoLabelConfig(
            method="selfloop", q=3, patch_size=96, precision="fp32", seed=0, lr=lr
        )
        return run_to_completion(pseudo_label(rgb_image, tiny_model, cfg, device="cpu"))

    default = run(None)
    assert default.info["step_lr"] == DEFAULT_STEP_LR
    assert np.array_equal(default.probability, run(DEFAULT_STEP_LR).probability)
    big = run(0.05)
    set_selfloop_step(tiny_model, 0.05)
    own = run(None)
    assert own.info["step_lr"] == 0.05
    assert np.array_equal(own.probability, big.probability)
    assert not np.allclose(own.probability, default.probability)
    # A step given in the config wins over the model's.
    assert np.array_equal(run(DEFAULT_STEP_LR).probability, default.probability)
    assert PseudoLabelConfig(lr=2e-4).step_lr(tiny_model) == 2e-4
    with pytest.raises(InputError, match=r"step size \(lr\) must be positive"):
        PseudoLabelConfig(lr=0.0)


def test_the_card_shows_the_chosen_settings_and_no_raw_records(tmp_path, tiny_model):
    set_selfloop_step(tiny_model, 3e-5)
    metrics = {
        "heldout": {"images": 6, "softmax_f1": 77.23, "softmax_balanced_accuracy": 85.64},
        "calibration": {"threshold": 0.45, "images": ["a.png", "b.png"]},
        "selfloop_step": {"step": 3e-5, "images": ["a.png", "b.png", "c.png"]},
        "val_f1": 0.75,
    }
    card = model_card(
        load_checkpoint(save_checkpoint(tmp_path / "m.pt", tiny_model, metrics=metrics))
    )
    assert "on 6 unseen images: softmax Dice 77.2, balanced accuracy 85.6" in card
    assert "foreground cut: 0.45" in card and "on 2 validation images" in card
    assert "self-loop step: 3e-05 (its default; chosen on 3 validation images)" in card
    assert "val_f1 0.75" in card and "{" not in card


def test_sweep_scores_labelled_pixels_and_skips_rows_it_has(tiny_model, rgb_image):
    from napari_selfloop.core.engine.step_size import sweep_steps

    mask = np.zeros(rgb_image.shape[:2], np.uint8)
    mask[20:40, 30:60] = 1
    mask[:5] = 255  # not labelled
    cfg = PseudoLabelConfig(patch_size=96, precision="fp32", seed=0)
    got = []
    events = []
    rows = run_to_completion(
        sweep_steps(
            tiny_model,
            [rgb_image],
            [mask],
            [1e-4],
            q=2,
            config=cfg,
            on_row=lambda k, r: got.append(k),
        ),
        on_progress=events.append,
    )
    assert list(rows) == got == ["softmax", "no-ss", "0.0001"]
    assert events[-1].done == events[-1].total == 3  # softmax, no-ss, the step: one image each
    # The softmax row is the real softmax pseudo-label scored on the labelled pixels.
    prob = run_to_completion(
        pseudo_label(
            rgb_image,
            tiny_model,
            PseudoLabelConfig(method="softmax", patch_size=96, precision="fp32"),
            device="cpu",
        )
    ).probability
    from napari_selfloop.core.engine.metrics import pixel_scores

    assert rows["softmax"]["f1"] == pytest.approx(100 * pixel_scores(prob, mask)["f1"], abs=0.01)
    again = run_to_completion(
        sweep_steps(tiny_model, [rgb_image], [mask], [1e-4, 1e-3], q=2, config=cfg, skip=set(rows))
    )
    assert list(again) == ["0.001"]
    with pytest.raises(InputError, match="one mask per image"):
        run_to_completion(sweep_steps(tiny_model, [rgb_image], [], [1e-4]))
    with pytest.raises(InputError, match="positive"):
        run_to_completion(sweep_steps(tiny_model, [rgb_image], [mask], [0.0]))
    with pytest.raises(InputError, match="the mask has shape"):
        run_to_completion(sweep_steps(tiny_model, [rgb_image], [mask[:10]], [1e-4]))


def test_calibrate_command_chooses_the_step_of_the_copy(tmp_path, tiny_model, capsys):
    """End to end on real files: the copy carries the chosen step (or none) and its record."""
    import tifffile

    from napari_selfloop.cli import main

    src = save_checkpoint(tmp_path / "model.pt", tiny_model)
    for d in ("img", "masks"):
        (tmp_path / d).mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        tifffile.imwrite(tmp_path / "img" / f"t{i}.tif", img)
        mask = np.zeros((96, 96), np.uint8)
        mask[30:60, 20:70] = 1
        tifffile.imwrite(tmp_path / "masks" / f"t{i}.tif", mask)
    out = tmp_path / "cal.pt"
    args = [
        "-q",
        "calibrate",
        "--images",
        str(tmp_path / "img"),
        "--masks",
        str(tmp_path / "masks"),
    ]
    args += ["--checkpoint", str(src), "--out", str(out), "--selfloop-steps", "1e-4,0.05"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    copy = load_checkpoint(out)
    rec = copy.meta["metrics"]["selfloop_step"]
    assert set(rec["rows"]) == {"softmax", "no-ss", "0.0001", "0.05"}
    assert rec["images"] == ["t0.tif", "t1.tif"]
    assert copy.config.selfloop_lr == rec["step"]
    assert printed[1].startswith("self-loop step")
    if rec["step"] is not None:
        assert rec["candidates"][f"{rec['step']:g}"]["eligible"]
    assert main([*args[:-1], "0,1e-4", "--force"]) == 2
    assert "step sizes in (0, 0.1]" in capsys.readouterr().err


def test_the_card_says_when_no_step_kept_up_with_softmax(tmp_path, tiny_model):
    rec = {**choose_selfloop_step({"softmax": SWEEP["softmax"], "0.001": SWEEP["0.001"]})}
    rec["images"] = ["a.png"]
    card = model_card(
        load_checkpoint(
            save_checkpoint(tmp_path / "m.pt", tiny_model, metrics={"selfloop_step": rec})
        )
    )
    assert "self-loop: no step size kept up with softmax on 1 validation images" in card
    assert "(Dice at most 75.0 against 81.0)" in card and "self-loop step:" not in card


def test_the_card_survives_junk_records(tmp_path, tiny_model):
    """Records are file content: wrong types are left out of the card, never a crash."""
    metrics = {
        "heldout": {"images": "six", "softmax_f1": "77", "selfloop_f1": None},
        "calibration": {"threshold": "0.4", "images": 3},
        "selfloop_step": {"step": None, "images": "a.png", "candidates": {"x": 5}, "softmax": 1},
    }
    card = model_card(
        load_checkpoint(save_checkpoint(tmp_path / "m.pt", tiny_model, metrics=metrics))
    )
    assert "unseen images" not in card and "foreground cut" not in card
    assert "no step size kept up with softmax on 0 validation images (Dice at most nan" in card
    held = {"images": {"n": 6}, "softmax_f1": 77.4, "softmax_balanced_accuracy": 85.2}
    card = model_card(
        load_checkpoint(save_checkpoint(tmp_path / "h.pt", tiny_model, metrics={"heldout": held}))
    )
    assert "on unseen images: softmax Dice 77.4, balanced accuracy 85.2" in card
    assert "{'n': 6}" not in card
