"""Export: binary and instance TIFFs, QuPath GeoJSON, manifest; all atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage import draw

from napari_selfloop.core.errors import InputError
from napari_selfloop.core.store.export import (
    export_annotation,
    instance_labels,
    labels_to_mask,
    mask_to_geojson,
    safe_stem,
)


def _labels():
    lab = np.zeros((64, 80), np.uint8)
    rr, cc = draw.disk((20, 20), 8)
    lab[rr, cc] = 1
    lab[40:50, 50:70] = 3  # a painted instance id is still foreground
    lab[5:8, 60:75] = 255  # uncertain
    return lab


def test_labels_to_mask_policies():
    lab = _labels()
    keep = labels_to_mask(lab)
    assert set(np.unique(keep)) == {0, 1, 255}
    assert (keep[40:50, 50:70] == 1).all()
    assert (labels_to_mask(lab, "background") == 255).sum() == 0
    assert (labels_to_mask(lab, "foreground")[5:8, 60:75] == 1).all()
    with pytest.raises(InputError):
        labels_to_mask(lab, "maybe")
    with pytest.raises(InputError):
        labels_to_mask(np.zeros((2, 4, 4), np.uint8))


def test_geojson_polygons_match_objects():
    inst = instance_labels(labels_to_mask(_labels()))
    assert inst.max() == 2
    gj = mask_to_geojson(inst)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2
    for f in gj["features"]:
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon"
        assert ring[0] == ring[-1] and len(ring) >= 4
        assert f["properties"]["objectType"] == "detection"  # nuclei: QuPath detections
        assert f["properties"]["classification"]["name"] == "Nucleus"
    # The rectangle 40:50 x 50:70 has its outline on pixel centres (+0.5): x in [50.5, 69.5].
    rect = next(f for f in gj["features"] if f["properties"]["measurements"]["Area px"] == 200)
    xs = [p[0] for p in rect["geometry"]["coordinates"][0]]
    ys = [p[1] for p in rect["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(50.0) and max(xs) == pytest.approx(70.0)
    assert min(ys) == pytest.approx(40.0) and max(ys) == pytest.approx(50.0)


def test_single_pixel_and_holes():
    inst = np.zeros((10, 10), np.uint16)
    inst[2, 2] = 1
    inst[4:9, 4:9] = 2
    inst[6, 6] = 0
    feats = mask_to_geojson(inst)["features"]
    assert len(feats) == 2
    assert len(feats[1]["geometry"]["coordinates"]) == 2  # outer ring and a hole


def test_export_writes_files_and_updates_manifest(tmp_path):
    lab = _labels()
    entry = export_annotation(
        tmp_path / "out",
        "my image.png",
        lab,
        image_sha256="ab" * 32,
        checkpoint={"path": "m.pt", "sha256": "cd" * 32},
    )
    out = tmp_path / "out"
    assert entry["mask"] == "my_image_mask.tif"
    mask = tifffile.imread(out / entry["mask"])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1, 255}
    inst = tifffile.imread(out / entry["instances"])
    # The painted ids are the nuclei: the disc (id 1) and the rectangle (id 3).
    assert set(np.unique(inst)) == {0, 1, 3} and inst.shape == lab.shape
    gj = json.loads((out / entry["geojson"]).read_text())
    assert len(gj["features"]) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "napari-selfloop-export"
    assert manifest["entries"][0]["checkpoint"]["path"] == "m.pt"
    assert manifest["entries"][0]["objects"] == 2
    # Re-export replaces the entry; another image adds one. No temp files remain.
    export_annotation(out, "my image.png", np.zeros_like(lab))
    export_annotation(out, "other", lab)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["name"] for e in manifest["entries"]] == ["my image.png", "other"]
    assert manifest["entries"][0]["objects"] == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_export_refuses_a_foreign_manifest_and_a_file_as_folder(tmp_path):
    (tmp_path / "manifest.json").write_text('{"something": "else"}')
    with pytest.raises(InputError, match="not a napari-selfloop export manifest"):
        export_annotation(tmp_path, "x", _labels())
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InputError, match="is a file"):
        export_annotation(f, "x", _labels())


def test_safe_stem():
    assert safe_stem("H&E nuclei") == "H_E_nuclei"
    assert safe_stem("a/b.tif") == "b"
    assert safe_stem("...") == "image"


# -- issue 11: distinct files per image, the manifest checked first, pixel-edge polygons ----


def _blob(n: int) -> np.ndarray:
    """Labels with ``n`` foreground pixels in the first row (tells exports apart)."""
    lab = np.zeros((8, 12), np.uint8)
    lab[0, :n] = 1
    return lab


def test_different_images_never_share_files(tmp_path):
    names = ["img.001", "img.002", "核", "細胞", "tile 1", "tile_1", "Tile_1"]
    entries = [export_annotation(tmp_path, name, _blob(i + 1)) for i, name in enumerate(names)]
    masks = [e["mask"] for e in entries]
    assert len({m.lower() for m in masks}) == len(names)
    assert masks[0] == "img.001_mask.tif" and masks[1] == "img.002_mask.tif"
    assert masks[4] == "tile_1_mask.tif"  # the first one keeps the readable name
    assert masks[2].startswith("image-") and masks[3].startswith("image-")
    for i, e in enumerate(entries):  # every file still holds its own image's export
        assert (tifffile.imread(tmp_path / e["mask"]) == 1).sum() == i + 1
        assert tifffile.imread(tmp_path / e["instances"]).max() == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["name"] for e in manifest["entries"]] == names
    # Re-exporting an image replaces its own files and entry, under the same name.
    again = export_annotation(tmp_path, "tile_1", _blob(9))
    assert again["mask"] == masks[5]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["entries"]) == len(names)
    assert (tifffile.imread(tmp_path / masks[4]) == 1).sum() == 5  # "tile 1" untouched
    # Same name, different pixels: another image, so new files; a file of the user's
    # with the readable name is not overwritten either.
    first = export_annotation(tmp_path, "scan", _blob(2), image_sha256="aa" * 12)
    other = export_annotation(tmp_path, "scan", _blob(3), image_sha256="ff" * 12)
    assert first["mask"] == "scan_mask.tif" and other["mask"] != first["mask"]
    assert (tifffile.imread(tmp_path / first["mask"]) == 1).sum() == 2
    (tmp_path / "mine_mask.tif").write_bytes(b"hand-made")
    assert export_annotation(tmp_path, "mine", _blob(1))["mask"] != "mine_mask.tif"
    assert (tmp_path / "mine_mask.tif").read_bytes() == b"hand-made"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"something": "else"}', "not a napari-selfloop export manifest"),
        ('{"format": "napari-selfloop-export", "entries": {"a": 1}}', "'entries' is a dict"),
        ('{"format": "napari-selfloop-export", "entries": [1, 2]}', "'entries'"),
    ],
)
def test_a_bad_manifest_is_refused_before_anything_is_written(tmp_path, content, words):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(InputError, match=words) as info:
        export_annotation(tmp_path, "x", _labels())
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_exported_mask_is_read_back_as_0_1_255(tmp_path):
    from napari_selfloop.core.engine.datasets import load_mask

    lab = np.zeros((6, 6), np.uint8)
    lab[:3] = 255  # uncertain, and no foreground: 0/255 only
    entry = export_annotation(tmp_path, "empty", lab)
    assert np.array_equal(load_mask(tmp_path / entry["mask"]), lab)  # not read as binary


def _area(rings):
    from napari_selfloop.core.store.export import ring_area

    return sum(ring_area(r) for r in rings)


def test_polygons_follow_pixel_edges():
    inst = np.zeros((6, 6), np.uint16)
    inst[2, 3] = 1
    (feat,) = mask_to_geojson(inst)["features"]
    assert feat["geometry"]["coordinates"] == [[[3, 2], [4, 2], [4, 3], [3, 3], [3, 2]]]
    assert _area(feat["geometry"]["coordinates"]) == 1
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = (rng.random((16, 18)) < 0.55).astype(np.uint8)
        objects = instance_labels(mask)
        for f in mask_to_geojson(objects)["features"]:
            rings = f["geometry"]["coordinates"]
            assert f["geometry"]["type"] == "Polygon"
            assert _area(rings) == f["properties"]["measurements"]["Area px"]
            assert _area(rings[:1]) > 0 and all(_area([r]) < 0 for r in rings[1:])
            for ring in rings:  # closed, simple (no vertex visited twice)
                assert ring[0] == ring[-1] and len({tuple(p) for p in ring[:-1]}) == len(ring) - 1
    # One id in two separate pieces: a MultiPolygon with both.
    two = np.zeros((5, 5), np.uint16)
    two[0, 0] = two[3:5, 3:5] = 1
    geometry = mask_to_geojson(two)["features"][0]["geometry"]
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
    assert sum(_area(p) for p in geometry["coordinates"]) == 5


# -- issue 9: QuPath-valid GeoJSON (UUIDs, object types), slide coordinates, slide-grade TIFFs


def rasterise(features, shape, origin=(0, 0)):
    """Pixels of ``shape`` (from slide point ``origin = (y, x)``) whose centre is inside a feature."""
    import shapely

    out = np.zeros(shape, np.int32)
    y0, x0 = origin
    for i, feature in enumerate(features, start=1):
        geom = shapely.geometry.shape(feature["geometry"])
        bx0, by0, bx1, by1 = geom.bounds
        r0, r1 = max(0, int(np.floor(by0 - y0))), min(shape[0], int(np.ceil(by1 - y0)))
        c0, c1 = max(0, int(np.floor(bx0 - x0))), min(shape[1], int(np.ceil(bx1 - x0)))
        if r1 <= r0 or c1 <= c0:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        inside = shapely.contains_xy(geom, xx + x0 + 0.5, yy + y0 + 0.5)
        out[r0:r1, c0:c1][inside] = i
    return out


@pytest.mark.parametrize("object_type", ["detection", "annotation"])
def test_geojson_polygons_are_valid_with_uuid_ids(object_type):
    import uuid

    import shapely

    rng = np.random.default_rng(4)
    mask = (rng.random((60, 70)) < 0.5).astype(np.uint8)  # many odd shapes with holes
    objects = instance_labels(mask)
    gj = json.loads(json.dumps(mask_to_geojson(objects, object_type=object_type)))
    ids = [f["id"] for f in gj["features"]]
    assert len(ids) == objects.max() and len(set(ids)) == len(ids)
    for f in gj["features"]:
        assert uuid.UUID(f["id"]).version == 4
        assert f["properties"]["objectType"] == object_type
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        assert geom.geom_type in ("Polygon", "MultiPolygon")
        assert geom.area == f["properties"]["measurements"]["Area px"]
    assert np.array_equal(rasterise(gj["features"], mask.shape) > 0, mask == 1)
    with pytest.raises(InputError, match="object type"):
        mask_to_geojson(objects, object_type="object")


def test_export_of_a_region_is_in_slide_coordinates(tmp_path):
    from napari_selfloop.core.io.windows import Window

    window = Window(y0=1000, x0=2048, height=64, width=80, factor=2.0, level=1)
    lab = _labels()
    entry = export_annotation(
        tmp_path, "slide_region", lab, window=window, pixel_size_um=0.5, object_type="detection"
    )
    assert entry["region"]["box"] == [1000, 2048, 1128, 2208] and entry["pixel_size_um"] == 0.5
    features = json.loads((tmp_path / entry["geojson"]).read_text())["features"]
    # Back to a full-resolution mask of the region's part of the slide: every pixel of the
    # region's mask covers 2 x 2 slide pixels.
    back = rasterise(features, (128, 160), origin=(1000, 2048)) > 0
    expected = np.kron(labels_to_mask(lab) == 1, np.ones((2, 2), bool))
    assert np.array_equal(back, expected)
    # The masks are the region's own, tiled and compressed, with their pixel size.
    with tifffile.TiffFile(tmp_path / entry["mask"]) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.compression != 1
        assert page.tags["XResolution"].value == (20000, 1)  # 0.5 um/px = 20000 px/cm
        assert np.array_equal(page.asarray(), labels_to_mask(lab))
    assert set(np.unique(tifffile.imread(tmp_path / entry["instances"]))) == {0, 1, 3}


# -- "correct nuclei, not pixels": each nucleus leaves as the user sees it -------------------


def _painted():
    """Three painted nuclei: ids 1 and 2 touching, id 3 apart; a patch still uncertain."""
    lab = np.zeros((40, 50), np.uint32)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2  # shares an edge with nucleus 1
    lab[25:35, 30:42] = 3
    lab[30:34, 8:12] = 255
    return lab


def _by_name(features):
    return {f["properties"]["name"]: f for f in features}


def test_painted_nuclei_keep_their_ids_in_every_file(tmp_path):
    lab = _painted()
    entry = export_annotation(tmp_path, "tile", lab)
    inst = tifffile.imread(tmp_path / entry["instances"])
    assert np.array_equal(inst, np.where(lab == 255, 0, lab))  # exactly ids {1, 2, 3}
    mask = tifffile.imread(tmp_path / entry["mask"])
    assert np.array_equal(mask, labels_to_mask(lab))  # the union: 1 / 0 / 255
    assert entry["objects"] == 3 and entry["uncertain_pixels"] == 16
    features = json.loads((tmp_path / entry["geojson"]).read_text())["features"]
    assert len(features) == 3
    named = _by_name(features)
    assert sorted(named) == ["1", "2", "3"]
    back = rasterise(features, lab.shape)
    for name, f in named.items():
        p = f["properties"]
        assert p["measurements"]["Label"] == int(name)
        assert p["objectType"] == "detection" and p["classification"]["name"] == "Nucleus"
        assert f["geometry"]["type"] == "Polygon"
        assert p["measurements"]["Area px"] == int((lab == int(name)).sum())
    relabelled = np.zeros_like(lab)
    for i, f in enumerate(features, start=1):
        relabelled[back == i] = f["properties"]["measurements"]["Label"]
    assert np.array_equal(relabelled, np.where(lab == 255, 0, lab))


def test_ids_past_255_and_an_id_in_two_pieces(tmp_path):
    lab = np.zeros((30, 40), np.uint32)
    lab[2:8, 2:8] = 254
    lab[2:8, 8:14] = 256  # touching 254; 255 is never an id
    lab[20:25, 2:6] = 7
    lab[20:25, 30:36] = 7  # one nucleus id in two separate pieces: one MultiPolygon
    lab[12:16, 20:30] = 255
    entry = export_annotation(tmp_path, "ids", lab)
    inst = tifffile.imread(tmp_path / entry["instances"])
    assert set(np.unique(inst)) == {0, 7, 254, 256} and inst.dtype == np.uint16
    assert entry["objects"] == 3
    named = _by_name(json.loads((tmp_path / entry["geojson"]).read_text())["features"])
    assert sorted(named) == ["254", "256", "7"]
    assert named["7"]["geometry"]["type"] == "MultiPolygon"
    assert len(named["7"]["geometry"]["coordinates"]) == 2
    assert named["7"]["properties"]["measurements"] == {"Area px": 50, "Label": 7}
    assert named["256"]["properties"]["measurements"]["Label"] == 256


def test_a_plain_0_1_255_mask_still_gives_connected_pieces(tmp_path):
    lab = np.zeros((30, 40), np.uint8)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 1  # touching: one piece of 1, so one nucleus
    lab[20:25, 30:35] = 1
    lab[0:3, 0:40] = 255
    entry = export_annotation(tmp_path, "legacy", lab)
    inst = tifffile.imread(tmp_path / entry["instances"])
    assert entry["objects"] == 2 and set(np.unique(inst)) == {0, 1, 2}
    assert len(set(np.unique(inst[5:15, 5:25]))) == 1
    names = sorted(_by_name(json.loads((tmp_path / entry["geojson"]).read_text())["features"]))
    assert names == ["1", "2"]
    # Uncertain as foreground: it joins the foreground before the pieces are counted.
    entry = export_annotation(tmp_path, "legacy-fg", lab, uncertain="foreground")
    assert entry["objects"] == 3  # the band of 255 touches neither square: a third piece


def _settled(lab):
    from napari_selfloop.core.corrections import nuclei

    edit = nuclei.settle(lab, (0, 0, *lab.shape), nucleus=True)
    out = lab.astype(np.uint32)
    out[edit.index] = edit.values
    return out


@pytest.mark.parametrize("uncertain", ["keep", "background", "foreground"])
def test_uncertain_policies_on_painted_nuclei(tmp_path, uncertain):
    lab = _painted()
    lab[15:18, 8:22] = 255  # under nuclei 1 and 2: each pixel joins the nearer one
    lab[0:2, 40:50] = 255  # touching no nucleus: a new one
    entry = export_annotation(tmp_path, "tile", lab, uncertain=uncertain)
    inst = tifffile.imread(tmp_path / entry["instances"])
    mask = tifffile.imread(tmp_path / entry["mask"])
    features = json.loads((tmp_path / entry["geojson"]).read_text())["features"]
    unc = lab == 255
    if uncertain == "foreground":
        settled = _settled(lab)
        assert np.array_equal(inst, settled)
        assert (inst[15:18, 8:15] == 1).all() and (inst[15:18, 15:22] == 2).all()
        assert set(np.unique(inst[0:2, 40:50])) == {4}  # the next free id
        assert set(np.unique(inst[30:34, 8:12])) == {5}
        assert np.array_equal(mask, (lab > 0).astype(np.uint8))
        assert entry["objects"] == 5 and len(features) == 5
    else:
        assert np.array_equal(inst, np.where(unc, 0, lab))
        assert (mask[unc] == (255 if uncertain == "keep" else 0)).all()
        assert entry["objects"] == 3 and len(features) == 3
    assert entry["uncertain_pixels"] == (int(unc.sum()) if uncertain == "keep" else 0)
    for f in features:  # every feature is its id's pixels
        label = f["properties"]["measurements"]["Label"]
        assert f["properties"]["name"] == str(label)
        assert f["properties"]["measurements"]["Area px"] == int((inst == label).sum())


def test_outlines_of_many_ids_match_their_pixels():
    """Ids in many pieces touching by corners, holes touching outlines: every feature is its
    id's pixels, one polygon per 4-connected piece (the outlines are traced all at once)."""
    import shapely

    rng = np.random.default_rng(7)
    for _ in range(5):
        lab = (rng.integers(0, 6, (40, 50)) * (rng.random((40, 50)) < 0.7)).astype(np.uint16)
        features = mask_to_geojson(lab)["features"]
        assert sorted(f["properties"]["measurements"]["Label"] for f in features) == sorted(
            set(np.unique(lab)) - {0}
        )
        back = rasterise(features, lab.shape)
        for i, f in enumerate(features, start=1):
            label = f["properties"]["measurements"]["Label"]
            assert np.array_equal(back == i, lab == label)
            geom = shapely.geometry.shape(f["geometry"])
            assert geom.is_valid and geom.area == (lab == label).sum()
            polygons = f["geometry"]["coordinates"]
            if f["geometry"]["type"] == "Polygon":
                polygons = [polygons]
            assert len(polygons) == ndi.label(lab == label)[1]


def test_outlines_traced_in_bands_are_the_same(monkeypatch):
    """A large array is outlined in bands of rows (bounded memory): the same features, in
    the same order, as all at once."""
    from napari_selfloop.core.store import export

    rng = np.random.default_rng(11)
    lab = (rng.integers(1, 40, (60, 30)) * (rng.random((60, 30)) < 0.6)).astype(np.uint32)
    lab[5:55, 3] = 99  # tall: spans many bands
    lab[0, 20:25] = lab[59, 20:25] = 98  # one id at the top and the bottom

    def strip(collection):
        return [{k: v for k, v in f.items() if k != "id"} for f in collection["features"]]

    whole = strip(mask_to_geojson(lab))
    monkeypatch.setattr(export, "TRACE_PIXELS", 60)  # bands of 2 rows
    assert strip(mask_to_geojson(lab)) == whole
    labels = [f["properties"]["measurements"]["Label"] for f in whole]
    assert labels == sorted(set(np.unique(lab)) - {0})
