"""How often does the plausibility warning fire, and where?

The warning (:mod:`napari_selfloop.core.engine.plausibility`) compares a proposal's foreground
share and typical nucleus size with the range recorded in the checkpoint from its
training images. It must stay quiet on tissue like the training tissue and speak where
the model is badly wrong. For a leave-one-organ-out base model (``bench_hitl.py``'s, whose
record holds only the other organs) this proposes on three sets and counts how often it
fires, beside how wrong each proposal is (pixel Dice, edits per 100 nuclei):

- ``training organs``: the MoNuSeg images of the organs the model was trained on;
- ``held-out organ``: the images of ``--organ`` (tissue it has not seen);
- ``dermoscopy``: ``--isic`` ISIC images (not tissue at all: a stand-in for an image the
  model knows nothing about; no nuclei truth, so no edits).

With ``--split val`` instead of ``--organ``, the checkpoint is a model trained on the
training part of the validation split (``train_instances.py --split val``) and the sets
are its training images and its validation images (tissue like the training tissue that
the model never saw: where the warning must stay quiet)::

    python benchmarks/bench_plausibility.py --checkpoint runs/loo-prostate/segment.pt \\
        --organ prostate --out benchmarks/results/plausibility_loo_prostate.json
    python benchmarks/bench_plausibility.py --checkpoint runs/inst-val-900.pt --split val \\
        --isic 0 --out benchmarks/results/plausibility_val.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from monuseg_organs import ORGANS, leave_one_organ_out  # noqa: E402
from train_bundled import load_dataset, three_way_split  # noqa: E402

from napari_selfloop.core.engine.datasets import PreparedItem  # noqa: E402
from napari_selfloop.core.engine.metrics import panoptic_scores, pixel_scores  # noqa: E402
from napari_selfloop.core.engine.plausibility import (  # noqa: E402
    plausibility_warning,
    record_of,
    with_entropy,
)
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label  # noqa: E402
from napari_selfloop.core.engine.training import TrainConfig, own_certainty  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402
from napari_selfloop.core.store.checkpoint import load_checkpoint  # noqa: E402


def check(model: Any, record: Any, d: dict[str, Any], method: str) -> dict[str, Any]:
    q = 1 if method == "softmax" else 10
    r = run_to_completion(
        pseudo_label(
            d["image"], model, PseudoLabelConfig(method=method, q=q), device="cpu", instances=True
        )
    )
    warning = plausibility_warning(r.info.get("figures"), record)
    row: dict[str, Any] = {
        "fired": warning is not None,
        "figures": {
            k: round(float(v), 4) if math.isfinite(v) else None
            for k, v in r.info["figures"].items()
        },
    }
    if "labels" in d:  # nuclei truth (not for the dermoscopy images)
        row["dice"] = round(float(pixel_scores(r.probability > 0.5, d["mask"])["f1"]), 4)
        row["edits_per_100"] = round(
            float(panoptic_scores(d["labels"], r.instances)["edits_per_100"]), 1
        )
    if warning:
        row["warning"] = warning
    return row


def certainty_values(model: Any, images: list[dict[str, Any]]) -> list[float]:
    """The model's :func:`fg_entropy` on its training images, by ``train``'s own code."""
    items = [
        PreparedItem(d["name"], d["image"], *d["mask"].shape, d["mask"].astype("uint8"), None)
        for d in images
    ]
    return run_to_completion(
        own_certainty(model, items, TrainConfig(), torch.device("cpu"), lambda m: m)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--organ", choices=ORGANS, help="the organ it never saw")
    where.add_argument(
        "--split", choices=("val",), help="the validation split's training and validation images"
    )
    p.add_argument("--isic", type=int, default=12, help="ISIC images to check (0: none)")
    p.add_argument("--method", default="softmax")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    record = record_of(ckpt.meta)
    if record is None:
        raise SystemExit(f"{args.checkpoint} records no tissue range: train it with this version")
    model = ckpt.model.eval()
    data = load_dataset("monuseg/train")
    if args.organ:
        train_idx, held_idx = leave_one_organ_out([d["name"] for d in data], args.organ)
        held_name = "held-out organ"
    else:  # the split of train_instances.py --split val (and tune_instances.py)
        train_idx, held_idx, _ = three_way_split(len(data), 6, 6, 0)
        held_name = "validation images"
    if not record.get("fg_entropy"):
        # A checkpoint trained before the certainty record: measure it as ``train`` does at
        # its end, on the model's training images (all fully labelled).
        t0 = time.perf_counter()
        record = with_entropy(record, certainty_values(model, [data[i] for i in train_idx]))
        print(f"[plausibility] recorded certainty in {time.perf_counter() - t0:.0f} s: {record}")
    sets = {
        "training organs": [data[i] for i in train_idx],
        held_name: [data[i] for i in held_idx],
    }
    if args.isic:
        sets["dermoscopy"] = load_dataset("isic512/train")[: args.isic]
    report: dict[str, Any] = {
        "benchmark": "plausibility",
        "command": " ".join(["python", "benchmarks/bench_plausibility.py", *sys.argv[1:]]),
        "checkpoint": str(args.checkpoint),
        "organ": args.organ,
        "split": args.split,
        "method": args.method,
        "record": record,
        "sets": {},
    }
    t0 = time.perf_counter()
    for name, images in sets.items():
        rows = {d["name"]: check(model, record, d, args.method) for d in images}
        fired = sum(r["fired"] for r in rows.values())
        report["sets"][name] = {"fired": fired, "images": len(rows), "per_image": rows}
        print(f"[plausibility] {name}: fired on {fired} of {len(rows)}", flush=True)
        write_json(args.out, report)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
