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


# -- issue 11: keys cover every pixel; a damaged save is set aside, never fatal ------------


def test_keys_of_lazy_images_cover_every_pixel(tmp_path):
    import tifffile

    from napari_selfloop.core.imageio import open_image

    rng = np.random.default_rng(2)
    a = rng.integers(0, 255, (600, 600), dtype=np.uint8)
    b = a.copy()
    b[64:74, 140:150] ^= 0xFF  # a 10x10 block between the windows an 8x8 sample reads
    for compression in (None, "zlib"):  # memory-mapped, then zarr (decoded tile by tile)
        tifffile.imwrite(tmp_path / "a.tif", a, compression=compression, tile=(64, 64) if compression else None)
        tifffile.imwrite(tmp_path / "b.tif", b, compression=compression, tile=(64, 64) if compression else None)
        lazy_a, lazy_b = open_image(tmp_path / "a.tif"), open_image(tmp_path / "b.tif")
        assert type(lazy_a) is not np.ndarray
        assert image_key(lazy_a) != image_key(lazy_b)
        assert image_key(lazy_a) == image_key(a)  # the same pixels, in memory or not


def test_a_damaged_autosave_is_set_aside(tmp_path, caplog):
    store = AutosaveStore(tmp_path)
    lab = np.random.default_rng(0).integers(0, 2, (64, 64), dtype=np.uint8)
    tif = store.save("beef", lab, name="img")
    data = tif.read_bytes()
    tif.write_bytes(data[: len(data) // 2])  # truncated: zlib.error when decoded
    with caplog.at_level("WARNING"):
        assert store.load("beef") is None
    assert "damaged" in caplog.text
    assert sorted(p.name for p in store.folder.iterdir()) == ["beef.json.damaged", "beef.tif.damaged"]
    assert store.set_aside and store.keys() == []
    # A new save works, and a second damage does not overwrite the first one set aside.
    store.save("beef", lab, name="img")
    (store.folder / "beef.tif").write_bytes(b"II*\x00garbage")
    assert store.load("beef") is None
    assert (store.folder / "beef.tif.damaged-2").exists()
    # A damaged record alone: the corrections still come back.
    store.save("cafe", lab, name="img")
    (store.folder / "cafe.json").write_text("{truncated")
    restored = AutosaveStore(tmp_path).load("cafe")
    assert restored is not None and np.array_equal(restored.labels, lab) and restored.meta == {}
    assert (store.folder / "cafe.json.damaged").exists()
