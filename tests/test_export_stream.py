"""Export in bands (issue 27 item 4): the same files as the whole-array export, in bounded
memory; objects crossing band borders stay whole."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_selfloop.core.io.label_files import LABELS_TAG, open_labels_file
from napari_selfloop.core.io.tiled_tiff import write_tiled_tiff
from napari_selfloop.core.io.windows import Window
from napari_selfloop.core.store import export_stream
from napari_selfloop.core.store.export import export_annotation
from napari_selfloop.core.store.export_stream import Rows, plan_export, write_export
from tests.conftest import assert_one_line_error, run_cli


def _mask(seed: int = 0, shape=(150, 130)) -> np.ndarray:
    """Blobs of every shape: U-shapes joined only far below, holes, diagonal touches,
    a snake through every band, 255 patches."""
    rng = np.random.default_rng(seed)
    m = (rng.random(shape) < 0.45).astype(np.uint8)
    m = np.asarray(
        __import__("scipy.ndimage", fromlist=["x"]).binary_opening(m, iterations=1), np.uint8
    )
    m[5:140, 10] = 1  # a tall object: both arms of a U meet at the bottom
    m[5:140, 14] = 1
    m[139, 10:15] = 1
    m[20:60, 40:80] = 1  # a ring with a hole
    m[30:50, 50:70] = 0
    m[70, 100], m[71, 101] = 1, 1  # diagonal only: two objects
    m[100:110, 100:120] = 255
    return m


def _features(geojson: dict) -> list:
    out = []
    for f in geojson["features"]:
        p = f["properties"]
        out.append(
            (p["measurements"]["Label"], p["measurements"]["Area px"], json.dumps(f["geometry"]))
        )
    return sorted(out)


def _compare(tmp_path, labels, *, instances=None, band=7, uncertain="keep", window=None):
    whole = export_annotation(
        tmp_path / "whole", "img", labels, uncertain=uncertain, window=window, instances=instances
    )
    raw = instances if instances is not None else labels
    plan = plan_export(
        Rows(raw),
        "img",
        input_type="instances" if instances is not None else "auto",
        convention="selfloop",
        uncertain=uncertain,
        band=band,
    )
    streamed = write_export(tmp_path / "stream", "img", plan, window=window)
    for key in ("objects", "foreground_pixels", "uncertain_pixels", "shape"):
        assert streamed[key] == whole[key], key
    for key in ("mask", "instances"):
        a = tifffile.imread(tmp_path / "whole" / whole[key])
        b = tifffile.imread(tmp_path / "stream" / streamed[key])
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    ga = json.loads((tmp_path / "whole" / whole["geojson"]).read_text())
    gb = json.loads((tmp_path / "stream" / streamed["geojson"]).read_text())
    assert _features(ga) == _features(gb)
    return streamed


@pytest.mark.parametrize("band", [1, 7, 64, 1000])
def test_bands_give_the_same_files_as_the_whole_array(tmp_path, band):
    _compare(tmp_path, _mask(), band=band)


@pytest.mark.parametrize("uncertain", ["background", "foreground"])
def test_uncertain_policies_and_a_window(tmp_path, uncertain):
    window = Window(1000, 2000, 150, 130, 2.0)
    _compare(tmp_path, _mask(1), band=5, uncertain=uncertain, window=window)


def test_given_instances_keep_their_ids_pieces_and_renumbering(tmp_path):
    inst = np.zeros((90, 60), np.uint32)
    inst[2:80, 3:6] = 7  # tall, crosses many bands
    inst[10:20, 20:30] = 9
    inst[60:70, 20:30] = 9  # id 9 in two pieces, far apart: one MultiPolygon
    inst[10:20, 30:40] = 3  # touching 9: kept apart
    _compare(tmp_path / "a", (inst > 0).astype(np.uint8), instances=inst, band=4)
    big = inst.astype(np.int64) * 10_000_000  # past MAX_KEPT_ID: renumbered 1, 2, 3
    big = big.astype(np.uint64)
    _compare(tmp_path / "b", (big > 0).astype(np.uint8), instances=big, band=6)


def test_a_binary_0_255_tiff_is_read_in_bands(tmp_path):
    m = (_mask(2) == 1).astype(np.uint8) * 255
    path = tmp_path / "binary.tif"
    tifffile.imwrite(path, m, tile=(16, 16), compression="zlib")
    file = open_labels_file(path)
    assert not isinstance(file.data, np.ndarray) and file.chunk_rows == 16
    plan = plan_export(Rows(file.data, file.chunk_rows), path.name, convention=file.convention)
    assert plan.rule == "binary" and plan.band in (m.shape[0], *range(16, 150, 16))
    entry = write_export(tmp_path / "out", "binary", plan)
    whole = export_annotation(tmp_path / "whole", "binary", (m == 255).astype(np.uint8))
    assert entry["objects"] == whole["objects"]
    assert np.array_equal(
        tifffile.imread(tmp_path / "out" / entry["instances"]),
        tifffile.imread(tmp_path / "whole" / whole["instances"]),
    )


def test_objects_too_large_to_outline_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_stream, "MAX_OUTLINE_BYTES", 10_000)
    m = np.zeros((200, 200), np.uint8)
    m[10:190, 10:190] = 1
    path = tmp_path / "lesion.tif"
    write_tiled_tiff(path, m, tile=16)
    code, _, err = run_cli(capsys, "export", path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "lesion.tif", "--downsample")
    assert not (tmp_path / "out").exists()


def test_a_damaged_placement_record_is_refused_unless_the_options_say(tmp_path, capsys):
    """Cosmetic list: a damaged napari_selfloop_labels record is no longer ignored silently
    (the GeoJSON would come out in the file's own pixels, not the slide's)."""
    m = np.zeros((40, 40), np.uint8)
    m[5:15, 5:15] = 1
    path = tmp_path / "saved.tif"
    tifffile.imwrite(path, m, metadata={LABELS_TAG: {"offset_yx": "12000, 30500", "downsample": 2}})
    code, _, err = run_cli(capsys, "export", path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "saved.tif", LABELS_TAG, "--offset")
    code, _, err = run_cli(
        capsys,
        "export",
        path,
        "--out",
        tmp_path / "out",
        "--offset",
        "12000",
        "30500",
        "--downsample",
        "2",
    )
    assert code == 0, err
    geo = json.loads(next((tmp_path / "out").glob("*.geojson")).read_text())
    x, y = geo["features"][0]["geometry"]["coordinates"][0][0]
    assert x >= 30500 and y >= 12000


def test_a_slide_mask_is_exported_in_bounded_memory(tmp_path):
    """A 6000x6000 mask (36 M pixels) exported in a fresh process: the peak resident set
    stays far below the ~10 bytes per pixel (360 MB) the whole-array export needed."""
    size = 6000
    path = tmp_path / "slide_mask.tif"
    from scipy import ndimage as ndi

    from napari_selfloop.core.io.tiled_tiff import TiledTiffWriter

    block = np.zeros((500, size), np.uint8)
    for dy in range(3):
        for dx in range(3):
            block[10 + dy :: 40, 10 + dx :: 40] = 1  # nuclei of 3x3 pixels
    block[200:260, 1000:1060] = 1
    per_block = ndi.label(block)[1]
    block[:, 100:103] = 1  # one object the whole height
    with TiledTiffWriter(path, size, size, np.uint8) as w:
        for y0 in range(0, size, 500):
            w.write_rows(y0, block)

    def peak_mb(*args: str) -> tuple[int, float]:
        code = (
            "import resource, subprocess, sys\n"
            f"done = subprocess.run([sys.executable, '-m', 'napari_selfloop.cli', *{args!r}], "
            "stdout=subprocess.DEVNULL)\n"
            "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        rc, kb = done.stdout.split()
        assert int(rc) == 0, done.stderr
        return int(rc), int(kb) / 1024

    _, baseline = peak_mb("export", "--help")  # the interpreter, torch and the package
    _, peak = peak_mb("-q", "export", str(path), "--out", str(tmp_path / "out"))
    print(f"peak RSS {peak:.0f} MB, {baseline:.0f} MB before any work")
    # The whole-array export took about 10 bytes per pixel over the baseline: 360 MB here.
    assert peak - baseline < 200, (peak, baseline)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["entries"][0]["objects"] == 12 * per_block + 1


# -- nucleus ids ("correct nuclei, not pixels"): the same in bands as whole -----------------


def _nuclei(seed: int = 0, shape=(120, 90)) -> np.ndarray:
    """Painted nuclei: discs with ids from 250 up (never 255), many touching; id 7 in two
    pieces bands apart; uncertain patches touching nuclei across band borders, between two
    nuclei, touching none, and far from any."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint32)
    ids = [i for i in range(250, 300) if i != 255]
    for i in ids[:30]:
        centre = (rng.integers(8, shape[0] - 8), rng.integers(5, shape[1] - 5))
        rr, cc = disk(centre, rng.integers(3, 9), shape=shape)
        lab[rr, cc] = i
    lab[2:4, 2:40] = 7
    lab[110:118, 60:70] = 7
    lab[30:75, 40:44] = 255  # tall: crosses band borders, touches nuclei here and there
    lab[0:2, 80:90] = 255
    lab[rng.random(shape) < 0.03] = 255  # specks
    lab[95:119, 0:14] = 0
    lab[100:115, 2:12] = 255  # far from most nuclei
    return lab


@pytest.mark.parametrize("uncertain", ["keep", "background", "foreground"])
@pytest.mark.parametrize("band", [1, 7, 32, 1000])
def test_nucleus_ids_are_kept_in_bands(tmp_path, uncertain, band):
    lab = _nuclei()
    plan = plan_export(Rows(lab), "img", convention="selfloop", uncertain=uncertain, band=band)
    assert plan.kind == "mask" and plan.rule == "ids"
    entry = _compare(tmp_path, lab, band=band, uncertain=uncertain)
    inst = tifffile.imread(tmp_path / "stream" / entry["instances"])
    assert 7 in inst and 255 not in inst
    if uncertain != "foreground":
        assert np.array_equal(inst, np.where(lab == 255, 0, lab))


def test_uncertain_far_from_nuclei_settles_as_the_whole_mask(tmp_path, monkeypatch):
    """The nearest nucleus of an uncertain pixel may lie many bands away: more rows are read
    until it is certainly found."""
    monkeypatch.setattr(export_stream, "NEAREST_HALO", 1)
    lab = np.zeros((80, 30), np.uint32)
    lab[2:6, 2:8] = 3
    lab[2:6, 20:26] = 9
    lab[6:78, 4:22] = 255  # touches nuclei 3 and 9 only at its top, 70 rows above its end
    lab[40:50, 0:3] = 255  # touches none: a new nucleus, id 10
    lab[70:75, 25:30] = 255  # and another, id 11
    for band in (2, 5):
        entry = _compare(tmp_path / str(band), lab, band=band, uncertain="foreground")
        inst = tifffile.imread(tmp_path / str(band) / "stream" / entry["instances"])
        assert set(np.unique(inst)) == {0, 3, 9, 10, 11}
        assert entry["objects"] == 4
        assert (inst[77, 4:12] == 3).all() and (inst[77, 14:22] == 9).all()
