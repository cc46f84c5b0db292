"""Autosave of corrections keyed by image content."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_selfloop.core.errors import InputError
from napari_selfloop.core.store.autosave import AutosaveStore, image_key, proposal_key


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
    folder = tmp_path / "project" / "autosave"
    assert sorted(p.name for p in folder.iterdir()) == [".locks", "ab12.json", "ab12.tif"]
    assert [p.name for p in (folder / ".locks").iterdir()] == ["ab12.lock"]
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

    from napari_selfloop.core.io.images import open_image

    rng = np.random.default_rng(2)
    a = rng.integers(0, 255, (600, 600), dtype=np.uint8)
    b = a.copy()
    b[64:74, 140:150] ^= 0xFF  # a 10x10 block between the windows an 8x8 sample reads
    for compression in (None, "zlib"):  # memory-mapped, then zarr (decoded tile by tile)
        tifffile.imwrite(
            tmp_path / "a.tif", a, compression=compression, tile=(64, 64) if compression else None
        )
        tifffile.imwrite(
            tmp_path / "b.tif", b, compression=compression, tile=(64, 64) if compression else None
        )
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
    assert sorted(p.name for p in store.folder.iterdir()) == [
        ".locks",
        "beef.json.damaged",
        "beef.tif.damaged",
    ]
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


# -- issue 9: large labels are saved as tiles, only the changed ones rewritten -------------


def _tile_files(store, key):
    return {p.name: p.stat().st_mtime_ns for p in (store.folder / f"{key}.tiles").iterdir()}


def test_large_labels_are_saved_as_tiles_and_only_changed_tiles_are_written(tmp_path):
    from napari_selfloop.core.store.dirty_tiles import TILE

    store = AutosaveStore(tmp_path)
    lab = np.full((3 * TILE, 6 * TILE - 100), 255, np.uint8)  # 4.6 MB: above one file
    lab[100:300, 100:300] = 1
    path = store.save("abcd", lab, name="slide", extra={"window": {"y0": 0}})
    assert path.name == "abcd.json" and not (store.folder / "abcd.tif").exists()
    files = _tile_files(store, "abcd")
    assert len(files) == 18
    restored = store.load("abcd")
    assert np.array_equal(restored.labels, lab) and restored.meta["name"] == "slide"
    assert restored.meta["window"] == {"y0": 0} and "tiles" not in restored.meta
    assert store.keys() == ["abcd"] and dict(store.records())["abcd"]["name"] == "slide"
    # One edit in one tile: that tile gets a new file, the 17 others are left alone.
    lab[TILE + 5, 2 * TILE + 7] = 0
    store.save("abcd", lab, name="slide")
    after = _tile_files(store, "abcd")
    assert len(after) == 18 and len(set(after) - set(files)) == 1
    assert all(after[n] == files[n] for n in set(after) & set(files))
    # The caller may say which tiles can have changed; others are not even read.
    lab[0, 0] = 0
    lab[2 * TILE, 0] = 0  # not announced: not saved now
    store.save("abcd", lab, name="slide", tiles=[(0, 0)])
    back = store.load("abcd").labels
    assert back[0, 0] == 0 and back[2 * TILE, 0] == 255 and back[TILE + 5, 2 * TILE + 7] == 0
    store.delete("abcd")
    assert store.load("abcd") is None and not (store.folder / "abcd.tiles").exists()


def test_a_save_cut_short_leaves_the_previous_tiled_save(tmp_path, monkeypatch):
    from napari_selfloop.core.store import autosave

    store = AutosaveStore(tmp_path)
    lab = np.zeros((1200, 1200 * 4), np.uint8)  # 4.6 MB
    store.save("beef", lab)
    edited = lab.copy()
    edited[:, :] = 1

    def full_disk(path, obj, **kw):  # the record cannot be written: the save fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(autosave, "write_json", full_disk)
    with pytest.raises(OSError):
        store.save("beef", edited)
    monkeypatch.undo()
    assert np.array_equal(AutosaveStore(tmp_path).load("beef").labels, lab)  # the old save, whole
    store.save("beef", edited)  # the next save works and cleans up the unused tiles
    assert np.array_equal(store.load("beef").labels, edited)
    assert len(list((store.folder / "beef.tiles").iterdir())) == 30


def test_a_damaged_tile_loses_only_that_tile(tmp_path, caplog):
    store = AutosaveStore(tmp_path)
    lab = np.ones((1024, 4608), np.uint8)
    store.save("cafe", lab)
    victim = sorted((store.folder / "cafe.tiles").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:10])
    with caplog.at_level("WARNING"):
        restored = store.load("cafe")
    assert "damaged" in caplog.text and store.set_aside
    y, x = (int(v) for v in victim.name.split("-")[0].split("_"))
    tile = restored.labels[y * 512 : (y + 1) * 512, x * 512 : (x + 1) * 512]
    assert (tile == 255).all() and (restored.labels == 1).sum() == lab.size - tile.size
    assert not victim.exists() and victim.with_name(victim.name + ".damaged").exists()


def test_tile_tracker_reads_edits_and_a_bounded_scan():
    from napari_selfloop.core.store.dirty_tiles import TILE, TileTracker

    data = np.zeros((4 * TILE, 4 * TILE), np.uint8)  # 16 tiles of 256 KiB
    tracker = TileTracker(data.shape, data.dtype)
    checked, changed = tracker.pending(data, budget=TILE * TILE)
    assert len(changed) == 16  # never saved: every tile
    tracker.commit(checked, changed)
    assert tracker.pending(data, budget=TILE * TILE)[1] == {}
    data[10, 10] = 1  # a painted pixel, reported
    tracker.mark((10, 10, 11, 11))
    checked, changed = tracker.pending(data, budget=TILE * TILE)
    assert set(changed) == {(0, 0)} and len(checked) <= 2
    tracker.commit(checked, changed)
    data[3 * TILE + 1, 3 * TILE + 1] = 1  # an edit no event reported (an undo, a script)
    found = []
    for _ in range(16):  # one tile per save: found within 16 saves
        checked, changed = tracker.pending(data, budget=TILE * TILE)
        found += list(changed)
        tracker.commit(checked, changed)
    assert found == [(3, 3)]
    # A small array is compared whole at every save.
    small = np.zeros((100, 100), np.uint8)
    t = TileTracker(small.shape, small.dtype, saved=small)
    small[99, 99] = 3
    assert set(t.pending(small)[1]) == {(0, 0)}


def test_slide_key_reads_a_sample_and_tells_slides_apart():
    from napari_selfloop.core.store.autosave import slide_key

    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (2048, 2048, 3), dtype=np.uint8)
    levels = [base, base[::4, ::4].copy()]
    key = slide_key(levels)
    assert key == slide_key([zarr.array(base, chunks=(256, 256, 3)), levels[1]])
    other = base.copy()
    other[1024, 1024] ^= 1  # the centre sample
    assert slide_key([other, levels[1]]) != key
    assert slide_key([base]) == image_key(base)


def test_the_proposal_record_has_its_own_key(tmp_path):
    key = "0123456789abcdef01234567"
    pkey = proposal_key(key)
    assert pkey != key and len(pkey) == 24 and pkey == proposal_key(key)
    store = AutosaveStore(tmp_path)
    record = np.array([[0, 1], [2, 255]], np.uint8)
    store.save(pkey, record, extra={"proposal_of": key})
    restored = store.load(pkey)
    assert np.array_equal(restored.labels, record) and restored.meta["proposal_of"] == key


# -- issue 27: two processes sharing one project --------------------------------------------

_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from napari_selfloop.core.store.autosave import AutosaveStore

project, key, value, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
labels = np.full((2200, 2200), value, np.uint8)  # 4.8 MB: the tiled layout
while not go.exists():
    time.sleep(0.005)
store = AutosaveStore(project)
for i in range(6):
    labels[i, i] = value + 1  # each save changes one tile of its own
    store.save(key, labels, name=f"writer {value}")
"""


def _start_writers(project, key, values, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    import subprocess
    import sys

    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(project), key, str(v), str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in values
    ]
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


def test_two_processes_saving_one_tiled_key_never_delete_each_others_tiles(tmp_path, caplog):
    from napari_selfloop.core.store.autosave import SINGLE_FILE_BYTES

    assert SINGLE_FILE_BYTES < 2200 * 2200
    project = tmp_path / "P"
    for trial in range(3):  # the race lost pixels in 14 of 15 trials before the fix
        key = f"ab{trial:02d}"
        _start_writers(project, key, (10, 20), tmp_path / f"t{trial}")
        store = AutosaveStore(project)
        with caplog.at_level("WARNING"):
            restored = store.load(key)
        assert not store.missing and not store.set_aside, caplog.text
        winner = int(restored.labels[-1, -1])
        assert winner in (10, 20)
        want = np.full((2200, 2200), winner, np.uint8)
        want[range(6), range(6)] = winner + 1
        assert np.array_equal(restored.labels, want)  # the last save, whole
        assert restored.meta["name"] == f"writer {winner}"
        # Nothing is left behind but the last save's tiles.
        tiles = sorted(p.name for p in (store.folder / f"{key}.tiles").iterdir())
        assert len(tiles) == 25
