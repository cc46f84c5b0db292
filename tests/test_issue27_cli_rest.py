"""Issue 27 items 11-13: damaged batch records, non-finite predictions, very long stems."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.store import batch
from napari_selfloop.core.store.checkpoint import save_checkpoint
from tests.conftest import TINY, assert_one_line_error, run_cli

FAST = ["--method", "softmax", "--patch-size", "96"]


def _image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    return tmp_path / "m.pt"


def _batch(capsys, images, ckpt, out, *extra):
    return run_cli(
        capsys,
        "batch",
        *images,
        "--checkpoint",
        ckpt,
        "--out",
        out,
        "--workers",
        "0",
        *FAST,
        *extra,
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("checkpoints", ["m.pt"]),
        ("checkpoints", "m.pt"),
        ("outputs", ["a.tif"]),
        ("config", "softmax"),
        ("slide_options", [1, 2]),
        ("key", 7),
    ],
)
def test_skip_existing_recomputes_a_record_with_a_field_of_the_wrong_type(
    tmp_path, capsys, checkpoint, one_thread, field, value
):
    """Item 11: a record field of the wrong type is a record that is absent."""
    image = _image(tmp_path / "a" / "img.png")
    out = tmp_path / "out"
    code, _, err = _batch(capsys, [image], checkpoint, out)
    assert code == 0, err
    key = batch.output_key(image)
    record_path = out / batch.record_name(key)
    record = json.loads(record_path.read_text())
    record[field] = value
    record_path.write_text(json.dumps(record))
    code, _, err = _batch(capsys, [image], checkpoint, out, "--skip-existing")
    assert code == 0, err
    assert "Traceback" not in err and "AttributeError" not in err
    assert "1 done, 0 skipped, 0 failed" in err
    again = json.loads(record_path.read_text())
    assert again["key"] == key and isinstance(again["checkpoints"], list)


def test_read_record_refuses_fields_of_the_wrong_type(tmp_path):
    good = {
        "format": batch.RECORD_FORMAT,
        "key": "k",
        "input": "/x/k.png",
        "input_sha256": "0" * 64,
        "checkpoints": [{"path": "m.pt", "sha256": "1" * 64}],
        "config": {"method": "softmax"},
        "slide_options": {},
        "outputs": batch.output_files("k"),
    }
    (tmp_path / batch.record_name("k")).write_text(json.dumps(good))
    assert batch.read_record(tmp_path, "k") == good
    for field, value in [("checkpoints", [3]), ("outputs", {"mask": 3}), ("input", None)]:
        (tmp_path / batch.record_name("k")).write_text(json.dumps({**good, field: value}))
        assert batch.read_record(tmp_path, "k") is None, field


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_evaluate_refuses_a_non_finite_probability_map(tmp_path, capsys, bad):
    """Item 12: NaN (or infinite) probabilities are one line naming the file, not F1 0."""
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    prob = np.full((32, 32), 0.7, np.float32)
    if np.isnan(bad):
        prob[:] = np.nan
    else:
        prob[3, 4] = bad
    tifffile.imwrite(pred / "img_prob.tif", prob)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 1
    tifffile.imwrite(truth / "img.tif", mask)
    code, _, err = run_cli(capsys, "evaluate", "--pred", pred, "--truth", truth)
    assert_one_line_error(code, err, "img_prob.tif")
    assert "finite" in err or "NaN" in err


LONG = "x" * 120 + "_slide_with_a_very_long_descriptive_name_" + "y" * 90  # 251 chars


def test_pseudo_label_shortens_a_very_long_stem_and_says_so(tmp_path, capsys, checkpoint):
    """Item 13: outputs of a stem too long for '_uncertainty.tif' and a temporary get a
    short stem (the start of the name and a hash), and the run says so."""
    image = _image(tmp_path / f"{LONG}.png")
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "pseudo-label", image, "--checkpoint", checkpoint, "--out", out, *FAST
    )
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4 and all(len(n.encode()) <= 200 for n in names), names
    stem = names[0].rsplit("_", 1)[0]
    assert stem.startswith("x" * 50) and all(n.startswith(stem + "_") for n in names)
    assert "long" in err and stem in err


def test_pseudo_label_two_long_stems_alike_get_different_names(tmp_path, capsys, checkpoint):
    a = _image(tmp_path / f"{LONG}.png")
    b = _image(tmp_path / f"{LONG[:-1]}z.png", 1)
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "-q", "pseudo-label", a, b, "--checkpoint", checkpoint, "--out", out, *FAST
    )
    assert code == 0, err
    assert len(list(out.iterdir())) == 8


def test_batch_shortens_a_very_long_stem(tmp_path, capsys, checkpoint):
    image = _image(tmp_path / f"{LONG}.png")
    out = tmp_path / "out"
    code, _, err = _batch(capsys, [image], checkpoint, out)
    assert code == 0, err
    assert "1 done" in err
    records = list(out.glob("*" + batch.RECORD_SUFFIX))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert all((out / n).is_file() for n in record["outputs"].values())
    assert all(len(n.encode()) <= 200 for n in record["outputs"].values())
    assert "long" in err


def test_batch_size_0_does_not_mention_an_lr_that_was_not_given(tmp_path, capsys, checkpoint):
    """Issue 27 (cosmetic): --batch-size 0 is refused for what it is, in one line."""
    image = _image(tmp_path / "img.png")
    code, _, err = run_cli(
        capsys,
        "pseudo-label",
        image,
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "o",
        *FAST,
        "--batch-size",
        "0",
    )
    assert_one_line_error(code, err, "batch size", "got 0")
    assert "lr" not in err and "None" not in err
