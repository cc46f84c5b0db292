"""``napari-selfloop init``: write a freshly initialised ResUNet-18 checkpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..core.checkpoint import save_checkpoint
from ..core.errors import InputError
from ..core.model import ModelConfig, build_model, count_parameters

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a new (untrained) model checkpoint")
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write (.pt)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--width", type=int, default=64,
                   help="channels of the first stage; 64 is the real ResUNet-18 (default)")
    p.add_argument("--dropout", type=float, default=0.2, help="decoder dropout (default 0.2)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; pass --force to overwrite it")
    try:
        config = ModelConfig(width=args.width, dropout=args.dropout)
    except ValueError as e:
        raise InputError(str(e)) from None
    model = build_model(config, seed=args.seed)
    save_checkpoint(out, model, training={"init_seed": args.seed}, note="initialised by `init`")
    log.info("wrote %s: ResUNet-18, %.2f M parameters, seed %d",
             out, count_parameters(model) / 1e6, args.seed)
    return 0
