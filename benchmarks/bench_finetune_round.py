"""How long does one Fine-tune round take on this machine? The ``train`` command's whole
process (start-up, reading the images, training, the certainty record, writing the
checkpoint), as ``bench_hitl.py`` runs it: one corrected 500x500 region (one id per
nucleus, 255 elsewhere) of a held-out prostate image, from the leave-one-organ-out base
model, at ``--threads`` threads with nothing else running.

Arms (``--arms``; ``defaults`` is ``TrainConfig()`` as the Fine-tune panel uses it, the
others change one or two settings) run in turn, A B C A B C ..., so a drift of the
machine's speed touches every arm alike; medians are reported::

    python benchmarks/bench_finetune_round.py --base runs/loo-prostate/segment.pt \\
        --repeats 3 --out benchmarks/results/finetune_round.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_hitl import fine_tune  # noqa: E402
from monuseg_organs import leave_one_organ_out  # noqa: E402
from train_bundled import load_dataset  # noqa: E402

from napari_selfloop.core.engine.training import TrainConfig  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402

#: The arms: train options beside the defaults.
ARMS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "whole network, 200 steps": {"encoder": "train"},
    "whole network, 120 steps": {"encoder": "train", "iterations": 120},
    "defaults, watershed settings kept": {"instance_rule": "keep"},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the prostate leave-one-out model")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    data = load_dataset("monuseg/train")
    _, held = leave_one_organ_out([d["name"] for d in data], "prostate")
    image = data[held[0]]
    seconds: dict[str, list[float]] = {arm: [] for arm in args.arms}
    report: dict[str, Any] = {
        "benchmark": "finetune_round",
        "command": " ".join(["python", "benchmarks/bench_finetune_round.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "threads": args.threads},
        "image": image["name"],
        "region": 500,
        "defaults": {
            k: v
            for k, v in asdict(TrainConfig()).items()
            if k in ("framework", "iterations", "patch_size", "batch_size", "lr", "batchnorm")
        },
        "arms": {},
    }
    for _ in range(args.repeats):
        for arm in args.arms:
            with tempfile.TemporaryDirectory() as tmp:
                _, s, _ = fine_tune(args.base, image, 500, ARMS[arm], args.threads, Path(tmp))
            seconds[arm].append(s)
            report["arms"][arm] = {
                "settings": ARMS[arm],
                "seconds": seconds[arm],
                "median_seconds": round(float(np.median(seconds[arm])), 1),
            }
            print(f"[round] {arm}: {s:.1f} s", flush=True)
            write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
