"""The npe2 reader: slides open as lazy multiscale layers in microns; other images are left to napari."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from gui_support import GUI_MARKS

from napari_selfloop import _reader, _sample_data
from napari_selfloop.core.io.synthetic_slide import slide_cache_dir

pytestmark = GUI_MARKS
pytest_plugins = ("gui_fixtures",)


def test_reader_contribution_in_the_manifest():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(Path(__file__).parents[1] / "napari.yaml")
    manifest.validate_imports()
    (reader,) = manifest.contributions.readers
    assert {"*.svs", "*.ndpi", "*.tif", "*.tiff", "*.ome.tif"} <= set(reader.filename_patterns)
    assert not reader.accepts_directories


def test_a_slide_opens_lazily_as_a_multiscale_layer_in_microns(make_napari_viewer, synthetic_slide):
    viewer = make_napari_viewer()
    start = time.perf_counter()
    (layer,) = viewer.open(str(synthetic_slide), plugin="napari-selfloop")
    seconds = time.perf_counter() - start
    assert seconds < 5
    assert layer.multiscale and layer.rgb
    assert [tuple(level.shape) for level in layer.data] == [
        (4096, 4096, 3),
        (2048, 2048, 3),
        (1024, 1024, 3),
    ]
    assert all(isinstance(level, zarr.Array) for level in layer.data)  # nothing read whole
    assert tuple(layer.scale) == pytest.approx((0.25, 0.25))
    assert layer.metadata["mpp"] == pytest.approx(0.25)
    assert layer.metadata["path"] == str(synthetic_slide.path.resolve())
    assert layer.metadata["slide"] is True
    # what is shown is decoded from the tiles on screen, at the level the zoom needs
    viewer.reset_view()
    assert layer.data_level > 0


def test_svs_label_and_macro_are_not_opened(make_napari_viewer, synthetic_svs):
    viewer = make_napari_viewer()
    layers = viewer.open(str(synthetic_svs), plugin="napari-selfloop")
    assert len(layers) == 1
    layer = layers[0]
    assert [tuple(level.shape)[:2] for level in layer.data] == [(2048, 2048), (512, 512)]
    assert layer.metadata["vendor"] == "aperio"


def test_small_plain_images_are_left_to_napari(tmp_path, make_napari_viewer):
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tile.tif", image)
    assert _reader.get_reader(str(tmp_path / "tile.tif")) is None
    assert _reader.get_reader(str(tmp_path / "notes.txt")) is None
    assert _reader.get_reader([str(tmp_path / "tile.tif"), str(tmp_path / "x.tif")]) is None
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "tile.tif"))  # napari's own reader, as before
    assert not layer.multiscale and np.array_equal(np.asarray(layer.data), image)


def test_slide_sample_is_generated_once_into_the_cache(tmp_path, monkeypatch, make_napari_viewer):
    monkeypatch.setenv("NAPARI_SELFLOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(_sample_data.SLIDE_SAMPLE, "height", 2048)  # small, for the test
    monkeypatch.setitem(_sample_data.SLIDE_SAMPLE, "width", 2048)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-selfloop", "slide")
    layer = viewer.layers["synthetic slide"]
    assert layer.multiscale and tuple(layer.scale) == pytest.approx((0.25, 0.25))
    (made,) = slide_cache_dir().iterdir()
    stamp = made.stat().st_mtime_ns
    viewer.open_sample("napari-selfloop", "slide")  # reused, not made again
    assert made.stat().st_mtime_ns == stamp
    with tifffile.TiffFile(made) as tif:
        assert tif.pages[0].compression == 7  # JPEG


def test_a_large_slide_without_a_pyramid_gets_lazy_strided_levels(tmp_path):
    from napari_selfloop.core.io.tiled_tiff import write_tiled_tiff

    image = np.zeros((8200, 8300, 3), np.uint8)
    image[::2, ::2] = 200
    write_tiled_tiff(tmp_path / "flat.tif", image, pyramid=False, pixel_size_um=0.5)
    read = _reader.get_reader(str(tmp_path / "flat.tif"))
    assert read is not None  # one plane of 8192x8192 or more: a slide
    ((data, kwargs, kind),) = read(str(tmp_path / "flat.tif"))
    assert kind == "image" and kwargs["multiscale"]
    assert [tuple(level.shape) for level in data] == [
        (8200, 8300, 3),
        (4100, 4150, 3),
        (2050, 2075, 3),
        (1025, 1038, 3),
    ]
    assert isinstance(data[0], zarr.Array) and not isinstance(data[1], np.ndarray)
    assert (np.asarray(data[2][:5, :5]) == 200).all()  # every 4th pixel
