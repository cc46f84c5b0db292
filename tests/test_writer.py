"""The plugin's writer ("Save corrected labels as TIFF"): tiled, compressed, with the pixel
size, and where a region's labels lie on the slide, read back by ``export``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from gui_support import errors
from test_export import rasterise
from test_widgets_slide import lazy_slide

from napari_selfloop._writer import write_labels
from napari_selfloop.core.engine.datasets import SELFLOOP_MASK_TAG, load_mask
from napari_selfloop.core.io.label_files import LABELS_TAG, read_labels_file
from napari_selfloop.core.io.windows import Window
from napari_selfloop.widgets._autosave import key_for
from napari_selfloop.widgets._layers import put_result
from tests.conftest import run_cli

pytest_plugins = ("gui_fixtures",)


class _Page:
    """What a test needs of a file's first page, read while the file is open."""

    def __init__(self, page):
        self.is_tiled, self.compression = page.is_tiled, page.compression
        self.tags = {name: page.tags[name] for name in ("XResolution",) if name in page.tags}
        self.pixels = page.asarray()

    def asarray(self):
        return self.pixels


def _record(path):
    with tifffile.TiffFile(path) as tif:
        return tif.shaped_metadata[0], _Page(tif.pages[0])


@pytest.mark.gui
@pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")
def test_a_region_correction_layer_is_saved_in_place_and_exported_on_the_slide(
    make_napari_viewer, project, notes, tmp_path, capsys
):
    viewer = make_napari_viewer()
    image = viewer.add_image(
        lazy_slide(),
        multiscale=True,
        rgb=True,
        name="slide",
        scale=(0.25, 0.25),
        units=("um", "um"),
    )
    window = Window(4000, 8002, 150, 170, 2.0, 1)
    mask = np.full(window.shape, 0, np.uint8)
    mask[20:60, 30:80] = 1
    mask[90:100, 100:140] = 1
    mask[:, 160:] = 255
    layer = put_result(
        viewer,
        "slide",
        "labels",
        mask,
        like=image,
        window=window,
        extra_meta={"image_key": key_for(image), "pixel_size_um": 0.5},
    )
    written = layer.save(str(tmp_path / "region.tif"), plugin="napari-selfloop")
    assert written == [str(tmp_path / "region.tif")]
    meta, page = _record(tmp_path / "region.tif")
    assert page.is_tiled and page.compression != 1
    assert page.tags["XResolution"].value == (20000, 1)  # 0.5 um/px in px/cm
    assert np.array_equal(page.asarray(), mask)
    record = meta[LABELS_TAG]
    assert record["offset_yx"] == [4000, 8002] and record["downsample"] == 2.0
    assert record["region"] == window.to_meta() and record["pixel_size_um"] == 0.5
    assert record["source"] == "slide" and record["image_sha256"] == key_for(image)
    assert np.allclose(record["napari"]["scale"], (0.5, 0.5))
    assert np.allclose(record["napari"]["translate"], layer.translate)
    assert meta[SELFLOOP_MASK_TAG] == "0/1/255"
    assert np.array_equal(load_mask(tmp_path / "region.tif"), mask)  # 255 stays "undecided"
    read = read_labels_file(tmp_path / "region.tif")
    assert read.window == window and read.pixel_size_um == 0.5

    # Exported from the command line, its GeoJSON lies on the slide.
    out = tmp_path / "out"
    assert run_cli(capsys, "export", tmp_path / "region.tif", "--out", out)[0] == 0
    entry = json.loads((out / "manifest.json").read_text())["entries"][0]
    assert entry["name"] == f"slide_{window.stem}" and entry["pixel_size_um"] == 0.5
    features = json.loads((out / entry["geojson"]).read_text())["features"]
    y0, x0, y1, x1 = window.box
    back = rasterise(features, (y1 - y0, x1 - x0), origin=(y0, x0)) > 0
    assert np.array_equal(back, np.kron(mask == 1, np.ones((2, 2), bool)))
    assert not errors(notes)


@pytest.mark.gui
@pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")
def test_plain_labels_keep_their_ids_and_physical_pixel_size(make_napari_viewer, project, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((60, 90), np.int32)
    labels[5:20, 5:20] = 300
    labels[5:20, 20:40] = 7
    layer = viewer.add_labels(
        labels, name="cells", scale=(0.5, 0.5), units=("um", "um"), translate=(10.0, 20.0)
    )
    assert layer.save(str(tmp_path / "cells.tiff"), plugin="napari-selfloop")
    meta, page = _record(tmp_path / "cells.tiff")
    assert page.asarray().dtype == np.uint16 and np.array_equal(page.asarray(), labels)
    assert page.is_tiled and page.tags["XResolution"].value == (20000, 1)
    assert SELFLOOP_MASK_TAG not in meta  # not a correction mask: 255 would be an id
    record = meta[LABELS_TAG]
    assert record["region"] is None and record["offset_yx"] == [0, 0]
    assert record["pixel_size_um"] == 0.5 and record["napari"]["translate"] == [10.0, 20.0]
    read = read_labels_file(tmp_path / "cells.tiff")
    assert read.window is None and read.pixel_size_um == 0.5 and read.convention == "auto"


def test_what_cannot_be_placed_is_written_plainly_or_refused(tmp_path):
    # Another extension becomes .tif; a stack is one TIFF without placement.
    stack = np.zeros((3, 10, 12), np.uint8)
    stack[1, 2:4, 2:4] = 2
    (path,) = write_labels(str(tmp_path / "stack.png"), stack, {"name": "stack"})
    assert path.endswith("stack.tif") and np.array_equal(tifffile.imread(path), stack)
    assert write_labels(str(tmp_path / "f.tif"), np.full((4, 4), 0.5), {}) == []
    assert write_labels(str(tmp_path / "n.tif"), np.full((4, 4), -1, np.int32), {}) == []
    # A layer's region that no longer matches its pixels is not recorded.
    meta = {"metadata": {"selfloop": {"role": "labels", "window": Window(5, 5, 8, 8).to_meta()}}}
    (path,) = write_labels(str(tmp_path / "odd.ome.tif"), np.ones((4, 4), np.uint8), meta)
    assert read_labels_file(path).window is None
    assert _record(path)[0][SELFLOOP_MASK_TAG] == "0/1/255"
