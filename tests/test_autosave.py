"""Autosave of corrections keyed by image content."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_selfloop.core.autosave import AutosaveStore, image_key
from napari_selfloop.core.errors import InputError


def test_key_follows_content_not_identity():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)
    assert image_key(img) == image_key(img.copy())
    other = img.copy()
    other[10, 10, 0] ^= 1
    assert image_key(other) != image_key(img)
    assert image_key(img[..., 0]) != image_key(img)


def test_lazy_arrays_are_sampled():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (300, 200), dtype=np.uint8)
    z = zarr.array(img, chunks=(64, 64))
    assert image_key(z) == image_key(zarr.array(img, chunks=(32, 32)))
    assert len(image_key(z)) == 24


def test_save_restore_roundtrip(tmp_path):
    store = AutosaveStore(tmp_path / "project")
    assert store.load("ab12") is None and store.keys() == []
    lab = np.zeros((30, 40), np.uint8)
    lab[5:10, 5:10] = 1
    lab[20:25, 20:30] = 255
    store.save("ab12", lab, name="img", extra={"image_layer": "img"})
    restored = store.load("ab12")
    assert np.array_equal(restored.labels, lab) and restored.labels.dtype == np.uint8
    assert restored.meta["name"] == "img" and restored.meta["shape"] == [30, 40]
    assert store.keys() == ["ab12"]
    # Overwrite keeps one file pair, no temp leftovers.
    store.save("ab12", lab * 0, name="img")
    assert store.load("ab12").labels.sum() == 0
    assert sorted(p.name for p in (tmp_path / "project" / "autosave").iterdir()) == [
        "ab12.json",
        "ab12.tif",
    ]
    store.delete("ab12")
    assert store.load("ab12") is None


def test_unreadable_autosave_is_ignored(tmp_path):
    store = AutosaveStore(tmp_path)
    store.folder.mkdir()
    (store.folder / "beef.tif").write_bytes(b"not a tiff")
    (store.folder / "beef.json").write_text(json.dumps({}))
    assert store.load("beef") is None


def test_bad_keys_and_shapes(tmp_path):
    store = AutosaveStore(tmp_path)
    with pytest.raises(InputError):
        store.save("../evil", np.zeros((3, 3), np.uint8))
    with pytest.raises(InputError):
        store.save("ab", np.zeros((2, 3, 3), np.uint8))
