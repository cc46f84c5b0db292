"""Bundled starter models: packaging, loading by name, the listing, the automatic choice,
missing and damaged files (headless; the GUI side is in test_widgets_bundled.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_selfloop._sample_data import lesion_sample, nuclei_sample
from napari_selfloop.cli import main
from napari_selfloop.core.engine.calibration import apply_calibration
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.errors import CheckpointError
from napari_selfloop.core.store import bundled
from napari_selfloop.core.store.bundled import (
    BUNDLED,
    bundled_path,
    load_any,
    load_bundled,
    model_for_image,
    package_model,
    resolve_checkpoint,
)
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint

SHIPPED_DIR = bundled.MODELS_DIR
JIGSAW = {
    "loss": 2.0,
    "top1": 0.4,
    "chance_loss": 4.605,
    "patch_size": 192,
    "measured_on": "test puzzles",
}

#: A foreground cut as ``train_bundled.py --calibration`` records it.
CUT = {"threshold": 0.4, "bias_shift": 0.405465, "images": ["v1.png", "v2.png"]}
#: A self-loop step as ``train_bundled.py --selfloop-step`` records it.
STEP = {"step": 3e-4, "tolerance": 0.5, "images": ["v1.png", "v2.png", "v3.png"]}


def make_bundled(folder: Path, name: str, seed: int = 0) -> Path:
    """Package a tiny trained-looking model as bundled model ``name`` into ``folder``."""
    model = build_model(ModelConfig(width=8), seed=seed)
    src = save_checkpoint(
        folder / f"src_{name}.pt", model, data=[{"name": "a.png", "sha256": "0" * 64}]
    )
    return package_model(
        name,
        src,
        recipe={"segment": {"iterations": 1}},
        command="pytest",
        jigsaw=JIGSAW,
        heldout={"images": 2, "softmax_f1": 80.0, "softmax_balanced_accuracy": 90.0},
        calibration=CUT if name == "nuclei-he" else None,
        selfloop_step=STEP if name == "lesion-dermoscopy" else None,
        dest=folder / "models" / f"{name}.pt",
    )


@pytest.fixture
def tiny_models(tmp_path, monkeypatch) -> Path:
    """Both bundled names backed by tiny models in a temporary models folder."""
    for seed, name in enumerate(BUNDLED):
        make_bundled(tmp_path, name, seed)
    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path / "models")
    return tmp_path / "models"


def test_package_writes_half_precision_that_loads_as_float32(tmp_path, tiny_models):
    ckpt = load_bundled("nuclei-he")
    raw = torch.load(bundled_path("nuclei-he"), map_location="cpu", weights_only=True)
    floats = [v for v in raw["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    # Same predictions as the float32 source with its cut folded in, to half-precision
    # rounding.
    src = load_checkpoint(tmp_path / "src_nuclei-he.pt").model
    apply_calibration(src, CUT["threshold"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = torch.sigmoid(src(x)), torch.sigmoid(ckpt.model(x))
    assert float((a - b).abs().max()) < 2e-2
    # Provenance: data and hashes, recipe, jigsaw, licence.
    meta = ckpt.meta
    assert meta["data"] == [{"name": "a.png", "sha256": "0" * 64}]
    assert meta["training"]["kind"] == "bundled" and meta["training"]["command"] == "pytest"
    assert ckpt.pixel_size_um == 0.25 and load_bundled("lesion-dermoscopy").pixel_size_um is None
    assert (
        meta["metrics"]["jigsaw_loss"] == 2.0 and meta["metrics"]["heldout"]["softmax_f1"] == 80.0
    )
    assert "CC BY-NC-SA 4.0" in meta["note"] and "non-commercial" in meta["note"]
    assert meta["metrics"]["calibration"] == CUT
    lesion = load_bundled("lesion-dermoscopy")
    assert "calibration" not in lesion.meta["metrics"]
    # The chosen self-loop step is the model's own, and its record is kept.
    assert lesion.config.selfloop_lr == 3e-4 and lesion.meta["metrics"]["selfloop_step"] == STEP
    assert ckpt.config.selfloop_lr is None and "selfloop_step" not in meta["metrics"]
    assert meta["parent"] == load_checkpoint(tmp_path / "src_nuclei-he.pt").sha256


def test_load_by_name_and_paths_still_win(tmp_path, tiny_models, monkeypatch):
    assert resolve_checkpoint("nuclei-he") == tiny_models / "nuclei-he.pt"
    assert load_any("lesion-dermoscopy").path == tiny_models / "lesion-dermoscopy.pt"
    other = save_checkpoint(tmp_path / "other.pt", build_model(ModelConfig(width=8), seed=5))
    assert load_any(other).path == other
    # A file called like a bundled model in the working folder is that file.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nuclei-he").write_bytes(other.read_bytes())
    assert resolve_checkpoint("nuclei-he") == Path("nuclei-he")


def test_missing_and_damaged_bundled_files_say_reinstall(tmp_path, tiny_models):
    with pytest.raises(CheckpointError, match="no bundled model called 'nuclei'"):
        bundled_path("nuclei")
    path = tiny_models / "nuclei-he.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="bundled model 'nuclei-he' is damaged.*reinstall"):
        load_bundled("nuclei-he")
    path.unlink()
    with pytest.raises(CheckpointError, match="bundled model 'nuclei-he' is missing.*reinstall"):
        load_any("nuclei-he")


def test_model_for_image_is_the_start_panel_guess():
    he = nuclei_sample()[0][0]
    lesion = lesion_sample()[0][0]
    assert model_for_image(np.asarray(he)) == "nuclei-he"
    assert model_for_image(np.asarray(lesion)) == "lesion-dermoscopy"


def test_models_command_lists_plain_cards_then_details(tiny_models, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "nuclei-he" in out and "lesion-dermoscopy" in out
    # Plain words first: what, how good in words and one number, the licence (prominent).
    assert out.count("How good: good. On 2 ") == 2 and out.count("by 80 % (Dice score") == 2
    assert "Licence: NON-COMMERCIAL USE ONLY (CC BY-NC-SA 4.0)" in out
    assert out.count("NON-COMMERCIAL") == 1  # the lesion model's weights are not NC
    for ml in ("L_SS", "nats", "AJI", "step", "recipe", "softmax_f1", "runs/"):
        assert ml not in out, ml
    assert main(["models", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "CC BY-NC-SA 4.0" in out and "non-commercial" in out
    # One held-out line per model, the model card's: formatted figures, not a raw record.
    assert out.count("on 2 unseen images: softmax Dice 80.0, balanced accuracy 90.0") == 2
    assert "softmax_f1" not in out
    assert out.count("foreground cut: 0.40") == 1 and "on 2 validation images" in out
    assert out.count("self-loop step: 0.0003 (its default") == 1
    assert "chosen on 3 validation images" in out
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(BUNDLED) and all(r["installed"] for r in rows)


def test_every_checkpoint_option_takes_a_bundled_name(tmp_path, tiny_models, capsys):
    import tifffile

    img = np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", img)
    out = tmp_path / "out"
    assert (
        main(
            [
                "pseudo-label",
                str(tmp_path / "img.tif"),
                "--checkpoint",
                "nuclei-he",
                "--method",
                "softmax",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert any(out.iterdir())
    report = tmp_path / "jigsaw.json"
    assert (
        main(
            [
                "evaluate-jigsaw",
                str(tmp_path / "img.tif"),
                "--checkpoint",
                "lesion-dermoscopy",
                "--puzzles",
                "4",
                "--patch-size",
                "96",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["checkpoint"].endswith("lesion-dermoscopy.pt")
    (tiny_models / "nuclei-he.pt").unlink()
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--images",
                str(tmp_path),
                "--checkpoint",
                "nuclei-he",
                "--out",
                str(tmp_path / "t.pt"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bundled model 'nuclei-he' is missing" in err and "Traceback" not in err


@pytest.mark.parametrize("name", list(BUNDLED))
def test_shipped_model_is_small_half_precision_and_documented(name):
    m = BUNDLED[name]
    path = SHIPPED_DIR / f"{name}.pt"
    assert path.is_file(), f"{path} is not in the package"
    assert path.stat().st_size < 30e6
    ckpt = load_checkpoint(path)
    assert ckpt.config.width == 64 and ckpt.config.decoder == "tapered"
    meta = ckpt.meta
    assert meta["training"]["kind"] == "bundled"
    # The recipe's command (train_bundled.py; train_instances.py for an instance-aware
    # model, packaged by package_instances.py).
    assert any(s in meta["training"]["command"] for s in ("train_bundled.py", "train_instances.py"))
    if ckpt.config.instance_output != "none":
        inst = meta["metrics"]["instances"]
        assert inst["marker"] == ckpt.config.instance_marker and inst["validation"]["pq"] > 0
        # the watershed's settings chosen on validation images (record_instance_rule.py)
        assert inst["min_fraction"] == ckpt.config.instance_min_fraction
        tissue = meta["metrics"]["tissue"]  # the plausibility record
        assert tissue["images"] >= 30
        # the model's own certainty on its training images (benchmarks/record_certainty.py)
        low, high = tissue["fg_entropy"]
        assert 0.0 < low <= high < 1.0
    assert len(meta["data"]) >= 30 and all(len(d["sha256"]) == 64 for d in meta["data"])
    jig = meta["metrics"]
    assert abs(jig["jigsaw_chance_loss"] - math.log(ckpt.config.num_permutations)) < 1e-3
    assert math.isfinite(jig["jigsaw_loss"]) and 0.0 <= jig["jigsaw_top1"] <= 1.0
    # The jigsaw is learned (the bar, measured on the training images here), so
    # self-loop uncertainty has something to go on.
    assert jig["jigsaw_loss"] <= 3.0 and jig["jigsaw_top1"] >= 0.2
    assert m.licence.split(",")[0] in meta["note"]
