"""Tests for napari_selfloop.core.io.images: opening, checking, reading and atomic writing."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_selfloop.core.errors import InputError
from napari_selfloop.core.io import atomic
from napari_selfloop.core.io.atomic import atomic_path, write_json, write_tiff
from napari_selfloop.core.io.images import (
    ImageInfo,
    check_image,
    open_image,
    read_region,
    read_region_padded,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ------------------------------------------------------------------------------ open_image


def test_open_png_rgb_gray_16bit_rgba(tmp_path, rng):
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = open_image(tmp_path / "rgb.png")
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)

    gray16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = open_image(tmp_path / "g16.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, gray16)

    rgba = rng.integers(0, 256, (8, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert check_image(open_image(tmp_path / "rgba.png")) == ImageInfo(8, 6, 4, np.dtype("uint8"))

    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert open_image(tmp_path / "palette.png").shape == (20, 30, 3)


def test_open_jpeg_and_content_not_extension(tmp_path, rng):
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    out = open_image(tmp_path / "photo.jpg")
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    # a PNG that is called .tif is still read as a PNG
    Image.fromarray(rgb).save(tmp_path / "actually_png.tif", format="PNG")
    np.testing.assert_array_equal(open_image(tmp_path / "actually_png.tif"), rgb)


def test_open_uncompressed_tiff_is_memmap(tmp_path, rng):
    img = rng.integers(0, 65536, (40, 50), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", img)
    out = open_image(tmp_path / "plain.tif")
    assert isinstance(out, np.memmap)
    np.testing.assert_array_equal(np.asarray(out), img)
    np.testing.assert_allclose(read_region(out, 3, 9, 4, 20)[..., 0], img[3:9, 4:20] / 65535)


def test_open_compressed_tiled_tiff_is_lazy_zarr(tmp_path, rng):
    img = rng.random((70, 90, 3), dtype=np.float32)
    tifffile.imwrite(
        tmp_path / "tiled.tif", img, photometric="rgb", compression="zlib", tile=(32, 32)
    )
    out = open_image(tmp_path / "tiled.tif")
    assert isinstance(out, zarr.Array)
    assert check_image(out) == ImageInfo(70, 90, 3, np.dtype("float32"))
    np.testing.assert_array_equal(read_region(out, 10, 50, 33, 80), img[10:50, 33:80])


def test_open_imagej_singleton_axes_are_squeezed(tmp_path, rng):
    img = rng.integers(0, 256, (1, 1, 12, 13), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True)
    assert open_image(tmp_path / "ij.tif").shape == (12, 13)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"hello, this is text\n", ["notes.png is not a PNG, JPEG or TIFF", "b'hello, t'"]),
        (b"PK\x03\x04zipzipzip", ["not a PNG, JPEG or TIFF", "b'PK\\x03\\x04"]),
        (b"", ["empty"]),
    ],
)
def test_open_not_an_image(tmp_path, content, words):
    path = tmp_path / "notes.png"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        open_image(path)
    for word in words:
        assert word in str(info.value)


def test_open_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_image(tmp_path / "nope.tif")
    with pytest.raises(InputError, match="folder"):
        open_image(tmp_path)


def test_open_truncated_png(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png is a corrupt or truncated PNG"):
        open_image(tmp_path / "cut.png")


def test_open_truncated_tiffs(tmp_path, rng):
    img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "plain.tif", img)
    data = (tmp_path / "plain.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) - 1000])
    with pytest.raises(InputError, match=r"cut\.tif is a truncated TIFF"):
        open_image(tmp_path / "cut.tif")
    (tmp_path / "header.tif").write_bytes(data[:6])
    with pytest.raises(InputError, match="corrupt or truncated TIFF"):
        open_image(tmp_path / "header.tif")
    tifffile.imwrite(tmp_path / "z.tif", img, compression="zlib", tile=(16, 16))
    data = (tmp_path / "z.tif").read_bytes()
    (tmp_path / "zcut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        open_image(tmp_path / "zcut.tif")


@pytest.mark.parametrize(
    ("array", "kwargs", "words"),
    [
        (np.zeros((5, 32, 40), np.uint8), {}, ["(5, 32, 40)", "pick one plane"]),
        (
            np.zeros((2, 3, 32, 40), np.uint8),
            {"photometric": "minisblack"},
            ["2D RGB or grayscale", "pick one plane"],
        ),
        (
            np.zeros((3, 32, 40), np.uint8),
            {"photometric": "rgb", "planarconfig": "separate"},
            ["channel-first", "np.moveaxis"],
        ),
        (np.zeros((3, 32, 40), np.uint8), {"photometric": "minisblack"}, ["channel-first"]),
        (
            np.zeros((32, 40, 5), np.uint8),
            {"photometric": "rgb", "planarconfig": "contig"},
            ["5 channels", "at most 4"],
        ),
        (np.zeros((32, 40, 5), np.uint8), {}, ["5 channels"]),
        (np.zeros((32, 40), np.int16), {}, ["unsupported pixel type int16", "uint8"]),
    ],
)
def test_open_tiff_refuses_bad_layouts(tmp_path, array, kwargs, words):
    tifffile.imwrite(tmp_path / "bad.tif", array, **kwargs)
    with pytest.raises(InputError) as info:
        open_image(tmp_path / "bad.tif")
    message = str(info.value)
    assert message.startswith("bad.tif")
    assert "\n" not in message
    for word in words:
        assert word in message


# ----------------------------------------------------------------------------- check_image


@pytest.mark.parametrize(
    ("shape", "channels"),
    [((1, 1), 1), ((5, 7), 1), ((5, 7, 1), 1), ((5, 7, 3), 3), ((5, 7, 4), 4), ((3, 3, 3), 3)],
)
def test_check_image_shapes(shape, channels):
    info = check_image(np.zeros(shape, np.uint8))
    assert (info.height, info.width, info.channels) == (shape[0], shape[1], channels)


def test_check_image_lazy_types_and_frozen():
    base = np.zeros((10, 12, 3), np.float32)
    for arr in (da.from_array(base, chunks=4), zarr.array(base), base.view(np.memmap)):
        assert check_image(arr) == ImageInfo(10, 12, 3, np.dtype("float32"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        check_image(base).height = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("shape", "dtype", "words"),
    [
        ((0, 5), np.uint8, ["empty", "(0, 5)"]),
        ((5, 0, 3), np.uint8, ["empty"]),
        ((5, 7, 2), np.uint8, ["2 channels"]),
        ((9, 7, 6), np.uint8, ["6 channels"]),
        ((3, 64, 64), np.uint8, ["channel-first"]),
        ((5, 3, 512, 512), np.uint8, ["2D RGB or grayscale", "(5, 3, 512, 512)", "pick one plane"]),
        ((7,), np.uint8, ["2D"]),
        ((5, 7), np.int8, ["int8"]),
        ((5, 7), np.int32, ["int32"]),
        ((5, 7), np.uint32, ["uint32"]),
        ((5, 7), np.complex64, ["complex64"]),
    ],
)
def test_check_image_refusals(shape, dtype, words):
    with pytest.raises(InputError) as info:
        check_image(np.zeros(shape, dtype))
    for word in words:
        assert word in str(info.value)


def test_check_image_accepts_all_supported_dtypes():
    for dtype in (bool, np.uint8, np.uint16, np.float16, np.float32, np.float64):
        assert check_image(np.zeros((2, 2), dtype)).dtype == np.dtype(dtype)


# ----------------------------------------------------------------------------- read_region


def test_read_region_gray_rgb_rgba(rng):
    gray = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    out = read_region(gray, 1, 4, 2, 7)
    assert out.shape == (3, 5, 3) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(out[..., c], gray[1:4, 2:7] / 255, atol=1e-7)
    np.testing.assert_array_equal(read_region(gray[..., None], 1, 4, 2, 7), out)

    rgb16 = rng.integers(0, 65536, (6, 8, 3), dtype=np.uint16)
    np.testing.assert_allclose(read_region(rgb16, 0, 6, 0, 8), rgb16 / 65535, atol=1e-7)

    rgba = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    np.testing.assert_allclose(read_region(rgba, 2, 5, 0, 3), rgba[2:5, 0:3, :3] / 255, atol=1e-7)


def test_read_region_bool_and_float(rng):
    mask = rng.random((5, 5)) > 0.5
    out = read_region(mask, 0, 5, 0, 5)
    np.testing.assert_array_equal(out[..., 1], mask.astype(np.float32))

    img = rng.random((5, 6, 3)).astype(np.float16)
    np.testing.assert_allclose(read_region(img, 0, 5, 0, 6), img.astype(np.float32))

    almost = np.full((3, 3), 1.0000001)  # rounding noise is clipped, not refused
    almost[0, 0] = -1e-7
    out = read_region(almost, 0, 3, 0, 3)
    assert out.min() == 0.0 and out.max() == 1.0


def test_read_region_float_out_of_range_and_nan():
    img = np.linspace(0, 254, 12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(InputError) as info:
        read_region(img, 0, 3, 0, 4)
    assert "[0, 1]" in str(info.value) and "254" in str(info.value)
    assert "divide by 255" in str(info.value)
    with pytest.raises(InputError, match="down to -0.5"):
        read_region(np.full((2, 2), -0.5), 0, 2, 0, 2)
    img = np.zeros((3, 3), np.float32)
    img[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        read_region(img, 0, 3, 0, 3)


def test_read_region_window_must_be_inside():
    with pytest.raises(InputError, match="read_region_padded"):
        read_region(np.zeros((4, 4), np.uint8), 0, 5, 0, 4)
    with pytest.raises(InputError):
        read_region(np.zeros((4, 4), np.uint8), 2, 2, 0, 4)


class _Spy:
    """A lazy array stand-in that records which windows were read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.keys = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        self.keys.append(key)
        return self.data[key]


def test_read_region_reads_only_the_window(rng):
    spy = _Spy(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8))
    read_region(spy, 10, 20, 30, 45)
    assert spy.keys == [(slice(10, 20), slice(30, 45))]
    spy.keys.clear()
    read_region_padded(spy, -4, 12, 110, 126)  # past the top and the right
    ((ys, xs),) = spy.keys
    assert (ys.start, ys.stop) == (0, 12) and (xs.start, xs.stop) == (110, 120)


@pytest.mark.parametrize(
    "window", [(-10, 22, -12, 20), (0, 32, 0, 32), (-40, -8, 3, 35), (2, 34, -31, 1), (1, 4, 2, 6)]
)
def test_read_region_padded_matches_np_pad(rng, window):
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    y0, y1, x0, x1 = window
    pad = 64
    ref = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    ref = ref[y0 + pad : y1 + pad, x0 + pad : x1 + pad] / np.float32(255)
    out = read_region_padded(img, y0, y1, x0, x1)
    assert out.shape == (y1 - y0, x1 - x0, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)


def test_read_region_padded_one_pixel_and_lazy():
    img = np.full((1, 1), 200, np.uint8)
    out = read_region_padded(img, -16, 16, -16, 16)
    np.testing.assert_allclose(out, 200 / 255)
    lazy = da.from_array(np.arange(35, dtype=np.uint16).reshape(5, 7), chunks=2)
    ref = np.pad(np.arange(35).reshape(5, 7), ((10, 17), (12, 13)), mode="symmetric") / 65535
    np.testing.assert_allclose(read_region_padded(lazy, -10, 22, -12, 20)[..., 2], ref, atol=1e-9)


# -------------------------------------------------------------------------- atomic writes


def test_write_json_and_tiff(tmp_path, rng):
    write_json(tmp_path / "a.json", {"x": [1, 2], "name": "é"})
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {
        "x": [1, 2],
        "name": "é",
    }
    img = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    write_tiff(tmp_path / "a.tif", img, compression="zlib")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), img)
    assert _leftovers(tmp_path) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.tif").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_json_unserialisable_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "a.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_failure_keeps_old_file(tmp_path):
    target = tmp_path / "mask.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".mask.tif.tmp-")
        tmp.write_bytes(b"new but half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_path_simulated_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "labels.json"
    write_json(target, {"version": 1})

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError) as info:
        write_json(target, {"version": 2})
    assert info.value.errno == errno.ENOSPC
    assert str(target) in str(info.value) and "full" in str(info.value)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert _leftovers(tmp_path) == []


def test_atomic_path_missing_folder_names_path(tmp_path):
    with pytest.raises(OSError, match="could not write .*nowhere"):
        write_json(tmp_path / "nowhere" / "a.json", {})


def test_real_full_disk(tiny_tmpfs, rng):
    target = tiny_tmpfs / "mask.tif"
    small = np.ones((8, 8), np.uint8)
    write_tiff(target, small)
    with pytest.raises(OSError) as info:
        write_tiff(target, rng.integers(0, 256, (512, 512), dtype=np.uint8))
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    np.testing.assert_array_equal(tifffile.imread(target), small)
    assert _leftovers(tiny_tmpfs) == []


# ----------------------------------------------------------------------------- Z stacks (issue 27)


@pytest.mark.parametrize("shape", [(5, 128, 128), (8, 64, 96), (6, 20, 30)])
def test_z_stack_is_called_a_stack_of_planes(shape):
    """A stack of planes on the first axis is named as such, not as "128 channels"."""
    with pytest.raises(InputError) as info:
        check_image(np.zeros(shape, np.uint8))
    message = str(info.value)
    assert f"stack of {shape[0]} planes" in message
    assert "channels" not in message
    assert "pick one plane" in message
    assert "\n" not in message


def test_z_stack_tiff_is_called_a_stack_of_planes(tmp_path):
    tifffile.imwrite(tmp_path / "zstack.tif", np.zeros((5, 128, 128), np.uint8))
    with pytest.raises(InputError) as info:
        open_image(tmp_path / "zstack.tif")
    message = str(info.value)
    assert message.startswith("zstack.tif")
    assert "stack of 5 planes" in message
    assert "128 channels" not in message
