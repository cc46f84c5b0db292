"""``napari-selfloop calibrate``: choose a model's foreground cut on annotated images."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..core.atomic import sweep_stale_temporaries, write_json
from ..core.calibration import (
    DEFAULT_GRID,
    OBJECTIVES,
    apply_calibration,
    calibrate,
    calibration_record,
)
from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..core.datasets import load_mask
from ..core.errors import InputError
from ..core.imageio import check_input_file, open_image
from ..core.project import list_images, paired_masks
from ..core.pseudolabel import PseudoLabelConfig
from .args import CHECKPOINT_HELP, checkpoint_arg
from .progressbar import drive

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="choose the foreground cut of a model on annotated images and fold it into a copy",
        description="Pseudo-labels each image of --images that has a mask in --masks (paired "
        "by stem, or STEM_mask.*; 0 background, 1 foreground, 255 not labelled) with one "
        f"softmax pass, finds the cut between {DEFAULT_GRID[0]:g} and {DEFAULT_GRID[-1]:g} on "
        "the probability that maximises the mean per-image score, and writes a copy of the "
        "model whose segmentation bias puts the decision (0.5) at that cut: every method, "
        "mask and uncertainty map then uses it. Use images the model was not trained on.",
    )
    p.add_argument("--images", required=True, type=Path, help="folder of images")
    p.add_argument("--masks", required=True, type=Path, help="folder of masks, paired by stem")
    p.add_argument(
        "--checkpoint", required=True, type=checkpoint_arg, metavar="C", help=CHECKPOINT_HELP
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="dice+balanced_accuracy",
        help="mean per-image score the cut maximises (default: the mean of Dice and "
        "balanced accuracy)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--out", required=True, type=Path, help="calibrated checkpoint to write (.pt)")
    p.add_argument("--json", type=Path, help="also write the scores at every cut here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if os.path.lexists(args.out) and not args.force:
        raise InputError(f"{args.out} exists; pass --force to overwrite it")
    check_input_file(args.checkpoint, "a checkpoint file")
    images = list_images(args.images, "--images")
    masks = paired_masks(images, args.masks)
    stems = [s for s in images if s in masks]
    if not stems:
        raise InputError(
            f"no image in {args.images} has a mask in {args.masks} (paired by stem, or STEM_mask.*)"
        )
    for stem in sorted(set(images) - set(stems)):
        log.warning("no mask for %s: left out", images[stem].name)
    ck = load_checkpoint(args.checkpoint)
    pixels = [open_image(images[s]) for s in stems]
    truths = [load_mask(masks[s]) for s in stems]
    cal = drive(
        calibrate(
            ck.model,
            pixels,
            truths,
            objective=args.objective,
            config=PseudoLabelConfig(method="softmax"),
            device=args.device,
        ),
        desc="calibrate",
        quiet=args.quiet,
    )
    record = calibration_record(cal, [images[s].name for s in stems])
    record["source_sha256"] = ck.sha256
    apply_calibration(ck.model, cal.threshold)
    meta = ck.meta
    sweep_stale_temporaries(args.out.parent)
    save_checkpoint(
        args.out,
        ck.model,
        training=meta.get("training"),
        history=meta.get("history"),
        metrics={**(meta.get("metrics") or {}), "calibration": record},
        parent=ck.sha256,
        data=meta.get("data"),
        note=meta.get("note"),
        pixel_size_um=ck.pixel_size_um,
    )
    b, a = record["before"], record["after"]
    sys.stdout.write(
        f"cut {cal.threshold:.2f} ({args.objective}, {len(stems)} images): Dice "
        f"{b['dice']:.1f} -> {a['dice']:.1f}, balanced accuracy {b['balanced_accuracy']:.1f} -> "
        f"{a['balanced_accuracy']:.1f}, precision {b['precision']:.1f} -> {a['precision']:.1f}, "
        f"recall {b['recall']:.1f} -> {a['recall']:.1f}\n"
    )
    if cal.threshold == 0.5:
        log.info("the model's own cut (0.5) is the best on these images: the copy is unchanged")
    elif cal.threshold in (DEFAULT_GRID[0], DEFAULT_GRID[-1]):
        log.warning(
            "the cut is at the end of the range (%g): the model is far off on these images; "
            "check the masks, or fine-tune it on them",
            cal.threshold,
        )
    if args.json is not None:
        write_json(args.json, {**record, "checkpoint": str(args.checkpoint), "curve": cal.curve})
        log.info("wrote %s", args.json)
    log.info("wrote %s", args.out)
    return 0
