"""``napari-selfloop train`` and ``evaluate`` end to end on tiny files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_selfloop.cli import main
from napari_selfloop.core.engine.metrics import aji, object_scores, pixel_scores
from napari_selfloop.core.store.checkpoint import load_checkpoint
from tests.test_training import blobs

#: Small convolutions stall when two OpenMP threads compete with other processes.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i, stem in enumerate(("a", "b", "c")):
        img, mask = blobs(i)
        Image.fromarray(img).save(images / f"{stem}.png")
        if stem != "c":
            Image.fromarray(mask).save(masks / f"{stem}.png")
    return tmp_path


FAST = [
    "--width",
    "8",
    "--iterations",
    "3",
    "--patch-size",
    "96",
    "--batch-size",
    "2",
    "--q",
    "2",
    "--validate-every",
    "3",
]


def test_train_writes_a_checkpoint_with_roles(folders, capsys):
    out = folders / "m.pt"
    rc = main(
        [
            "-q",
            "train",
            "--images",
            str(folders / "images"),
            "--masks",
            str(folders / "masks"),
            "--labeled",
            "a",
            "--validation",
            "b.png",
            "--val-metric",
            "per-image",
            *FAST,
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    ck = load_checkpoint(out)
    roles = {d["name"]: d["role"] for d in ck.meta["data"]}
    assert roles == {"a.png": "labelled", "b.png": "validation", "c.png": "unlabelled"}
    assert ck.meta["training"]["config"]["framework"] == "supervised"  # the default
    assert ck.meta["metrics"]["metric_name"] == "val_f1_mean"  # --val-metric per-image
    assert ck.meta["training"]["config"]["val_metric"] == "per-image"
    assert 0 <= ck.meta["metrics"]["val_f1"] <= 1  # the pooled Dice is recorded too
    assert ck.config.width == 8
    # Fine-tune that checkpoint with a baseline: the parent is recorded.
    out2 = folders / "m2.pt"
    rc = main(
        [
            "-q",
            "train",
            "--images",
            str(folders / "images"),
            "--masks",
            str(folders / "masks"),
            "--labeled-fraction",
            "0.5",
            "--framework",
            "softmax",
            "--checkpoint",
            str(out),
            *FAST,
            "--out",
            str(out2),
        ]
    )
    assert rc == 0
    ck2 = load_checkpoint(out2)
    assert ck2.meta["parent"] == ck.sha256
    assert sum(d["role"] == "labelled" for d in ck2.meta["data"]) == 1


def test_fine_tuning_a_trained_model_keeps_its_statistics_and_encoder(folders, caplog):
    def train_cli(out, *extra):
        args = ["-q", "train", "--images", str(folders / "images")]
        args += ["--masks", str(folders / "masks"), "--labeled", "a", *FAST, *extra]
        assert main([*args, "--out", str(out)]) == 0
        return load_checkpoint(out).meta["training"]["config"]

    caplog.set_level("INFO")
    config = train_cli(folders / "new.pt")  # best by L_SEG at its last step: trained
    assert config["batchnorm"] == "update" and config["encoder"] == "train"
    assert "fine-tuning a trained model" not in caplog.text
    config = train_cli(folders / "tuned.pt", "--checkpoint", str(folders / "new.pt"))
    assert config["batchnorm"] == "frozen" and config["encoder"] == "frozen"
    assert "fine-tuning a trained model: BatchNorm statistics kept, encoder frozen" in caplog.text
    config = train_cli(
        folders / "whole.pt", "--checkpoint", str(folders / "new.pt"), "--encoder", "train"
    )
    assert config["batchnorm"] == "frozen" and config["encoder"] == "train"


def _train_error(folders, capsys, *extra):
    rc = main(
        [
            "-q",
            "train",
            "--images",
            str(folders / "images"),
            "--masks",
            str(folders / "masks"),
            *FAST,
            "--out",
            str(folders / "x.pt"),
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_train_refusals_are_one_line(folders, capsys):
    assert "not in the images folder" in _train_error(folders, capsys, "--labeled", "zzz")
    assert "has no mask" in _train_error(folders, capsys, "--labeled", "c")
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(folders / "masks" / "b.png")
    assert "mask has shape" in _train_error(folders, capsys, "--labeled", "b")
    Image.fromarray(np.full((100, 100), 7, np.uint8)).save(folders / "masks" / "b.png")
    assert "values 7" in _train_error(folders, capsys, "--labeled", "b")
    assert "multiple of 96" in _train_error(folders, capsys, "--patch-size", "100")
    (folders / "x.pt").write_bytes(b"x")
    assert "exists" in _train_error(folders, capsys)


def test_evaluate_pairs_by_stem_and_reads_every_kind(tmp_path, capsys):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    rng = np.random.default_rng(0)
    t_a = (rng.random((20, 30)) > 0.6).astype(np.uint8)
    p_a = rng.random((20, 30)).astype(np.float32)
    tifffile.imwrite(pred / "a_prob.tif", p_a)
    tifffile.imwrite(pred / "a_mask.tif", np.zeros((20, 30), np.uint8))  # the prob map wins
    tifffile.imwrite(pred / "a_uncertainty.tif", p_a)
    Image.fromarray(t_a).save(truth / "a.png")
    # b: a pseudo-label mask (255 = uncertain counts as background) vs a partial truth.
    m_b = np.array([[1, 255, 0], [1, 1, 0]], np.uint8)
    t_b = np.array([[1, 1, 255], [0, 1, 0]], np.uint8)
    tifffile.imwrite(pred / "b_mask.tif", m_b)
    Image.fromarray(t_b).save(truth / "b.png")
    # c: a plain 0/255 mask vs instance labels.
    labels = np.zeros((10, 10), np.uint16)
    labels[1:4, 1:4] = 1
    labels[6:9, 5:9] = 2
    p_c = np.zeros((10, 10), np.uint8)
    p_c[1:4, 1:5] = 255
    Image.fromarray(p_c).save(pred / "c.png")
    tifffile.imwrite(truth / "c.tif", labels)
    out = tmp_path / "scores.json"
    rc = main(
        ["evaluate", "--pred", str(pred), "--truth", str(truth), "--objects", "--json", str(out)]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "mean" in table and "a " in table
    report = json.loads(out.read_text())
    assert report["count"] == 3
    imgs = report["images"]
    assert imgs["a"]["prediction"] == "a_prob.tif"
    assert imgs["a"]["f1"] == pytest.approx(pixel_scores(p_a > 0.5, t_a)["f1"])
    # b by hand: valid pixels 5; TP (0,0), (1,1); FN (0,1) (uncertain = background); FP (1,0).
    assert imgs["b"]["f1"] == pytest.approx(4 / 6)
    assert imgs["c"]["f1"] == pytest.approx(2 * 9 / (12 + 21))
    assert imgs["c"]["object_f1"] == pytest.approx(
        object_scores(labels, (p_c > 0).astype(int))["object_f1"]
    )
    assert imgs["c"]["aji"] == pytest.approx(aji(labels, (p_c > 0).astype(int)))
    assert report["mean"]["f1"] == pytest.approx(np.mean([imgs[k]["f1"] for k in "abc"]))


def test_evaluate_errors(tmp_path, capsys):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(pred / "a.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(truth / "zzz.png")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
    assert "same stem" in capsys.readouterr().err
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(truth / "a.png")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
    assert "is 5x5 but" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--truth", str(truth)]) == 2


def test_evaluate_objects_use_the_predicted_instances_and_report_pq_and_edits(
    tmp_path, capsys, caplog
):
    """Two touching nuclei predicted with two ids are two objects (not one component);
    PQ and edits per 100 nuclei match hand-computed values."""
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    labels = np.zeros((12, 12), np.uint16)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:8] = 2  # touches nucleus 1
    labels[8:11, 8:11] = 3  # missed by the prediction: one add
    tifffile.imwrite(truth / "a.tif", labels)
    inst = np.zeros((12, 12), np.uint32)
    inst[1:5, 1:4] = 7
    inst[1:5, 4:8] = 9
    inst[9:11, 0:2] = 4  # a false nucleus: one delete
    prob = (inst > 0).astype(np.float32)
    tifffile.imwrite(pred / "a_prob.tif", prob)
    tifffile.imwrite(pred / "a_instances.tif", inst)
    out = tmp_path / "s.json"
    args = ["evaluate", "--pred", str(pred), "--truth", str(truth), "--objects", "--json", str(out)]
    assert main(args) == 0
    s = json.loads(out.read_text())["images"]["a"]
    assert s["instances"] == "a_instances.tif"
    assert (s["deletes"], s["adds"]) == (1, 1)
    assert s["edits_per_100"] == pytest.approx(100 * 2 / 3)
    assert s["dq"] == pytest.approx(2 / (2 + 0.5 + 0.5))
    assert s["pq"] == pytest.approx(2 / 3)  # both matches are exact (IoU 1)
    # Without the instances file the touching pair is one component (IoU 16/28 with
    # nucleus 2): nucleus 1 needs an add too.
    (pred / "a_instances.tif").unlink()
    assert main(args) == 0
    s = json.loads(out.read_text())["images"]["a"]
    assert s["instances"] == "components" and s["objects_pred"] == 2
    assert (s["deletes"], s["adds"]) == (1, 2)
    # A binary truth: one line says touching nuclei are merged in it.
    (truth / "a.tif").unlink()
    Image.fromarray((labels > 0).astype(np.uint8)).save(truth / "a.png")
    caplog.clear()
    assert main(args) == 0
    assert "binary mask: touching nuclei in it are merged" in caplog.text
    assert json.loads(out.read_text())["binary_truths"] == 1
