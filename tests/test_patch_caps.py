"""``--patch-size`` beyond every image is capped at the largest image side, as pseudo-label
does, in ``train``, ``pretrain`` and ``evaluate-jigsaw``; a recorded jigsaw patch size out of
range is not used (issue 27 item 5). Before, 96000 asked for a 100 GiB allocation."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import TINY, run_cli
from tests.test_training import blobs

pytestmark = pytest.mark.usefixtures("one_thread")

HUGE = "96000"
LINE = re.compile(r"patch (\d+)$")


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("imgs", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        img, mask = blobs(i, 120)
        Image.fromarray(img).save(tmp_path / "imgs" / f"img{i}.png")
        if i == 0:
            Image.fromarray(mask).save(tmp_path / "masks" / f"img{i}.png")
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    return tmp_path


def _evaluate(capsys, checkpoint, *extra):
    code, out, err = run_cli(
        capsys, "-q", "evaluate-jigsaw", "imgs", "--checkpoint", checkpoint, "--puzzles", "2",
        "--device", "cpu", *extra,
    )  # fmt: skip
    assert code == 0, err
    return int(LINE.search(out.strip()).group(1))


def test_evaluate_jigsaw_caps_the_patch_at_the_largest_image_side(work, capsys):
    assert _evaluate(capsys, "m.pt", "--patch-size", HUGE) == 192  # 120 px: one 192 patch


def test_a_recorded_jigsaw_patch_size_out_of_range_is_not_used(work, capsys):
    payload = torch.load(work / "m.pt", weights_only=True)
    payload["metrics"] = {"jigsaw_patch_size": 96000}
    torch.save(payload, work / "odd.pt")
    assert _evaluate(capsys, "odd.pt") == 96


def test_pretrain_caps_the_patch_and_records_the_side_used(work, capsys):
    code, _, err = run_cli(
        capsys, "-q", "pretrain", "--images", "imgs", "--checkpoint", "m.pt", "--out", "p.pt",
        "--iterations", "1", "--batch-size", "2", "--patch-size", HUGE, "--single-scale",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert load_checkpoint(work / "p.pt").meta["metrics"]["jigsaw_patch_size"] == 192


def test_train_caps_the_patch_at_the_largest_image_side(work, capsys):
    code, _, err = run_cli(
        capsys, "-q", "train", "--images", "imgs", "--masks", "masks", "--width", "8",
        "--iterations", "1", "--batch-size", "2", "--patch-size", HUGE,
        "--framework", "supervised", "--validate-every", "5", "--device", "cpu",
        "--out", "t.pt",
    )  # fmt: skip
    assert code == 0, err
    assert load_checkpoint(work / "t.pt").meta["training"]["config"]["patch_size"] == int(HUGE)
