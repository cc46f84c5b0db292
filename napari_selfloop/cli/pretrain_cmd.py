"""``napari-selfloop pretrain``: train the jigsaw task on folders of images (no masks)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from ..core.engine.model import build_model
from ..core.engine.pretrain import PretrainConfig, PretrainResult, at_chance, pretrain_jigsaw
from ..core.engine.pseudolabel import PATCH_MULTIPLE
from ..core.engine.training import TrainItem
from ..core.errors import InputError
from ..core.io.atomic import sweep_stale_temporaries
from ..core.io.file_check import check_input_file
from ..core.io.images import open_image
from ..core.store.checkpoint import file_sha256, load_checkpoint
from ..core.store.project import list_images
from .args import (
    OUT_CHECKPOINT_HELP,
    Options,
    add_checkpoint,
    add_device,
    add_force,
    add_images_folder,
    add_out,
    add_precision,
    add_seed,
    refuse_existing_out,
)
from .commands import SUMMARIES
from .progressbar import drive

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain",
        help=SUMMARIES["pretrain"],
        description="Trains the encoder and the jigsaw head of --checkpoint on jigsaw puzzles "
        "of random patches of every image (PNG, JPEG, TIFF) in the --images folders; the "
        "decoder is not changed. The jigsaw head and the tile rotations are those of the "
        "checkpoint's model: choose them when creating it (`napari-selfloop init "
        "--jigsaw-head ... --jigsaw-rotation ...`). The reported L_SS and top-1 are running "
        "means over recent training puzzles; measure held-out images with "
        "`napari-selfloop evaluate-jigsaw`.",
    )
    _add_data_and_model_options(p.add_argument_group("data and model"))
    _add_training_options(p.add_argument_group("training"), d)
    _add_run_options(p.add_argument_group("run and output"), d)
    p.set_defaults(func=run)


def _add_data_and_model_options(g: Options) -> None:
    add_images_folder(
        g, action="append", metavar="DIR", help="folder of images; repeat it for several folders"
    )
    add_checkpoint(g, metavar="IN.pt", before="model to pre-train (required unless --resume): ")
    g.add_argument(
        "--resume",
        type=Path,
        metavar="RUN.pt",
        help="continue a run from a checkpoint written by pretrain",
    )


def _add_training_options(g: Options, d: PretrainConfig) -> None:
    g.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        default=d.iterations,
        help=f"optimiser steps in all, a resumed run included (default {d.iterations})",
    )
    g.add_argument(
        "--patch-size",
        type=int,
        metavar="P",
        default=d.patch_size,
        help=f"largest patch side, a multiple of {PATCH_MULTIPLE} (default {d.patch_size})",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        default=d.batch_size,
        help=f"puzzles per step at {PATCH_MULTIPLE} px; larger sides get fewer (default {d.batch_size})",
    )
    g.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        default=d.lr,
        help=f"Adam learning rate (default {d.lr:g})",
    )
    g.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train the jigsaw head only (keeps a trained model's segmentation as it is)",
    )
    g.add_argument(
        "--single-scale",
        action="store_true",
        help=f"always puzzle --patch-size patches (default: mix {PATCH_MULTIPLE}, {2 * PATCH_MULTIPLE}, ... up to it)",
    )


def _add_run_options(g: Options, d: PretrainConfig) -> None:
    add_precision(g, d.precision)
    add_seed(g, d.seed, "seeds the patches and puzzles", metavar="S")
    add_device(g)
    add_out(g, f"{OUT_CHECKPOINT_HELP}; also written when interrupted", metavar="OUT.pt")
    add_force(g)


def image_items(folders: list[Path], what: str = "--images") -> list[TrainItem]:
    """One unlabelled item per image file of the folders (a file listed twice counts once)."""
    items: list[TrainItem] = []
    seen: set[Path] = set()
    for folder in folders:
        for path in list_images(folder, what).values():
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            items.append(
                TrainItem(name=path.name, image=open_image(path), sha256=file_sha256(path))
            )
    return items


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    refuse_existing_out(out, args.force, resume=args.resume, hint=f" (or --resume {out})")
    if args.checkpoint is None and args.resume is None:
        raise InputError(
            "pass --checkpoint (the model to pre-train; create one with "
            "`napari-selfloop init`) or --resume (a run to continue)"
        )
    for path in (args.checkpoint, args.resume):
        if path is not None:
            check_input_file(path, "a checkpoint file")
    config = PretrainConfig(
        iterations=args.iterations,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        lr=args.lr,
        freeze_encoder=args.freeze_encoder,
        multiscale=not args.single_scale,
        seed=args.seed,
        precision=args.precision,
    )
    if args.checkpoint is not None:
        ck = load_checkpoint(args.checkpoint)
        model, parent = ck.model, ck.sha256
    else:
        ck = load_checkpoint(args.resume)
        model, parent = build_model(ck.config), ck.meta.get("parent")
    items = image_items(args.images)
    gen = pretrain_jigsaw(
        model,
        items,
        config,
        device=args.device,
        out=out,
        resume=args.resume,
        parent=parent,
        pixel_size_um=ck.pixel_size_um if args.checkpoint is not None else None,
    )
    # Every check is done (pretrain_jigsaw() checks before it returns the generator).
    log.info(
        "jigsaw pre-training on %d image(s): %d steps, head %s, rotation %s%s",
        len(items),
        config.iterations,
        model.config.jigsaw_head,
        model.config.jigsaw_rotation,
        ", encoder frozen" if config.freeze_encoder else "",
    )
    sweep_stale_temporaries(out.parent)
    result = drive(gen, desc="pretrain", quiet=args.quiet)
    _report(result, config, args.resume)
    return 0


def _report(result: PretrainResult, config: PretrainConfig, resume: Path | None) -> None:
    """One line on stdout on the run (or on why it had nothing to do); a warning when the
    jigsaw is still at chance."""
    if result.steps == 0 or math.isnan(result.loss):
        print(
            f"nothing to do: {resume} has already run {config.iterations} steps "
            "(raise --iterations to continue)"
        )
        return
    print(
        f"L_SS {result.loss:.3f} nats (chance {result.chance_loss:.3f}), "
        f"top-1 {100 * result.top1:.1f}% (running mean over the last "
        f"{min(result.steps, config.window)} steps); {result.steps} steps in "
        f"{result.seconds:.0f} s -> {result.checkpoint}"
    )
    if at_chance(result.loss, result.chance_loss):
        log.warning(
            "the jigsaw is still at chance: self-loop uncertainty carries no information "
            "yet; train longer (raise --iterations and --resume the run)"
        )
