"""The pseudo-label command's progress and help (issue 26 item 7): the bar moves with every
patch on a CPU instead of standing empty and jumping to 100 %, and --help names the default
method."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_selfloop.cli import build_parser, progressbar
from napari_selfloop.cli.pseudolabel_cmd import CPU_BATCH, batch_size_for, config_from_args
from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig
from napari_selfloop.core.store.checkpoint import save_checkpoint
from tests.conftest import TINY, run_cli


def test_help_names_the_default_method_and_batch():
    help_text = " ".join(
        next(
            a.format_help()
            for a in build_parser()._subparsers._group_actions[0].choices.values()
            if a.prog.endswith("pseudo-label")
        ).split()
    )
    default = PseudoLabelConfig().method
    assert f"default {default}" in help_text
    assert "patches per step (default: 4 on CUDA, 1 elsewhere" in help_text


def test_the_batch_is_one_patch_on_a_cpu_unless_asked():
    assert batch_size_for(None, "cpu") == CPU_BATCH == 1
    assert batch_size_for(3, "cpu") == 3
    args = build_parser().parse_args(
        ["pseudo-label", "x.png", "--checkpoint", "m.pt", "--out", "o", "--device", "cpu"]
    )
    assert config_from_args(args).batch_size == 1


def test_a_1000_px_image_moves_the_bar_patch_by_patch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "big.tif", rng.integers(0, 256, (1000, 1000, 3), np.uint8))
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    events = []
    real = progressbar.run_to_completion

    def recording(gen, on_progress=None):
        def both(event):
            events.append(event)
            if on_progress is not None:
                on_progress(event)

        return real(gen, on_progress=both)

    monkeypatch.setattr(progressbar, "run_to_completion", recording)
    code, _, err = run_cli(
        capsys,
        "pseudo-label", "big.tif", "--checkpoint", "m.pt", "--out", "out",
        "--method", "softmax", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    tiles = [(e.done, e.total) for e in events if e.message == "tiles"]
    # The count at once, then every one of the 4 patches of 576 px.
    assert tiles == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
