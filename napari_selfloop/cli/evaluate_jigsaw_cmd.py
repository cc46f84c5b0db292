"""``napari-selfloop evaluate-jigsaw``: how well a checkpoint solves jigsaw puzzles."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..core.engine.pretrain import at_chance, default_jigsaw_patch, evaluate_jigsaw
from ..core.engine.pseudolabel import PATCH_MULTIPLE
from ..core.errors import InputError
from ..core.io.atomic import write_json
from ..core.io.images import open_image
from ..core.store.checkpoint import load_checkpoint
from ..core.store.project import list_images
from .args import add_checkpoint, add_device, add_seed
from .commands import SUMMARIES
from .progressbar import drive

log = logging.getLogger(__name__)

#: Keys of :func:`.core.pretrain.evaluate_jigsaw`'s result in the --json report, which adds
#: ``checkpoint`` and ``images`` (the image files, folders expanded).
SCORE_KEYS = ("loss", "top1", "chance_loss", "puzzles", "rotation", "patch_size")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-jigsaw",
        help=SUMMARIES["evaluate-jigsaw"],
        description="Cuts seeded random patches of the images (cycling through them), puzzles "
        "each once in the model's tile-rotation mode and reports the mean L_SS against chance "
        "(ln K) and the top-1 accuracy. A jigsaw at chance makes self-loop uncertainty "
        "meaningless: pre-train it with `napari-selfloop pretrain`.",
    )
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="TIFF, PNG or JPEG files, or folders of them",
    )
    add_checkpoint(p, required=True, metavar="C")
    p.add_argument(
        "--puzzles", type=int, metavar="N", default=512, help="puzzles in all (default 512)"
    )
    add_seed(p, 0, "seeds the patches and puzzles", metavar="S")
    p.add_argument(
        "--patch-size",
        type=int,
        metavar="P",
        default=None,
        help=f"patch side, a multiple of {PATCH_MULTIPLE} (default: the side the checkpoint's "
        f"jigsaw was trained at, else {PATCH_MULTIPLE})",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="B", default=32, help="puzzles per batch (default 32)"
    )
    add_device(p)
    p.add_argument("--json", type=Path, metavar="F", help="write the scores here")
    p.set_defaults(func=run)


def image_paths(given: list[Path]) -> list[Path]:
    """The files given, with folders expanded to their image files (each file once)."""
    paths: list[Path] = []
    for path in given:
        found = list(list_images(path, "IMAGE").values()) if path.is_dir() else [path]
        paths += [p for p in found if p not in paths]
    return paths


def run(args: argparse.Namespace) -> int:
    if args.puzzles < 1:
        raise InputError(f"--puzzles must be at least 1, got {args.puzzles}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    ck = load_checkpoint(args.checkpoint)
    patch = args.patch_size if args.patch_size is not None else default_jigsaw_patch(ck.meta)
    paths = image_paths(args.images)
    images = [open_image(p) for p in paths]
    scores = drive(
        evaluate_jigsaw(
            ck.model,
            images,
            puzzles=args.puzzles,
            seed=args.seed,
            patch_size=patch,
            batch_size=args.batch_size,
            device=args.device,
        ),
        desc="evaluate-jigsaw",
        quiet=args.quiet,
    )
    sys.stdout.write(
        f"L_SS {scores['loss']:.3f} nats (chance {scores['chance_loss']:.3f}), "
        f"top-1 {100 * scores['top1']:.1f}% on {scores['puzzles']} puzzles, "
        f"rotation {scores['rotation']}, patch {scores['patch_size']}\n"
    )
    if at_chance(scores["loss"], scores["chance_loss"]):
        log.warning(
            "%s: the jigsaw is at chance, so self-loop uncertainty carries no "
            "information; pre-train it with `napari-selfloop pretrain`",
            args.checkpoint.name,
        )
    if args.json is not None:
        report = {k: scores[k] for k in SCORE_KEYS}
        report.update(checkpoint=str(args.checkpoint), images=[str(p) for p in paths])
        write_json(args.json, report)
        log.info("wrote %s", args.json)
    return 0
