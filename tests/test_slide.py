"""Tests for core.slide, core.resample and core.tissue: lazy pyramids, pixel sizes, resampling, tissue.

Every slide here is a real file written by tifffile (the ``synthetic_*`` fixtures of
conftest.py and small files made in the tests); nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_selfloop.core.errors import InputError
from napari_selfloop.core.io.images import open_image, read_region
from napari_selfloop.core.io.resample import ResampledView
from napari_selfloop.core.io.slide_tissue import (
    MAX_SATURATION,
    MIN_SATURATION,
    detect_tissue,
    detect_tissue_in_image,
)
from napari_selfloop.core.io.slides import is_slide, open_slide

# --------------------------------------------------------------------------------------------
# opening


def test_jpeg_pyramid_opens_lazily_with_its_pixel_size(synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        assert slide.vendor == "tiff" and slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "TIFF resolution tags"
        assert slide.level_shapes == [(4096, 4096), (2048, 2048), (1024, 1024)]
        assert slide.downsamples == [1.0, 2.0, 4.0]
        assert all(isinstance(level, zarr.Array) for level in slide.levels)  # never numpy
        window = slide.levels[0][2000:2100, 2000:2100]
        truth = synthetic_slide.scene.render(2000, 2100, 2000, 2100)
        assert window.shape == (100, 100, 3) and np.abs(window.astype(int) - truth).mean() < 6


def test_aperio_svs_label_and_macro_are_not_the_slide(synthetic_svs):
    with open_slide(synthetic_svs) as slide:
        assert slide.vendor == "aperio" and slide.mpp_source == "Aperio MPP"
        assert slide.mpp == pytest.approx(0.25)
        # the baseline and its 4x level; not the 768 px thumbnail, the label or the macro
        assert slide.level_shapes == [(2048, 2048), (512, 512)]
        assert slide.series == 0
    with tifffile.TiffFile(synthetic_svs) as tif:
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
    assert is_slide(synthetic_svs)


def test_ome_tiff_pixel_size(synthetic_ome):
    with open_slide(synthetic_ome) as slide:
        assert slide.vendor == "ome" and slide.mpp_source == "OME PhysicalSizeX/Y"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.level_shapes[0] == (2048, 2048) and len(slide.levels) == 2


@pytest.mark.parametrize("fixture", ["synthetic_svs", "synthetic_ome"])
def test_open_image_reads_jpeg_pyramids_lazily(request, fixture):
    """The CLI's reader of plain inputs opens JPEG SVS and OME-TIFF pyramids too (issue 9)."""
    path = request.getfixturevalue(fixture)
    image = open_image(path)
    assert not isinstance(image, np.ndarray) and image.shape == (2048, 2048, 3)
    window = read_region(image, 1000, 1064, 1000, 1064)
    assert window.shape == (64, 64, 3) and 0 < window.mean() < 1


def test_flat_pyramid_and_pixel_size_in_inches(tmp_path):
    base = np.full((9000, 300), 200, np.uint8)
    path = tmp_path / "flat.tif"
    with tifffile.TiffWriter(path) as tif:  # levels as reduced pages, not SubIFDs
        tif.write(
            base,
            tile=(256, 256),
            resolution=(25400 / 0.5, 25400 / 0.5),
            resolutionunit="INCH",
            metadata=None,
        )
        tif.write(base[::2, ::2], tile=(256, 256), subfiletype=1, metadata=None)
        tif.write(base[::4, ::4], tile=(256, 256), subfiletype=1, metadata=None)
    with open_slide(path) as slide:
        assert slide.level_shapes == [(9000, 300), (4500, 150), (2250, 75)]
        assert slide.mpp == pytest.approx(0.5)
    assert is_slide(path)


def test_screen_resolutions_are_not_pixel_sizes(tmp_path):
    image = np.zeros((50, 60, 3), np.uint8)
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "plain.tif", image)
    for name in ("dpi.tif", "plain.tif"):
        with open_slide(tmp_path / name) as slide:
            assert slide.mpp is None and slide.mpp_source == "none"
        assert not is_slide(tmp_path / name)  # small and flat: napari's own reader opens it


def test_is_slide_never_raises(tmp_path, synthetic_slide):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "junk.svs").write_bytes(b"not a tiff at all")
    (tmp_path / "cut.tif").write_bytes(synthetic_slide.path.read_bytes()[:200])
    assert is_slide(synthetic_slide)
    for name in ("a.png", "junk.svs", "cut.tif", "missing.tif"):
        assert not is_slide(tmp_path / name)
    assert not is_slide(tmp_path)


def test_bad_files_are_one_line_errors(tmp_path, synthetic_slide):
    (tmp_path / "junk.svs").write_bytes(b"GIF89a not a slide")
    with pytest.raises(InputError, match=r"junk.svs is not a TIFF-family slide"):
        open_slide(tmp_path / "junk.svs")
    data = synthetic_slide.path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:1000])
    with pytest.raises(InputError, match=r"cut.tif is a corrupt TIFF"):
        open_slide(tmp_path / "cut.tif")
    (tmp_path / "half.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"half.tif is a truncated TIFF"):
        open_slide(tmp_path / "half.tif")
    with pytest.raises(InputError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_missing_codec_says_what_to_install(synthetic_svs):
    """Without imagecodecs (blocked in a child interpreter) a JPEG slide fails in one line."""
    code = (
        "import sys; sys.modules['imagecodecs'] = None\n"
        "from napari_selfloop.core.io.slides import open_slide\n"
        "from napari_selfloop.core.io.images import open_image\n"
        "for f in (open_slide, open_image):\n"
        "    try:\n"
        "        f(sys.argv[1])\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(synthetic_svs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    for line in lines:
        assert line.startswith("InputError slide.svs is JPEG-compressed")
        assert "pip install imagecodecs" in line and "LZW" not in line


# --------------------------------------------------------------------------------------------
# resolution


def test_level_for_mpp(synthetic_slide, synthetic_svs):
    with open_slide(synthetic_slide) as slide:  # levels at 0.25, 0.5, 1.0 µm/px
        choice = slide.level_for_mpp(0.5)
        assert (choice.level, choice.scale, choice.mpp) == (1, 1.0, 0.5)
        choice = slide.level_for_mpp(0.6)  # the finer neighbour, reduced the rest of the way
        assert choice.level == 1 and choice.scale == pytest.approx(0.5 / 0.6)
        choice = slide.level_for_mpp(2.0)
        assert choice.level == 2 and choice.scale == pytest.approx(0.5) and choice.mpp == 2.0
        assert slide.level_for_mpp(0.505).scale == 1.0  # within the tolerance: as stored
        choice = slide.level_for_mpp(0.125)  # finer than level 0: enlarged
        assert choice.level == 0 and choice.scale == pytest.approx(2.0)
        assert slide.level_for_mpp(None).level == 0
        with pytest.raises(InputError, match="positive"):
            slide.level_for_mpp(-1.0)
        image, choice = slide.view(0.6)
        assert isinstance(image, ResampledView) and image.shape == (1707, 1707, 3)
    with open_slide(synthetic_svs) as slide:  # SVS levels go by 4: 0.25 then 1.0
        choice = slide.level_for_mpp(0.5)
        assert choice.level == 0 and choice.scale == pytest.approx(0.5)


def test_resampled_view_is_window_independent_and_matches_a_resize():
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    source = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    view = ResampledView(source, 0.5)
    assert view.shape == (150, 200, 3) and view.dtype == np.uint8
    whole = view[:, :]
    np.testing.assert_array_equal(view[40:90, 60:130], whole[40:90, 60:130])
    np.testing.assert_array_equal(view[40:90, 60:130, 0], whole[40:90, 60:130, 0])
    reference = resize(source, (150, 200), anti_aliasing=True, preserve_range=True)
    assert np.abs(whole[5:-5, 5:-5].astype(float) - reference[5:-5, 5:-5]).mean() < 3
    up = ResampledView(source[..., 0], 2.0)
    assert up.shape == (600, 800) and up[10, 10] == up[10:11, 10:11][0, 0]
    with pytest.raises(IndexError):
        view[::2, :]


# --------------------------------------------------------------------------------------------
# tissue


def test_tissue_detection_matches_the_scene(synthetic_slide):
    with open_slide(synthetic_slide) as slide:
        tissue = detect_tissue(slide)
    assert tissue.level == 2 and tissue.mask.shape == (1024, 1024)
    assert MIN_SATURATION <= tissue.threshold <= MAX_SATURATION
    truth = synthetic_slide.scene.tissue_mask(0, 1024, 0, 1024, downsample=4.0)
    assert 0.2 < truth.mean() < 0.8  # tissue with glass around it
    assert (tissue.mask == truth).mean() > 0.95
    assert not tissue.mask[:20, :20].any()  # the corner is glass
    # tiles at a working level of 1 µm/px (downsample 4): those touching tissue only
    tiles = tissue.tiles(1024, 1024, 256, downsample=4.0)
    assert 0 < len(tiles) < 16 and (0, 0) not in tiles
    assert tissue.covers(2000, 2100, 2000, 2100) and not tissue.covers(0, 50, 0, 50)


def test_all_glass_and_all_tissue_are_not_split():
    glass = np.full((400, 400, 3), 240, np.uint8)
    glass += np.random.default_rng(0).integers(0, 6, glass.shape, dtype=np.uint8)
    assert not detect_tissue_in_image(glass).mask.any()
    tissue = np.zeros((400, 400, 3), np.uint8)
    tissue[...] = (200, 120, 180)
    tissue[::7] = (150, 80, 160)  # texture of two shades: Otsu would split them
    found = detect_tissue_in_image(tissue, mpp=0.5)
    assert found.mask.all()
