"""Argument types shared by the sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import CheckpointError
from ..core.store.bundled import BUNDLED, bundled_path, is_bundled_name

#: Help text fragment for every --checkpoint option.
CHECKPOINT_HELP = f"a checkpoint file, or a bundled model by name ({', '.join(BUNDLED)}; see `napari-selfloop models`)"


def checkpoint_arg(value: str) -> Path:
    """A ``--checkpoint`` value: a file path, or a bundled model's name (its installed file)."""
    if is_bundled_name(value):
        try:
            return bundled_path(value)
        except CheckpointError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return Path(value)
