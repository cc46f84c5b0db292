"""Export: binary and instance TIFFs, QuPath GeoJSON, manifest; all atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from skimage import draw

from napari_selfloop.core.errors import InputError
from napari_selfloop.core.export import (
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
        assert f["properties"]["objectType"] == "annotation"
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
    assert inst.max() == 2 and inst.shape == lab.shape
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
