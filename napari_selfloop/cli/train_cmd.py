"""``napari-selfloop train``: semi-supervised fine-tuning from folders of images and masks."""

from __future__ import annotations

import argparse
import logging
from argparse import SUPPRESS
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.engine.datasets import mask_instances, open_mask
from ..core.engine.model import ModelConfig, ResUNet, build_model
from ..core.engine.pseudolabel import PATCH_MULTIPLE, STEP_RULES
from ..core.engine.seeds import check_seed
from ..core.engine.training import (
    BATCHNORM_BATCHES,
    BATCHNORM_MODES,
    ENCODER_MODES,
    FINETUNE_BLEND,
    FRAMEWORKS,
    INSTANCE_RULE_MODES,
    VAL_METRICS,
    TrainConfig,
    TrainItem,
    train,
)
from ..core.errors import InputError
from ..core.io.atomic import sweep_stale_temporaries
from ..core.io.file_check import check_input_file
from ..core.io.images import open_image
from ..core.store.checkpoint import file_sha256, load_checkpoint
from ..core.store.project import list_images, paired_masks
from .args import (
    FORCE_HELP,
    OUT_CHECKPOINT_HELP,
    Options,
    add_checkpoint,
    add_device,
    add_force,
    add_grid_shift,
    add_images_folder,
    add_masks_folder,
    add_out,
    add_patch_size,
    add_precision,
    add_seed,
    add_width,
    refuse_existing_out,
)
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
    _add_data_options(p.add_argument_group("data"))
    _add_model_options(p.add_argument_group("model"))
    _add_training_options(p.add_argument_group("training"), d)
    _add_selfloop_options(
        p.add_argument_group(
            "pseudo-labels",
            "how the semi-supervised frameworks label the unlabelled images as they train",
        ),
        d,
    )
    _add_jigsaw_warmup_options(p.add_argument_group("jigsaw warm-up"), d)
    _add_validation_options(p.add_argument_group("validation"), d)
    _add_run_options(p.add_argument_group("run and output"), d)
    p.set_defaults(func=run)


def _add_data_options(g: Options) -> None:
    add_images_folder(g)
    add_masks_folder(g)
    which = g.add_mutually_exclusive_group()
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
    g.add_argument("--unlabeled", type=Path, help="extra folder of unlabelled images")


def _add_model_options(g: Options) -> None:
    add_checkpoint(g, before="initial model (default: a new ResUNet-18): ")
    g.add_argument("--resume", type=Path, help="continue a run from a checkpoint written by train")
    add_width(g)


def _add_training_options(g: Options, d: TrainConfig) -> None:
    g.add_argument("--framework", choices=FRAMEWORKS, default=d.framework)
    g.add_argument("--iterations", type=int, default=d.iterations)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    add_patch_size(g, d.patch_size)
    g.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate ({d.lr:g})")
    g.add_argument(
        "--dice-weight",
        type=float,
        default=d.dice_weight,
        help=f"weight of a soft Dice loss added to L_SEG's cross-entropy ({d.dice_weight:g}: none)",
    )
    g.add_argument(
        "--puzzle-seg-weight",
        type=float,
        default=d.puzzle_seg_weight,
        help="weight of L_SEG on the jigsaw-puzzled labelled patches, which teaches the model to "
        f"segment the puzzles self-loop pseudo-labels are made of ({d.puzzle_seg_weight:g}: none)",
    )
    g.add_argument(
        "--scale-jitter",
        type=float,
        default=d.scale_jitter,
        help="scale augmentation: patches are cut at up to 1 + this times (or that fraction "
        "of) the patch side and resized to it; useful for a model with a work size, whose "
        f"patches are whole images ({d.scale_jitter:g}: none)",
    )
    g.add_argument(
        "--encoder",
        choices=ENCODER_MODES,
        default=d.encoder,
        help="train the encoder too, or keep it frozen and train the decoder only (a step "
        "costs about 0.65x); auto: frozen when fine-tuning a trained model "
        f"({d.encoder})",
    )
    g.add_argument(  # the flag's first spelling, as recorded benchmark commands use it
        "--freeze-encoder", dest="encoder", action="store_const", const="frozen", help=SUPPRESS
    )
    g.add_argument(
        "--batchnorm",
        choices=BATCHNORM_MODES,
        default=d.batchnorm,
        help="BatchNorm running statistics: follow the training batches, or keep the starting "
        "model's (for fine-tuning on a small corrected region); auto: kept when fine-tuning "
        f"a trained model ({d.batchnorm})",
    )
    g.add_argument(
        "--batchnorm-batches",
        choices=BATCHNORM_BATCHES,
        default=d.batchnorm_batches,
        help="which patches set the BatchNorm statistics while they learn: the labelled ones "
        "alone (the unlabelled patches of the semi-supervised frameworks are normalised by "
        f"the running statistics), or all in one batch, as before ({d.batchnorm_batches})",
    )
    g.add_argument(
        "--instance-rule",
        choices=INSTANCE_RULE_MODES,
        default=d.instance_rule,
        help="how a model with an instance output separates touching nuclei after training: "
        "auto chooses the watershed's settings again on labelled nuclei that have their own "
        f"ids (20 or more); keep leaves the starting model's ({d.instance_rule})",
    )
    g.add_argument(
        "--blend",
        type=float,
        default=d.blend,
        help="keep this fraction of what the run learned: the weights end at start + blend "
        "x (trained - start), between the starting model and the fine-tuned one (below 1 "
        f"not with --resume); default auto: {FINETUNE_BLEND:g} when fine-tuning a trained "
        "model, 1 (the trained weights) for a new model or a resumed run",
    )


def _add_selfloop_options(g: Options, d: TrainConfig) -> None:
    g.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help="fraction of iterations on labelled data only before the unlabelled images join "
        f"({d.warmup:g}; 0: from the first step, the paper's schedule)",
    )
    g.add_argument(
        "--gate-dice",
        type=float,
        default=d.gate_dice,
        help="semi-supervised frameworks: use the unlabelled images only once the model's "
        f"Dice on its labelled patches reaches this ({d.gate_dice:g}; 0: from the first step)",
    )
    g.add_argument(
        "--drift-guard",
        type=float,
        default=d.drift_guard,
        help="semi-supervised frameworks: when the pseudo-labels' foreground share falls "
        "below this fraction of where it began (or grows past its inverse), go back to where "
        f"the unlabelled images joined and go on without them ({d.drift_guard:g}; 0: off)",
    )
    g.add_argument("--q", type=int, default=d.q, help=f"jigsaw permutations per patch ({d.q})")
    g.add_argument("--threshold", type=float, default=d.threshold)
    g.add_argument("--confidence", choices=("two-sided", "foreground"), default=d.confidence)
    g.add_argument(
        "--ss-lr",
        type=float,
        default=d.ss_lr,
        help=f"step size of the Q self-loop encoder updates ({d.ss_lr:g})",
    )
    g.add_argument(
        "--ss-step-rule",
        choices=STEP_RULES,
        default=d.ss_step_rule,
        help=f"rule of the self-loop encoder updates ({d.ss_step_rule})",
    )
    add_grid_shift(g, d.grid_shift)


def _add_jigsaw_warmup_options(g: Options, d: TrainConfig) -> None:
    g.add_argument(
        "--jigsaw-warmup",
        type=int,
        default=d.jigsaw_warmup,
        metavar="N",
        help="steps of jigsaw pre-training on all the images before the objective "
        f"(default {d.jigsaw_warmup}: none; see also `napari-selfloop pretrain`)",
    )
    g.add_argument(
        "--jigsaw-batch-size",
        type=int,
        default=d.jigsaw_batch_size,
        help=f"puzzles per jigsaw warm-up step at {PATCH_MULTIPLE} px ({d.jigsaw_batch_size})",
    )
    g.add_argument(
        "--jigsaw-patch-size",
        type=int,
        default=d.jigsaw_patch_size,
        help=f"largest patch side of the jigsaw warm-up, a multiple of {PATCH_MULTIPLE} ({d.jigsaw_patch_size})",
    )


def _add_validation_options(g: Options, d: TrainConfig) -> None:
    g.add_argument(
        "--validation",
        nargs="+",
        metavar="NAME",
        default=[],
        help="images (with masks) held out to choose the best checkpoint",
    )
    g.add_argument("--validate-every", type=int, default=d.validate_every)
    g.add_argument(
        "--val-metric",
        choices=VAL_METRICS,
        default=d.val_metric,
        help="how the --validation images choose the best weights: Dice of all their pixels "
        "together, or the mean of each image's Dice (a few images with very large objects "
        f"then do not decide alone) ({d.val_metric})",
    )


def _add_run_options(g: Options, d: TrainConfig) -> None:
    add_precision(g, d.precision)
    add_seed(g, d.seed, "seeds a new model, --labeled-fraction and training")
    add_device(g)
    add_out(g, OUT_CHECKPOINT_HELP)
    add_force(g, f"{FORCE_HELP} (not needed to --resume it in place)")


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


#: The options that are :class:`TrainConfig` fields of the same name.
CONFIG_OPTIONS = (
    "framework",
    "iterations",
    "patch_size",
    "batch_size",
    "q",
    "threshold",
    "confidence",
    "lr",
    "warmup",
    "gate_dice",
    "drift_guard",
    "seed",
    "precision",
    "validate_every",
    "ss_lr",
    "ss_step_rule",
    "grid_shift",
    "jigsaw_warmup",
    "jigsaw_batch_size",
    "jigsaw_patch_size",
    "dice_weight",
    "puzzle_seg_weight",
    "scale_jitter",
    "val_metric",
    "batchnorm",
    "batchnorm_batches",
    "encoder",
    "instance_rule",
    "blend",
)


@dataclass
class _Split:
    """The images of a run by role (stems of ``images``), and ``extra`` (--unlabeled)."""

    images: dict[str, Path]
    masks: dict[str, Path]
    labelled: list[str]
    validation: list[str]
    unlabelled: list[str]
    extra: dict[str, Path]


def _check_args(args: argparse.Namespace) -> None:
    hint = f" (or --resume {args.out} to continue it)" if args.resume is None else ""
    refuse_existing_out(args.out, args.force, resume=args.resume, hint=hint)
    if args.checkpoint is not None and args.resume is not None:
        raise InputError(
            "pass either --checkpoint (start from a model) or --resume (continue a run)"
        )
    check_seed(args.seed)
    for path in (args.checkpoint, args.resume):
        if path is not None:
            check_input_file(path, "a checkpoint file")


def _labelled(args: argparse.Namespace, images: dict[str, Path], pool: list[str]) -> list[str]:
    """The labelled stems: --labeled, a seeded --labeled-fraction of ``pool`` (the images
    with masks not held out), or all of ``pool``."""
    if args.labeled:
        return _pick(args.labeled, images, "--labeled")
    if args.labeled_fraction is None:
        return pool
    if not 0 < args.labeled_fraction <= 1:
        raise InputError(f"--labeled-fraction must be in (0, 1], got {args.labeled_fraction}")
    n = max(1, round(args.labeled_fraction * len(pool))) if pool else 0
    rng = np.random.default_rng(args.seed)
    return sorted(rng.choice(pool, size=n, replace=False).tolist()) if n else []


def _split(args: argparse.Namespace) -> _Split:
    """The labelled, validation and unlabelled images, each labelled or validation image
    checked to have a mask."""
    images = list_images(args.images, "--images")
    masks = paired_masks(images, args.masks) if args.masks is not None else {}
    validation = _pick(args.validation, images, "--validation")
    pool = [s for s in images if s in masks and s not in validation]
    labelled = _labelled(args, images, pool)
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
    return _Split(images, masks, labelled, validation, unlabelled, extra)


def _start_model(args: argparse.Namespace) -> tuple[ResUNet, str | None, float | None]:
    """The model to train: --checkpoint's, --resume's layout (its weights are restored by
    train) or a new one of --width; its parent's SHA-256 and pixel size (of --checkpoint)."""
    if args.checkpoint is not None:
        ck = load_checkpoint(args.checkpoint)
        return ck.model, ck.sha256, ck.pixel_size_um
    if args.resume is not None:
        return build_model(load_checkpoint(args.resume).config), None, None
    try:
        return build_model(ModelConfig(width=args.width), seed=args.seed), None, None
    except ValueError as e:
        raise InputError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    split = _split(args)
    config = TrainConfig(**{name: getattr(args, name) for name in CONFIG_OPTIONS})
    model, parent, pixel_size_um = _start_model(args)
    images, masks = split.images, split.masks
    lab_items = [_item(s, images[s], masks[s]) for s in split.labelled]
    val_items = [_item(s, images[s], masks[s]) for s in split.validation]
    unl_items = [_item(s, images[s], None) for s in split.unlabelled]
    unl_items += [_item(s, p, None) for s, p in split.extra.items()]
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
        pixel_size_um=pixel_size_um,
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
