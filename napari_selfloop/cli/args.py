"""Options shared by the sub-commands, each defined once: its flag, type, default and help.

A command adds a shared option with one call (``add_device(p)``), to its parser or to one of
its argument groups; what differs between commands (a ``--checkpoint`` that may be repeated,
what ``--force`` overwrites) is a parameter, not a second definition. The checks the options
share (an existing ``--out`` without ``--force``) live here too.

Light on purpose: importing this module does not import torch. The defaults that live in
torch-importing modules (:class:`~napari_selfloop.core.engine.model.ModelConfig`'s width,
the precisions) are read when such an option is added, that is when its command's parser is
built.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..core.errors import CheckpointError, InputError
from ..core.store.bundled import BUNDLED, bundled_path, is_bundled_name

#: A parser or one of its argument groups: what the ``add_*`` helpers add an option to.
Options = argparse._ActionsContainer

#: Help text fragment for every --checkpoint option.
CHECKPOINT_HELP = f"a checkpoint file, or a bundled model by name ({', '.join(BUNDLED)}; see `napari-selfloop models`)"
#: The devices every --device option takes.
DEVICES_HELP = "auto, cpu, cuda or mps"
#: ``--out`` of the commands that write a folder of files.
OUT_FOLDER_HELP = "output folder (created if missing)"
#: ``--out`` of the commands that write one checkpoint.
OUT_CHECKPOINT_HELP = "checkpoint to write (.pt)"
#: ``--force`` of the commands that write one file.
FORCE_HELP = "overwrite an existing --out"


def checkpoint_arg(value: str) -> Path:
    """A ``--checkpoint`` value: a file path, or a bundled model's name (its installed file)."""
    if is_bundled_name(value):
        try:
            return bundled_path(value)
        except CheckpointError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return Path(value)


def add_checkpoint(p: Options, *, before: str = "", after: str = "", **kwargs: Any) -> None:
    """``--checkpoint``: a file or a bundled model's name; help ``before + CHECKPOINT_HELP +
    after``; ``kwargs`` (``required``, ``metavar``, ``action``) as argparse takes them."""
    p.add_argument(
        "--checkpoint", type=checkpoint_arg, help=f"{before}{CHECKPOINT_HELP}{after}", **kwargs
    )


def add_ensemble_checkpoints(p: Options) -> None:
    """``--checkpoint`` of the pseudo-labelling commands: required, repeated for an ensemble."""
    add_checkpoint(p, action="append", required=True, after="; repeat it for --method ensemble")


def add_device(p: Options, *, where: str = "") -> None:
    """``--device`` (default auto); ``where`` says where it applies (``", on each worker"``)."""
    p.add_argument("--device", default="auto", help=f"{DEVICES_HELP}{where} (default auto)")


def add_out(p: Options, help: str = OUT_FOLDER_HELP, **kwargs: Any) -> None:
    """``--out`` (required): a folder by default, else what ``help`` says (a checkpoint)."""
    p.add_argument("--out", required=True, type=Path, help=help, **kwargs)


def add_force(p: Options, help: str = FORCE_HELP) -> None:
    """``--force``; ``help`` says what it overwrites when that is not one --out file."""
    p.add_argument("--force", action="store_true", help=help)


def add_seed(p: Options, default: int, what: str, **kwargs: Any) -> None:
    """``--seed``: ``what`` it seeds, then its default; ``kwargs`` as argparse takes them."""
    p.add_argument(
        "--seed", type=int, default=default, help=f"{what} (default {default})", **kwargs
    )


def add_precision(p: Options, default: str) -> None:
    """``--precision``: one of the engine's precisions."""
    from ..core.engine.device import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=default)


def add_width(p: Options, help: str | None = None) -> None:
    """``--width`` of a new model, its default :class:`ModelConfig`'s."""
    from ..core.engine.model import ModelConfig

    width = ModelConfig().width
    text = help or "width of a new model: channels of its first stage; 64 is the real ResUNet-18"
    p.add_argument("--width", type=int, default=width, help=f"{text} (default {width})")


def add_images_folder(p: Options, help: str = "folder of images", **kwargs: Any) -> None:
    """``--images`` (required): a folder of images; ``kwargs`` as argparse takes them."""
    p.add_argument("--images", required=True, type=Path, help=help, **kwargs)


def add_masks_folder(p: Options, *, required: bool = False) -> None:
    """``--masks``: a folder of masks paired with the images by file stem."""
    p.add_argument(
        "--masks",
        required=required,
        type=Path,
        help="folder of masks (uint8 0/1/255), paired by stem",
    )


def add_patch_size(p: Options, default: int) -> None:
    """``--patch-size`` of the sliding window and of training patches."""
    from ..core.engine.pseudolabel import PATCH_MULTIPLE

    p.add_argument("--patch-size", type=int, default=default, help=f"multiple of {PATCH_MULTIPLE}")


def add_grid_shift(p: Options, default: bool) -> None:
    """``--no-grid-shift``: the self-loop puzzles' 3x3 grid without a random phase."""
    p.add_argument(
        "--no-grid-shift",
        dest="grid_shift",
        action="store_false",
        default=default,
        help="puzzle on a fixed 3x3 grid (default: a random grid phase per puzzle)",
    )


def same_file(a: Path | None, b: Path) -> bool:
    """Whether ``a`` (None: no file) and ``b`` name the same file."""
    if a is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def refuse_existing_out(
    out: Path, force: bool, *, resume: Path | None = None, hint: str = ""
) -> None:
    """Refuse an existing ``--out`` file without ``--force`` (a run resumed in place from it
    may write over it); ``hint`` ends the message."""
    if os.path.lexists(out) and not force and not same_file(resume, out):
        raise InputError(f"{out} exists; pass --force to overwrite it{hint}")
