"""The image a pseudo-label run works on: a slide at a chosen resolution, or a plain image.

:func:`open_working_image` is what ``pseudo-label`` and ``batch`` open for each input.

Slides (:func:`.slides.is_slide`: pyramidal TIFF, SVS, NDPI, OME-TIFF, or one plane of at
least 8192 x 8192) are worked at a pixel size: ``--mpp`` when given, else the one the model
was trained at (:attr:`..store.checkpoint.Checkpoint.pixel_size_um`). The nearest pyramid level at
least as fine is read and resampled the rest of the way (:meth:`.slides.Slide.view`); when the
slide or the model has no pixel size, level 0 is processed and a warning says so. Glass is
skipped by default (:func:`.slide_tissue.detect_tissue`), and the probability and uncertainty
outputs are stored as uint8 (0-255 for 0-1), which with tiled compression keeps all three
outputs under a byte per pixel.

Other images (PNG, JPEG, small TIFFs) are processed as they are, pixel for pixel, with
float32 outputs, as before: ``--mpp`` does not resample them, and tissue detection runs only
when asked for (``tissue_only=True``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .images import ImageInfo, check_image, open_image
from .slide_tissue import detect_tissue, detect_tissue_in_image
from .slides import Slide, is_slide, open_slide

__all__ = ["OUTPUT_DTYPES", "SlideOptions", "WorkingImage", "open_working_image"]

log = logging.getLogger(__name__)

#: Pixel types of the probability and uncertainty outputs (``auto``: uint8 for slides).
OUTPUT_DTYPES = ("auto", "float32", "uint8")


@dataclass(frozen=True)
class SlideOptions:
    """How slides are worked.

    Parameters
    ----------
    mpp
        Microns per pixel to work at; None: the model's (see :func:`open_working_image`).
    tissue_only
        Skip patches without tissue; None: on for slides, off for other images.
    output_dtype
        ``float32``, ``uint8`` (value x 255) or ``auto`` (uint8 for slides, else float32).
    """

    mpp: float | None = None
    tissue_only: bool | None = None
    output_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.mpp is not None and not (
            isinstance(self.mpp, int | float) and math.isfinite(self.mpp) and self.mpp > 0
        ):
            raise InputError(
                f"--mpp must be a positive number of microns per pixel, got {self.mpp}"
            )
        if self.output_dtype not in OUTPUT_DTYPES:
            raise InputError(
                f"unknown output type {self.output_dtype!r}: choose one of "
                f"{', '.join(OUTPUT_DTYPES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkingImage:
    """An opened input, ready for :func:`..engine.pseudolabel.pseudo_label`.

    Attributes
    ----------
    image
        The array-like to label (lazy for TIFFs and slides).
    info
        Its size and pixel type.
    mpp
        Microns per pixel of ``image`` (None when unknown): the outputs' pixel size.
    keep
        The patch filter (tissue only) or None.
    output_dtype
        float32 or uint8, for the probability and uncertainty outputs.
    record
        Plain values describing what was done (level, scale, pixel sizes, tissue share),
        for logs and batch records.
    """

    image: Any
    info: ImageInfo
    mpp: float | None
    keep: Any
    output_dtype: np.dtype
    record: dict[str, Any] = field(default_factory=dict)
    slide: Slide | None = None

    def close(self) -> None:
        """Close the file behind the image (errors ignored)."""
        if self.slide is not None:
            self.slide.close()
        close = getattr(self.image, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()


def open_working_image(
    path: str | os.PathLike[str],
    options: SlideOptions | None = None,
    *,
    model_mpp: float | None = None,
) -> WorkingImage:
    """Open ``path`` for pseudo-labelling (see the module docstring).

    Parameters
    ----------
    path
        The input image or slide.
    options
        Resolution, tissue and output settings (defaults: :class:`SlideOptions`).
    model_mpp
        The pixel size the model was trained at, used when ``options.mpp`` is None.

    Raises
    ------
    InputError
        One line naming the file, for anything that cannot be read.
    """
    options = options or SlideOptions()
    path = Path(path)
    if is_slide(path):
        return _open_slide(path, options, model_mpp)
    image = open_image(path)
    try:
        info = check_image(image)
        keep = None
        record: dict[str, Any] = {"slide": False}
        if options.mpp is not None:
            log.debug(
                "%s is not a slide (no pyramid, under 8192x8192): processed as it is, "
                "the pixel size applies to slides",
                path.name,
            )
        if options.tissue_only:
            tissue = detect_tissue_in_image(image)
            keep = _keep(tissue, 1.0)
            record["tissue_fraction"] = round(tissue.fraction, 4)
        dtype = np.dtype(np.uint8 if options.output_dtype == "uint8" else np.float32)
        return WorkingImage(image, info, None, keep, dtype, record)
    except BaseException:
        close = getattr(image, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
        raise


def _keep(tissue: Any, downsample: float) -> Any:
    def keep(y0: int, y1: int, x0: int, x1: int) -> bool:
        return tissue.covers(y0, y1, x0, x1, downsample)

    return keep


def _open_slide(path: Path, options: SlideOptions, model_mpp: float | None) -> WorkingImage:
    slide = open_slide(path)
    try:
        target = options.mpp if options.mpp is not None else model_mpp
        if slide.mpp is None:
            why = (
                "neither the model nor the slide records a pixel size"
                if target is None
                else f"the slide records no pixel size (the model works at {target:g} µm/px)"
            )
            log.warning(
                "%s: %s: processing level 0 (%dx%d) as it is",
                path.name,
                why,
                slide.shape[1],
                slide.shape[0],
            )
        elif target is None:
            log.warning(
                "%s: the model records no pixel size and no --mpp was given: processing "
                "level 0 (%g µm/px) as it is",
                path.name,
                slide.mpp,
            )
        image, choice = slide.view(target)
        info = check_image(image)
        if choice.scale != 1.0:
            log.info(
                "%s: level %d (%g µm/px) resampled by %.3g to %g µm/px: %dx%d",
                path.name,
                choice.level,
                choice.level_mpp,
                choice.scale,
                choice.mpp,
                info.width,
                info.height,
            )
        elif target is not None and slide.mpp is not None:
            log.info(
                "%s: level %d at %g µm/px: %dx%d",
                path.name,
                choice.level,
                choice.mpp,
                info.width,
                info.height,
            )
        record: dict[str, Any] = {
            "slide": True,
            "slide_mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "target_mpp": target,
            "level": choice.level,
            "scale": choice.scale,
            "mpp": choice.mpp,
            "width": info.width,
            "height": info.height,
        }
        keep = None
        if options.tissue_only is not False:
            tissue = detect_tissue(slide)
            keep = _keep(tissue, slide.downsamples[choice.level] / choice.scale)
            record["tissue_fraction"] = round(tissue.fraction, 4)
        dtype = np.dtype(np.float32 if options.output_dtype == "float32" else np.uint8)
        return WorkingImage(image, info, choice.mpp, keep, dtype, record, slide)
    except BaseException:
        slide.close()
        raise
