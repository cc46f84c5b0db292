"""Does the gate of the semi-supervised frameworks (``TrainConfig.gate_dice``) help a
model that does not segment yet? A small, seeded run anyone can repeat in minutes.

A fresh width-8 ResUNet, one synthetic image of which only a 64x64 corner is labelled, six
unlabelled images; 150 steps of ``supervised``, ``selfloop`` with the gate off (the
paper's schedule: unlabelled images from step 1) and ``selfloop`` with the default gate;
pixel Dice and precision of softmax proposals on four held-out images, and the seconds::

    python benchmarks/bench_gate.py --seeds 0 1 --out benchmarks/results/gate.json

``--case monuseg`` runs the same arms on real H&E instead (``../shared/data``): two
labelled 192x192 crops of two MoNuSeg images, eight unlabelled 192x192 crops of eight
others, a fresh width-8 model, 600 steps; scored on 256x256 crops of six further images::

    python benchmarks/bench_gate.py --case monuseg --iterations 600 \
        --out benchmarks/results/gate_monuseg.json

``--case shift`` is a toy of unlabelled images unlike the labelled ones (the same discs,
scanned at 0.6 of the brightness; two whole labelled images, four unlabelled, 60 steps
are enough)::

    python benchmarks/bench_gate.py --case shift --iterations 60 --seeds 0 1 2 \
        --arms supervised "selfloop:gate_dice=0.5" "softmax:gate_dice=0.5" \
        'selfloop:gate_dice=0.5,warmup=0,batchnorm_batches="all"' \
        'softmax:gate_dice=0.5,warmup=0,batchnorm_batches="all"' \
        --out benchmarks/results/gate_shift.json

``--case protocol20`` is the issue's 20 % protocol at the scale it saw the collapse: a
fresh width-16 model whose jigsaw is pre-trained 300 steps first (``jigsaw_warmup``; the
issue saw the collapse with such a jigsaw at chance as with a pre-trained one), 6 whole
MoNuSeg images labelled and 12 unlabelled (the 18 training images of the validation
split), patch 96, batch 4, Q 3, lr 3e-4, 600 steps; scored on the split's 6 validation
images (never its test images)::

    python benchmarks/bench_gate.py --case protocol20 --iterations 600 \
        --arms supervised "selfloop:gate_dice=0" "selfloop:gate_dice=0.5" \
        --out benchmarks/results/gate_protocol20.json

The arms of one seed are paired: a semi-supervised run draws the same labelled patches and
dropout masks as supervised training (``training.side_stream``), so their difference is
what the unlabelled images add, plus the drift of two runs that part ways at their first
unlabelled step. ``supervised:lr=0.00030000003`` (the learning rate changed by 1e-7 of
itself) measures that drift alone.

``--holdout 0.2`` keeps the last fifth of each labelled image's rows out of training as the
run's own validation, and keeps the weights that score best on it (a guard "on the model's
own validation"). ``--trace`` adds each run's labelled Dice in training and its
pseudo-labels' foreground share (what the drift guard watches), by 25 steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from test_training import blobs  # noqa: E402

from napari_selfloop.core.engine.metrics import pixel_scores  # noqa: E402
from napari_selfloop.core.engine.model import ModelConfig, build_model  # noqa: E402
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label  # noqa: E402
from napari_selfloop.core.engine.training import TrainConfig, TrainItem, train  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402

#: ``framework[:setting=value,...]``: the settings override the case's ``TrainConfig``.
ARMS = ("supervised", "selfloop:gate_dice=0", f"selfloop:gate_dice={TrainConfig().gate_dice:g}")


def parse_arm(spec: str) -> tuple[str, dict[str, Any]]:
    """``selfloop:gate_dice=0.5,warmup=0.3`` -> ``("selfloop", {"gate_dice": 0.5, ...})``."""
    framework, _, rest = spec.partition(":")
    settings: dict[str, Any] = {"gate_dice": 0.0}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        settings[key] = json.loads(value)
    return framework, settings


Case = tuple[list[TrainItem], list[TrainItem], list[tuple[np.ndarray, np.ndarray]], dict]


def synthetic_case() -> Case:
    """Purple discs: one 64x64 labelled corner, six unlabelled images, four to score."""
    img, mask = blobs(100, 128)
    part = np.full_like(mask, 255)
    part[:64, :64] = mask[:64, :64]
    unl = [TrainItem(f"u{s}", blobs(200 + s, 128)[0]) for s in range(6)]
    tests = [blobs(300 + s, 128) for s in range(4)]
    return [TrainItem("l0", img, part)], unl, tests, {"batch_size": 2, "lr": 3e-3, "q": 2}


def shift_case() -> Case:
    """Purple discs again, the unlabelled images scanned darker (0.6 of the brightness): two
    whole labelled images, four unlabelled, three to score."""
    lab = [TrainItem(f"l{s}", *blobs(s, 96)) for s in range(2)]
    unl = [TrainItem(f"u{s}", (blobs(100 + s, 96)[0] * 0.6).astype(np.uint8)) for s in range(4)]
    tests = [blobs(300 + s, 96) for s in range(3)]
    return lab, unl, tests, {"batch_size": 2, "lr": 3e-3, "q": 1, "hed_jitter": 0.0}


def monuseg_case() -> Case:
    """Real H&E: crops of MoNuSeg images (two labelled, eight unlabelled, six to score)."""
    from skimage.io import imread

    root = HERE.parent.parent / "shared" / "data" / "monuseg" / "train"
    if not (root / "images").is_dir():
        raise SystemExit(f"data not found: {root} (see ../shared/data/README.md)")
    names = sorted(p.name for p in (root / "images").glob("*.png"))

    def crop(i: int, y: int, side: int) -> tuple[np.ndarray, np.ndarray]:
        image = imread(root / "images" / names[i])[..., :3]
        mask = imread(root / "masks" / names[i])
        return image[y : y + side, y : y + side].copy(), mask[y : y + side, y : y + side].copy()

    lab = [TrainItem(f"l{i}", *crop(i, 100, 192)) for i in range(2)]
    unl = [TrainItem(f"u{i}", crop(i, 500, 192)[0]) for i in range(2, 10)]
    tests = [crop(i, 300, 256) for i in range(20, 26)]
    return lab, unl, tests, {"batch_size": 4, "lr": 1e-3, "q": 3}


def protocol20_case() -> Case:
    """The 20 % protocol: 6 of the validation split's 18 training images labelled whole, the
    other 12 unlabelled, its 6 validation images scored (a width-16 model)."""
    sys.path.insert(0, str(HERE))
    from train_bundled import load_dataset, three_way_split

    data = load_dataset("monuseg/train")
    train_idx, val_idx, _ = three_way_split(len(data), 6, 6, 0)
    lab = [TrainItem(data[i]["name"], data[i]["image"], data[i]["mask"]) for i in train_idx[:6]]
    unl = [TrainItem(data[i]["name"], data[i]["image"]) for i in train_idx[6:]]
    tests = [(data[i]["image"], data[i]["mask"]) for i in val_idx]
    settings = {
        "width": 16,
        "batch_size": 4,
        "unlabeled_batch_size": 4,
        "lr": 3e-4,
        "q": 3,
        "jigsaw_warmup": 300,
        "jigsaw_patch_size": 96,
    }
    return lab, unl, tests, settings


CASES: dict[str, Callable[[], Case]] = {
    "synthetic": synthetic_case,
    "shift": shift_case,
    "monuseg": monuseg_case,
    "protocol20": protocol20_case,
}


def held_out(lab: list[TrainItem], share: float) -> tuple[list[TrainItem], list[TrainItem]]:
    """The labelled images with the last ``share`` of their rows kept out of training, and
    those rows as validation images (the whole image, only the strip labelled)."""
    train_items, val_items = [], []
    for it in lab:
        mask = np.asarray(it.mask)
        cut = mask.shape[0] - max(1, int(round(share * mask.shape[0])))
        kept, strip = mask.copy(), np.full_like(mask, 255)
        kept[cut:] = 255
        strip[cut:] = mask[cut:]
        train_items.append(TrainItem(it.name, it.image, kept))
        val_items.append(TrainItem(f"{it.name}-strip", it.image, strip))
    return train_items, val_items


def arm(
    framework: str,
    extra: dict[str, Any],
    iterations: int,
    seed: int,
    case: Case,
    holdout: float = 0.0,
    trace_runs: bool = False,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    lab, unl, tests, settings = case
    val = None
    if holdout > 0:
        lab, val = held_out(lab, holdout)
    settings = dict(settings)
    model = build_model(ModelConfig(width=settings.pop("width", 8)), seed=seed)
    cfg = TrainConfig(
        **{
            "framework": framework,
            "iterations": iterations,
            "patch_size": 96,
            "unlabeled_batch_size": len(unl),
            "seed": seed,
            "validate_every": 10_000,
            "batchnorm": "update",
            "encoder": "train",
            **settings,
            **extra,
        }
    )
    t0 = time.perf_counter()
    result = run_to_completion(train(model, lab, unl, cfg, validation=val, device="cpu"))
    seconds = time.perf_counter() - t0
    scores = []
    for test, truth in tests:
        r = run_to_completion(
            pseudo_label(test, model.eval(), PseudoLabelConfig(method="softmax"), device="cpu")
        )
        scores.append(pixel_scores(r.probability > 0.5, truth))
    opened = [h["unlabelled_from"] for h in result.history if "unlabelled_from" in h]
    own = {}
    if val:
        own = {
            "holdout": holdout,
            "best_step": result.best_step,
            "val_f1": {h["step"]: round(h["val_f1"], 4) for h in result.history if "val_f1" in h},
        }
    return {
        "framework": framework,
        **extra,
        **own,
        "seed": seed,
        "dice": round(float(np.mean([s["f1"] for s in scores])), 4),
        "precision": round(float(np.mean([s["precision"] for s in scores])), 4),
        "recall": round(float(np.mean([s["recall"] for s in scores])), 4),
        "unlabelled_from": opened[0] if opened else None,
        "unlabelled_until": result.unlabelled_until,
        "seconds": round(seconds, 1),
        **(trace(result.history) if trace_runs else {}),
    }


def trace(history: list[dict[str, Any]], every: int = 25) -> dict[str, list]:
    """The labelled Dice in training and the pseudo-labels' foreground share (what the
    drift guard watches), averaged by ``every`` steps."""
    steps = [h for h in history if h.get("step") and "labelled_dice" in h]
    windows = [steps[k : k + every] for k in range(0, len(steps), every)]
    shares = [[h["pseudo_foreground"] for h in w if "pseudo_foreground" in h] for w in windows]
    return {
        f"labelled_dice_by_{every}": [
            round(float(np.mean([h["labelled_dice"] for h in w])), 3) for w in windows
        ],
        f"pseudo_foreground_by_{every}": [
            round(float(np.mean(f)), 3) if f else None for f in shares
        ],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=tuple(CASES), default="synthetic")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), help="framework[:setting=value,...]")
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--trace",
        action="store_true",
        help="also record each run's labelled Dice and pseudo-labels' foreground share by 25 steps",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="share of each labelled image's rows kept out of training as the run's own "
        "validation (the best weights on it are kept); 0: none",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "benchmark": "gate",
        "command": " ".join(["python", "benchmarks/bench_gate.py", *sys.argv[1:]]),
        "case": args.case,
        "runs": [],
    }
    case = CASES[args.case]()
    for seed in args.seeds:
        for spec in args.arms:
            framework, extra = parse_arm(spec)
            row = arm(framework, extra, args.iterations, seed, case, args.holdout, args.trace)
            report["runs"].append(row)
            print(row, flush=True)
            write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
