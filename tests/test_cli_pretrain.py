"""``napari-selfloop pretrain``, ``evaluate-jigsaw`` and the jigsaw options of the other
commands, end to end on tiny files."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
from PIL import Image

from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.engine.pretrain import PRETRAIN_KIND
from napari_selfloop.core.store.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from tests.conftest import TINY, assert_one_line_error, run_cli
from tests.test_training import blobs

#: Small convolutions stall when two OpenMP threads compete with other processes.
pytestmark = pytest.mark.usefixtures("one_thread")

#: Small puzzles: besides being fast, 96-px patches keep clear of a PyTorch 2.13 CPU crash in
#: the backward pass of a width-8 model's channels-last 1x1 stride-2 convolution at 288 px+.
FAST = ["--batch-size", "4", "--patch-size", "96", "--device", "cpu"]
LINE = re.compile(
    r"^L_SS \d+\.\d{3} nats \(chance 4\.605\), top-1 \d+\.\d% on (\d+) puzzles, "
    r"rotation (\S+), patch (\d+)$"
)


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(blobs(i, 120)[0]).save(tmp_path / "imgs" / f"img{i}.png")
    (tmp_path / "more").mkdir()
    Image.fromarray(blobs(5, 100)[0]).save(tmp_path / "more" / "extra.png")
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    return tmp_path


def test_pretrain_writes_resumes_and_refuses_to_overwrite(work, capsys):
    code, out, err = run_cli(
        capsys,
        "-q",
        "pretrain",
        "--images",
        "imgs",
        "--images",
        "more",
        "--checkpoint",
        "m.pt",
        "--out",
        "p.pt",
        "--iterations",
        "3",
        *FAST,
    )
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert re.match(r"^L_SS \d+\.\d{3} nats \(chance 4\.605\), top-1 \d+\.\d%", last), last
    assert "3 steps" in last and "p.pt" in last
    ck = load_checkpoint(work / "p.pt")
    training = ck.meta["training"]
    assert training["kind"] == PRETRAIN_KIND and training["step"] == 3
    assert training["config"]["iterations"] == 3 and training["config"]["batch_size"] == 4
    assert ck.meta["parent"] == file_sha256(work / "m.pt")
    assert sorted(d["name"] for d in ck.meta["data"]) == ["extra.png", "img0.png", "img1.png"]
    assert math.isfinite(ck.meta["metrics"]["jigsaw_loss"])
    assert ck.meta["metrics"]["jigsaw_chance_loss"] == pytest.approx(math.log(100))
    assert ck.config == TINY

    # An existing --out is refused without --force ...
    code, _, err = run_cli(
        capsys, "pretrain", "--images", "imgs", "--checkpoint", "m.pt", "--out", "p.pt", *FAST
    )
    assert_one_line_error(code, err, "p.pt exists", "--force")
    assert load_checkpoint(work / "p.pt").meta["training"]["step"] == 3
    # ... but --resume of the same file continues it (the parent is kept).
    code, out, err = run_cli(
        capsys,
        "-q",
        "pretrain",
        "--images",
        "imgs",
        "--images",
        "more",
        "--resume",
        "p.pt",
        "--out",
        "p.pt",
        *FAST,
        "--iterations",
        "5",
    )
    assert code == 0, err
    assert "2 steps" in out
    ck = load_checkpoint(work / "p.pt")
    assert ck.meta["training"]["step"] == 5 and ck.meta["parent"] == file_sha256(work / "m.pt")
    # A finished run has nothing left to do.
    code, out, err = run_cli(
        capsys,
        "-q",
        "pretrain",
        "--images",
        "imgs",
        "--resume",
        "p.pt",
        "--out",
        "p.pt",
        *FAST,
        "--iterations",
        "5",
    )
    assert code == 0 and "nothing to do" in out
    # --force overwrites, here with the head alone trained on single-scale patches.
    code, _, err = run_cli(
        capsys,
        "-q",
        "pretrain",
        "--images",
        "imgs",
        "--checkpoint",
        "m.pt",
        "--out",
        "p.pt",
        "--freeze-encoder",
        "--single-scale",
        "--force",
        "--iterations",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "0.01",
        "--patch-size",
        "96",
    )
    assert code == 0, err
    cfg = load_checkpoint(work / "p.pt").meta["training"]["config"]
    assert cfg["freeze_encoder"] and not cfg["multiscale"] and cfg["lr"] == 0.01


def test_init_sets_the_jigsaw_head_and_rotation(work, capsys):
    code, _, err = run_cli(
        capsys,
        "init",
        "--out",
        "g.pt",
        "--width",
        "8",
        "--jigsaw-head",
        "gap",
        "--jigsaw-rotation",
        "per-class",
    )
    assert code == 0, err
    config = load_checkpoint(work / "g.pt").config
    assert config.jigsaw_head == "gap" and config.jigsaw_rotation == "per-class"
    assert run_cli(capsys, "init", "--out", "d.pt", "--width", "8")[0] == 0
    config = load_checkpoint(work / "d.pt").config
    assert config.jigsaw_head == "slots" and config.jigsaw_rotation == "none"
    code, _, err = run_cli(capsys, "init", "--out", "x.pt", "--jigsaw-rotation", "sideways")
    assert_one_line_error(code, err, "invalid choice")
    # pretrain and evaluate-jigsaw use the model's rotation mode.
    code, _, err = run_cli(
        capsys,
        "-q",
        "pretrain",
        "--images",
        "imgs",
        "--checkpoint",
        "g.pt",
        "--out",
        "gp.pt",
        "--iterations",
        "2",
        *FAST,
    )
    assert code == 0, err
    code, out, err = run_cli(
        capsys, "-q", "evaluate-jigsaw", "imgs", "--checkpoint", "gp.pt", "--puzzles", "4"
    )
    assert code == 0, err
    assert LINE.match(out.strip()).group(2) == "per-class"


def test_evaluate_jigsaw_prints_one_line_and_writes_the_json(work, capsys):
    code, out, err = run_cli(
        capsys,
        "-q",
        "evaluate-jigsaw",
        "imgs",
        "more/extra.png",
        "--checkpoint",
        "m.pt",
        "--puzzles",
        "6",
        "--seed",
        "3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--json",
        "j.json",
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    match = LINE.match(lines[0])
    assert match, lines[0]
    assert match.groups() == ("6", "none", "96")
    report = json.loads((work / "j.json").read_text())
    assert list(report) == [
        "loss",
        "top1",
        "chance_loss",
        "puzzles",
        "rotation",
        "patch_size",
        "checkpoint",
        "images",
    ]
    assert report["puzzles"] == 6 and report["rotation"] == "none" and report["patch_size"] == 96
    assert report["chance_loss"] == pytest.approx(math.log(100))
    assert 0 <= report["top1"] <= 1 and math.isfinite(report["loss"])
    assert report["checkpoint"] == "m.pt"
    assert [p.replace("\\", "/") for p in report["images"]] == [
        "imgs/img0.png",
        "imgs/img1.png",
        "more/extra.png",
    ]
    assert f"{report['loss']:.3f}" in lines[0]
    # Fixed seeds: the same numbers again.
    code, out2, _ = run_cli(
        capsys,
        "-q",
        "evaluate-jigsaw",
        "imgs",
        "more/extra.png",
        "--checkpoint",
        "m.pt",
        "--puzzles",
        "6",
        "--seed",
        "3",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    )
    assert code == 0 and out2 == out
    assert not list(work.glob("*.tmp*"))


def test_evaluate_jigsaw_defaults_to_the_pretraining_patch(work, capsys):
    code, _, err = run_cli(
        capsys,
        "-q",
        "pretrain",
        "--images",
        "imgs",
        "--checkpoint",
        "m.pt",
        "--out",
        "p192.pt",
        "--patch-size",
        "192",
        "--iterations",
        "1",
        "--batch-size",
        "4",
        "--single-scale",
    )
    assert code == 0, err
    code, out, err = run_cli(
        capsys,
        "-q",
        "evaluate-jigsaw",
        "imgs/img0.png",
        "--checkpoint",
        "p192.pt",
        "--puzzles",
        "2",
    )
    assert code == 0, err
    assert LINE.match(out.strip()).group(3) == "192"
    code, out, err = run_cli(
        capsys,
        "-q",
        "evaluate-jigsaw",
        "imgs/img0.png",
        "--checkpoint",
        "p192.pt",
        "--puzzles",
        "2",
        "--patch-size",
        "96",
    )
    assert code == 0, err
    assert LINE.match(out.strip()).group(3) == "96"


@pytest.fixture
def bad(work):
    (work / "empty").mkdir()
    (work / "empty" / "notes.txt").write_text("no images here")
    shutil.copy(work / "m.pt", work / "cut.pt")
    raw = (work / "cut.pt").read_bytes()
    (work / "cut.pt").write_bytes(raw[: len(raw) // 2])
    (work / "notes.png").write_text("not an image at all")
    return work


@pytest.mark.parametrize(
    "args, words",
    [
        (["--images", "nowhere"], ["nowhere", "does not exist"]),
        (["--images", "empty"], ["no PNG, JPEG or TIFF files", "empty"]),
        (["--images", "imgs", "--checkpoint", "cut.pt"], ["corrupt or truncated"]),
        (["--images", "imgs", "--checkpoint", "nope.pt"], ["does not exist"]),
        (["--images", "imgs", "--resume", "m.pt"], ["not written by jigsaw pre-training"]),
        (["--images", "imgs", "--patch-size", "100"], ["multiple of 96"]),
        (["--images", "imgs", "--iterations", "0"], ["at least 1"]),
        (["--images", "imgs", "--out", "nodir/p.pt"], ["nodir"]),
        (["--images", "imgs", "--device", "tpu"], ["unknown device"]),
        (["--images", "imgs", "--iterations", "many"], ["invalid int value"]),
    ],
)
def test_pretrain_errors_are_one_line(bad, capsys, args, words):
    argv = ["pretrain", *args]
    if "--checkpoint" not in args and "--resume" not in args:
        argv += ["--checkpoint", "m.pt"]
    if "--out" not in args:
        argv += ["--out", "p.pt"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *words)
    assert not (bad / "p.pt").exists()


def test_pretrain_needs_a_model(work, capsys):
    code, _, err = run_cli(capsys, "pretrain", "--images", "imgs", "--out", "p.pt")
    assert_one_line_error(code, err, "--checkpoint", "--resume")


@pytest.mark.parametrize(
    "args, words",
    [
        (["nowhere.png"], ["nowhere.png"]),
        (["empty"], ["no PNG, JPEG or TIFF files"]),
        (["notes.png"], ["notes.png"]),
        (["imgs", "--checkpoint", "cut.pt"], ["corrupt or truncated"]),
        (["imgs", "--puzzles", "0"], ["--puzzles", "at least 1"]),
        (["imgs", "--patch-size", "100"], ["multiple of 96"]),
        (["imgs", "--json", "nodir/j.json"], ["nodir"]),
    ],
)
def test_evaluate_jigsaw_errors_are_one_line(bad, capsys, args, words):
    argv = ["-q", "evaluate-jigsaw", *args, "--puzzles", "2"]
    if "--puzzles" in args:
        argv = ["-q", "evaluate-jigsaw", *args]
    if "--checkpoint" not in args:
        argv += ["--checkpoint", "m.pt"]
    code, out, err = run_cli(capsys, *argv)
    # An untrained model is at chance: that warning may precede a late error.
    err = "\n".join(ln for ln in err.splitlines() if "at chance" not in ln)
    assert_one_line_error(code, err, *words)


def test_pseudo_label_takes_the_jigsaw_options(work, capsys):
    code, _, err = run_cli(
        capsys,
        "-q",
        "pseudo-label",
        "imgs/img0.png",
        "--checkpoint",
        "m.pt",
        "--q",
        "2",
        "--patch-size",
        "96",
        "--step-rule",
        "adam",
        "--rotation",
        "per-class",
        "--no-grid-shift",
        "--lr",
        "0.001",
        "--out",
        "pl",
    )
    assert code == 0, err
    assert {p.name for p in (work / "pl").iterdir()} == {
        "img0_prob.tif",
        "img0_uncertainty.tif",
        "img0_mask.tif",
        "img0_instances.tif",
    }
    code, _, err = run_cli(
        capsys,
        "pseudo-label",
        "imgs/img0.png",
        "--checkpoint",
        "m.pt",
        "--step-rule",
        "lbfgs",
        "--out",
        "pl",
    )
    assert_one_line_error(code, err, "invalid choice")


def test_train_with_a_jigsaw_warmup_records_the_jigsaw_loss(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem, seed in (("a", 0), ("b", 1)):
        img, mask = blobs(seed)
        Image.fromarray(img).save(images / f"{stem}.png")
        if stem == "a":
            Image.fromarray(mask).save(masks / f"{stem}.png")
    out = tmp_path / "t.pt"
    code, _, err = run_cli(
        capsys,
        "-q",
        "train",
        "--images",
        images,
        "--masks",
        masks,
        "--width",
        "8",
        "--iterations",
        "2",
        "--patch-size",
        "96",
        "--batch-size",
        "2",
        "--q",
        "2",
        "--validate-every",
        "2",
        "--framework",
        "selfloop",
        "--jigsaw-warmup",
        "3",
        "--jigsaw-batch-size",
        "4",
        "--jigsaw-patch-size",
        "96",
        "--ss-lr",
        "0.005",
        "--ss-step-rule",
        "adam",
        "--no-grid-shift",
        "--dice-weight",
        "0.5",
        "--puzzle-seg-weight",
        "1.0",
        "--scale-jitter",
        "0.25",
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert code == 0, err
    ck = load_checkpoint(out)
    metrics, config = ck.meta["metrics"], ck.meta["training"]["config"]
    assert math.isfinite(metrics["jigsaw_loss"]) and 0 <= metrics["jigsaw_top1"] <= 1
    assert metrics["jigsaw_chance_loss"] == pytest.approx(math.log(100))
    assert config["jigsaw_warmup"] == 3 and config["jigsaw_batch_size"] == 4
    assert config["jigsaw_patch_size"] == 96 and metrics["jigsaw_patch_size"] == 96
    assert config["ss_lr"] == 0.005 and config["ss_step_rule"] == "adam"
    assert config["grid_shift"] is False
    assert config["dice_weight"] == 0.5 and config["puzzle_seg_weight"] == 1.0
    assert config["scale_jitter"] == 0.25
    assert any(h.get("phase") == "jigsaw" for h in ck.meta["history"])
    code, _, err = run_cli(
        capsys,
        "train",
        "--images",
        images,
        "--masks",
        masks,
        "--jigsaw-warmup",
        "-1",
        "--out",
        tmp_path / "x.pt",
    )
    assert_one_line_error(code, err, "jigsaw warm-up")
