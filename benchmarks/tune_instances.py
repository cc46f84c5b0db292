"""Choose the watershed's settings (marker threshold, smallest object) on validation images.

An instance-aware model's proposals become nuclei by a marker-controlled watershed
(:class:`napari_selfloop.core.engine.instances.Instancer`). This proposes once per image
(softmax), then scores every combination of the marker threshold and ``min_fraction``
(objects smaller than that fraction of the proposal's median object area are dropped) by
PQ, AJI, object F1 and edits per 100 nuclei, mean over the images, and names the best by
PQ (ties: fewer edits). The images are the fixed-seed validation split of
``train_bundled.py`` (``--split val``: never the test images) or one organ of a
leave-one-organ-out model (``--split organ --organ ORGAN``: a second check that the choice
carries to tissue the model has not seen)::

    python benchmarks/tune_instances.py --checkpoint runs/inst-val-900.pt --split val \\
        --out benchmarks/results/instances_rule_val_900.json
    python benchmarks/tune_instances.py --checkpoint runs/loo-kidney/segment.pt \\
        --split organ --organ kidney --out benchmarks/results/instances_rule_loo_kidney.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from monuseg_organs import ORGANS, leave_one_organ_out  # noqa: E402
from train_bundled import RECIPES, load_dataset, three_way_split  # noqa: E402
from train_instances import score_image  # noqa: E402

from napari_selfloop.core.engine.instances import Instancer  # noqa: E402
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402
from napari_selfloop.core.store.checkpoint import load_checkpoint  # noqa: E402

MARKERS = (0.6, 0.65, 0.7, 0.75)
FRACTIONS = (0.0, 0.2, 0.3, 0.4)


def sweep(
    maps: list[tuple[np.ndarray, np.ndarray | None]],
    truths: list[dict[str, Any]],
    kind: str,
    markers: tuple[float, ...],
    fractions: tuple[float, ...],
) -> dict[str, Any]:
    """Mean scores of every (marker, fraction) over the images."""
    rows: dict[str, Any] = {}
    for marker, fraction in itertools.product(markers, fractions):
        instancer = Instancer(kind=kind, marker=marker, min_fraction=fraction)
        per = [score_image(p, a, t, instancer) for (p, a), t in zip(maps, truths, strict=True)]
        mean = {k: round(float(np.mean([r[k] for r in per])), 4) for k in per[0]}
        rows[f"marker {marker:g} fraction {fraction:g}"] = {
            "marker": marker,
            "min_fraction": fraction,
            "mean": mean,
            "per_image": {t["name"]: r for t, r in zip(truths, per, strict=True)},
        }
        print(
            f"marker {marker:g} fraction {fraction:g}: PQ {mean['pq']:.4f} AJI {mean['aji']:.3f} "
            f"edits/100 {mean['edits_per_100']:.1f} (deletes {mean['deletes']:.0f}, "
            f"adds {mean['adds']:.0f})",
            flush=True,
        )
    return rows


def best(rows: dict[str, Any]) -> str:
    return max(rows, key=lambda k: (rows[k]["mean"]["pq"], -rows[k]["mean"]["edits_per_100"]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--split", choices=("val", "organ"), required=True)
    p.add_argument("--organ", choices=ORGANS, help="with --split organ")
    p.add_argument("--markers", type=float, nargs="+", default=list(MARKERS))
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if (args.split == "organ") != bool(args.organ):
        p.error("--organ goes with --split organ (and --split organ needs it)")
    torch.set_num_threads(args.threads)
    data = load_dataset(RECIPES["nuclei-he"]["data"])
    if args.split == "val":
        _, idx, _ = three_way_split(len(data), 6, 6, 0)
    else:
        _, idx = leave_one_organ_out([d["name"] for d in data], args.organ)
    truths = [data[i] for i in idx]
    model = load_checkpoint(args.checkpoint).model.float().eval()
    kind = model.config.instance_output
    if kind == "none":
        raise SystemExit(f"{args.checkpoint} is a binary model: it has no instance map to tune")
    t0 = time.perf_counter()
    maps = []
    for d in truths:
        r = run_to_completion(
            pseudo_label(
                d["image"],
                model,
                PseudoLabelConfig(method="softmax"),
                device="cpu",
                instances=False,
            )
        )
        maps.append((r.probability, r.aux))
    rows = sweep(maps, truths, kind, tuple(args.markers), tuple(args.fractions))
    chosen = best(rows)
    report = {
        "benchmark": "tune_instances",
        "command": " ".join(["python", "benchmarks/tune_instances.py", *sys.argv[1:]]),
        "checkpoint": str(args.checkpoint),
        "images": [d["name"] for d in truths],
        "evaluated_on": "validation" if args.split == "val" else f"held-out organ {args.organ}",
        "method": "softmax",
        "seconds": round(time.perf_counter() - t0, 1),
        "best": chosen,
        "rules": rows,
    }
    write_json(args.out, report)
    print(f"best: {chosen}: {rows[chosen]['mean']}\nwrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
