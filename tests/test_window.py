"""Windows of a pyramid: level choice, snapping, reading (as stored or resampled)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_selfloop.core.errors import InputError
from napari_selfloop.core.io.windows import (
    Window,
    WindowArray,
    choose_window,
    level_factors,
    read_window,
    region_key,
)


def _pyramid(size: int = 1024, levels: int = 3):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pyramid = [base]
    for _ in range(levels - 1):
        prev = pyramid[-1].astype(np.float32)
        h, w = prev.shape[0] // 2, prev.shape[1] // 2
        pyramid.append(prev[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean((1, 3)).astype(np.uint8))
    return pyramid


def test_level_factors_round_to_integers():
    assert level_factors([(1000, 1200), (500, 600), (250, 300)]) == [1.0, 2.0, 4.0]
    assert level_factors([(4095, 4095), (2048, 2048), (1024, 1024)]) == [1.0, 2.0, 4.0]
    assert level_factors([(1000, 1000), (333, 333)])[1] == pytest.approx(3.0)


def test_full_resolution_window_is_the_box():
    shapes = [(1024, 1024, 3), (512, 512, 3)]
    w = choose_window(shapes, (100, 200, 484, 584), 1.0)
    assert (w.y0, w.x0, w.height, w.width, w.factor, w.level) == (100, 200, 384, 384, 1.0, 0)
    assert w.box == (100, 200, 484, 584) and w.label == "[100:484, 200:584]"


def test_a_level_that_matches_is_read_as_stored_on_its_grid():
    pyramid = _pyramid()
    shapes = [p.shape for p in pyramid]
    w = choose_window(shapes, (101, 203, 501, 603), 2.02)  # within 5 % of level 1
    assert (w.level, w.factor) == (1, 2.0)
    assert w.y0 % 2 == 0 and w.x0 % 2 == 0 and w.y0 <= 101 and w.box[2] >= 501
    crop = read_window(pyramid, w)
    assert np.array_equal(
        crop, pyramid[1][w.y0 // 2 : w.y0 // 2 + w.height, w.x0 // 2 : w.x0 // 2 + w.width]
    )
    # Lazy levels read the same pixels.
    lazy = [da.from_array(p, chunks=(128, 128, 3)) for p in pyramid]
    assert np.array_equal(read_window(lazy, w), crop)


def test_between_levels_the_window_is_resampled():
    pyramid = _pyramid()
    shapes = [p.shape for p in pyramid]
    w = choose_window(shapes, (0, 0, 600, 600), 3.0)  # level 1 (2x) resampled by 1.5
    assert (w.level, w.factor) == (1, 3.0) and w.shape == (200, 200)
    crop = read_window(pyramid, w)
    assert crop.shape == (200, 200, 3) and crop.dtype == np.uint8
    # A smooth image stays the same image: a linear ramp resampled is the ramp.
    ramp = np.add.outer(np.arange(1024.0), np.arange(1024.0)).astype(np.float32)
    w = choose_window([ramp.shape], (0, 0, 900, 900), 1.5)
    out = read_window([ramp], w)
    centre = 1.5 * (np.arange(w.height) + 0.5) - 0.5  # level-0 pixel-centre coordinates
    assert np.allclose(out[5:-5, 5:-5], np.add.outer(centre, centre)[5:-5, 5:-5], atol=0.05)
    # Upsampling (the model's pixels are smaller than the slide's).
    w = choose_window([ramp.shape], (10, 10, 110, 110), 0.5)
    assert (w.height, w.width, w.factor) == (200, 200, 0.5)
    assert read_window([ramp], w).shape == (200, 200)


def test_to_slide_maps_window_pixels_to_level0():
    w = Window(256, 512, 100, 100, 4.0, 2)
    assert np.allclose(w.to_slide([[0, 0], [10, 5]]), [[512, 256], [552, 276]])
    assert Window.from_meta(w.to_meta()) == w
    assert Window.from_meta({"y0": "x"}) is None and Window.from_meta(None) is None
    assert region_key("ab" * 12, w) != region_key("ab" * 12, Window(256, 512, 100, 101, 4.0, 2))
    with pytest.raises(InputError):
        Window(0, 0, 0, 5)


def test_window_array_reads_once_when_indexed():
    pyramid = _pyramid(256, 2)
    w = Window(64, 64, 32, 48)
    arr = WindowArray(pyramid, w)
    assert arr.shape == (32, 48, 3) and arr.dtype == np.uint8 and arr._data is None
    assert np.array_equal(arr[:4, :4], pyramid[0][64:68, 64:68])
    assert np.array_equal(np.asarray(arr), pyramid[0][64:96, 64:112])
