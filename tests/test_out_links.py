"""Issue 27 (cosmetic): a symbolic link loop (or a broken link) as ``--out`` is refused in one
line before any work, not reported as "File exists" after the model ran."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.store.checkpoint import save_checkpoint
from tests.conftest import TINY, assert_one_line_error, run_cli

FAST = ["--method", "softmax", "--patch-size", "96"]


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "i0.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 1
    tifffile.imwrite(tmp_path / "m_mask.tif", mask)
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    return tmp_path


def _outs(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    os.symlink("nowhere", tmp_path / "dangling")
    return {
        "loop": (tmp_path / "loop", "loop"),
        "loop-inside": (tmp_path / "a" / "sub", "loop"),
        "dangling": (tmp_path / "dangling", "does not exist"),
    }


def _commands(files, out):
    image, ckpt = files / "i0.png", files / "m.pt"
    return {
        "pseudo-label": ["pseudo-label", image, "--checkpoint", ckpt, "--out", out, *FAST],
        "batch": ["batch", image, "--checkpoint", ckpt, "--out", out, "--workers", "0", *FAST],
        "export": ["export", files / "m_mask.tif", "--out", out],
    }


@pytest.mark.parametrize("command", ["pseudo-label", "batch", "export"])
@pytest.mark.parametrize("kind", ["loop", "loop-inside", "dangling"])
def test_a_link_loop_or_broken_link_as_out_is_one_line_before_any_work(
    files, capsys, monkeypatch, one_thread, command, kind
):
    out, words = _outs(files)[kind]

    def no_work(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    modules = (
        "napari_selfloop.core.store.checkpoint",
        "napari_selfloop.core.store.batch",
        "napari_selfloop.cli.pseudolabel_cmd",
        "napari_selfloop.cli.batch_cmd",
    )
    for module in modules:  # all imported first: none may bind the patched function for good
        importlib.import_module(module)
    for module in modules:
        monkeypatch.setattr(f"{module}.load_checkpoint", no_work, raising=False)
    monkeypatch.setattr("napari_selfloop.cli.export_cmd._prepare", no_work)
    code, _, err = run_cli(capsys, *_commands(files, out)[command])
    assert_one_line_error(code, err, "--out", words)
    assert "File exists" not in err and "AssertionError" not in err
