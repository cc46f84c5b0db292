"""Issue 28 item 5 (CLI side): the options several commands take are defined once
(:mod:`napari_selfloop.cli.args`), ``train`` and ``pretrain`` group their options in --help,
``train --width`` takes its default from ``ModelConfig``, and ``pseudo-label`` and ``batch``
share one pre-flight in core (:mod:`napari_selfloop.core.store.preflight`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_selfloop.cli import args as cli_args
from napari_selfloop.cli import build_parser
from napari_selfloop.core.engine.model import ModelConfig
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.store.checkpoint import save_checkpoint
from tests.conftest import assert_one_line_error, run_cli


def _commands() -> dict[str, argparse.ArgumentParser]:
    return dict(build_parser()._subparsers._group_actions[0].choices)


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return parser._option_string_actions.get(flag)


def test_the_shared_options_read_the_same_in_every_command():
    commands = _commands()
    devices = [c for c in commands.values() if _option(c, "--device")]
    assert len(devices) == 7
    for parser in devices:
        device = _option(parser, "--device")
        assert device.default == "auto"
        assert device.help.startswith(cli_args.DEVICES_HELP)
        assert device.help.endswith("(default auto)"), parser.prog
    outs = [_option(c, "--out") for c in commands.values() if _option(c, "--out")]
    assert len(outs) == 7
    assert all(o.required and o.type is Path for o in outs)
    forces = [_option(c, "--force") for c in commands.values() if _option(c, "--force")]
    assert len(forces) == 6
    assert all(isinstance(f, argparse._StoreTrueAction) for f in forces)
    checkpoints = [
        _option(c, "--checkpoint") for c in commands.values() if _option(c, "--checkpoint")
    ]
    assert len(checkpoints) == 7
    for ck in checkpoints:
        assert ck.type is cli_args.checkpoint_arg and cli_args.CHECKPOINT_HELP in ck.help
    for parser in commands.values():
        seed = _option(parser, "--seed")
        if seed is not None:
            assert seed.help.endswith(f"(default {seed.default})"), parser.prog


def test_the_width_of_a_new_model_is_the_model_config_default():
    commands = _commands()
    for name in ("train", "gui", "init"):
        width = _option(commands[name], "--width")
        assert width.default == ModelConfig().width
        assert f"(default {ModelConfig().width})" in width.help


@pytest.mark.parametrize(
    "command, groups",
    [
        (
            "train",
            [
                "data",
                "model",
                "training",
                "pseudo-labels",
                "jigsaw warm-up",
                "validation",
                "run and output",
            ],
        ),
        ("pretrain", ["data and model", "training", "run and output"]),
    ],
)
def test_train_and_pretrain_group_their_options(command, groups):
    parser = _commands()[command]
    titled = {g.title: g for g in parser._action_groups}
    assert [t for t in titled if t in groups] == groups
    ungrouped = [a.dest for a in titled["options"]._group_actions]
    assert ungrouped == ["help"]  # every option but --help is in a group
    text = parser.format_help()
    assert all(f"\n{title}:\n" in text for title in groups)


def test_the_usage_errors_are_unchanged(capsys):
    code, _, err = run_cli(capsys, "train")
    assert_one_line_error(code, err, "the following arguments are required: --images, --out")
    code, _, err = run_cli(capsys, "pretrain")
    assert_one_line_error(code, err, "the following arguments are required: --images, --out")
    code, _, err = run_cli(capsys, "train", "--images", "i", "--out", "o.pt", "--labeled", "a", "--labeled-fraction", "0.5")  # fmt: skip
    assert_one_line_error(code, err, "--labeled-fraction", "not allowed with argument --labeled")


def test_an_existing_out_is_refused_with_the_same_line(tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"x")
    with pytest.raises(InputError, match=r"m\.pt exists; pass --force to overwrite it$"):
        cli_args.refuse_existing_out(out, False)
    cli_args.refuse_existing_out(out, True)
    cli_args.refuse_existing_out(out, False, resume=out)  # continued in place


# --------------------------------------------------------------------------------------------
# the shared pre-flight


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    return save_checkpoint(tmp_path / "m.pt", tiny_model, pixel_size_um=0.5)


def test_the_preflight_resolves_the_pixel_size_from_the_model(checkpoint):
    from napari_selfloop.core.store.preflight import preflight

    ready = preflight([checkpoint])
    assert ready.options.mpp == 0.5 and len(ready.models) == 1
    assert preflight([checkpoint], mpp=0.25, output_dtype="uint8").options.mpp == 0.25


def test_the_preflight_refuses_a_bad_mpp_before_any_model_loads(checkpoint, monkeypatch):
    from napari_selfloop.core.store import preflight

    def no_load(*args, **kwargs):
        raise AssertionError("a model loaded before --mpp was checked")

    monkeypatch.setattr("napari_selfloop.core.store.checkpoint.load_checkpoint", no_load)
    with pytest.raises(InputError, match="--mpp must be a positive number"):
        preflight.preflight([checkpoint], mpp=-1.0)


def test_the_preflight_checks_images_keeping_none_open(tmp_path):
    from napari_selfloop.core.store.preflight import check_images

    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.zeros((32, 32, 3), np.uint8))
    check_images([good])
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, np.zeros((32, 32, 2), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="2 channels"):
        check_images([good, bad])


@pytest.mark.parametrize("command", ["pseudo-label", "batch"])
def test_pseudo_label_and_batch_run_the_one_preflight(
    tmp_path, checkpoint, capsys, monkeypatch, command
):
    """Both commands refuse through the same core pre-flight, before any output is made."""
    from napari_selfloop.cli import batch_cmd, pseudolabel_cmd
    from napari_selfloop.core.store import preflight

    assert pseudolabel_cmd.preflight is preflight.preflight is batch_cmd.preflight
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "out"
    extra = ["--workers", "0"] if command == "batch" else []
    code, _, err = run_cli(
        capsys, command, str(image), "--checkpoint", str(checkpoint), "--out", str(out),
        "--mpp", "0", *extra,
    )  # fmt: skip
    assert_one_line_error(code, err, "--mpp must be a positive number")
    assert not out.exists()
