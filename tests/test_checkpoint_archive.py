"""Crafted checkpoint archives and records are refused before any tensor is read (issue 27
items 3, 6 and 7): members a ``torch.save`` file does not have, tensor data out of
proportion to the model config (a zip-DEFLATEd zero tensor inflates to gigabytes), unknown
entries, record fields of the wrong type, models of other than 3 input channels."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
import torch

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.errors import CheckpointError
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import TINY, assert_one_line_error, run_cli

#: 64 MB of zeros: DEFLATEd to about 64 KB in the archive.
BIG = 16 * 2**20


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def _valid(path):
    save_checkpoint(path, build_model(TINY, seed=0))
    return path


def _rewrite(path, **changes):
    """Rewrite a valid checkpoint's payload with ``changes``; then DEFLATE every member,
    as a crafted file would (torch.save stores them uncompressed)."""
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if key.startswith("state_dict."):
            payload["state_dict"][key.split(".", 1)[1]] = value
        else:
            payload[key] = value
    torch.save(payload, path)
    _deflate(path)
    return path


def _deflate(path, extra: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path) as src:
        members = [(info.filename, src.read(info)) for info in src.infolist()]
    top = members[0][0].split("/", 1)[0]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name, data in members:
            dst.writestr(name, data)
        for name, data in (extra or {}).items():
            dst.writestr(f"{top}/{name}", data)


def test_a_deflated_checkpoint_of_plain_size_still_loads(tmp_path):
    path = _rewrite(_valid(tmp_path / "m.pt"))
    assert load_checkpoint(path).config == TINY


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"junk": torch.zeros(BIG)}, "entries a napari-selfloop checkpoint does not have (junk)"),
        ({"metrics": {"val_f1": 0.5, "hidden": torch.zeros(BIG)}}, "a tensor in its record"),
        ({"state_dict.decoder.head.bias": torch.zeros(BIG)[:1]}, "MB of tensor data"),
        (
            {"training": {"optimizer": {"state": {0: {"exp_avg": torch.zeros(BIG)}}}}},
            "MB of tensor data",
        ),
    ],
    ids=["unknown entry", "tensor in metrics", "weight viewing a huge storage", "optimiser"],
)
def test_tensor_data_beyond_the_config_is_refused_before_it_is_read(tmp_path, changes, words):
    path = _rewrite(_valid(tmp_path / "bomb.pt"), **changes)
    assert path.stat().st_size < 2 * 2**20  # about 1 MB on disk, 64 MB more once inflated
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert words in _one_line(e)


def test_members_a_checkpoint_does_not_have_are_refused(tmp_path):
    path = _valid(tmp_path / "extra.pt")
    _deflate(path, {"data/999": bytes(BIG)})  # never referenced: torch would not read it
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "MB of tensor data" in _one_line(e)
    path = _valid(tmp_path / "odd.pt")
    _deflate(path, {"readme.txt": b"hello"})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "a member a checkpoint does not have" in _one_line(e)


def _image(workdir, name="img.png", n=96):
    arr = np.random.default_rng(0).integers(0, 256, (n, n, 3), np.uint8)
    tifffile.imwrite(workdir / name, arr)
    return workdir / name


def test_a_model_of_other_than_three_channels_is_refused_at_load(tmp_path, capsys):
    for channels in (1, 4):
        cfg = ModelConfig(
            width=8, in_channels=channels, norm_mean=(0.5,) * channels, norm_std=(0.25,) * channels
        )
        path = save_checkpoint(tmp_path / f"c{channels}.pt", build_model(cfg, seed=0))
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert f"{channels}-channel images" in _one_line(e)
    img = _image(tmp_path, "img.tif")
    code, _, err = run_cli(
        capsys, "pseudo-label", img, "--checkpoint", tmp_path / "c1.pt", "--out", tmp_path / "o"
    )
    assert_one_line_error(code, err, "1-channel images")


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"metrics": [1, 2]}, "metrics are a list, not a mapping"),
        ({"metrics": "good"}, "metrics are a str, not a mapping"),
        ({"metrics": {3: 0.5}}, "metrics have keys that are not names"),
        ({"data": ["a.png", "b.png"]}, "data record is not a list of records"),
        ({"data": [{"name": 5}]}, "image name in its data record is not text"),
        ({"history": [1, 2]}, "history is not a list of records"),
        ({"parent": 7}, "parent is a int, not text"),
        ({"note": ["x"]}, "note is a list, not text"),
        ({"created": 1.5}, "created is a float, not text"),
    ],
)
def test_record_fields_of_the_wrong_type_are_refused_at_load(tmp_path, changes, words):
    path = _rewrite(_valid(tmp_path / "r.pt"), **changes)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert words in _one_line(e)


def test_calibrate_and_evaluate_jigsaw_refuse_a_record_of_the_wrong_type(tmp_path, capsys):
    path = _rewrite(_valid(tmp_path / "r.pt"), metrics=["x"])
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _image(images, "a.tif")
    tifffile.imwrite(masks / "a.tif", np.zeros((96, 96), np.uint8))
    code, _, err = run_cli(capsys, "evaluate-jigsaw", images / "a.tif", "--checkpoint", path)
    assert_one_line_error(code, err, "metrics are a list")
    code, _, err = run_cli(
        capsys,
        "calibrate",
        "--checkpoint",
        path,
        "--images",
        images,
        "--masks",
        masks,
        "--out",
        tmp_path / "cal.pt",
    )
    assert_one_line_error(code, err, "metrics are a list")
