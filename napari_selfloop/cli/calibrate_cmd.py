"""``napari-selfloop calibrate``: choose a model's foreground cut (and, with
``--selfloop-steps``, its self-loop step) on annotated images."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..core.engine.calibration import (
    DEFAULT_GRID,
    OBJECTIVES,
    apply_calibration,
    calibrate,
    calibration_record,
)
from ..core.engine.datasets import load_mask
from ..core.engine.model import MAX_SELFLOOP_LR
from ..core.engine.pseudolabel import PseudoLabelConfig
from ..core.engine.step_size import (
    STEP_TOLERANCE,
    choose_selfloop_step,
    set_selfloop_step,
    step_key,
    sweep_steps,
)
from ..core.errors import InputError
from ..core.io.atomic import sweep_stale_temporaries, write_json
from ..core.io.file_check import check_input_file
from ..core.io.images import check_image, open_image
from ..core.store.checkpoint import load_checkpoint, save_checkpoint
from ..core.store.project import list_images, paired_masks
from .args import (
    OUT_CHECKPOINT_HELP,
    add_checkpoint,
    add_device,
    add_force,
    add_images_folder,
    add_masks_folder,
    add_out,
    refuse_existing_out,
)
from .commands import SUMMARIES
from .progressbar import drive

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help=SUMMARIES["calibrate"],
        description="Pseudo-labels each image of --images that has a mask in --masks (paired "
        "by stem, or STEM_mask.*; 0 background, 1 foreground, 255 not labelled) with one "
        f"softmax pass, finds the cut between {DEFAULT_GRID[0]:g} and {DEFAULT_GRID[-1]:g} on "
        "the probability that maximises the mean per-image score, and writes a copy of the "
        "model whose segmentation bias puts the decision (0.5) at that cut: every method, "
        "mask and uncertainty map then uses it. With --selfloop-steps it also chooses the "
        "copy's self-loop step. Use images the model was not trained on.",
    )
    add_images_folder(p)
    add_masks_folder(p, required=True)
    add_checkpoint(p, required=True, metavar="C")
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="dice+balanced_accuracy",
        help="mean per-image score the cut maximises (default: the mean of Dice and "
        "balanced accuracy)",
    )
    p.add_argument(
        "--selfloop-steps",
        type=step_list,
        metavar="S1,S2,...",
        help="also choose the model's self-loop step among these step sizes (e.g. "
        "1e-5,1e-4,1e-3): the one whose uncertainty captures most of the errors among those "
        f"whose pseudo-labels lose at most {STEP_TOLERANCE:g} points of Dice and balanced "
        "accuracy to softmax; pseudo-labelling the copy then uses it. One self-loop "
        "pseudo-label per image and step",
    )
    add_device(p)
    add_out(p, f"calibrated {OUT_CHECKPOINT_HELP}")
    p.add_argument("--json", type=Path, help="also write the scores at every cut here")
    add_force(p)
    p.set_defaults(func=run)


def step_list(text: str) -> list[float]:
    """``1e-5,1e-4`` -> [1e-05, 0.0001]; positive finite numbers only."""
    try:
        steps = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        steps = []
    if not steps or not all(0 < s <= MAX_SELFLOOP_LR for s in steps):
        raise argparse.ArgumentTypeError(
            f"expected step sizes in (0, {MAX_SELFLOOP_LR:g}] separated by commas, got {text!r}"
        )
    return steps


def _annotated(args: argparse.Namespace) -> tuple[list[str], list[Any], list[np.ndarray]]:
    """The file names of the images that have a mask, their pixels and their masks (checked
    to match); the images without a mask are left out with a warning."""
    images = list_images(args.images, "--images")
    masks = paired_masks(images, args.masks)
    stems = [s for s in images if s in masks]
    if not stems:
        raise InputError(
            f"no image in {args.images} has a mask in {args.masks} (paired by stem, or STEM_mask.*)"
        )
    for stem in sorted(set(images) - set(stems)):
        log.warning("no mask for %s: left out", images[stem].name)
    pixels = [open_image(images[s]) for s in stems]
    truths = [load_mask(masks[s]) for s in stems]
    for stem, image, truth in zip(stems, pixels, truths):
        info = check_image(image)
        if truth.shape != (info.height, info.width):
            raise InputError(
                f"{masks[stem].name}: the mask has shape {truth.shape} but its image "
                f"{images[stem].name} is {info.height}x{info.width}: masks must have the "
                "image's height and width"
            )
    return [images[s].name for s in stems], pixels, truths


def run(args: argparse.Namespace) -> int:
    refuse_existing_out(args.out, args.force)
    check_input_file(args.checkpoint, "a checkpoint file")
    names, pixels, truths = _annotated(args)
    ck = load_checkpoint(args.checkpoint)
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
    record = calibration_record(cal, names)
    record["source_sha256"] = ck.sha256
    apply_calibration(ck.model, cal.threshold)
    metrics = {**(ck.meta.get("metrics") or {}), "calibration": record}
    if args.selfloop_steps:
        rows = drive(
            sweep_steps(ck.model, pixels, truths, args.selfloop_steps, device=args.device),
            desc="self-loop steps",
            quiet=args.quiet,
        )
        chosen = {**choose_selfloop_step(rows), "images": record["images"]}
        metrics["selfloop_step"] = {**chosen, "rows": rows}
        set_selfloop_step(ck.model, chosen["step"])
    meta = ck.meta
    sweep_stale_temporaries(args.out.parent)
    save_checkpoint(
        args.out,
        ck.model,
        training=meta.get("training"),
        history=meta.get("history"),
        metrics=metrics,
        parent=ck.sha256,
        data=meta.get("data"),
        note=meta.get("note"),
        pixel_size_um=ck.pixel_size_um,
    )
    _report(args, cal.threshold, record, metrics, len(names))
    if args.json is not None:
        extra = {"selfloop_step": metrics["selfloop_step"]} if args.selfloop_steps else {}
        write_json(
            args.json,
            {**record, "checkpoint": str(args.checkpoint), "curve": cal.curve, **extra},
        )
        log.info("wrote %s", args.json)
    log.info("wrote %s", args.out)
    return 0


def _report(args: argparse.Namespace, cut: float, record: dict, metrics: dict, images: int) -> None:
    """The scores before and after on stdout (and the chosen step's line); a note when the
    cut is the model's own or at the end of the range."""
    b, a = record["before"], record["after"]
    sys.stdout.write(
        f"cut {cut:.2f} ({args.objective}, {images} images): Dice "
        f"{b['dice']:.1f} -> {a['dice']:.1f}, balanced accuracy {b['balanced_accuracy']:.1f} -> "
        f"{a['balanced_accuracy']:.1f}, precision {b['precision']:.1f} -> {a['precision']:.1f}, "
        f"recall {b['recall']:.1f} -> {a['recall']:.1f}\n"
    )
    if args.selfloop_steps:
        sys.stdout.write(step_summary(metrics["selfloop_step"]) + "\n")
    if cut == 0.5:
        log.info("the model's own cut (0.5) is the best on these images: the copy is unchanged")
    elif cut in (DEFAULT_GRID[0], DEFAULT_GRID[-1]):
        log.warning(
            "the cut is at the end of the range (%g): the model is far off on these images; "
            "check the masks, or fine-tune it on them",
            cut,
        )


def step_summary(chosen: dict) -> str:
    """One line on the chosen self-loop step (or why none was)."""
    soft = chosen["softmax"]
    if chosen["step"] is None:
        return (
            f"self-loop step: none kept up with softmax (Dice {soft['f1']:.1f}, balanced "
            f"accuracy {soft['balanced_accuracy']:.1f}) within {chosen['tolerance']:g} points; "
            "the copy keeps the default step, and softmax or MC dropout suit it better"
        )
    c = chosen["candidates"][step_key(chosen["step"])]
    return (
        f"self-loop step {chosen['step']:g}: Dice {c['f1']:.1f}, balanced accuracy "
        f"{c['balanced_accuracy']:.1f} (softmax {soft['f1']:.1f}, {soft['balanced_accuracy']:.1f}); "
        f"errors in its 5/10/20 % most uncertain pixels {c['capture']:.1f} % on average "
        f"(softmax {soft['capture']:.1f} %)"
    )
