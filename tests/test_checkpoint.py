import os
import pickle
import zipfile

import pytest
import torch

from napari_selfloop import __version__
from napari_selfloop.core.engine.jigsaw import permutation_pool, pool_hash
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.errors import CheckpointError
from napari_selfloop.core.store.checkpoint import (
    FORMAT_VERSION,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from napari_selfloop.core.store.modelcard import model_card
from tests.conftest import TINY, assert_same_state, state_snapshot


class _Payload:
    """An object whose unpickling would create a marker file (a stand-in for malware)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _raw(path, **changes):
    """Save a valid checkpoint, then rewrite its payload with ``changes``."""
    save_checkpoint(path, build_model(TINY, seed=0))
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)
    return path


def test_round_trip_keeps_weights_and_record(tmp_path):
    model = build_model(ModelConfig(width=8, dropout=0.1), seed=5)
    snap = state_snapshot(model)
    path = save_checkpoint(
        tmp_path / "m.pt",
        model,
        training={"lr": 1e-3},
        history=[{"step": 1, "loss": 0.5}],
        metrics={"val_f1": 0.75},
        parent="abc123",
        data=[{"name": "a.png", "sha256": "00"}],
        note="hello",
    )
    ckpt = load_checkpoint(path)
    assert_same_state(ckpt.model, snap)
    assert ckpt.config == model.config
    meta = ckpt.meta
    assert meta["package_version"] == __version__
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["pool_hash"] == pool_hash(permutation_pool())
    assert meta["history"] == [{"step": 1, "loss": 0.5}]
    assert meta["metrics"] == {"val_f1": 0.75} and meta["parent"] == "abc123"
    assert meta["sha256"] == file_sha256(path)
    assert not ckpt.model.training
    card = model_card(ckpt)
    assert "a.png" in card and "val_f1 0.75" in card


def test_file_is_readable_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model(TINY))
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "napari-selfloop-checkpoint"
    assert set(payload["model_config"]) >= {"width", "norm_mean", "norm_std"}


def test_pickle_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    model = build_model(TINY)
    torch.save(
        {
            "format": "napari-selfloop-checkpoint",
            "state_dict": model.state_dict(),
            "extra": _Payload(str(marker)),
        },
        path,
    )
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_legacy_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old.pt"
    path.write_bytes(pickle.dumps({"x": _Payload(str(marker))}))
    with pytest.raises(CheckpointError, match="legacy pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_state_dict_is_named(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(CheckpointError, match="not a napari-selfloop checkpoint.*conv1.weight"):
        load_checkpoint(path)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")


def test_truncated_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model(TINY))
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt|not a PyTorch"):
            load_checkpoint(path)


def test_corrupted_bytes_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model(TINY))
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        offset = zf.getinfo(name).header_offset
    data = bytearray(path.read_bytes())
    data[offset + 60 : offset + 90] = b"\xff" * 30
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.mkdir(), p)[1], "is a folder"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("hello, not a model"), p)[1], "not a PyTorch checkpoint"),
    ],
    ids=["missing", "folder", "empty", "text"],
)
def test_files_that_are_not_checkpoints(tmp_path, make, words):
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(make(tmp_path / "model.pt"))


def test_mismatched_files_are_refused(tmp_path):
    wide = {**TINY.to_dict(), "width": 16}
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(_raw(tmp_path / "a.pt", model_config=wide))
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(_raw(tmp_path / "b.pt", format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="permutation pool"):
        load_checkpoint(_raw(tmp_path / "c.pt", pool_hash="0" * 16))
    with pytest.raises(CheckpointError, match="model config"):
        load_checkpoint(_raw(tmp_path / "d.pt", model_config={**TINY.to_dict(), "depth": 50}))


def test_missing_and_nan_weights_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model(TINY))
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["state_dict"]))
    del payload["state_dict"][key]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)
    save_checkpoint(path, build_model(TINY))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["decoder.head.bias"] = torch.tensor([float("nan")])
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(path)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=1))
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, build_model(TINY, seed=2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


def test_save_into_missing_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "nope" / "m.pt", build_model(TINY))


def test_checkpoints_from_before_the_jigsaw_choices_load_with_the_paper_head(tmp_path):
    """Old files have no jigsaw_head / jigsaw_rotation in their config: they were written
    with the global-average-pool head and random tile rotations, and load as such."""
    old = build_model(ModelConfig(width=8, jigsaw_head="gap", jigsaw_rotation="random"), seed=0)
    path = save_checkpoint(tmp_path / "old.pt", old)
    payload = torch.load(path, weights_only=True)
    del payload["model_config"]["jigsaw_head"], payload["model_config"]["jigsaw_rotation"]
    torch.save(payload, path)
    ck = load_checkpoint(path)
    assert ck.config.jigsaw_head == "gap" and ck.config.jigsaw_rotation == "random"
    assert ck.model.jigsaw_head.fc.in_features == 64  # 8 * width, pooled to 1x1
    new = build_model(ModelConfig(width=8), seed=0)
    assert new.config.jigsaw_head == "slots" and new.jigsaw_head.fc.in_features == 64 * 9


def test_checkpoints_from_before_the_decoder_choice_load_with_the_matched_decoder(tmp_path):
    """Old files have no decoder in their config: their decoder is as wide as the skips
    (``matched``); they load with their own weights and predict as before."""
    old = build_model(ModelConfig(width=8, decoder="matched"), seed=0)
    path = save_checkpoint(tmp_path / "old.pt", old)
    payload = torch.load(path, weights_only=True)
    del payload["model_config"]["decoder"]
    torch.save(payload, path)
    ck = load_checkpoint(path)
    assert ck.config.decoder == "matched"
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ck.model.eval()(x), old.eval()(x))
    # New models taper: 4w, 2w, w, w/2 at strides 16..2 and w/4 at full resolution.
    new = build_model(ModelConfig(width=64), seed=0)
    assert new.config.decoder == "tapered"
    assert [b[1][0].out_channels for b in new.decoder.blocks] == [256, 128, 64, 32]
    assert new.decoder.head.in_channels == 16
    assert [b[1][0].out_channels for b in ck.model.decoder.blocks] == [32, 16, 8, 8]
    # A file whose config names a decoder this version does not know is refused in one line.
    payload["model_config"]["decoder"] = "huge"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="decoder must be one of tapered, matched"):
        load_checkpoint(path)
