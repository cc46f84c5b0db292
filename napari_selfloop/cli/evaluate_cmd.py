"""``napari-selfloop evaluate``: score predicted masks against ground truth, by file stem."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..core.engine.datasets import mask_convention, mask_plane, normalise_mask
from ..core.engine.metrics import (
    aji,
    instances,
    object_scores,
    panoptic_scores,
    pixel_counts,
    scores_from_counts,
)
from ..core.errors import InputError
from ..core.io.atomic import write_json
from ..core.io.images import open_image
from ..core.store.export import MANIFEST, MANIFEST_FORMAT
from ..core.store.project import list_images
from .commands import SUMMARIES

log = logging.getLogger(__name__)

PIXEL_KEYS = ("f1", "balanced_accuracy", "precision", "recall")
OBJECT_KEYS = ("object_f1", "aji", "pq", "edits_per_100")
#: Said once when the truth holds no instance labels.
BINARY_TRUTH_NOTE = (
    "the truth of {n} image(s) is a binary mask: touching nuclei in it are merged into one "
    "object, so the object scores undercount; give instance labels (one id per nucleus, "
    "e.g. an export's STEM_instances.tif) to score nuclei"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help=SUMMARIES["evaluate"],
        description="Pairs predictions with truth by file stem. Predictions: STEM_prob.tif "
        "(thresholded), STEM_mask.tif from pseudo-label (255 = uncertain counts as background) "
        "or plain 0/1 (or 0/255) masks; a STEM_prob file wins over STEM_mask. Truth: 0/1 masks "
        "(255 = not labelled, ignored), 0/255 binary masks (255 = foreground, the rule train "
        "uses), or instance labels (several ids); colour files only when their channels are "
        "equal. An Export folder (STEM_mask.tif, STEM_instances.tif, manifest.json) is "
        "usable as truth.",
    )
    p.add_argument("--pred", required=True, type=Path, help="folder of predictions")
    p.add_argument(
        "--truth", required=True, type=Path, help="folder of ground-truth masks or labels"
    )
    p.add_argument("--json", type=Path, help="write per-image and summary scores here")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="for probability maps, in (0, 1) (0.5)"
    )
    p.add_argument(
        "--objects",
        action="store_true",
        help="also the nuclei (objects): PQ (DQ x SQ at IoU > 0.5), AJI, object F1 and "
        "edits per 100 nuclei (unmatched predictions to delete plus unmatched nuclei to add "
        "or redraw, per 100 true nuclei). The predicted objects are STEM_instances.tif when "
        "the prediction folder has it (pseudo-label writes it), else the connected "
        "components of the prediction",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="without STEM_instances.tif: split touching objects by a distance-transform "
        "watershed (with --objects)",
    )
    p.set_defaults(func=run)


def _pred_files(folder: Path) -> dict[str, Path]:
    files = list_images(folder, "--pred")
    chosen: dict[str, tuple[int, Path]] = {}
    for stem, path in files.items():
        if stem.endswith(("_uncertainty", "_instances")):
            continue
        key, rank = stem, 2
        if stem.endswith("_prob"):
            key, rank = stem[: -len("_prob")], 0
        elif stem.endswith("_mask"):
            key, rank = stem[: -len("_mask")], 1
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, path)
    if not chosen:
        raise InputError(
            f"--pred folder {folder} holds only uncertainty maps or instances "
            "(*_uncertainty.*, *_instances.*): evaluate reads STEM_prob.tif, STEM_mask.tif or "
            "plain masks"
        )
    return {k: v[1] for k, v in chosen.items()}


def _instance_files(folder: Path) -> dict[str, Path]:
    """``KEY -> KEY_instances.*`` of a folder (pseudo-label's and Export's instance ids)."""
    return {
        stem[: -len("_instances")]: path
        for stem, path in list_images(folder, "--pred").items()
        if stem.endswith("_instances")
    }


def read_instances(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Instance ids of a file (integers, 0 background) of the given shape, or a one-line error."""
    from ..core.io.label_files import read_labels_file

    try:
        a = read_labels_file(path).data
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    if a.dtype.kind not in "ui" or (a.size and a.min() < 0):
        raise InputError(f"{what} {path.name} must hold non-negative integer ids, got {a.dtype}")
    if a.shape != shape:
        raise InputError(
            f"{what} {path.name} is {a.shape[1]}x{a.shape[0]} but the image is "
            f"{shape[1]}x{shape[0]}"
        )
    return a.astype(np.int64)


def _manifest_aliases(folder: Path) -> dict[str, str]:
    """Image names of a napari-selfloop export folder -> the stems of their mask files."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return {}
    entries = manifest.get("entries")
    if not isinstance(entries, list):
        return {}
    aliases: dict[str, str] = {}
    for e in entries:
        mask = e.get("mask") if isinstance(e, dict) else None
        if not isinstance(mask, str) or not mask.endswith("_mask.tif"):
            continue
        names = {str(e.get("name") or "")}
        if isinstance(e.get("image"), str):
            names.add(Path(e["image"]).name)
        for name in names:
            for alias in (name, Path(name).stem):
                if alias:
                    aliases.setdefault(alias, Path(mask).stem)
    return aliases


def _truth_files(folder: Path, pred_keys: set[str]) -> dict[str, Path]:
    """Truth files by prediction key: STEM.*, else STEM_mask.*, else STEM_instances.*.

    So a napari-selfloop export folder (STEM_mask.tif, STEM_instances.tif, manifest.json)
    is usable as truth; its manifest also maps image names to the exported stems.
    """
    files = list_images(folder, "--truth")
    chosen: dict[str, tuple[int, Path]] = {}
    for stem, path in files.items():
        key, rank = stem, 0
        if stem not in pred_keys:
            if stem.endswith("_mask"):
                key, rank = stem[: -len("_mask")], 1
            elif stem.endswith("_instances"):
                key, rank = stem[: -len("_instances")], 2
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, path)
    found = {k: v[1] for k, v in chosen.items()}
    for alias, mask_stem in _manifest_aliases(folder).items():
        if alias in pred_keys and alias not in found and mask_stem in files:
            found[alias] = files[mask_stem]
    return found


def _plane(path: Path, what: str) -> np.ndarray:
    """A file's pixels as one 2D plane (a colour file only when its channels are equal)."""
    return mask_plane(np.asarray(open_image(path)), f"{what} {path.name}")


def read_prediction(path: Path, threshold: float) -> np.ndarray:
    """A boolean foreground map from a probability map or a mask file."""
    a = _plane(path, "prediction")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise InputError(
                f"prediction {path.name} holds {bad} non-finite value(s) (NaN or infinite) of "
                f"{a.size}: a probability map must hold numbers in [0, 1]; make it again"
            )
        return np.clip(a, 0.0, 1.0) > threshold
    if path.stem.endswith("_mask"):
        return a == 1  # pseudo-label masks: 255 = uncertain
    values = np.unique(a)
    if values.size and values.max() > 1 and set(values.tolist()) <= {0, 255}:
        return a == 255
    return a > 0


def read_truth(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The truth as a 0/1/255 mask, and instance labels when the file holds them.

    Masks are read by the rule ``train`` uses (:func:`~napari_selfloop.core.engine.datasets.normalise_mask`):
    0/1/255 (255 = not labelled, ignored), 0/255 binary (255 = foreground, with a note),
    masks written by this plugin always 0/1/255; integer files with other values are
    instance labels; colour files are refused unless their channels are equal.
    """
    name = f"truth {path.name}"
    a = _plane(path, "truth")
    if a.dtype.kind in "ui":
        values = np.unique(a)
        if values.size and not np.isin(values, (0, 1, 255)).all():
            if values.min() < 0:
                raise InputError(
                    f"{name} holds negative values: expected a mask or instance labels"
                )
            return (a > 0).astype(np.uint8), a.astype(np.int64)
    return normalise_mask(a, name, convention=mask_convention(path)), None


def evaluate_folders(
    pred: Path, truth: Path, *, threshold: float = 0.5, objects: bool = False, split: bool = False
) -> dict[str, Any]:
    """Scores of every prediction with a truth of the same stem, and their summary."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1 (exclusive), got {threshold:g}")
    if split and not objects:
        raise InputError("--split only changes the object scores: pass it with --objects")
    preds = _pred_files(pred)
    pred_instances = _instance_files(pred) if objects else {}
    truth_instances = _instance_files(truth) if objects else {}
    binary_truths = 0
    truths = _truth_files(truth, set(preds))
    pairs = sorted(set(preds) & set(truths))
    if not pairs:
        raise InputError(
            f"no prediction in {pred} has a truth file with the same stem in {truth} "
            f"(e.g. {next(iter(preds))} vs {next(iter(truths))})"
        )
    for stem in sorted(set(truths) - set(preds)):
        log.warning("no prediction for %s", truths[stem].name)
    per_image: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    total = np.zeros(4, dtype=np.int64)
    for stem in pairs:
        p = read_prediction(preds[stem], threshold)
        t, labels = read_truth(truths[stem])
        if p.shape != t.shape:
            raise InputError(
                f"{preds[stem].name} is {p.shape[1]}x{p.shape[0]} but "
                f"{truths[stem].name} is {t.shape[1]}x{t.shape[0]}"
            )
        if not np.any(t != 255):
            skipped.append(truths[stem].name)
            continue
        counts = pixel_counts(p, t)
        total += counts
        scores: dict[str, Any] = {
            "prediction": preds[stem].name,
            "truth": truths[stem].name,
            **scores_from_counts(counts),
        }
        if objects:
            if labels is None and stem in truth_instances:
                labels = read_instances(truth_instances[stem], t.shape, "truth instances")
            if labels is None:
                binary_truths += 1
            true_inst = labels if labels is not None else instances(t == 1)
            scores.update(_object_scores(true_inst, p, pred_instances.get(stem), split))
        per_image[stem] = scores
    if not per_image:
        raise InputError(
            f"no truth file in {truth} has a labelled pixel (255 = not labelled "
            "everywhere; write foreground as 1): nothing to score"
        )
    for name in skipped:
        log.warning("skipped %s: no pixel is labelled (255 = not labelled everywhere)", name)
    if binary_truths:
        log.warning(BINARY_TRUTH_NOTE.format(n=binary_truths))
    keys = PIXEL_KEYS + (OBJECT_KEYS if objects else ())
    mean = {k: float(np.mean([s[k] for s in per_image.values()])) for k in keys}
    return {
        "images": per_image,
        "mean": mean,
        "pooled": scores_from_counts(total),
        "count": len(per_image),
        "threshold": threshold,
        "objects": objects,
        "split": split,
        "binary_truths": binary_truths,
    }


def _object_scores(
    true_inst: np.ndarray, pred: np.ndarray, pred_file: Path | None, split: bool
) -> dict[str, Any]:
    """The object scores of one image: its predicted objects are ``pred_file``'s instance
    ids when there is one, else the connected components (or ``split`` pieces) of ``pred``."""
    if pred_file is not None:
        pred_inst = read_instances(pred_file, pred.shape, "predicted instances")
        scores: dict[str, Any] = {"instances": pred_file.name}
    else:
        pred_inst = instances(pred, split=split)
        scores = {"instances": "split" if split else "components"}
    scores.update(object_scores(true_inst, pred_inst))
    scores["aji"] = aji(true_inst, pred_inst)
    scores.update(panoptic_scores(true_inst, pred_inst))
    return scores


def run(args: argparse.Namespace) -> int:
    report = evaluate_folders(
        args.pred, args.truth, threshold=args.threshold, objects=args.objects, split=args.split
    )
    keys = PIXEL_KEYS + (OBJECT_KEYS if args.objects else ())
    width = max(12, *(len(s) for s in report["images"]))
    header = f"{'image':<{width}} " + " ".join(f"{k[:12]:>12}" for k in keys)
    lines = [header]
    for stem, s in report["images"].items():
        lines.append(f"{stem:<{width}} " + " ".join(f"{s[k]:12.4f}" for k in keys))
    lines.append(f"{'mean':<{width}} " + " ".join(f"{report['mean'][k]:12.4f}" for k in keys))
    pooled = report["pooled"]
    lines.append(
        f"{'pooled':<{width}} "
        + " ".join(f"{pooled[k]:12.4f}" if k in pooled else f"{'':>12}" for k in keys)
    )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json is not None:
        write_json(args.json, report)
        log.info("wrote %s", args.json)
    return 0
