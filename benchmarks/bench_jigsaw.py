"""Is the jigsaw task learned? Head x rotation mode x patch size, on real MoNuSeg images.

Each variant pre-trains a fresh ResUNet-18 (``--width``) on jigsaw puzzles of the 24
MoNuSeg training images of the benchmark split (``bench_monuseg.split``: 6 of 30 held out,
seed 0) and is then scored by :func:`evaluate_jigsaw` on the 6 held-out images (mean
``L_SS`` and top-1 on ``--puzzles`` fixed-seed puzzles, at several patch sizes: does a
jigsaw learned on 96-px patches transfer to the larger patches pseudo-labelling uses?).
Results are written after every variant, so a stopped run loses nothing.

Run:  python benchmarks/bench_jigsaw.py                    (-> results/jigsaw.json)
      python benchmarks/bench_jigsaw.py --variants slots/none --width 32 --steps 3000 \\
          --out benchmarks/results/jigsaw_w32.json --save /tmp/jigsaw_w32.pt
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from bench_monuseg import DATA, load_monuseg, split  # noqa: E402

from napari_selfloop.core.engine.datasets import TrainItem  # noqa: E402
from napari_selfloop.core.engine.model import ModelConfig, build_model  # noqa: E402
from napari_selfloop.core.engine.pretrain import PretrainConfig, evaluate_jigsaw, pretrain_jigsaw  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402

log = logging.getLogger("bench_jigsaw")
DEFAULT_VARIANTS = ("slots/none", "gap/none", "slots/per-class", "slots/random")


def run_variant(
    variant: str, train_items: list[TrainItem], test_images: list[Any], args: argparse.Namespace
) -> dict[str, Any]:
    head, rotation = variant.split("/")
    model = build_model(
        ModelConfig(width=args.width, jigsaw_head=head, jigsaw_rotation=rotation), seed=args.seed
    )
    cfg = PretrainConfig(
        iterations=args.steps,
        patch_size=args.patch,
        batch_size=args.batch,
        lr=args.lr,
        multiscale=not args.single_scale,
        seed=args.seed,
        precision="fp32",
        window=50,
        save_every=max(args.steps // 10, 1),
    )
    t0 = time.perf_counter()
    gen = pretrain_jigsaw(
        model, train_items, cfg, device="cpu", out=args.save if args.save else None
    )
    curve = []

    def record(ev):
        if ev.data["step"] % 100 == 0:
            curve.append(
                {"step": ev.data["step"], "loss": ev.data["loss"], "top1": ev.data["top1"]}
            )
            log.info("%s %s", variant, ev.message)

    run_to_completion(gen, on_progress=record)
    train_s = time.perf_counter() - t0
    held_out = {}
    for patch in args.eval_patches:
        r = run_to_completion(
            evaluate_jigsaw(
                model, test_images, puzzles=args.puzzles, seed=0, patch_size=patch, device="cpu"
            )
        )
        held_out[str(patch)] = r
        log.info(
            "%s held-out patch %d: L_SS %.3f top-1 %.1f%%",
            variant,
            patch,
            r["loss"],
            100 * r["top1"],
        )
    return {
        "variant": variant,
        "head": head,
        "rotation": rotation,
        "train_seconds": train_s,
        "curve": curve,
        "held_out": held_out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="HEAD/ROTATION")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32, help="puzzles per step at 96 px")
    ap.add_argument(
        "--single-scale",
        action="store_true",
        help="always --patch (default: sides 96 ... --patch mixed)",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--puzzles", type=int, default=512)
    ap.add_argument("--eval-patches", type=int, nargs="+", default=[96, 192, 384])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", type=Path, help="write the (last) variant's checkpoint here")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "jigsaw.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if not (DATA / "monuseg").is_dir():
        sys.exit(f"MoNuSeg not found under {DATA}")
    data = load_monuseg()
    train_idx, test_idx = split(len(data), 6, 0)
    train_items = [TrainItem(data[i]["name"], data[i]["image"]) for i in train_idx]
    test_images = [data[i]["image"] for i in test_idx]
    results: dict[str, Any] = {
        "benchmark": "jigsaw learnability (pre-training on 24 MoNuSeg images, scored on 6 held out)",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "chance_loss": math.log(100),
        "torch_threads": torch.get_num_threads(),
        "variants": [],
    }
    for variant in args.variants:
        results["variants"].append(run_variant(variant, train_items, test_images, args))
        write_json(args.out, results)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
