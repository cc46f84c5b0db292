"""``export`` refuses, in one line and before writing anything, a pixel size, downsample or
offset out of any sane range (options or a file's record) and a manifest holding NaN
(issue 27 items 9 and 10)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tests.conftest import assert_one_line_error, run_cli


@pytest.fixture
def mask_file(tmp_path):
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 5:20] = 1
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, mask)
    return path


@pytest.mark.parametrize(
    "option, words",
    [
        (["--pixel-size", "2.5e-7"], ["--pixel-size", "looks like metres", "microns"]),
        (["--pixel-size", "1e-6"], ["--pixel-size", "looks like metres"]),
        (["--pixel-size", "5000"], ["--pixel-size", "from 0.01 to 100"]),
        (["--downsample", "1e-9"], ["--downsample", "slide pixels per input pixel"]),
        (["--downsample", "1e12"], ["--downsample"]),
        (["--offset", "0", "99999999999"], ["--offset", "16777216"]),
    ],
)
def test_options_out_of_range_are_one_line_and_write_nothing(
    mask_file, tmp_path, capsys, option, words
):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", mask_file, "--out", out, *option)
    assert_one_line_error(code, err, *words)
    assert not out.exists()


def test_a_recorded_offset_out_of_range_is_one_line(mask_file, tmp_path, capsys):
    record = {"offset_yx": [0, 10**15], "downsample": 1.0, "region": None}
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, tifffile.imread(mask_file), metadata={"napari_selfloop_labels": record})
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", bad, "--out", out)
    assert_one_line_error(code, err, "bad.tif", "recorded offset", "--offset")
    assert not out.exists()
    code, _, err = run_cli(capsys, "export", bad, "--out", out, "--offset", "0", "0")
    assert code == 0, err


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_manifest_holding_nan_is_refused_at_read(mask_file, tmp_path, capsys, constant):
    out = tmp_path / "out"
    out.mkdir()
    text = '{"format": "napari-selfloop-export", "version": 1, "entries": [{"x": %s}]}'
    (out / "manifest.json").write_text(text % constant)
    before = sorted(p.name for p in out.iterdir())
    code, _, err = run_cli(capsys, "export", mask_file, "--out", out)
    assert_one_line_error(code, err, "manifest.json", constant, "move it away")
    assert sorted(p.name for p in out.iterdir()) == before
