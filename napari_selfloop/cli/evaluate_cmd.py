"""``napari-selfloop evaluate``: score predicted masks against ground truth, by file stem."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.imageio import open_image, write_json
from ..core.metrics import aji, instances, object_scores, pixel_counts, scores_from_counts
from .train_cmd import list_images

log = logging.getLogger(__name__)

PIXEL_KEYS = ("f1", "balanced_accuracy", "precision", "recall")
OBJECT_KEYS = ("object_f1", "aji")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="pixel F1 (Dice), balanced accuracy, precision, recall (and object F1, AJI)",
        description="Pairs predictions with truth by file stem. Predictions: STEM_prob.tif "
        "(thresholded), STEM_mask.tif from pseudo-label (255 = uncertain counts as background) "
        "or plain 0/1 (or 0/255) masks; a STEM_prob file wins over STEM_mask. Truth: 0/1 masks "
        "(255 = not labelled, ignored), 0/255 masks, or instance labels (several ids).",
    )
    p.add_argument("--pred", required=True, type=Path, help="folder of predictions")
    p.add_argument("--truth", required=True, type=Path, help="folder of ground-truth masks or labels")
    p.add_argument("--json", type=Path, help="write per-image and summary scores here")
    p.add_argument("--threshold", type=float, default=0.5, help="for probability maps (0.5)")
    p.add_argument("--objects", action="store_true",
                   help="also object-level F1 (IoU > 0.5) and AJI on connected components")
    p.add_argument("--split", action="store_true",
                   help="split touching objects by a distance-transform watershed (with --objects)")
    p.set_defaults(func=run)


def _pred_files(folder: Path) -> dict[str, Path]:
    files = list_images(folder, "--pred")
    chosen: dict[str, tuple[int, Path]] = {}
    for stem, path in files.items():
        if stem.endswith("_uncertainty"):
            continue
        key, rank = stem, 2
        if stem.endswith("_prob"):
            key, rank = stem[: -len("_prob")], 0
        elif stem.endswith("_mask"):
            key, rank = stem[: -len("_mask")], 1
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, path)
    return {k: v[1] for k, v in chosen.items()}


def read_prediction(path: Path, threshold: float) -> np.ndarray:
    """A boolean foreground map from a probability map or a mask file."""
    a = np.asarray(open_image(path))
    if a.ndim == 3:
        a = a[..., 0]
    if a.dtype.kind == "f":
        return a > threshold
    if path.stem.endswith("_mask"):
        return a == 1  # pseudo-label masks: 255 = uncertain
    values = np.unique(a)
    if values.size and values.max() > 1 and set(values.tolist()) <= {0, 255}:
        return a == 255
    return a > 0


def read_truth(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The truth as a 0/1/255 mask, and instance labels when the file holds them."""
    a = np.asarray(open_image(path))
    if a.ndim == 3:
        a = a[..., 0]
    values = set(np.unique(a).tolist())
    if values <= {0, 1}:
        return a.astype(np.uint8), None
    if values <= {0, 1, 255} and 1 in values:
        return a.astype(np.uint8), None
    if values <= {0, 255}:
        return (a == 255).astype(np.uint8), None
    return (a > 0).astype(np.uint8), a.astype(np.int64)


def evaluate_folders(pred: Path, truth: Path, *, threshold: float = 0.5, objects: bool = False,
                     split: bool = False) -> dict[str, Any]:
    """Scores of every prediction with a truth of the same stem, and their summary."""
    preds = _pred_files(pred)
    truths = list_images(truth, "--truth")
    pairs = sorted(set(preds) & set(truths))
    if not pairs:
        raise InputError(f"no prediction in {pred} has a truth file with the same stem in {truth} "
                         f"(e.g. {next(iter(preds))} vs {next(iter(truths))})")
    for stem in sorted(set(truths) - set(preds)):
        log.warning("no prediction for %s", truths[stem].name)
    per_image: dict[str, dict[str, Any]] = {}
    total = np.zeros(4, dtype=np.int64)
    for stem in pairs:
        p = read_prediction(preds[stem], threshold)
        t, labels = read_truth(truths[stem])
        if p.shape != t.shape:
            raise InputError(f"{preds[stem].name} is {p.shape[1]}x{p.shape[0]} but "
                             f"{truths[stem].name} is {t.shape[1]}x{t.shape[0]}")
        counts = pixel_counts(p, t)
        total += counts
        scores: dict[str, Any] = {"prediction": preds[stem].name, **scores_from_counts(counts)}
        if objects:
            true_inst = labels if labels is not None else instances(t == 1)
            pred_inst = instances(p, split=split)
            scores.update(object_scores(true_inst, pred_inst))
            scores["aji"] = aji(true_inst, pred_inst)
        per_image[stem] = scores
    keys = PIXEL_KEYS + (OBJECT_KEYS if objects else ())
    mean = {k: float(np.mean([s[k] for s in per_image.values()])) for k in keys}
    return {"images": per_image, "mean": mean, "pooled": scores_from_counts(total),
            "count": len(per_image), "threshold": threshold, "objects": objects, "split": split}


def run(args: argparse.Namespace) -> int:
    report = evaluate_folders(args.pred, args.truth, threshold=args.threshold,
                              objects=args.objects, split=args.split)
    keys = PIXEL_KEYS + (OBJECT_KEYS if args.objects else ())
    width = max(12, *(len(s) for s in report["images"]))
    header = f"{'image':<{width}} " + " ".join(f"{k[:12]:>12}" for k in keys)
    lines = [header]
    for stem, s in report["images"].items():
        lines.append(f"{stem:<{width}} " + " ".join(f"{s[k]:12.4f}" for k in keys))
    lines.append(f"{'mean':<{width}} " + " ".join(f"{report['mean'][k]:12.4f}" for k in keys))
    pooled = report["pooled"]
    lines.append(f"{'pooled':<{width}} " + " ".join(
        f"{pooled[k]:12.4f}" if k in pooled else f"{'':>12}" for k in keys))
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json is not None:
        write_json(args.json, report)
        log.info("wrote %s", args.json)
    return 0
