"""The command line, run in-process through ``main`` and once as a real console script."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_selfloop.core.engine.instances import Instancer
from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import TINY, assert_one_line_error, run_cli


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "he.png")
    Image.fromarray(img).save(tmp_path / "derm.jpg")
    tifffile.imwrite(tmp_path / "gray16.tif", (img[..., 0].astype(np.uint16) * 200))
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    save_checkpoint(tmp_path / "m2.pt", build_model(TINY, seed=1))
    return tmp_path


def test_init_writes_a_loadable_checkpoint(workdir, capsys):
    code, _, _ = run_cli(capsys, "init", "--out", "new.pt", "--seed", "7", "--width", "8")
    assert code == 0
    ckpt = load_checkpoint(workdir / "new.pt")
    assert ckpt.config.width == 8 and ckpt.meta["training"] == {"init_seed": 7}
    code, _, err = run_cli(capsys, "init", "--out", "new.pt")
    assert_one_line_error(code, err, "exists", "--force")
    assert run_cli(capsys, "init", "--out", "new.pt", "--width", "8", "--force")[0] == 0


def test_pseudo_label_uncertainty_is_the_entropy_or_the_spread(workdir, capsys):
    """Default: binary entropy (bits) of the probability, which marks errors best; --uncertainty
    spread: the standard deviation of the Q maps (one 96-px patch: no blending)."""
    args = [
        "-q",
        "pseudo-label",
        "he.png",
        "--checkpoint",
        "m.pt",
        "--method",
        "mc-dropout",
        "--q",
        "4",
        "--patch-size",
        "96",
    ]
    assert run_cli(capsys, *args, "--out", "ent")[0] == 0
    assert run_cli(capsys, *args, "--uncertainty", "spread", "--out", "spr")[0] == 0
    prob = tifffile.imread(workdir / "ent" / "he_prob.tif").astype(np.float64)
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    np.testing.assert_allclose(
        tifffile.imread(workdir / "ent" / "he_uncertainty.tif"), entropy, atol=1e-4
    )
    spread = tifffile.imread(workdir / "spr" / "he_uncertainty.tif")
    assert np.array_equal(tifffile.imread(workdir / "spr" / "he_prob.tif"), prob.astype(np.float32))
    assert spread.max() < 0.5 and not np.allclose(spread, entropy, atol=1e-3)


def test_init_default_is_the_real_resunet18(workdir, capsys):
    assert run_cli(capsys, "init", "--out", "full.pt")[0] == 0
    assert load_checkpoint(workdir / "full.pt").config.width == 64


@pytest.mark.parametrize("method", ["selfloop", "softmax", "mc-dropout", "selfloop-no-ss"])
def test_pseudo_label_writes_four_tiffs_per_image(workdir, capsys, method):
    code, _, err = run_cli(
        capsys,
        "-q",
        "pseudo-label",
        "he.png",
        "derm.jpg",
        "gray16.tif",
        "--checkpoint",
        "m.pt",
        "--method",
        method,
        "--q",
        "2",
        "--patch-size",
        "96",
        "--out",
        "out",
    )
    assert code == 0, err
    for stem in ("he", "derm", "gray16"):
        prob = tifffile.imread(workdir / "out" / f"{stem}_prob.tif")
        unc = tifffile.imread(workdir / "out" / f"{stem}_uncertainty.tif")
        mask = tifffile.imread(workdir / "out" / f"{stem}_mask.tif")
        assert prob.shape == unc.shape == mask.shape == (70, 110)
        assert prob.dtype == np.float32 and unc.dtype == np.float32 and mask.dtype == np.uint8
        assert prob.min() >= 0 and prob.max() <= 1
        assert set(np.unique(mask)) <= {0, 1, 255}
        ids = tifffile.imread(workdir / "out" / f"{stem}_instances.tif")
        assert ids.shape == (70, 110) and ids.dtype == np.uint32
        # a binary model's objects: the components of its foreground (prob > 0.5)
        assert np.array_equal(ids, Instancer()(prob))
    assert sorted(p.name for p in (workdir / "out").iterdir()) == sorted(
        f"{s}_{k}.tif"
        for s in ("he", "derm", "gray16")
        for k in ("prob", "uncertainty", "mask", "instances")
    )


def test_ensemble_takes_several_checkpoints(workdir, capsys):
    code, _, err = run_cli(
        capsys,
        "-q",
        "pseudo-label",
        "he.png",
        "--checkpoint",
        "m.pt",
        "--checkpoint",
        "m2.pt",
        "--method",
        "ensemble",
        "--out",
        "ens",
    )
    assert code == 0, err
    assert (workdir / "ens" / "he_prob.tif").exists()


@pytest.fixture
def bad_inputs(workdir):
    (workdir / "notes.png").write_text("not an image at all")
    tifffile.imwrite(
        workdir / "stack.tif", np.zeros((5, 3, 64, 64), np.uint8), photometric="minisblack"
    )
    data = (workdir / "he.png").read_bytes()
    (workdir / "cut.png").write_bytes(data[: len(data) // 3])
    shutil.copy(workdir / "m.pt", workdir / "cut.pt")
    raw = (workdir / "cut.pt").read_bytes()
    (workdir / "cut.pt").write_bytes(raw[: len(raw) // 2])
    (workdir / "afile").write_text("x")
    (workdir / "sub").mkdir()
    shutil.copy(workdir / "he.png", workdir / "sub" / "he.png")
    import torch

    torch.save({"fc.weight": torch.zeros(2, 2)}, workdir / "foreign.pt")
    return workdir


@pytest.mark.parametrize(
    "args, words",
    [
        (["missing.png"], ["missing.png"]),
        (["notes.png"], ["notes.png", "not"]),
        (["cut.png"], ["cut.png"]),
        (["stack.tif"], ["pick one plane"]),
        (["he.png", "--checkpoint", "cut.pt"], ["corrupt or truncated"]),
        (["he.png", "--checkpoint", "foreign.pt"], ["not a napari-selfloop checkpoint"]),
        (["he.png", "--checkpoint", "he.png"], ["not a PyTorch checkpoint"]),
        (["he.png", "--checkpoint", "nope.pt"], ["does not exist"]),
        (["he.png", "--method", "bayes"], ["invalid choice"]),
        (["he.png", "--threshold", "0.3"], ["threshold"]),
        (["he.png", "--q", "0"], ["Q must be"]),
        (["he.png", "--q", "many"], ["invalid int value"]),
        (["he.png", "--patch-size", "100"], ["multiple of 96"]),
        (["he.png", "--method", "ensemble"], ["at least two"]),
        (["he.png", "--checkpoint", "m2.pt"], ["only the ensemble"]),
        (["he.png", "--out", "afile"], ["is a file"]),
        (["he.png", "sub/he.png"], ["would both write he_*"]),
        (["he.png", "--device", "tpu"], ["unknown device"]),
    ],
)
def test_pseudo_label_errors_are_one_line(bad_inputs, capsys, args, words):
    argv = ["pseudo-label", *args]
    if "--checkpoint" not in args or "m2.pt" in args:
        argv += ["--checkpoint", "m.pt"]
    if "--out" not in args:
        argv += ["--out", "out"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *words)
    # Nothing half-written is left behind.
    out = bad_inputs / "out"
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(workdir, capsys):
    code, _, err = run_cli(
        capsys, "pseudo-label", "he.png", "--checkpoint", "m.pt", "--device", "cuda", "--out", "out"
    )
    assert_one_line_error(code, err, "no CUDA GPU")


def test_missing_arguments_are_one_line(workdir, capsys):
    code, _, err = run_cli(capsys, "pseudo-label", "he.png")
    assert_one_line_error(code, err, "--checkpoint", "--out")
    code, out, _ = run_cli(capsys, "pseudo-label", "--help")
    assert code == 0 and "STEM_mask.tif" in out


def test_console_script_runs_without_traceback(workdir):
    exe = shutil.which("napari-selfloop") or None
    cmd = [exe] if exe else [sys.executable, "-m", "napari_selfloop.cli"]
    ok = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "napari-selfloop" in ok.stdout
    bad = subprocess.run(
        [*cmd, "pseudo-label", "stack_missing.tif", "--checkpoint", "m.pt", "--out", "o"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
