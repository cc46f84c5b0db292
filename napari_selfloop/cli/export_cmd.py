"""``napari-selfloop export``: corrected masks or instance labels -> masks and QuPath GeoJSON.

The outputs of the plugin's Export panel, headless (:func:`..core.store.export.export_annotation`):
``STEM_mask.tif`` (0/1/255) and ``STEM_instances.tif`` (tiled, compressed, with the pixel
size), ``STEM.geojson`` (UUID ids, the chosen object type, slide coordinates) and an entry in
``manifest.json``, for every input.

How an input is read (``--input-type auto``): a bool image, or one whose values are all in
{0, 1, 255}, is a **mask** (1 foreground, 0 background, 255 not decided; its nuclei are its
4-connected pieces of 1; a 0/255 image without 1 is a binary mask, 255 foreground, unless
the file is a napari-selfloop mask); a correction mask saved from the plugin that holds
**nucleus ids** (:mod:`..core.corrections.nuclei`: 0 background, 255 not decided, any other value the id
of one nucleus) keeps them, as the Export panel does: one instance and one GeoJSON feature
per id, touching nuclei apart (``--input-type mask`` reads any file so); any other
non-negative integer image holds **instance labels** (each id one object, 255 too, kept
apart from its neighbours). Where it lies on the slide: ``--offset``/``--downsample`` when
given, else what the file records (files saved from the plugin, see
:mod:`..core.io.label_files`), else the slide's corner at full resolution.

Every input is read and checked before anything is written: a bad one ends the run with one
line (exit code 2) and no files; each input's files are written as a set (see
:func:`..core.store.export.export_annotation`).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError
from ..core.io.atomic import check_output_folder
from ..core.io.label_files import LabelsFile, open_labels_file
from ..core.io.windows import Window
from ..core.store.checkpoint import PIXEL_SIZE_RANGE
from ..core.store.export import OBJECT_TYPES, UNCERTAIN_POLICIES, check_export_folder
from ..core.store.export_stream import Plan, Rows, plan_export, write_export
from .args import add_out
from .commands import SUMMARIES
from .progressbar import work_started

log = logging.getLogger(__name__)

INPUT_TYPES = ("auto", "mask", "instances")
#: Classes read as ``annotation`` when --object-type is not given (others: ``detection``).
ANNOTATION_CLASSES = ("lesion", "tumor", "tumour", "tissue", "region", "stroma")
#: Slide pixels per input pixel an input may stand for: a 1024x thumbnail to 64x finer.
DOWNSAMPLE_RANGE = (1 / 64, 1024.0)
#: Largest slide coordinate an offset may give (2^24 px: 4 m at 0.25 µm/px, and the
#: largest whole number a float32 coordinate in a viewer holds exactly).
MAX_OFFSET = 2**24


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help=SUMMARIES["export"],
        description="For each MASK_OR_LABELS file (TIFF or PNG: a 0/1/255 mask, a 0/255 binary "
        "mask, a correction mask with nucleus ids, or instance labels) writes "
        "DIR/STEM_mask.tif (uint8 0/1/255), DIR/STEM_instances.tif (one id per object: "
        "nucleus ids kept) as tiled, compressed TIFFs with the pixel size, DIR/STEM.geojson "
        "(QuPath: one feature per object, named by its id, UUID ids, in slide pixels: "
        "the offset added and the downsampling undone) and an entry in DIR/manifest.json: "
        "the Export panel's outputs. Files saved from the plugin (File > Save Selected Layers "
        "with 'corrected labels (TIFF)') carry their region and pixel size, which are used "
        "unless --offset, --downsample or --pixel-size say otherwise.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="MASK_OR_LABELS",
        help="mask or labels files (TIFF or PNG)",
    )
    add_out(p)
    p.add_argument(
        "--object-type",
        choices=OBJECT_TYPES,
        default=None,
        help="QuPath object type: detection (numerous objects: nuclei) or annotation "
        "(editable: a lesion); default: annotation for the classes Lesion, Tumor, "
        "Tissue, Region and Stroma, else detection",
    )
    p.add_argument(
        "--classification", default="Nucleus", help="QuPath class of the objects (default Nucleus)"
    )
    p.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="UM",
        help="microns per pixel of the inputs (default: the file's, else none)",
    )
    p.add_argument(
        "--offset",
        type=int,
        nargs=2,
        default=None,
        metavar=("Y", "X"),
        help="slide point (full-resolution pixels) of the inputs' top-left corner "
        "(default: the file's record, else 0 0); applies to every input",
    )
    p.add_argument(
        "--downsample",
        type=float,
        default=None,
        metavar="F",
        help="slide pixels per input pixel (default: the file's record, else 1)",
    )
    p.add_argument(
        "--uncertain",
        choices=UNCERTAIN_POLICIES,
        default="keep",
        help="pixels still 255 (undecided) in a mask: keep them as 255 (default), "
        "or count them as background or foreground (in a mask with nucleus ids: each "
        "piece of them joins the nearest nuclei it touches, or is a new nucleus)",
    )
    p.add_argument(
        "--input-type",
        choices=INPUT_TYPES,
        default="auto",
        help="auto (default: 0/1/255 values are a mask, other ids instance labels, or "
        "nucleus ids in a correction mask saved from the plugin), mask (a correction mask: "
        "0 background, 255 undecided, any other id one nucleus, kept) or instances (every "
        "non-zero id an object, 255 too)",
    )
    p.set_defaults(func=run)


@dataclass
class _Job:
    """One input, checked: what :func:`export_annotation` is called with."""

    path: Path
    name: str
    kind: str  # mask or instances
    window: Window | None
    pixel_size_um: float | None
    image_sha256: str | None
    plan: Plan


def _pixel_size_problem(value: float, what: str) -> str | None:
    lo, hi = PIXEL_SIZE_RANGE
    if math.isfinite(value) and lo <= value <= hi:
        return None
    hint = (
        " (that looks like metres: give microns, e.g. 0.25 for a 40x scan)"
        if math.isfinite(value) and 0 < value < 1e-4
        else " (e.g. 0.25 for a 40x scan, 0.5 for 20x)"
    )
    return (
        f"{what} must be a number of microns per pixel from {lo:g} to {hi:g}, got {value:g}{hint}"
    )


def _downsample_problem(value: float, what: str) -> str | None:
    lo, hi = DOWNSAMPLE_RANGE
    if math.isfinite(value) and lo <= value <= hi:
        return None
    return (
        f"{what} must be a number of slide pixels per input pixel from {lo:g} to {hi:g} "
        f"(1: full resolution, 4: a quarter), got {value:g}"
    )


def _offset_problem(y0: int, x0: int, what: str) -> str | None:
    if min(y0, x0) >= 0 and max(y0, x0) <= MAX_OFFSET:
        return None
    return f"{what} must be two slide pixel numbers (Y X) from 0 to {MAX_OFFSET}, got {y0} {x0}"


def _check_options(args: argparse.Namespace) -> None:
    problems = [
        args.pixel_size is not None and _pixel_size_problem(args.pixel_size, "--pixel-size"),
        args.downsample is not None and _downsample_problem(args.downsample, "--downsample"),
        args.offset is not None and _offset_problem(*args.offset, "--offset"),
    ]
    for problem in problems:
        if problem:
            raise InputError(problem)
    if not args.classification.strip():
        raise InputError("--classification must not be empty")
    resolved = {p.resolve() for p in args.inputs}
    if len(resolved) != len(args.inputs):
        raise InputError("an input is given twice: give each file once")


def _window(file: LabelsFile, args: argparse.Namespace) -> Window | None:
    h, w = (int(s) for s in file.data.shape[:2])
    if file.record_problem and (args.offset is None or args.downsample is None):
        raise InputError(f"{file.path.name}: {file.record_problem}: give --offset and --downsample")
    recorded = file.window
    factor = (
        args.downsample
        if args.downsample is not None
        else (recorded.factor if recorded is not None else 1.0)
    )
    if args.offset is not None:
        y0, x0 = args.offset
    elif recorded is not None:
        y0, x0 = recorded.y0, recorded.x0
    else:
        y0, x0 = 0, 0
    where = f"{file.path.name}: its recorded"
    problem = _downsample_problem(float(factor), f"{where} downsample") or _offset_problem(
        int(y0), int(x0), f"{where} offset"
    )
    if problem:  # from the file's record (the options are checked before)
        raise InputError(f"{problem}; give --offset and --downsample")
    if (y0, x0, factor) == (0, 0, 1.0) and recorded is None:
        return None  # the input's own pixels are the slide's
    level = recorded.level if recorded is not None and recorded.factor == factor else 0
    return Window(int(y0), int(x0), h, w, float(factor), level)


def _name(file: LabelsFile, window: Window | None) -> str:
    """The manifest name: the recorded image (and region) as the Export panel names it, else
    the input file's absolute path (so two inputs called alike never share outputs)."""
    if file.source:
        return file.source if window is None else f"{file.source}_{window.stem}"
    return str(file.path.resolve())


def _prepare(path: Path, args: argparse.Namespace) -> _Job:
    """Read, check and label one input, band by band (:mod:`..core.store.export_stream`)."""
    file = open_labels_file(path)
    window = _window(file, args)
    um = args.pixel_size if args.pixel_size is not None else file.pixel_size_um
    plan = plan_export(
        Rows(file.data, file.chunk_rows),
        path.name,
        input_type=args.input_type,
        convention=file.convention,
        uncertain=args.uncertain,
    )
    return _Job(path, _name(file, window), plan.kind, window, um, file.image_sha256, plan)


def _object_type(args: argparse.Namespace) -> str:
    if args.object_type is not None:
        return args.object_type
    cls = args.classification.strip().lower()
    return "annotation" if cls.startswith(ANNOTATION_CLASSES) else "detection"


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    check_output_folder(args.out)
    object_type = _object_type(args)
    # Every input is read and checked before anything is written.
    jobs = [_prepare(path, args) for path in args.inputs]
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise InputError(f"two inputs are the same region of '{twice}': export them one at a time")
    check_export_folder(args.out)
    work_started()
    log.info(
        "export: %d file(s) -> %s (%s, class %s)",
        len(jobs),
        args.out,
        object_type,
        args.classification,
    )
    for job in jobs:
        entry = write_export(
            args.out,
            job.name,
            job.plan,
            image_sha256=job.image_sha256,
            classification=args.classification.strip(),
            object_type=object_type,
            window=job.window,
            pixel_size_um=job.pixel_size_um,
        )
        where = "" if job.window is None else f" at slide {job.window.label}"
        um = "" if job.pixel_size_um is None else f", {job.pixel_size_um:.4g} µm/px"
        log.info(
            "%s (%s%s%s): %d objects -> %s, %s, %s",
            job.path.name,
            job.kind,
            where,
            um,
            entry["objects"],
            entry["mask"],
            entry["instances"],
            entry["geojson"],
        )
    return 0
