"""Does the gate of the semi-supervised frameworks (``TrainConfig.gate_dice``) help a
model that does not segment yet? A small, seeded run anyone can repeat in minutes.

A fresh width-8 ResUNet, one synthetic image of which only a 64x64 corner is labelled, six
unlabelled images; 150 steps of ``supervised``, ``selfloop`` with the gate off (the
paper's schedule: unlabelled images from step 1) and ``selfloop`` with the default gate;
pixel Dice and precision of softmax proposals on four held-out images, and the seconds::

    python benchmarks/bench_gate.py --seeds 0 1 --out benchmarks/results/gate.json
"""

from __future__ import annotations

import argparse
import sys
import time
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

ARMS = (("supervised", 0.0), ("selfloop", 0.0), ("selfloop", TrainConfig().gate_dice))


def arm(framework: str, gate: float, iterations: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=8), seed=seed)
    img, mask = blobs(100, 128)
    part = np.full_like(mask, 255)
    part[:64, :64] = mask[:64, :64]
    unl = [TrainItem(f"u{s}", blobs(200 + s, 128)[0]) for s in range(6)]
    cfg = TrainConfig(
        framework=framework,
        iterations=iterations,
        patch_size=96,
        batch_size=2,
        unlabeled_batch_size=6,
        lr=3e-3,
        q=2,
        seed=seed,
        validate_every=10_000,
        gate_dice=gate,
    )
    t0 = time.perf_counter()
    result = run_to_completion(train(model, [TrainItem("l0", img, part)], unl, cfg, device="cpu"))
    seconds = time.perf_counter() - t0
    scores = []
    for s in range(4):
        test, truth = blobs(300 + s, 128)
        r = run_to_completion(
            pseudo_label(test, model.eval(), PseudoLabelConfig(method="softmax"), device="cpu")
        )
        scores.append(pixel_scores(r.probability > 0.5, truth))
    opened = [h["unlabelled_from"] for h in result.history if "unlabelled_from" in h]
    return {
        "framework": framework,
        "gate_dice": gate,
        "seed": seed,
        "dice": round(float(np.mean([s["f1"] for s in scores])), 4),
        "precision": round(float(np.mean([s["precision"] for s in scores])), 4),
        "unlabelled_from": opened[0] if opened else None,
        "seconds": round(seconds, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "benchmark": "gate",
        "command": " ".join(["python", "benchmarks/bench_gate.py", *sys.argv[1:]]),
        "runs": [],
    }
    for seed in args.seeds:
        for framework, gate in ARMS:
            row = arm(framework, gate, args.iterations, seed)
            report["runs"].append(row)
            print(row, flush=True)
            write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
