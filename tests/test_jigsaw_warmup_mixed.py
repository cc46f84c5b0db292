"""``train --jigsaw-warmup`` with labelled and unlabelled images together (issue 27 item
14): the warm-up samples puzzles of both; before, stacking the masks of labelled patches
with the missing masks of unlabelled ones crashed the run at once."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_selfloop.core.engine.datasets import PatchSampler, TrainItem, check_items
from napari_selfloop.core.engine.losses import IGNORE
from napari_selfloop.core.store.checkpoint import load_checkpoint
from tests.conftest import run_cli
from tests.test_training import blobs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_sampler_of_labelled_and_unlabelled_items_gives_one_mask_batch():
    (img0, mask0), (img1, _) = blobs(0, 128), blobs(1, 128)
    # As train() gives them to the warm-up: the labelled items with their masks, then the
    # unlabelled ones.
    items = check_items([TrainItem("lab", img0, mask0)], "labelled", need_masks=True)
    items += check_items([TrainItem("unl", img1)], "unlabelled", need_masks=False)
    sampler = PatchSampler(items, 96, np.random.default_rng(0))
    mixed = 0
    for _ in range(20):
        images, masks = sampler.sample(4)
        assert images.shape == (4, 96, 96, 3)
        if masks is None:
            continue  # only unlabelled patches drawn
        assert masks.shape == (4, 96, 96) and masks.dtype == np.uint8
        unlabelled = [bool((m == IGNORE).all()) for m in masks]
        mixed += any(unlabelled) and not all(unlabelled)
    assert mixed  # batches of both kinds: the unlabelled patches' masks say "not labelled"
    # Only unlabelled items: no masks at all.
    assert PatchSampler(items[1:], 96, np.random.default_rng(0)).sample(2)[1] is None


def test_train_with_a_jigsaw_warmup_and_unlabelled_images(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(2):
        img, mask = blobs(i, 256)
        Image.fromarray(img).save(tmp_path / "imgs" / f"i{i}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"i{i}.png")
    # The command: one labelled image, the other unlabelled, a jigsaw warm-up.
    code, _, err = run_cli(
        capsys, "-q", "train", "--images", "imgs", "--masks", "masks", "--labeled", "i0",
        "--framework", "supervised", "--iterations", "2", "--jigsaw-warmup", "6",
        "--jigsaw-batch-size", "4", "--patch-size", "96", "--jigsaw-patch-size", "96",
        "--batch-size", "2", "--width", "8", "--validate-every", "2", "--device", "cpu",
        "--out", "t.pt",
    )  # fmt: skip
    assert code == 0, err
    ck = load_checkpoint(tmp_path / "t.pt")
    assert any(h.get("phase") == "jigsaw" for h in ck.meta["history"])
    roles = {d["name"]: d.get("role") for d in ck.meta["data"]}
    assert roles.get("i1.png") == "unlabelled", roles
