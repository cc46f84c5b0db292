"""Shared fixtures: tiny seeded models and images, real files in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.model import ModelConfig, build_model

#: A thin ResUNet-18 (same architecture, fewer channels) so tests run in seconds.
TINY = ModelConfig(width=8)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (two OpenMP threads on a shared 2-core machine
    spin and stall tiny convolutions)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model():
    return build_model(TINY, seed=0).eval()


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    img[20:40, 30:60] = (90, 40, 160)  # a purple blob, like a nucleus
    return img


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for k, v in state.items():
        assert torch.equal(v.cpu(), snapshot[k].cpu()), f"{k} changed"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs: a real full disk (needs root and mount; skipped with a reason elsewhere)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (a real full disk cannot be made otherwise)")
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)  # busy: detach it


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory):
    """A 4096x4096 JPEG-compressed pyramidal TIFF at 0.25 µm/px: tissue with nuclei on glass.

    Built as the ``slide`` sample is (:func:`~napari_selfloop.core.io.synthetic_slide.
    write_synthetic_slide`), once per session; its scene is ``synthetic_slide.scene``.
    """
    from napari_selfloop.core.io.synthetic_slide import SlideScene, write_synthetic_slide

    scene = SlideScene(height=4096, width=4096, mpp=0.25, seed=0)
    path = write_synthetic_slide(tmp_path_factory.mktemp("slides") / "slide.tif", scene)
    return _SlideFile(path, scene)


@pytest.fixture(scope="session")
def synthetic_svs(tmp_path_factory):
    """An Aperio-style 2048x2048 ``.svs`` (MPP = 0.25; thumbnail, label and macro pages)."""
    from napari_selfloop.core.io.synthetic_slide import SlideScene, write_synthetic_svs

    scene = SlideScene(height=2048, width=2048, mpp=0.25, seed=1)
    path = write_synthetic_svs(tmp_path_factory.mktemp("slides") / "slide.svs", scene)
    return _SlideFile(path, scene)


@pytest.fixture(scope="session")
def synthetic_ome(tmp_path_factory):
    """A 2048x2048 JPEG OME-TIFF pyramid at 0.5 µm/px (PhysicalSizeX/Y)."""
    from napari_selfloop.core.io.synthetic_slide import SlideScene, write_synthetic_slide

    scene = SlideScene(height=2048, width=2048, mpp=0.5, seed=2)
    path = write_synthetic_slide(tmp_path_factory.mktemp("slides") / "slide.ome.tif", scene)
    return _SlideFile(path, scene)


class _SlideFile(os.PathLike):
    """A slide's path (usable wherever a path is) with the scene it was drawn from."""

    def __init__(self, path, scene):
        self.path, self.scene = path, scene

    def __fspath__(self):
        return str(self.path)

    def __str__(self):
        return str(self.path)


def run_cli(capsys, *argv):
    """Run the CLI in-process; its exit code, stdout and stderr."""
    from napari_selfloop.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    """Exit code 2 and exactly one line on stderr that names each of ``words``."""
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
