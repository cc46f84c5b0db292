"""What does one corrected region teach the rest of its organ? Per-image precision and recall.

``bench_hitl.py`` counts edits over the organ's other images together; this takes one
corrected image of a leave-one-organ-out organ, fine-tunes the base model on its top-left
region exactly as ``bench_hitl.py`` does (the ``train`` command with the Fine-tune panel's
defaults, or the settings given), and reports for every image of the organ the pixel
precision and recall of the proposal's foreground and the number of proposed nuclei,
before and after, beside what the corrected region holds (its nuclei, their median area,
its foreground share)::

    python benchmarks/bench_hitl_region.py --organ kidney --image TCGA-B0-5711-01Z-00-DX1.png \\
        --base runs/loo-kidney/base.pt --out benchmarks/results/hitl_region_kidney_5711.json
    python benchmarks/bench_hitl_region.py ... --label dice-1 --set dice_weight=1.0

Arms go into ``--out`` side by side (``--label``); the before figures are stored once.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_hitl import fine_tune, propose  # noqa: E402
from monuseg_organs import ORGANS, leave_one_organ_out  # noqa: E402
from train_bundled import add_settings_option, load_dataset, train_settings  # noqa: E402

from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.store.checkpoint import load_checkpoint  # noqa: E402


def region_figures(labels: np.ndarray) -> dict[str, float]:
    """What the corrected region holds: nuclei, their median area (px), foreground share."""
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    return {
        "nuclei": int(ids.size),
        "median_area": float(np.median(areas)) if ids.size else 0.0,
        "foreground_share": round(float((labels > 0).mean()), 4),
    }


def foreground_figures(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pixel precision and recall of a proposal's foreground, and its number of nuclei."""
    p, t = pred > 0, labels > 0
    tp = float((p & t).sum())
    return {
        "precision": round(tp / max(float(p.sum()), 1.0), 4),
        "recall": round(tp / max(float(t.sum()), 1.0), 4),
        "proposed_nuclei": int(np.unique(pred[pred > 0]).size),
        "true_nuclei": int(np.unique(labels[labels > 0]).size),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--organ", choices=ORGANS, required=True)
    p.add_argument("--image", required=True, help="file name of the corrected image")
    p.add_argument("--base", type=Path, required=True, help="a model trained without --organ")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--region", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--label", default="defaults")
    add_settings_option(
        p, "a train option (TrainConfig field) and its JSON value, e.g. dice_weight=1.0"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = train_settings(p, args.set)
    data = load_dataset("monuseg/train")
    _, held = leave_one_organ_out([d["name"] for d in data], args.organ)
    images = [data[i] for i in held]
    names = [d["name"] for d in images]
    if args.image not in names:
        raise SystemExit(f"{args.image} is not an image of {args.organ}: {', '.join(names)}")
    corrected = images[names.index(args.image)]
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update(
        {
            "benchmark": "bench_hitl_region",
            "organ": args.organ,
            "image": args.image,
            "base": str(args.base),
            "region": region_figures(corrected["labels"][: args.region, : args.region]),
            "other_regions": {
                d["name"]: region_figures(d["labels"][: args.region, : args.region])
                for d in images
                if d is not corrected
            },
        }
    )
    if "before" not in report:
        base = load_checkpoint(args.base).model.eval()
        report["before"] = {
            d["name"]: foreground_figures(propose(base, d["image"], "softmax"), d["labels"])
            for d in images
        }
        write_json(args.out, report)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, seconds, last = fine_tune(
            args.base, corrected, args.region, settings, args.threads, Path(tmp)
        )
        model = load_checkpoint(ckpt).model.eval()
    report.setdefault("arms", {})[args.label] = {
        "settings": settings,
        "command": " ".join(["python", "benchmarks/bench_hitl_region.py", *sys.argv[1:]]),
        "finetune_seconds": seconds,
        "train_output": last,
        "after": {
            d["name"]: foreground_figures(propose(model, d["image"], "softmax"), d["labels"])
            for d in images
        },
    }
    write_json(args.out, report)
    for name in names:
        b, a = report["before"][name], report["arms"][args.label]["after"][name]
        print(
            f"{name}: precision {b['precision']:.2f} -> {a['precision']:.2f}, recall "
            f"{b['recall']:.2f} -> {a['recall']:.2f}, nuclei {b['proposed_nuclei']} -> "
            f"{a['proposed_nuclei']} (truth {a['true_nuclei']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
