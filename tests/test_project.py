"""core.project: image folders, versioned checkpoint names and the done flag (headless)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_selfloop.core.errors import InputError
from napari_selfloop.core.store.project import (
    IMAGE_SUFFIXES,
    folder_images,
    image_files,
    is_done,
    list_images,
    mark_done,
    next_version_path,
    release,
    reserve_version,
)


def test_next_version_path(tmp_path):
    assert next_version_path(None, tmp_path) == tmp_path / "checkpoints" / "model_v1.pt"
    (tmp_path / "m.pt").touch()
    assert next_version_path(tmp_path / "m.pt", tmp_path) == tmp_path / "m_v1.pt"
    (tmp_path / "m_v1.pt").touch()
    (tmp_path / "m_v3.pt").touch()
    assert next_version_path(tmp_path / "m_v1.pt", tmp_path) == tmp_path / "m_v4.pt"
    assert next_version_path(tmp_path / "m.pt", tmp_path) == tmp_path / "m_v4.pt"
    # A name reserved by a run in progress is not handed out twice.
    held = reserve_version(tmp_path / "m.pt", tmp_path)
    assert held == tmp_path / "m_v4.pt" and not held.exists()
    assert next_version_path(tmp_path / "m.pt", tmp_path) == tmp_path / "m_v5.pt"
    release(held)
    assert next_version_path(tmp_path / "m.pt", tmp_path) == tmp_path / "m_v4.pt"


def test_a_bundled_models_versions_go_to_the_project(tmp_path):
    """Fine-tuning a bundled model never writes into the installed package."""
    from napari_selfloop.core.store.bundled import MODELS_DIR

    project = tmp_path / "project"
    bundled = MODELS_DIR / "nuclei-he.pt"
    assert next_version_path(bundled, project) == project / "checkpoints" / "nuclei-he_v1.pt"
    (project / "checkpoints").mkdir(parents=True)
    (project / "checkpoints" / "nuclei-he_v1.pt").touch()
    assert next_version_path(bundled, project) == project / "checkpoints" / "nuclei-he_v2.pt"
    assert not list(MODELS_DIR.glob("*_v*.pt"))


def _folder(tmp_path):
    rgb = np.zeros((40, 50, 3), np.uint8)
    for name in ("b.tif", "a.TIFF", ".hidden.tif", "notes.txt"):
        tifffile.imwrite(tmp_path / name, rgb) if name.endswith(("tif", "TIFF")) else (
            tmp_path / name
        ).write_text("x")
    (tmp_path / "sub.tif").mkdir()
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    return tmp_path


def test_image_files_and_list_images(tmp_path):
    folder = _folder(tmp_path)
    assert ".tif" in IMAGE_SUFFIXES and ".png" in IMAGE_SUFFIXES
    assert [p.name for p in image_files(folder)] == ["a.TIFF", "b.tif", "broken.tif"]
    assert list(list_images(folder, "--images")) == ["a", "b", "broken"]
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="same stem"):
        list_images(folder, "--images")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no PNG, JPEG or TIFF files in --masks"):
        list_images(empty, "--masks")
    with pytest.raises(InputError, match="does not exist"):
        list_images(tmp_path / "missing", "--images")


def test_folder_images_skips_unreadable(tmp_path, caplog):
    items = folder_images(_folder(tmp_path))
    assert [it.name for it in items] == ["a.TIFF", "b.tif"]
    assert "broken.tif" in caplog.text
    with pytest.raises(InputError, match="does not exist"):
        folder_images(tmp_path / "missing")


def test_done_flag_is_data():
    meta = {}
    assert not is_done(meta)
    assert mark_done(meta, True) and is_done(meta) and meta == {"done": True}
    assert not mark_done(meta, True)
    assert mark_done(meta, False) and not is_done(meta)
