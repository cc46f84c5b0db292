"""Which figures of a proposal tell that the model does not know the tissue?

The plausibility warning of ``nuclei-he`` compares a proposal's foreground share and median
nucleus size with its training range, and it stayed quiet on the held-out organs where
the leave-one-organ-out base model was badly wrong (``docs/instances.md``). This measures
other candidate figures of a softmax proposal, per image, for a leave-one-organ-out base
model (``bench_hitl.py``'s) on all 30 MoNuSeg training images: the organs it was trained
on and the held-out one, beside how wrong the proposal is (edits per 100 nuclei, PQ,
Dice):

- ``unc_share``: share of the image the proposal leaves uncertain (255);
- ``share``: foreground share; ``med``: median object area; ``n``: objects; ``small``:
  share of objects under 50 px;
- ``ent_fg``: mean binary entropy of the probability over the predicted foreground (how
  unsure the model is of what it calls nucleus); ``ent_all``: over the whole image;
- ``unc_over_fg``: uncertain pixels per foreground pixel;
- ``ent_inst_fg`` (models with an instance map): mean binary entropy of the instance map
  over the predicted foreground (how unsure it is of where nuclei separate); ``big``:
  share of the proposal's foreground in objects over three times its median object (the
  merged clumps a proposal wrong in its separation makes).

With ``--methods`` it also gives ``ent_fg`` under MC dropout (Q = 10) beside softmax, on
four training images and the held-out ones (the figure depends on the method)::

    python benchmarks/bench_plausibility_signals.py --organ prostate \\
        --checkpoint runs/loo-prostate/segment.pt \\
        --out benchmarks/results/plausibility_signals_prostate.json [--methods]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from monuseg_organs import ORGANS, leave_one_organ_out  # noqa: E402
from train_bundled import load_dataset  # noqa: E402

from napari_selfloop.core.engine.metrics import panoptic_scores, pixel_scores  # noqa: E402
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402
from napari_selfloop.core.store.checkpoint import load_checkpoint  # noqa: E402


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p + 1e-6) + (1 - p) * np.log(1 - p + 1e-6))


def figures(model: Any, d: dict[str, Any]) -> dict[str, Any]:
    r = run_to_completion(
        pseudo_label(
            d["image"],
            model,
            PseudoLabelConfig(method="softmax", q=1),
            device="cpu",
            instances=True,
        )
    )
    p, m, inst = r.probability, r.mask, r.instances
    fg = p >= 0.5
    ent = entropy(p)
    areas = np.bincount(inst.ravel())[1:]
    areas = areas[areas > 0]
    pq = panoptic_scores(d["labels"], inst)
    dice = pixel_scores(fg.astype(np.uint8), (d["labels"] > 0).astype(np.uint8))
    return {
        "unc_share": float((m == 255).mean()),
        "share": float(fg.mean()),
        "ent_fg": float(ent[fg].mean()) if fg.any() else 0.0,
        "ent_all": float(ent.mean()),
        "unc_over_fg": float((m == 255).sum() / max(fg.sum(), 1)),
        "n": int(areas.size),
        "med": float(np.median(areas)) if areas.size else 0.0,
        "small": float((areas < 50).mean()) if areas.size else 0.0,
        "ent_inst_fg": float(entropy(r.aux)[fg].mean()) if r.aux is not None and fg.any() else None,
        "big": float(areas[areas > 3 * np.median(areas)].sum() / areas.sum())
        if areas.size
        else 0.0,
        "pq": round(float(pq["pq"]), 3),
        "edits": round(float(pq.get("edits_per_100", -1)), 1),
        "dice": round(float(dice.get("dice", dice.get("f1", -1))), 3),
    }


def dropout_entropy(model: Any, d: dict[str, Any]) -> float:
    """``ent_fg`` of an MC-dropout proposal (Q = 10) of the image."""
    r = run_to_completion(
        pseudo_label(
            d["image"],
            model,
            PseudoLabelConfig(method="mc-dropout", q=10),
            device="cpu",
            instances=False,
        )
    )
    p = r.probability
    fg = p >= 0.5
    return round(float(entropy(p)[fg].mean()), 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organ", choices=ORGANS, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", action="store_true", help="also MC dropout's entropy")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("monuseg/train")
    train_idx, held = leave_one_organ_out([d["name"] for d in data], args.organ)
    model = load_checkpoint(args.checkpoint).model.eval()
    report: dict[str, Any] = {
        "benchmark": "plausibility_signals",
        "command": " ".join(["python", "benchmarks/bench_plausibility_signals.py", *sys.argv[1:]]),
        "organ": args.organ,
        "checkpoint": str(args.checkpoint),
        "per_image": {},
    }
    for i, d in enumerate(data):
        report["per_image"][d["name"]] = {"held_out": i in held, **figures(model, d)}
        write_json(args.out, report)
    if args.methods:
        pick = [train_idx[0], train_idx[5], train_idx[10], train_idx[18], *held]
        # softmax's ent_fg is the one measured above: only MC dropout is proposed again
        report["methods"] = {
            data[i]["name"]: {
                "held_out": i in held,
                "softmax": round(report["per_image"][data[i]["name"]]["ent_fg"], 4),
                "mc-dropout": dropout_entropy(model, data[i]),
            }
            for i in pick
        }
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
