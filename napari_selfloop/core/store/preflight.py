"""The pre-flight of a pseudo-labelling run, shared by ``pseudo-label`` and ``batch``.

What can refuse a run is checked before any work starts, so that a bad checkpoint, ``--mpp``
or image ends the run with one line instead of failing after hours of labelling:

- :func:`check_checkpoint_files`: every checkpoint is an existing regular file;
- :func:`preflight`: the slide options are valid (a bad ``--mpp`` is refused before any model
  loads), every checkpoint loads, and slides are worked at the model's pixel size unless
  ``--mpp`` says otherwise;
- :func:`check_images`: every image opens, with a shape and pixel type a model can take
  (``pseudo-label`` only: ``batch`` lists an image that fails with the results and goes on).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.file_check import check_input_file
from ..io.images import check_image, open_image
from ..io.slides import is_slide, open_slide
from ..io.working_image import SlideOptions
from . import checkpoint as _checkpoint
from .batch import close_image
from .checkpoint import Checkpoint

__all__ = ["Preflight", "check_checkpoint_files", "check_images", "model_pixel_size", "preflight"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preflight:
    """What a run found ready: the checkpoints, loaded, and how to work slides."""

    checkpoints: list[Checkpoint]
    #: The slide options, ``mpp`` resolved (the model's pixel size when none was asked for).
    options: SlideOptions

    @property
    def models(self) -> list[Any]:
        return [c.model for c in self.checkpoints]


def check_checkpoint_files(paths: Iterable[str | Path]) -> None:
    """Refuse at once a checkpoint path that is not an existing regular file (one line)."""
    for path in paths:
        check_input_file(path, "a checkpoint file")


def model_pixel_size(checkpoints: Sequence[Checkpoint]) -> float | None:
    """The pixel size the (first) checkpoint was trained at; a warning when an ensemble's differ."""
    sizes = [c.pixel_size_um for c in checkpoints]
    if len(set(sizes)) > 1:
        log.warning(
            "the checkpoints were trained at different pixel sizes (%s): slides are "
            "worked at the first's; pass --mpp to choose",
            ", ".join(map(str, sizes)),
        )
    return sizes[0] if sizes else None


def preflight(
    checkpoints: Sequence[str | Path],
    *,
    mpp: float | None = None,
    tissue_only: bool | None = None,
    output_dtype: str = "auto",
) -> Preflight:
    """Check the slide options (:class:`SlideOptions`; a bad ``mpp`` is refused before the
    models load), load the checkpoints (a bad one is a one-line :class:`~..errors.CheckpointError`)
    and resolve ``mpp``: None works slides at the pixel size the model was trained at
    (:func:`model_pixel_size`)."""
    requested = SlideOptions(mpp=mpp, tissue_only=tissue_only, output_dtype=output_dtype)
    # Looked up in its module when called, so that a test replacing it there sees every use.
    loaded = [_checkpoint.load_checkpoint(path) for path in checkpoints]
    model_mpp = model_pixel_size(loaded)
    if requested.mpp is None:
        requested = dataclasses.replace(requested, mpp=model_mpp)
    return Preflight(loaded, requested)


def check_images(paths: Iterable[Path]) -> None:
    """Open every image and check its shape and pixel type (:func:`..io.images.check_image`;
    a slide: its pyramid opens), keeping none of them open: a few hundred lazily read TIFFs
    would exhaust the open-file limit."""
    for path in paths:
        if is_slide(path):
            open_slide(path).close()
            continue
        image = open_image(path)
        try:
            check_image(image)
        finally:
            close_image(image)
