"""Whole slides in the CLI: ``pseudo-label`` and ``batch`` at a chosen pixel size, tissue only,
with slide-grade (tiled, compressed, pyramidal, pixel-sized) outputs. Real files, no mocks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile

from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.io.slides import open_slide
from napari_selfloop.core.io.synthetic_slide import SlideScene
from napari_selfloop.core.io.tiled_tiff import write_tiled_tiff
from napari_selfloop.core.store.checkpoint import save_checkpoint
from tests.conftest import TINY, assert_one_line_error, run_cli

PSEUDO = ["pseudo-label", "--method", "softmax", "--patch-size", "192", "--device", "cpu"]


@pytest.fixture
def work(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    save_checkpoint(tmp_path / "m2.pt", build_model(TINY, seed=0), pixel_size_um=2.0)
    return tmp_path


def _read(path):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        x_res = page.tags["XResolution"].value if "XResolution" in page.tags else None
        unit = page.tags["ResolutionUnit"].value if "ResolutionUnit" in page.tags else None
        mpp = 1e4 * x_res[1] / x_res[0] if x_res and unit == 3 else None
        return tif.asarray(), page, mpp


def test_pseudo_label_a_slide_at_a_chosen_pixel_size(work, capsys, synthetic_slide):
    code, _, err = run_cli(
        capsys,
        *PSEUDO,
        str(synthetic_slide),
        "--checkpoint",
        "m.pt",
        "--mpp",
        "1.0",
        "--out",
        "out",
    )
    assert code == 0, err
    assert "at 1 µm/px" in err and "patches computed (glass skipped)" in err
    total = 0
    outputs = {}
    for name in ("prob", "uncertainty", "mask"):
        path = work / "out" / f"slide_{name}.tif"
        data, page, mpp = _read(path)
        outputs[name] = data
        total += path.stat().st_size
        assert data.shape == (1024, 1024) and data.dtype == np.uint8  # level 2: 1 µm/px
        assert page.is_tiled and page.compression == 8 and mpp == pytest.approx(1.0)
    # glass patches are not computed: background, zero uncertainty, confident background
    assert (outputs["prob"][:100, :100] == 0).all() and (
        outputs["uncertainty"][:100, :100] == 0
    ).all()
    assert (outputs["mask"][:100, :100] == 0).all()
    centre = outputs["prob"][480:540, 480:540]
    assert centre.min() > 0  # tissue is computed
    assert total <= 1024 * 1024  # at most a byte per processed pixel, all three outputs
    assert sorted(p.name for p in (work / "out").iterdir()) == [
        "slide_instances.tif",
        "slide_mask.tif",
        "slide_prob.tif",
        "slide_uncertainty.tif",
    ]
    # The objects, labelled in bands as the rows came: uint32 ids, tiled and compressed.
    ids, page, _ = _read(work / "out" / "slide_instances.tif")
    assert ids.shape == (1024, 1024) and ids.dtype == np.uint32
    assert page.is_tiled and page.compression == 8
    assert (ids[:100, :100] == 0).all()  # glass: no objects
    # The mask records where it lies on the slide (level 2: 4 slide pixels per pixel), so
    # `export` writes its GeoJSON in the slide's full-resolution pixels without options.
    from napari_selfloop.core.io.label_files import read_labels_file

    labels = read_labels_file(work / "out" / "slide_mask.tif")
    assert labels.window is not None and labels.window.factor == pytest.approx(4.0)
    assert (labels.window.y0, labels.window.x0) == (0, 0) and labels.convention == "selfloop"
    assert labels.pixel_size_um == pytest.approx(1.0)


def test_no_tissue_only_computes_the_glass_too(work, capsys, synthetic_slide):
    code, _, err = run_cli(
        capsys,
        *PSEUDO,
        str(synthetic_slide),
        "--checkpoint",
        "m.pt",
        "--mpp",
        "1.0",
        "--no-tissue-only",
        "--out",
        "out",
    )
    assert code == 0, err
    prob = _read(work / "out" / "slide_prob.tif")[0]
    assert prob[:100, :100].min() > 0
    assert "49 of 49 patches computed" in err


def test_the_model_pixel_size_is_the_default(work, capsys, synthetic_slide):
    code, _, err = run_cli(
        capsys, "-v", *PSEUDO, str(synthetic_slide), "--checkpoint", "m2.pt", "--out", "out"
    )
    assert code == 0, err
    assert "level 2 (1 µm/px) resampled by 0.5 to 2 µm/px: 512x512" in err
    prob, _, mpp = _read(work / "out" / "slide_prob.tif")
    assert prob.shape == (512, 512) and mpp == pytest.approx(2.0)
    # --mpp wins over the model's
    code, _, err = run_cli(
        capsys,
        *PSEUDO,
        str(synthetic_slide),
        "--checkpoint",
        "m2.pt",
        "--mpp",
        "0.5",
        "--out",
        "out2",
    )
    assert code == 0, err
    assert _read(work / "out2" / "slide_mask.tif")[0].shape == (2048, 2048)


def test_without_any_pixel_size_level_0_is_processed_and_said(work, capsys):
    scene = SlideScene(height=1024, width=1024, mpp=1.0, seed=3)
    write_tiled_tiff(
        work / "anon.tif", scene.render(0, 1024, 0, 1024), compression="jpeg", pyramid=2
    )  # a pyramid that records no pixel size
    code, _, err = run_cli(capsys, *PSEUDO, "anon.tif", "--checkpoint", "m.pt", "--out", "out")
    assert code == 0, err
    assert "neither the model nor the slide records a pixel size: processing level 0" in err
    prob, page, mpp = _read(work / "out" / "anon_prob.tif")
    assert prob.shape == (1024, 1024) and mpp is None
    code, _, err = run_cli(capsys, *PSEUDO, "anon.tif", "--checkpoint", "m2.pt", "--out", "out2")
    assert code == 0, err
    assert "the slide records no pixel size (the model works at 2 µm/px)" in err


@pytest.mark.parametrize(
    "fixture, mpp, side", [("synthetic_svs", "1.0", 512), ("synthetic_ome", "2.0", 512)]
)
def test_jpeg_svs_and_ome_slides(work, capsys, request, fixture, mpp, side):
    path = request.getfixturevalue(fixture)
    code, _, err = run_cli(
        capsys, *PSEUDO, str(path), "--checkpoint", "m.pt", "--mpp", mpp, "--out", "out"
    )
    assert code == 0, err
    stem = path.path.stem
    mask, _, got = _read(work / "out" / f"{stem}_mask.tif")
    assert mask.shape == (side, side) and got == pytest.approx(float(mpp))
    assert set(np.unique(mask)) <= {0, 1, 255}


def test_large_outputs_get_a_pyramid(work, capsys, synthetic_slide):
    code, _, err = run_cli(
        capsys,
        "pseudo-label",
        "--method",
        "softmax",
        "--device",
        "cpu",
        str(synthetic_slide),
        "--checkpoint",
        "m.pt",
        "--mpp",
        "0.25",
        "--out",
        "out",
    )
    assert code == 0, err
    with open_slide(work / "out" / "slide_mask.tif") as slide:
        assert slide.level_shapes == [(4096, 4096), (2048, 2048), (1024, 1024)]
        assert slide.mpp == pytest.approx(0.25)


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_bad_mpp_is_a_one_line_error(work, capsys, synthetic_slide, value):
    code, _, err = run_cli(
        capsys,
        *PSEUDO,
        str(synthetic_slide),
        "--checkpoint",
        "m.pt",
        f"--mpp={value}",
        "--out",
        "out",
    )
    assert_one_line_error(code, err, "--mpp")
    assert not (work / "out").exists()


def test_a_broken_slide_is_a_one_line_error(work, capsys, synthetic_slide):
    data = synthetic_slide.path.read_bytes()
    (work / "cut.svs").write_bytes(data[: len(data) // 3])
    code, _, err = run_cli(capsys, *PSEUDO, "cut.svs", "--checkpoint", "m.pt", "--out", "out")
    assert_one_line_error(code, err, "cut.svs")


def test_batch_labels_slides_and_records_the_resolution(work, capsys, synthetic_svs, synthetic_ome):
    (work / "slides").mkdir()
    shutil.copy(synthetic_svs, work / "slides" / "a.svs")
    shutil.copy(synthetic_ome, work / "slides" / "b.ome.tif")
    args = [
        "-q",
        "batch",
        "slides",
        "--checkpoint",
        "m.pt",
        "--method",
        "softmax",
        "--patch-size",
        "192",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--out",
        "out",
    ]
    code, _, err = run_cli(capsys, *args, "--mpp", "2.0")
    assert code == 0, err
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert manifest["count"] == 2
    sides = {"a.svs": 2048 * 0.25 / 2.0, "b.ome.tif": 2048 * 0.5 / 2.0}  # 512 µm and 1024 µm
    for record in manifest["images"]:
        side = sides[record["input"].rsplit("/", 1)[-1]]
        assert record["slide_options"]["mpp"] == 2.0
        assert record["working"]["slide"] and record["working"]["mpp"] == 2.0
        assert record["width"] == record["height"] == side
        mask, _, mpp = _read(work / "out" / record["outputs"]["mask"])
        assert mask.shape == (side, side) and mpp == pytest.approx(2.0)
    code, _, err = run_cli(capsys, *args, "--mpp", "2.0", "--skip-existing")
    assert code == 0, err
    before = {r["key"]: r["finished"] for r in manifest["images"]}
    code, _, err = run_cli(capsys, *args, "--mpp", "1.0", "--skip-existing")  # recomputed
    assert code == 0, err
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert all(r["working"]["mpp"] == 1.0 for r in manifest["images"])
    assert sorted(r["width"] for r in manifest["images"]) == [512, 1024]
    assert set(before) == {r["key"] for r in manifest["images"]}


def test_plain_images_are_processed_as_they_are(work, capsys):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 170, 3), dtype=np.uint8)
    tifffile.imwrite(
        work / "tile.tif", image, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"
    )
    code, _, err = run_cli(
        capsys, *PSEUDO, "tile.tif", "--checkpoint", "m2.pt", "--mpp", "1.0", "--out", "out"
    )
    assert code == 0, err
    prob, page, mpp = _read(work / "out" / "tile_prob.tif")
    assert prob.shape == (150, 170) and prob.dtype == np.float32  # not resampled, float
    assert page.is_tiled and mpp is None
