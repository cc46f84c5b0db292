"""``napari-selfloop init``: write a freshly initialised ResUNet-18 checkpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..core.engine.jigsaw import ROTATIONS
from ..core.engine.model import DECODERS, JIGSAW_HEADS, ModelConfig, build_model, count_parameters
from ..core.errors import InputError
from ..core.io.atomic import sweep_stale_temporaries
from ..core.store.checkpoint import save_checkpoint
from .args import OUT_CHECKPOINT_HELP, add_force, add_out, add_seed, add_width, refuse_existing_out
from .commands import SUMMARIES

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = ModelConfig()
    p = sub.add_parser(
        "init",
        help=SUMMARIES["init"],
        description="The jigsaw head and tile rotations chosen here are the model's for good: "
        "`pretrain`, `train` and `pseudo-label` use them.",
    )
    add_out(p, OUT_CHECKPOINT_HELP)
    add_seed(p, 0, "initialisation seed")
    add_width(p, "channels of the first stage; 64 is the real ResUNet-18")
    p.add_argument(
        "--dropout", type=float, default=d.dropout, help=f"decoder dropout (default {d.dropout})"
    )
    p.add_argument(
        "--jigsaw-head",
        choices=JIGSAW_HEADS,
        default=d.jigsaw_head,
        help="slots: pool to the 3x3 tile layout, then linear (learns faster); gap: "
        f"global average pool, the paper's head (default {d.jigsaw_head})",
    )
    p.add_argument(
        "--jigsaw-rotation",
        choices=ROTATIONS,
        default=d.jigsaw_rotation,
        help="how puzzle tiles are rotated in jigsaw training and self-loop "
        f"pseudo-labelling (default {d.jigsaw_rotation})",
    )
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default=d.decoder,
        help="tapered: 256/128/64/32/16 channels (at width 64), about half the time of "
        f"matched, the decoder of earlier versions (default {d.decoder})",
    )
    p.add_argument(
        "--work-size",
        type=int,
        default=None,
        metavar="PX",
        help="resize every image so that its longer side has PX pixels before the model "
        "sees it (photographs with no fixed scale, such as dermoscopy; outputs come back "
        "at the image's size); default: images at their own size",
    )
    add_force(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    refuse_existing_out(out, args.force)
    try:
        config = ModelConfig(
            width=args.width,
            dropout=args.dropout,
            jigsaw_head=args.jigsaw_head,
            jigsaw_rotation=args.jigsaw_rotation,
            decoder=args.decoder,
            work_size=args.work_size,
        )
    except ValueError as e:
        raise InputError(str(e)) from None
    model = build_model(config, seed=args.seed)
    sweep_stale_temporaries(out.parent)
    save_checkpoint(out, model, training={"init_seed": args.seed}, note="initialised by `init`")
    log.info(
        "wrote %s: ResUNet-18, %.2f M parameters, seed %d, jigsaw head %s, rotation %s",
        out,
        count_parameters(model) / 1e6,
        args.seed,
        config.jigsaw_head,
        config.jigsaw_rotation,
    )
    return 0
