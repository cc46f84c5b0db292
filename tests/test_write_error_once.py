"""Issue 27 (cosmetic): a full disk during export is one short line, not a message wrapped
once per file of the set (it nested four times, 454 characters)."""

from __future__ import annotations

import contextlib
import errno

import numpy as np
import pytest
import tifffile

from napari_selfloop.core.io.atomic import atomic_path
from tests.conftest import assert_one_line_error, run_cli


def _nested_writes(folder, fail_in):
    """Three atomic writes nested as export nests them; the innermost write fails."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(atomic_path(folder / "manifest.json"))
        stack.enter_context(atomic_path(folder / "a.geojson"))
        tmp = stack.enter_context(atomic_path(folder / fail_in))
        with atomic_path(tmp):  # a writer that writes its own temporary into ours
            raise OSError(errno.ENOSPC, "No space left on device")


def test_nested_atomic_writes_name_the_failing_file_once(tmp_path):
    with pytest.raises(OSError) as info:
        _nested_writes(tmp_path, "a_instances.tif")
    message = info.value.strerror
    assert info.value.errno == errno.ENOSPC
    assert message.count("could not write") == 1, message
    assert message.count("the disk or quota is full") == 1, message
    assert "a_instances.tif" in message
    assert ".tmp-" not in message  # the user's file, not our temporary
    assert "manifest.json" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_export_is_one_short_line(tiny_tmpfs, tmp_path, capsys):
    rng = np.random.default_rng(0)
    mask = (rng.random((600, 600)) > 0.5).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big_mask.tif", mask)
    code, _, err = run_cli(capsys, "export", tmp_path / "big_mask.tif", "--out", tiny_tmpfs / "x")
    err = "\n".join(ln for ln in err.splitlines() if not ln.startswith("export: "))
    assert_one_line_error(code, err, "could not write", "the disk or quota is full")
    assert err.count("could not write") == 1, err
    assert err.count("the disk or quota is full") == 1, err
    assert ".tmp-" not in err
    assert len(err.strip()) - len(str(tiny_tmpfs)) < 200, err
