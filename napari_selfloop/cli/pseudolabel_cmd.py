"""``napari-selfloop pseudo-label``: probability, uncertainty and mask TIFFs per image."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from ..core.engine.device import resolve_device
from ..core.engine.jigsaw import ROTATIONS
from ..core.engine.plausibility import plausibility_warning, record_of
from ..core.engine.pseudolabel import (
    DEFAULT_STEP_LR,
    METHODS,
    STEP_RULES,
    UNCERTAINTIES,
    PseudoLabelConfig,
    PseudoLabelResult,
)
from ..core.errors import InputError, SelfloopError
from ..core.io.atomic import check_output_folder, sweep_stale_temporaries
from ..core.io.file_check import check_input_file
from ..core.io.images import ImageInfo
from ..core.io.working_image import OUTPUT_DTYPES
from ..core.store.batch import OUTPUTS, label_image_file, output_stem
from ..core.store.preflight import check_checkpoint_files, check_images, preflight
from .args import (
    Options,
    add_device,
    add_ensemble_checkpoints,
    add_force,
    add_grid_shift,
    add_out,
    add_patch_size,
    add_precision,
    add_seed,
)
from .commands import SUMMARIES
from .progressbar import drive

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pseudo-label",
        help=SUMMARIES["pseudo-label"],
        description="Writes DIR/STEM_prob.tif (float32 in [0, 1]), DIR/STEM_uncertainty.tif "
        "(float32), DIR/STEM_mask.tif (uint8: 1 confident foreground, 0 confident "
        "background, 255 uncertain) and DIR/STEM_instances.tif (uint32: one id per nucleus "
        "or object, 0 background) for every image: tiled, compressed TIFFs with the pixel "
        "size and, when large, a pyramid. Slides (pyramidal TIFF, SVS, NDPI, OME-TIFF, or "
        "8192x8192 and up) are worked at --mpp (default: the model's pixel size), their glass "
        "skipped, and their probability and uncertainty stored as uint8 (0-255 for 0-1). "
        "Existing files are not overwritten without --force, and an input file is never "
        "overwritten.",
    )
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="TIFF, PNG, JPEG, or a slide (.svs, .ndpi, .tif, .ome.tif)",
    )
    add_ensemble_checkpoints(p)
    add_method_options(p)
    add_slide_options(p)
    add_device(p)
    add_out(p)
    add_force(p, "overwrite existing output files (never an input file)")
    p.set_defaults(func=run)


def add_method_options(p: Options) -> None:
    """The :class:`PseudoLabelConfig` options (shared with ``batch``), defaults from the config."""
    d = PseudoLabelConfig()
    p.add_argument(
        "--method",
        choices=METHODS,
        default=d.method,
        help=f"how the proposal and its uncertainty are made (default {d.method}: Q passes "
        "with dropout; selfloop: the paper's jigsaw-weighted self-loop; softmax: one pass; "
        "ensemble: mean of several --checkpoint)",
    )
    p.add_argument(
        "--q",
        type=int,
        default=d.q,
        help=f"permutations (self-loop) or passes (MC dropout); default {d.q}",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        help=f"confidence threshold in (0.5, 1); default {d.threshold}",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help="step size of the self-loop encoder updates (default: the step chosen for the "
        f"model, which `napari-selfloop models` shows, else {DEFAULT_STEP_LR:g})",
    )
    p.add_argument(
        "--step-rule",
        choices=STEP_RULES,
        default=d.step_rule,
        help=f"rule of the self-loop encoder updates ({d.step_rule}; adam: the earlier rule)",
    )
    p.add_argument(
        "--rotation",
        choices=ROTATIONS,
        default=d.rotation,
        help="tile rotations of the self-loop puzzles (default: the model's, "
        "the mode its jigsaw was trained with)",
    )
    add_grid_shift(p, d.grid_shift)
    p.add_argument(
        "--uncertainty",
        choices=UNCERTAINTIES,
        default=d.uncertainty,
        help="the uncertainty map: entropy of the probability (default; marks errors best) "
        "or the spread of the Q maps",
    )
    add_patch_size(p, d.patch_size)
    p.add_argument(
        "--overlap",
        type=int,
        default=d.overlap,
        help="pixels shared by neighbouring patches, at most a third of the patch "
        "(default: a sixth of the patch)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"patches per step (default: {d.batch_size} on CUDA, {CPU_BATCH} elsewhere, so "
        "the progress bar moves with every patch)",
    )
    add_precision(p, d.precision)
    add_seed(p, d.seed, "seeds the dropout and the puzzles")


def add_slide_options(p: Options) -> None:
    """The :class:`SlideOptions` options (shared with ``batch``)."""
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        metavar="UM",
        help="microns per pixel to work slides at: the nearest pyramid level at least "
        "as fine is read and resampled the rest of the way (default: the pixel size "
        "the model was trained at; level 0 when neither says)",
    )
    p.add_argument(
        "--tissue-only",
        dest="tissue_only",
        action="store_true",
        default=None,
        help="skip patches without tissue (default for slides): they come out as "
        "background with zero uncertainty",
    )
    p.add_argument(
        "--no-tissue-only", dest="tissue_only", action="store_false", help="process the glass too"
    )
    p.add_argument(
        "--output-dtype",
        choices=OUTPUT_DTYPES,
        default="auto",
        help="pixel type of the probability and uncertainty (auto: uint8, 0-255 for "
        "0-1, for slides; float32 for other images)",
    )


#: Patches per step on a CPU (or MPS): batching saves little there, and one patch per step
#: moves the progress bar every patch (a 1000x1000 image is 4 patches of 576: in one batch
#: the bar stood empty, then jumped to 100 %; issue 26).
CPU_BATCH = 1


def batch_size_for(requested: int | None, device: str) -> int:
    """``--batch-size``, or by default :class:`PseudoLabelConfig`'s on CUDA and
    :data:`CPU_BATCH` elsewhere."""
    if requested is not None:
        return requested
    try:
        cuda = resolve_device(device).type == "cuda"
    except SelfloopError:
        cuda = False  # a bad --device is refused where the models load
    return PseudoLabelConfig.batch_size if cuda else CPU_BATCH


def config_from_args(args: argparse.Namespace) -> PseudoLabelConfig:
    """The :class:`PseudoLabelConfig` of the options :func:`add_method_options` added."""
    return PseudoLabelConfig(
        method=args.method,
        q=args.q,
        threshold=args.threshold,
        lr=args.lr,
        patch_size=args.patch_size,
        overlap=args.overlap,
        batch_size=batch_size_for(args.batch_size, getattr(args, "device", "auto")),
        precision=args.precision,
        seed=args.seed,
        step_rule=args.step_rule,
        rotation=args.rotation,
        grid_shift=args.grid_shift,
        uncertainty=args.uncertainty,
    )


def output_paths(images: list[Path], out: Path) -> list[Path]:
    """The files a run writes: DIR/STEM_prob.tif, _uncertainty.tif, _mask.tif, _instances.tif."""
    return [out / f"{output_stem(path)}_{name}.tif" for path in images for name in OUTPUTS]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(images: list[Path], inputs: list[Path], out: Path, force: bool) -> None:
    """Refuse, before any work, to write over an input (ever) or an existing file (without force).

    ``inputs`` are every file the run reads (images and checkpoints); an output that is one
    of them (the same file, through any name or link) is refused even with ``force``.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if not out.is_dir():
        return
    read = {}
    for path in inputs:
        key = _identity(path)
        if key is not None:
            read.setdefault(key, path)
    existing = []
    for target in output_paths(images, out):
        if not os.path.lexists(target):
            continue
        key = _identity(target)
        if key in read:
            raise InputError(
                f"{target} would overwrite the input {read[key]}: pseudo-label never writes "
                "over its own input, even with --force; pick another --out"
            )
        if os.path.isdir(target):
            raise InputError(f"{target} is a folder: remove it or pick another --out")
        existing.append(target)
    if existing and not force:
        more = f" (and {len(existing) - 1} more output file(s))" if len(existing) > 1 else ""
        raise InputError(f"{existing[0]} exists{more}; pass --force to overwrite")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)


def _unique_stems(images: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in images:
        stem = output_stem(path)
        if stem in seen:
            raise InputError(
                f"{path} and {seen[stem]} would both write {stem}_*.tif: "
                "rename one or run them separately"
            )
        seen[stem] = path
        if stem != path.stem:
            log.warning(
                "%s: the name is too long for output file names: its outputs are %s_*.tif",
                path.name,
                stem,
            )


def _slide_note(info: dict) -> str:
    working = info.get("working") or {}
    if not working.get("slide"):
        return ""
    mpp = working.get("mpp")
    note = f", at {mpp:g} µm/px" if mpp is not None else ", at level 0 (no pixel size)"
    if info.get("patches"):
        note += f", {info['patches_computed']} of {info['patches']} patches computed"
        if "tissue_fraction" in working:
            note += " (glass skipped)"
    return note


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    config = config_from_args(args)
    _unique_stems(args.images)
    for path in args.images:
        check_input_file(path)
    check_checkpoint_files(args.checkpoint)
    check_outputs(args.images, [*args.images, *args.checkpoint], args.out, args.force)
    ready = preflight(
        args.checkpoint,
        mpp=args.mpp,
        tissue_only=args.tissue_only,
        output_dtype=args.output_dtype,
    )
    tissue = record_of(ready.checkpoints[0].meta) if len(ready.checkpoints) == 1 else None
    # Every image is checked before the first long computation starts.
    check_images(args.images)
    _prepare_out(args.out)
    sweep_stale_temporaries(args.out)
    models = ready.models
    for path in args.images:
        result, info = label_image_file(
            path,
            models,
            config,
            args.out,
            output_stem(path),
            device=args.device,
            drive=lambda gen, path=path: drive(gen, desc=path.name, quiet=args.quiet),
            options=ready.options,
        )
        _report(path, result, info, config.method, args.out)
        warning = plausibility_warning(result.info.get("figures"), tissue)
        if warning:
            log.warning("%s: %s", path.name, warning)
    return 0


def _report(path: Path, result: PseudoLabelResult, info: ImageInfo, method: str, out: Path) -> None:
    """The log line of one labelled image."""
    extra = ""
    if result.losses is not None:
        extra = f", mean jigsaw loss {float(np.mean(result.losses)):.3f}"
    if result.info.get("objects") is not None:
        extra += f", {result.info['objects']} objects"
    extra += _slide_note(result.info)
    log.info(
        "%s: %s pseudo-label (%dx%d) in %.1f s on %s%s -> %s",
        path.name,
        method,
        info.width,
        info.height,
        result.seconds,
        result.info.get("device"),
        extra,
        out / f"{output_stem(path)}_*.tif",
    )
