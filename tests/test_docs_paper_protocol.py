"""Issue 27 item 14: the paper protocol's training command in docs/benchmarks.md runs
``train --jigsaw-warmup`` with labelled and unlabelled images (it died at once before the
warm-up sampler's fix). Run here for 2 steps on five small images; on MoNuSeg by hand."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import tifffile

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- paper-protocol -->\s*```bash\n(.*?)```\s*<!-- /paper-protocol -->", re.S)


def _command() -> list[str]:
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    match = BLOCK.search(text)
    assert match, "docs/benchmarks.md has no <!-- paper-protocol --> command"
    lines = [ln for ln in match.group(1).replace("\\\n", " ").splitlines() if ln.strip()]
    train = [ln for ln in lines if ln.strip().startswith("napari-selfloop train")]
    assert len(train) == 1, lines
    return shlex.split(train[0], comments=True)[1:]


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_paper_protocol_command_warms_the_jigsaw_up_with_unlabelled_images():
    argv = _command()
    assert argv[0] == "train"
    assert int(_option(argv, "--jigsaw-warmup")) == 300
    assert float(_option(argv, "--labeled-fraction")) == 0.2  # 6 of 30 labelled, 24 not
    assert _option(argv, "--framework") == "selfloop"


def test_the_paper_protocol_command_starts(tmp_path, capsys, one_thread):
    """The documented command, on 5 small images (1 labelled), 2 warm-up steps, 2 iterations."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        tifffile.imwrite(images / f"t{i}.tif", rng.integers(0, 256, (128, 128, 3), np.uint8))
        mask = np.zeros((128, 128), np.uint8)
        mask[20 + i : 60, 30:70] = 1
        tifffile.imwrite(masks / f"t{i}.tif", mask)
    argv = _command()
    small = {
        "--images": str(images),
        "--masks": str(masks),
        "--out": str(tmp_path / "paper.pt"),
        "--jigsaw-warmup": "2",
        "--iterations": "2",
        "--width": "8",
        "--patch-size": "96",
        "--jigsaw-patch-size": "96",
        "--jigsaw-batch-size": "4",
        "--batch-size": "1",
    }
    for name, value in small.items():
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "1 labelled, 4 unlabelled" in err
    assert (tmp_path / "paper.pt").is_file()
