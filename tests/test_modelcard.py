"""Model cards in plain words (core, no napari)."""

from __future__ import annotations

import pytest
import torch
from test_bundled import tiny_models  # noqa: F401  (fixture)

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.errors import CheckpointError
from napari_selfloop.core.store.bundled import load_bundled
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from napari_selfloop.core.store.modelcard import (
    is_non_commercial,
    plain_card,
    quality_words,
    read_record,
    short_licence,
)


def test_quality_in_words():
    assert quality_words(90) == "very good"
    assert quality_words(77.4) == "good"
    assert quality_words(65).startswith("fair")
    assert quality_words(30).startswith("rough")


def test_licences():
    nc = "CC BY-NC-SA 4.0, inherited from MoNuSeg: non-commercial use only"
    assert is_non_commercial(nc) and short_licence(nc) == "CC BY-NC-SA 4.0"
    cc0 = "ISIC Archive challenge data terms (believed CC0); cite the challenge"
    assert not is_non_commercial(cc0)
    assert short_licence(cc0) == "ISIC Archive challenge data terms (believed CC0)"


def test_bundled_card_is_plain_and_says_non_commercial(tiny_models):  # noqa: F811
    ckpt = load_bundled("nuclei-he")
    card = plain_card(ckpt.meta, ckpt.config, ckpt.path)
    text = card.text()
    assert card.title == "nuclei-he: bundled model" and card.non_commercial
    assert "NON-COMMERCIAL USE ONLY" in text and "MoNuSeg" in text
    assert "How good: good. On 2 H&E images" in text and "80 % (Dice score" in text
    for ml in ("L_SS", "nats", "AJI", "1e-05", "sha256", "runs/"):
        assert ml not in text
    html = card.html()
    assert "<b" in html and "NON-COMMERCIAL USE ONLY" in html and "H&amp;E" in html
    lesion = load_bundled("lesion-dermoscopy")
    assert not plain_card(lesion.meta, lesion.config, lesion.path).non_commercial


def test_a_model_fine_tuned_from_a_bundled_one_keeps_its_licence(tmp_path, tiny_models):  # noqa: F811
    parent = load_bundled("nuclei-he")
    path = save_checkpoint(
        tmp_path / "mine.pt",
        parent.model,
        data=[{"name": f"t{i}.png", "sha256": "0" * 64} for i in range(5)],
        parent=parent.sha256,
        metrics={"metric_name": "val_f1", "metric": 0.62},
    )
    mine = load_checkpoint(path)
    card = plain_card(mine.meta, mine.config, mine.path)
    text = card.text()
    assert card.title == "mine.pt: your model" and card.non_commercial
    assert "5 image(s): t0.png, t1.png, t2.png and 2 more" in text
    assert "fine-tuned from the bundled model nuclei-he" in text
    assert "fair: check its masks. On your images held back" in text and "62 %" in text


def test_an_untrained_model_says_so(tmp_path):
    path = save_checkpoint(tmp_path / "new.pt", build_model(ModelConfig(width=8), seed=0))
    ckpt = load_checkpoint(path)
    card = plain_card(ckpt.meta, ckpt.config, ckpt.path)
    assert "Trained on: nothing yet" in card.text()
    assert "not measured" in card.text() and card.licence is None


def test_read_record_reads_the_record_not_the_weights(tmp_path):
    path = save_checkpoint(
        tmp_path / "m.pt", build_model(ModelConfig(width=8, work_size=192), seed=0), note="x"
    )
    record = read_record(path)
    full = load_checkpoint(path)
    assert record.config == full.config and record.meta["note"] == "x"
    assert "state_dict" not in record.meta
    # The weights are not read: a file whose weights are damaged still has a record.
    payload = torch.load(path, weights_only=True)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = torch.zeros(1)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.pt")
    assert read_record(tmp_path / "bad.pt").config.work_size == 192
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        read_record(tmp_path / "foreign.pt")
