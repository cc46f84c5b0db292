"""``napari-selfloop export``: masks and instance labels -> the Export panel's outputs.

Real files in, real files out: tiled compressed TIFFs with the pixel size, and QuPath
GeoJSON whose polygons are valid (shapely), whose ids are UUIDs, and which rasterise back
to the input in slide coordinates (the offset added, the downsampling undone).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from napari_selfloop.core.engine.datasets import load_mask
from napari_selfloop.core.io.label_files import read_labels_file, write_labels_tiff
from napari_selfloop.core.io.windows import Window
from tests.conftest import assert_one_line_error, run_cli
from tests.test_export import rasterise

shapely = pytest.importorskip("shapely")


def _mask(shape=(96, 128), seed=0):
    """A 0/1/255 correction mask: discs (some touching, some with holes), an undecided band."""
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.uint8)
    for _ in range(9):
        rr, cc = disk(
            (rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)),
            rng.integers(3, 9),
            shape=shape,
        )
        m[rr, cc] = 1
    m[40:44, 60:64] = 0  # a hole in whatever covers it
    m[:, -6:] = 255
    return m


def _instances(shape=(80, 100)):
    """Touching objects with ids past 255 (uint32 file): a grid of squares sharing edges."""
    lab = np.zeros(shape, np.uint32)
    ids = iter([3, 300, 70000, 255, 12, 9, 1000, 4])
    for y in (10, 30):
        for x in (10, 30, 50, 70):
            lab[y : y + 20, x : x + 20] = next(ids)
    return lab


def _features(path: Path) -> list[dict]:
    gj = json.loads(path.read_text())
    assert gj["type"] == "FeatureCollection"
    return gj["features"]


def _check_features(features, object_type="detection", classification="Nucleus", factor=1):
    ids = [f["id"] for f in features]
    assert len(set(ids)) == len(ids)
    for f in features:
        assert uuid.UUID(f["id"]).version == 4
        assert f["properties"]["objectType"] == object_type
        assert f["properties"]["classification"]["name"] == classification
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        assert geom.geom_type in ("Polygon", "MultiPolygon")
        # "Area px" counts the input's pixels; each covers factor x factor slide pixels.
        assert geom.area == f["properties"]["measurements"]["Area px"] * factor**2


def _entry(out: Path, index: int = -1) -> dict:
    return json.loads((out / "manifest.json").read_text())["entries"][index]


def _tiff_page(path: Path):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return page.is_tiled, page.compression, page.tags.get("XResolution"), page.asarray()


def test_a_mask_becomes_masks_and_geojson_in_slide_coordinates(tmp_path, capsys):
    mask = _mask()
    tifffile.imwrite(tmp_path / "region.tif", mask)
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "export",
        tmp_path / "region.tif",
        "--out",
        out,
        "--offset",
        5000,
        6000,
        "--pixel-size",
        0.25,
    )
    assert code == 0, err
    entry = _entry(out)
    assert entry["region"]["box"] == [5000, 6000, 5096, 6128]
    assert entry["pixel_size_um"] == 0.25 and entry["object_type"] == "detection"
    for key in ("mask", "instances"):
        tiled, compression, xres, pixels = _tiff_page(out / entry[key])
        assert tiled and compression != 1
        assert xres.value == (40000, 1)  # 0.25 um/px = 40000 px/cm
    assert np.array_equal(_tiff_page(out / entry["mask"])[3], mask)
    assert np.array_equal(load_mask(out / entry["mask"]), mask)  # 255 stays "undecided"
    features = _features(out / entry["geojson"])
    _check_features(features)
    assert len(features) == entry["objects"] > 3
    back = rasterise(features, mask.shape, origin=(5000, 6000)) > 0
    assert np.array_equal(back, mask == 1)
    # --uncertain foreground counts the undecided band in (one object more).
    code, _, _ = run_cli(
        capsys,
        "export",
        tmp_path / "region.tif",
        "--out",
        tmp_path / "fg",
        "--uncertain",
        "foreground",
    )
    assert code == 0
    entry = _entry(tmp_path / "fg")
    assert entry["region"] is None and entry["pixel_size_um"] is None
    back = rasterise(_features(tmp_path / "fg" / entry["geojson"]), mask.shape) > 0
    assert np.array_equal(back, mask > 0)


def test_instance_labels_keep_touching_objects_apart(tmp_path, capsys):
    lab = _instances()
    tifffile.imwrite(tmp_path / "labels.tif", lab)
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "export",
        tmp_path / "labels.tif",
        "--out",
        out,
        "--offset",
        100,
        200,
        "--object-type",
        "annotation",
        "--classification",
        "Cell",
    )
    assert code == 0, err
    entry = _entry(out)
    assert entry["objects"] == 8
    instances = tifffile.imread(out / entry["instances"])
    assert np.array_equal(instances, lab) and instances.dtype == np.uint32
    assert np.array_equal(tifffile.imread(out / entry["mask"]), (lab > 0).astype(np.uint8))
    features = _features(out / entry["geojson"])
    _check_features(features, "annotation", "Cell")
    assert len(features) == 8
    assert all(f["properties"]["isLocked"] is False for f in features)
    # Each object is its own polygon: rasterised by feature, they give back the ids.
    back = rasterise(features, lab.shape, origin=(100, 200))
    ids = {f["properties"]["measurements"]["Label"] for f in features}
    assert ids == set(np.unique(lab)) - {0}
    relabelled = np.zeros_like(lab)
    for i, f in enumerate(features, start=1):
        relabelled[back == i] = f["properties"]["measurements"]["Label"]
    assert np.array_equal(relabelled, lab)
    # Read as a correction mask, the ids are nuclei, kept apart too; 255 is uncertain there.
    code, _, _ = run_cli(
        capsys, "export", tmp_path / "labels.tif", "--out", tmp_path / "m", "--input-type", "mask"
    )
    entry = _entry(tmp_path / "m")
    assert code == 0 and entry["objects"] == 7 and entry["uncertain_pixels"] == 400
    kept = tifffile.imread(tmp_path / "m" / entry["instances"])
    assert np.array_equal(kept, np.where(lab == 255, 0, lab))


def test_binary_png_and_downsampled_masks(tmp_path, capsys):
    mask = _mask(seed=3)
    binary = np.where(mask == 1, 255, 0).astype(np.uint8)  # the common 0/255 format
    Image.fromarray(binary).save(tmp_path / "binary.png")
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "export",
        tmp_path / "binary.png",
        "--out",
        out,
        "--offset",
        1000,
        2048,
        "--downsample",
        2,
        "--pixel-size",
        0.5,
    )
    assert code == 0, err
    entry = _entry(out)
    assert entry["region"]["factor"] == 2.0 and entry["region"]["box"] == [1000, 2048, 1192, 2304]
    assert np.array_equal(tifffile.imread(out / entry["mask"]), (mask == 1).astype(np.uint8))
    features = _features(out / entry["geojson"])
    _check_features(features, factor=2)
    # Every mask pixel covers 2 x 2 slide pixels.
    back = rasterise(features, (192, 256), origin=(1000, 2048)) > 0
    assert np.array_equal(back, np.kron(mask == 1, np.ones((2, 2), bool)))
    # A 0/1 mask saved as floats is a mask too.
    tifffile.imwrite(tmp_path / "float.tif", (mask == 1).astype(np.float32))
    assert run_cli(capsys, "export", tmp_path / "float.tif", "--out", out)[0] == 0
    assert np.array_equal(tifffile.imread(out / _entry(out)["mask"]), (mask == 1).astype(np.uint8))


def test_a_file_saved_from_the_plugin_brings_its_region_and_pixel_size(tmp_path, capsys):
    mask = _mask(seed=5)
    window = Window(4000, 8002, *mask.shape, factor=2.0, level=1)
    write_labels_tiff(
        tmp_path / "saved.tif",
        mask,
        window=window,
        pixel_size_um=0.5,
        correction=True,
        source="slide.svs",
        image_sha256="ab" * 32,
    )
    read = read_labels_file(tmp_path / "saved.tif")
    assert read.window == window and read.pixel_size_um == 0.5 and read.convention == "selfloop"
    out = tmp_path / "out"
    assert run_cli(capsys, "export", tmp_path / "saved.tif", "--out", out)[0] == 0
    entry = _entry(out)
    # Named as the Export panel names a region, with the image's hash: the same files.
    assert entry["name"] == f"slide.svs_{window.stem}" and entry["image_sha256"] == "ab" * 32
    assert entry["region"] == window.to_meta() and entry["pixel_size_um"] == 0.5
    assert entry["uncertain_pixels"] == int((mask == 255).sum())
    y0, x0, y1, x1 = window.box
    back = rasterise(_features(out / entry["geojson"]), (y1 - y0, x1 - x0), origin=(y0, x0)) > 0
    assert np.array_equal(back, np.kron(mask == 1, np.ones((2, 2), bool)))
    # The options win over the record.
    out2 = tmp_path / "out2"
    assert (
        run_cli(
            capsys,
            "export",
            tmp_path / "saved.tif",
            "--out",
            out2,
            "--offset",
            0,
            0,
            "--downsample",
            1,
            "--pixel-size",
            0.3,
        )[0]
        == 0
    )
    entry = _entry(out2)
    assert entry["region"]["box"] == [0, 0, *mask.shape] and entry["pixel_size_um"] == 0.3
    back = rasterise(_features(out2 / entry["geojson"]), mask.shape) > 0
    assert np.array_equal(back, mask == 1)


def test_several_inputs_never_share_files(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tifffile.imwrite(tmp_path / "a" / "tile.tif", _mask(seed=1))
    tifffile.imwrite(tmp_path / "b" / "tile.tif", _mask(seed=2))
    out = tmp_path / "out"
    code, _, _ = run_cli(
        capsys, "export", tmp_path / "a" / "tile.tif", tmp_path / "b" / "tile.tif", "--out", out
    )
    assert code == 0
    entries = json.loads((out / "manifest.json").read_text())["entries"]
    assert len(entries) == 2 and entries[0]["mask"] != entries[1]["mask"]
    for entry, seed in zip(entries, (1, 2), strict=True):
        assert np.array_equal(tifffile.imread(out / entry["mask"]), _mask(seed=seed))
    # Exporting one again replaces its own files and entry.
    assert run_cli(capsys, "export", tmp_path / "b" / "tile.tif", "--out", out)[0] == 0
    assert len(json.loads((out / "manifest.json").read_text())["entries"]) == 2


def _bad_inputs(tmp: Path) -> dict[str, tuple[list, tuple]]:
    good = tmp / "good.tif"
    tifffile.imwrite(good, _mask())
    tifffile.imwrite(tmp / "float.tif", np.full((20, 20), 0.5, np.float32))
    tifffile.imwrite(tmp / "negative.tif", np.full((20, 20), -3, np.int16))
    tifffile.imwrite(tmp / "stack.tif", np.zeros((5, 20, 20), np.uint8), photometric="minisblack")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp / "mask.jpg")
    (tmp / "broken.tif").write_bytes(good.read_bytes()[:200])
    (tmp / "notes.txt").write_text("not a mask")
    (tmp / "afile").write_text("x")
    return {
        "missing": ([tmp / "nope.tif"], ("nope.tif", "does not exist")),
        "float": ([good, tmp / "float.tif"], ("float.tif", "float32")),
        "negative": ([good, tmp / "negative.tif"], ("negative.tif", "negative")),
        "stack": ([good, tmp / "stack.tif"], ("stack.tif", "shape")),
        "jpeg": ([good, tmp / "mask.jpg"], ("mask.jpg", "JPEG")),
        "truncated": ([good, tmp / "broken.tif"], ("broken.tif",)),
        "text": ([good, tmp / "notes.txt"], ("notes.txt", "not a TIFF or PNG")),
        "twice": ([good, good], ("twice",)),
    }


@pytest.mark.parametrize(
    "case", ["missing", "float", "negative", "stack", "jpeg", "truncated", "text", "twice"]
)
def test_a_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys, case):
    inputs, words = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", *inputs, "--out", out)
    assert_one_line_error(code, err, *words)
    assert not out.exists()  # not even the folder: the good input before it is not written


@pytest.mark.parametrize(
    "options, words",
    [
        (["--pixel-size", "-1"], ("--pixel-size",)),
        (["--pixel-size", "nan"], ("--pixel-size",)),
        (["--offset", "-5", "0"], ("--offset",)),
        (["--offset", "5"], ("--offset",)),
        (["--downsample", "0"], ("--downsample",)),
        (["--object-type", "cell"], ("--object-type",)),
        (["--uncertain", "maybe"], ("--uncertain",)),
        (["--classification", " "], ("--classification",)),
    ],
)
def test_bad_options_are_one_line(tmp_path, capsys, options, words):
    tifffile.imwrite(tmp_path / "m.tif", _mask())
    code, _, err = run_cli(
        capsys, "export", tmp_path / "m.tif", "--out", tmp_path / "out", *options
    )
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "out").exists()


def test_an_unusable_output_folder_is_refused_before_writing(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "m.tif", _mask())
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "export", tmp_path / "m.tif", "--out", tmp_path / "file")
    assert_one_line_error(code, err, "is a file")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"format": "something else"}')
    code, _, err = run_cli(capsys, "export", tmp_path / "m.tif", "--out", foreign)
    assert_one_line_error(code, err, "not a napari-selfloop export manifest")
    assert sorted(p.name for p in foreign.iterdir()) == ["manifest.json"]


def test_a_refusal_is_one_line_in_a_real_process(tmp_path):
    (tmp_path / "mask.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_selfloop.cli",
            "export",
            str(tmp_path / "mask.jpg"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "JPEG")
    assert not (tmp_path / "out").exists()


def test_huge_instance_ids_are_renumbered(tmp_path, capsys):
    lab = np.zeros((30, 40), np.uint32)
    lab[2:10, 2:10] = 3_000_000_000
    lab[2:10, 10:20] = 5
    tifffile.imwrite(tmp_path / "ids.tif", lab)
    assert run_cli(capsys, "export", tmp_path / "ids.tif", "--out", tmp_path / "out")[0] == 0
    entry = _entry(tmp_path / "out")
    instances = tifffile.imread(tmp_path / "out" / entry["instances"])
    assert entry["objects"] == 2 and instances.dtype == np.uint16
    assert set(np.unique(instances)) == {0, 1, 2} and instances[5, 5] != instances[5, 15]
    _check_features(_features(tmp_path / "out" / entry["geojson"]))


# -- "correct nuclei, not pixels": a labels file with nucleus ids keeps them -----------------


def _painted(shape=(60, 70)):
    """Painted nuclei: 1 and 2 touching, 3 apart, 254 and 256 touching; uncertain patches."""
    lab = np.zeros(shape, np.uint32)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2
    lab[30:40, 40:52] = 3
    lab[45:55, 5:12] = 254
    lab[45:55, 12:20] = 256
    lab[15:19, 5:25] = 255  # under nuclei 1 and 2
    lab[2:4, 50:60] = 255  # touching none
    return lab


def _names(features) -> list[str]:
    for f in features:
        assert f["properties"]["name"] == str(f["properties"]["measurements"]["Label"])
    return sorted((f["properties"]["name"] for f in features), key=int)


def test_a_uint32_label_tiff_keeps_its_ids(tmp_path, capsys):
    lab = np.zeros((40, 50), np.uint32)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2  # touching 1
    lab[25:35, 30:42] = 3
    tifffile.imwrite(tmp_path / "labels.tif", lab)
    out = tmp_path / "out"
    assert run_cli(capsys, "export", tmp_path / "labels.tif", "--out", out)[0] == 0
    entry = _entry(out)
    assert entry["objects"] == 3
    assert np.array_equal(tifffile.imread(out / entry["instances"]), lab)
    features = _features(out / entry["geojson"])
    _check_features(features)
    assert _names(features) == ["1", "2", "3"]


@pytest.mark.parametrize("uncertain", ["keep", "background", "foreground"])
def test_corrected_nuclei_saved_from_the_plugin_keep_their_ids(tmp_path, capsys, uncertain):
    from napari_selfloop.core.store.export import export_annotation

    lab = _painted()
    write_labels_tiff(tmp_path / "saved.tif", lab, correction=True, source="tile.png")
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "export", tmp_path / "saved.tif", "--out", out, "--uncertain", uncertain
    )
    assert code == 0, err
    entry = _entry(out)
    inst = tifffile.imread(out / entry["instances"])
    features = _features(out / entry["geojson"])
    _check_features(features)
    # What the Export panel writes for the same layer.
    panel = export_annotation(tmp_path / "panel", "tile.png", lab, uncertain=uncertain)
    assert np.array_equal(inst, tifffile.imread(tmp_path / "panel" / panel["instances"]))
    assert np.array_equal(
        tifffile.imread(out / entry["mask"]), tifffile.imread(tmp_path / "panel" / panel["mask"])
    )
    assert entry["objects"] == panel["objects"] == len(features)
    if uncertain == "foreground":
        assert _names(features) == ["1", "2", "3", "254", "256", "257"]
        assert (inst[15:19, 5:14] == 1).all() and (inst[15:19, 16:25] == 2).all()
    else:
        assert _names(features) == ["1", "2", "3", "254", "256"]
        assert np.array_equal(inst, np.where(lab == 255, 0, lab))
    assert entry["uncertain_pixels"] == (100 if uncertain == "keep" else 0)
