"""Tests for napari_selfloop.core.io.tiled_tiff: tiled, compressed, pyramidal TIFFs, streamed atomically."""

from __future__ import annotations

import errno
import gc
import logging
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_selfloop.core.engine.datasets import SELFLOOP_MASK_TAG, mask_convention
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.io.slides import open_slide
from napari_selfloop.core.io.tiled_tiff import (
    PYRAMID_MIN_SIDE,
    TiledTiffWriter,
    pyramid_shapes,
    write_tiled_tiff,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_round_trip_in_uneven_blocks(tmp_path, rng, dtype):
    img = (
        rng.random((1000, 700), dtype=np.float32)
        if dtype == np.float32
        else rng.integers(0, 256, (1000, 700), dtype=np.uint8)
    )
    path = tmp_path / "out.tif"
    with TiledTiffWriter(path, 1000, 700, dtype) as writer:
        assert not path.exists()  # only the temporary file exists until commit
        y = 0
        for rows in (1, 99, 300, 333, 267):
            writer.write_rows(y, img[y : y + rows])
            y += rows
    assert writer.closed and _leftovers(tmp_path) == []
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.compression == 8  # deflate
        assert len(tif.series[0].levels) == 1  # small: no pyramid
    back = tifffile.imread(path)
    assert back.dtype == img.dtype
    np.testing.assert_array_equal(back, img)


def test_a_large_image_gets_a_pyramid(tmp_path, rng):
    height, width = 4100, 300
    prob = np.repeat(rng.random((height // 4 + 1, width), dtype=np.float32), 4, axis=0)[:height]
    mask = (prob > 0.5).astype(np.uint8)
    write_tiled_tiff(tmp_path / "prob.tif", prob, pixel_size_um=0.5)
    write_tiled_tiff(tmp_path / "mask.tif", mask)
    shapes = pyramid_shapes(height, width)
    assert shapes == [(4100, 300), (2050, 150), (1025, 75), (513, 38)]
    assert max(shapes[-1]) <= PYRAMID_MIN_SIDE < max(shapes[-2])
    levels = _levels(tmp_path / "prob.tif")
    assert [lv.shape for lv in levels] == shapes
    np.testing.assert_array_equal(levels[0], prob)
    np.testing.assert_allclose(levels[1], prob.reshape(2050, 2, 150, 2).mean((1, 3)), atol=1e-6)
    masks = _levels(tmp_path / "mask.tif")  # integer levels are sampled, never averaged
    np.testing.assert_array_equal(masks[1], mask[::2, ::2])
    np.testing.assert_array_equal(masks[3], mask[::8, ::8])
    with open_slide(tmp_path / "prob.tif") as slide:  # the pixel size of every level
        assert slide.mpp == pytest.approx(0.5)
        assert slide.level_shapes == shapes
        assert slide.level_mpp(1) == pytest.approx(1.0)
    with tifffile.TiffFile(tmp_path / "prob.tif") as tif:
        x_res = tif.series[0].levels[2].keyframe.tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 2.0, rel=1e-3)  # px/cm at 2 µm/px


def test_ome_tiff_carries_the_physical_size(tmp_path, rng):
    img = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    path = write_tiled_tiff(tmp_path / "a.ome.tif", img, pixel_size_um=0.25, pyramid=2)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata
        assert [lv.shape for lv in tif.series[0].levels] == [
            (300, 500, 3),
            (150, 250, 3),
            (75, 125, 3),
        ]
        np.testing.assert_array_equal(tif.asarray(), img)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "OME PhysicalSizeX/Y"


def test_mask_metadata_is_kept(tmp_path):
    mask = np.zeros((40, 50), np.uint8)
    mask[5:9] = 255
    path = write_tiled_tiff(tmp_path / "m.tif", mask, metadata={SELFLOOP_MASK_TAG: "0/1/255"})
    assert mask_convention(path) == "selfloop"


@pytest.mark.parametrize("kind", ["dask", "zarr"])
def test_lazy_sources_are_read_band_by_band(tmp_path, rng, kind):
    img = rng.integers(0, 256, (700, 600, 3), dtype=np.uint8)
    source = (
        da.from_array(img, chunks=(100, 100, 3))
        if kind == "dask"
        else zarr.array(img, chunks=(64, 64, 3))
    )
    path = write_tiled_tiff(tmp_path / "rgb.tif", source, compression="zstd", tile=128)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].tilewidth == 128 and tif.pages[0].photometric == 2  # RGB
        np.testing.assert_array_equal(tif.asarray(), img)


def test_jpeg_is_for_uint8_images(tmp_path):
    yy, xx = np.mgrid[0:300, 0:300]
    img = np.stack([yy * 255 // 300, xx * 255 // 300, (yy + xx) * 255 // 600], -1).astype(np.uint8)
    write_tiled_tiff(tmp_path / "j.tif", img, compression="jpeg", quality=95)
    back = tifffile.imread(tmp_path / "j.tif")
    assert back.shape == img.shape and np.abs(back.astype(int) - img).mean() < 2
    with pytest.raises(InputError, match="JPEG compression needs uint8"):
        write_tiled_tiff(tmp_path / "f.tif", img.astype(np.float32), compression="jpeg")
    assert _leftovers(tmp_path) == []


def test_gaps_and_missing_rows_read_back_as_zero(tmp_path, caplog):
    path = tmp_path / "g.tif"
    with caplog.at_level(logging.WARNING), TiledTiffWriter(path, 600, 20, np.uint8, tile=16) as w:
        w.write_rows(3, np.full((2, 20), 7, np.uint8))
        w.write_rows(400, np.full((1, 20), 9, np.uint8))  # skips whole bands
    back = tifffile.imread(path)
    expected = np.zeros((600, 20), np.uint8)
    expected[3:5], expected[400] = 7, 9
    np.testing.assert_array_equal(back, expected)
    assert "199 of 600 rows were never written" in caplog.text


def test_abort_and_exception_keep_the_old_file(tmp_path):
    writer = TiledTiffWriter(tmp_path / "a.tif", 10, 10, np.float32)
    writer.write_rows(0, np.ones((5, 10)))
    writer.abort()
    writer.abort()  # idempotent
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "b.tif").write_bytes(b"old")
    with pytest.raises(KeyError), TiledTiffWriter(tmp_path / "b.tif", 5000, 10, np.uint8) as w:
        w.write_rows(0, np.ones((600, 10), np.uint8))  # bands handed to the thread, a pyramid
        raise KeyError("cancelled")
    assert (tmp_path / "b.tif").read_bytes() == b"old"
    assert _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="already closed"):
        w.write_rows(0, np.ones((1, 10), np.uint8))


def test_bad_rows_are_refused(tmp_path):
    with TiledTiffWriter(tmp_path / "a.tif", 10, 10, np.uint8) as writer:
        with pytest.raises(ValueError, match="convert"):
            writer.write_rows(0, np.ones((2, 10), np.float32))
        with pytest.raises(ValueError, match="outside"):
            writer.write_rows(9, np.ones((2, 10), np.uint8))
        with pytest.raises(ValueError, match="shape"):
            writer.write_rows(0, np.ones((2, 9), np.uint8))
        writer.write_rows(0, np.ones((4, 10), np.uint8))
        with pytest.raises(ValueError, match="in order"):
            writer.write_rows(2, np.ones((2, 10), np.uint8))
        writer.write_rows(4, np.ones((6, 10), np.uint8))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compression": "jpeg2000"}, "unknown compression"),
        ({"tile": 100}, "multiple of 16"),
        ({"pixel_size_um": -1.0}, "positive number of microns"),
        ({"pyramid": "yes"}, "pyramid must be"),
        ({"downsample": "cubic"}, "downsample must be"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        TiledTiffWriter(tmp_path / "a.tif", 10, 10, np.uint8, **kwargs)
    with pytest.raises(InputError, match="positive size"):
        TiledTiffWriter(tmp_path / "a.tif", 0, 10, np.uint8)
    with pytest.raises(InputError, match="pixel type"):
        TiledTiffWriter(tmp_path / "a.tif", 10, 10, np.complex64)
    with pytest.raises(InputError, match="2D image"):
        write_tiled_tiff(tmp_path / "a.tif", np.zeros((2, 3, 4, 5)))
    assert list(tmp_path.iterdir()) == []


def test_forgotten_writer_is_cleaned_up(tmp_path):
    writer = TiledTiffWriter(tmp_path / "a.tif", 5000, 4, np.uint8)
    writer.write_rows(0, np.ones((300, 4), np.uint8))
    assert len(_leftovers(tmp_path)) == 1
    thread = writer._state.thread
    del writer
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
    assert list(tmp_path.iterdir()) == []


def test_real_full_disk(tiny_tmpfs, rng):
    """On a full disk the error names the target; no temporary or spool is left behind."""
    (tiny_tmpfs / "keep.tif").write_bytes(b"old")
    noise = rng.integers(0, 256, (512, 512), dtype=np.uint8)  # incompressible
    writer = TiledTiffWriter(tiny_tmpfs / "big.tif", 512, 512, np.uint8)
    with pytest.raises(OSError) as info:
        for y in range(0, 512, 64):
            writer.write_rows(y, noise[y : y + 64])
        writer.commit()
    assert info.value.errno == errno.ENOSPC and "big.tif" in str(info.value)
    assert writer.closed
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["keep.tif"]
    with pytest.raises(OSError) as info:
        write_tiled_tiff(tiny_tmpfs / "keep.tif", noise)
    assert info.value.errno == errno.ENOSPC and "keep.tif" in str(info.value)
    assert (tiny_tmpfs / "keep.tif").read_bytes() == b"old"
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["keep.tif"]


def test_horizontal_predictor_is_lossless_and_for_integers(tmp_path):
    yy, xx = np.mgrid[0:300, 0:520]
    smooth = ((np.sin(yy / 30) + np.cos(xx / 40) + 2) * 60).astype(np.uint8)
    plain = write_tiled_tiff(tmp_path / "plain.tif", smooth)
    pred = write_tiled_tiff(tmp_path / "pred.tif", smooth, predictor=True)
    with tifffile.TiffFile(pred) as tif:
        assert tif.pages[0].predictor == 2
        np.testing.assert_array_equal(tif.asarray(), smooth)
    assert pred.stat().st_size < plain.stat().st_size
    with pytest.raises(InputError, match="predictor"):
        write_tiled_tiff(tmp_path / "f.tif", smooth.astype(np.float32), predictor=True)
