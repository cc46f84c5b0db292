"""``napari-selfloop train``: semi-supervised fine-tuning from folders of images and masks."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from ..core.engine.datasets import mask_instances, open_mask
from ..core.engine.device import PRECISIONS
from ..core.engine.model import ModelConfig, build_model, check_seed
from ..core.engine.pseudolabel import PATCH_MULTIPLE, STEP_RULES
from ..core.engine.training import FRAMEWORKS, VAL_METRICS, TrainConfig, TrainItem, train
from ..core.errors import InputError
from ..core.io.atomic import sweep_stale_temporaries
from ..core.io.images import check_input_file, open_image
from ..core.store.checkpoint import file_sha256, load_checkpoint
from ..core.store.project import list_images, paired_masks
from .args import CHECKPOINT_HELP, checkpoint_arg
from .commands import SUMMARIES
from .progressbar import drive

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help=SUMMARIES["train"],
        description="Images in --images are paired with masks in --masks by file stem (a mask "
        "may also be named STEM_mask.*). Masks are 0 background, 1 foreground, 255 not "
        "labelled. Unlabelled images are the images not chosen as labelled, plus --unlabeled.",
    )
    p.add_argument("--images", required=True, type=Path, help="folder of images")
    p.add_argument("--masks", type=Path, help="folder of masks (uint8 0/1/255), paired by stem")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--labeled",
        nargs="+",
        metavar="NAME",
        help="images to use as labelled (stems or file names); default: all with a mask",
    )
    which.add_argument(
        "--labeled-fraction",
        type=float,
        metavar="F",
        help="label a seeded random fraction of the images that have masks",
    )
    p.add_argument(
        "--validation",
        nargs="+",
        metavar="NAME",
        default=[],
        help="images (with masks) held out to choose the best checkpoint",
    )
    p.add_argument("--unlabeled", type=Path, help="extra folder of unlabelled images")
    p.add_argument("--framework", choices=FRAMEWORKS, default=d.framework)
    p.add_argument(
        "--checkpoint",
        type=checkpoint_arg,
        help=f"initial model (default: a new ResUNet-18): {CHECKPOINT_HELP}",
    )
    p.add_argument("--resume", type=Path, help="continue a run from a checkpoint written by train")
    p.add_argument("--width", type=int, default=64, help="width of a new model (64 = ResUNet-18)")
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--q", type=int, default=d.q, help=f"jigsaw permutations per patch ({d.q})")
    p.add_argument("--threshold", type=float, default=d.threshold)
    p.add_argument("--confidence", choices=("two-sided", "foreground"), default=d.confidence)
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate ({d.lr:g})")
    p.add_argument(
        "--ss-lr",
        type=float,
        default=d.ss_lr,
        help=f"step size of the Q self-loop encoder updates ({d.ss_lr:g})",
    )
    p.add_argument(
        "--ss-step-rule",
        choices=STEP_RULES,
        default=d.ss_step_rule,
        help=f"rule of the self-loop encoder updates ({d.ss_step_rule})",
    )
    p.add_argument(
        "--no-grid-shift",
        dest="grid_shift",
        action="store_false",
        default=d.grid_shift,
        help="puzzle on a fixed 3x3 grid (default: a random grid phase per puzzle)",
    )
    p.add_argument(
        "--jigsaw-warmup",
        type=int,
        default=d.jigsaw_warmup,
        metavar="N",
        help="steps of jigsaw pre-training on all the images before the objective "
        f"(default {d.jigsaw_warmup}: none; see also `napari-selfloop pretrain`)",
    )
    p.add_argument(
        "--jigsaw-batch-size",
        type=int,
        default=d.jigsaw_batch_size,
        help=f"puzzles per jigsaw warm-up step at {PATCH_MULTIPLE} px ({d.jigsaw_batch_size})",
    )
    p.add_argument(
        "--jigsaw-patch-size",
        type=int,
        default=d.jigsaw_patch_size,
        help=f"largest patch side of the jigsaw warm-up, a multiple of {PATCH_MULTIPLE} ({d.jigsaw_patch_size})",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help="fraction of iterations on labelled data only before pseudo-labels",
    )
    p.add_argument(
        "--gate-dice",
        type=float,
        default=d.gate_dice,
        help="semi-supervised frameworks: use the unlabelled images only once the model's "
        f"Dice on its labelled patches reaches this ({d.gate_dice:g}; 0: from the first step)",
    )
    p.add_argument(
        "--dice-weight",
        type=float,
        default=d.dice_weight,
        help=f"weight of a soft Dice loss added to L_SEG's cross-entropy ({d.dice_weight:g}: none)",
    )
    p.add_argument(
        "--puzzle-seg-weight",
        type=float,
        default=d.puzzle_seg_weight,
        help="weight of L_SEG on the jigsaw-puzzled labelled patches, which teaches the model to "
        f"segment the puzzles self-loop pseudo-labels are made of ({d.puzzle_seg_weight:g}: none)",
    )
    p.add_argument(
        "--scale-jitter",
        type=float,
        default=d.scale_jitter,
        help="scale augmentation: patches are cut at up to 1 + this times (or that fraction "
        "of) the patch side and resized to it; useful for a model with a work size, whose "
        f"patches are whole images ({d.scale_jitter:g}: none)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--patch-size", type=int, default=d.patch_size, help=f"multiple of {PATCH_MULTIPLE}"
    )
    p.add_argument("--validate-every", type=int, default=d.validate_every)
    p.add_argument(
        "--val-metric",
        choices=VAL_METRICS,
        default=d.val_metric,
        help="how the --validation images choose the best weights: Dice of all their pixels "
        "together, or the mean of each image's Dice (a few images with very large objects "
        f"then do not decide alone) ({d.val_metric})",
    )
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.pt)")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing --out (not needed to --resume it in place)",
    )
    p.set_defaults(func=run)


def _pick(names: list[str], images: dict[str, Path], what: str) -> list[str]:
    stems = []
    for name in names:
        stem = Path(name).stem if Path(name).stem in images else name
        if stem not in images:
            raise InputError(f"{what} image {name!r} is not in the images folder")
        stems.append(stem)
    return stems


def _item(stem: str, path: Path, mask_path: Path | None) -> TrainItem:
    """An image and its mask as stored (checked and converted by the shared mask rule)."""
    mask, convention = (None, "auto") if mask_path is None else open_mask(mask_path)
    instances = None if mask_path is None else mask_instances(mask_path, mask, convention)
    return TrainItem(
        name=path.name,
        image=open_image(path),
        mask=mask,
        sha256=file_sha256(path),
        mask_convention=convention,
        instances=instances,
    )


def same_file(a: Path | None, b: Path) -> bool:
    """Whether ``a`` (None: no file) and ``b`` name the same file."""
    if a is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def run(args: argparse.Namespace) -> int:
    if os.path.lexists(args.out) and not args.force and not same_file(args.resume, args.out):
        hint = f" (or --resume {args.out} to continue it)" if args.resume is None else ""
        raise InputError(f"{args.out} exists; pass --force to overwrite it{hint}")
    if args.checkpoint is not None and args.resume is not None:
        raise InputError(
            "pass either --checkpoint (start from a model) or --resume (continue a run)"
        )
    check_seed(args.seed)
    for path in (args.checkpoint, args.resume):
        if path is not None:
            check_input_file(path, "a checkpoint file")
    images = list_images(args.images, "--images")
    masks = paired_masks(images, args.masks) if args.masks is not None else {}
    with_masks = [s for s in images if s in masks]
    validation = _pick(args.validation, images, "--validation")
    if args.labeled:
        labelled = _pick(args.labeled, images, "--labeled")
    elif args.labeled_fraction is not None:
        if not 0 < args.labeled_fraction <= 1:
            raise InputError(f"--labeled-fraction must be in (0, 1], got {args.labeled_fraction}")
        pool = [s for s in with_masks if s not in validation]
        n = max(1, round(args.labeled_fraction * len(pool))) if pool else 0
        rng = np.random.default_rng(args.seed)
        labelled = sorted(rng.choice(pool, size=n, replace=False).tolist()) if n else []
    else:
        labelled = [s for s in with_masks if s not in validation]
    for stem in labelled + validation:
        if stem not in masks:
            raise InputError(
                f"{images[stem].name} has no mask in {args.masks or '(no --masks given)'}: "
                f"add {stem}.png/.tif there"
            )
    overlap = set(labelled) & set(validation)
    if overlap:
        raise InputError(f"{sorted(overlap)[0]} is both labelled and validation: pick one")
    unlabelled = [s for s in images if s not in labelled and s not in validation]
    extra = list_images(args.unlabeled, "--unlabeled") if args.unlabeled is not None else {}
    config = TrainConfig(
        framework=args.framework,
        iterations=args.iterations,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        q=args.q,
        threshold=args.threshold,
        confidence=args.confidence,
        lr=args.lr,
        warmup=args.warmup,
        gate_dice=args.gate_dice,
        seed=args.seed,
        precision=args.precision,
        validate_every=args.validate_every,
        ss_lr=args.ss_lr,
        ss_step_rule=args.ss_step_rule,
        grid_shift=args.grid_shift,
        jigsaw_warmup=args.jigsaw_warmup,
        jigsaw_batch_size=args.jigsaw_batch_size,
        jigsaw_patch_size=args.jigsaw_patch_size,
        dice_weight=args.dice_weight,
        puzzle_seg_weight=args.puzzle_seg_weight,
        scale_jitter=args.scale_jitter,
        val_metric=args.val_metric,
    )
    parent = None
    if args.checkpoint is not None:
        ck = load_checkpoint(args.checkpoint)
        model, parent = ck.model, ck.sha256
    elif args.resume is not None:
        model = build_model(load_checkpoint(args.resume).config)
    else:
        try:
            model = build_model(ModelConfig(width=args.width), seed=args.seed)
        except ValueError as e:
            raise InputError(str(e)) from None
    lab_items = [_item(s, images[s], masks[s]) for s in labelled]
    val_items = [_item(s, images[s], masks[s]) for s in validation]
    unl_items = [_item(s, images[s], None) for s in unlabelled]
    unl_items += [_item(s, p, None) for s, p in extra.items()]
    gen = train(
        model,
        lab_items,
        unl_items,
        config,
        validation=val_items or None,
        device=args.device,
        resume=args.resume,
        out=args.out,
        parent=parent,
        pixel_size_um=ck.pixel_size_um if args.checkpoint is not None else None,
    )
    # Every check is done (train() checks before it returns the generator): log, sweep, run.
    log.info(
        "training %s: %d labelled, %d unlabelled, %d validation image(s), %d iterations",
        config.framework,
        len(lab_items),
        len(unl_items),
        len(val_items),
        config.iterations,
    )
    sweep_stale_temporaries(args.out.parent)
    result = drive(gen, desc=f"train {config.framework}", quiet=args.quiet)
    metric = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
    log.info(
        "best %s %s at step %d; %d steps in %.0f s -> %s",
        result.metric_name,
        metric,
        result.best_step,
        result.steps,
        result.seconds,
        result.checkpoint or "(nothing written)",
    )
    return 0
