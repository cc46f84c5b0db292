"""The foreground cut of a model, chosen on annotated images and folded into its weights.

A model's pseudo-label calls a pixel foreground where its probability is above 0.5. That
cut is not always the best one for the images a lab works on: a model that misses faint
nuclei has too low a recall at 0.5, and a lower cut trades some precision for it. This
module chooses the cut ``t`` on annotated images (a grid of cuts, scored by the mean
per-image Dice, balanced accuracy, or their mean) and folds it into the segmentation
head's bias: adding ``-logit(t)`` to the bias makes ``sigmoid(z - logit(t)) > 0.5`` hold
exactly where ``sigmoid(z) > t``. So every method (softmax, MC dropout, self-loop, whose
decoder is the model's own), the confident/uncertain mask and the uncertainty maps use the
calibrated cut, with no setting to carry around. The record says what was done
(:func:`calibration_record`), and calibrating again composes (the new cut is relative to
the calibrated model).

Choose the cut on images the model was not trained on (validation images): on its own
training images a model is over-confident and the cut says little.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError
from ..progress import Progress, relay
from .metrics import IGNORE, scores_from_counts
from .pseudolabel import PseudoLabelConfig, pseudo_label

if TYPE_CHECKING:
    from .model import ResUNet

#: What a cut can be chosen for: the mean per-image score it maximises.
OBJECTIVES = ("dice", "balanced_accuracy", "dice+balanced_accuracy")

#: Default grid of cuts: 0.10, 0.11, ..., 0.90.
DEFAULT_GRID = tuple(round(0.10 + 0.01 * i, 2) for i in range(81))


@dataclass
class Calibration:
    """The chosen cut and the scores behind it (means over the images, in [0, 1]).

    ``bias_shift`` is what :func:`apply_calibration` adds to the head's bias; ``curve``
    holds the mean Dice and balanced accuracy at every cut of the grid.
    """

    threshold: float
    objective: str
    images: int
    before: dict[str, float]
    after: dict[str, float]
    curve: list[dict[str, float]] = field(default_factory=list)

    @property
    def bias_shift(self) -> float:
        return -logit(self.threshold)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def cut_counts(prob: np.ndarray, truth: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """Confusion counts ``[TP, FP, FN, TN]`` of ``prob > t`` for every cut ``t`` (rows).

    ``truth`` is a 0/1 mask; pixels marked 255 are ignored (as in :mod:`.metrics`).
    """
    prob, truth = np.asarray(prob), np.asarray(truth)
    if prob.shape != truth.shape:
        raise InputError(f"probability map {prob.shape} and mask {truth.shape} differ in shape")
    valid = truth != IGNORE
    fg = np.sort(prob[valid & (truth > 0)].astype(np.float64, copy=False))
    bg = np.sort(prob[valid & (truth == 0)].astype(np.float64, copy=False))
    t = np.asarray(cuts, dtype=np.float64)
    tp = fg.size - np.searchsorted(fg, t, side="right")
    fp = bg.size - np.searchsorted(bg, t, side="right")
    return np.stack([tp, fp, fg.size - tp, bg.size - fp], axis=1).astype(np.int64)


def _mean_scores(counts: list[np.ndarray], row: int) -> dict[str, float]:
    scores = [scores_from_counts(c[row]) for c in counts]
    return {
        "dice": float(np.mean([s["f1"] for s in scores])),
        "balanced_accuracy": float(np.mean([s["balanced_accuracy"] for s in scores])),
        "precision": float(np.mean([s["precision"] for s in scores])),
        "recall": float(np.mean([s["recall"] for s in scores])),
    }


def _objective_value(scores: dict[str, float], objective: str) -> float:
    if objective == "dice+balanced_accuracy":
        return 0.5 * (scores["dice"] + scores["balanced_accuracy"])
    return scores[objective]


def _check_request(objective: str, maps: int, masks: int, what: str) -> None:
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not maps or maps != masks:
        raise InputError(
            f"need one mask per {what} and at least one of each, got {maps} {what}s and "
            f"{masks} masks"
        )


def _grid_cuts(grid: Sequence[float]) -> list[float]:
    cuts = sorted({round(float(t), 6) for t in grid} | {0.5})
    if not all(0.0 < t < 1.0 for t in cuts):
        raise InputError("every cut of the grid must be between 0 and 1 (exclusive)")
    return cuts


def _choose(counts: list[np.ndarray], cuts: list[float], objective: str) -> Calibration:
    """The best cut from each image's :func:`cut_counts` at ``cuts``."""
    if not any(c[0, 0] + c[0, 2] for c in counts):
        raise InputError("the masks hold no foreground: nothing to calibrate the cut on")
    curve = [{"threshold": t, **_mean_scores(counts, i)} for i, t in enumerate(cuts)]
    best = max(
        range(len(cuts)),
        key=lambda i: (round(_objective_value(curve[i], objective), 9), -abs(cuts[i] - 0.5)),
    )
    return Calibration(
        threshold=cuts[best],
        objective=objective,
        images=len(counts),
        before={k: v for k, v in curve[cuts.index(0.5)].items() if k != "threshold"},
        after={k: v for k, v in curve[best].items() if k != "threshold"},
        curve=curve,
    )


def choose_threshold(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    objective: str = "dice+balanced_accuracy",
    grid: Sequence[float] = DEFAULT_GRID,
) -> Calibration:
    """The cut of ``grid`` whose mean per-image score ``objective`` is highest.

    ``probs`` are the model's probability maps of the images (e.g. its softmax
    pseudo-labels) and ``truths`` their 0/1 masks (255 = ignored). Among cuts that score
    the same, the one nearest 0.5 wins, so a model that needs no calibration keeps 0.5.
    """
    _check_request(objective, len(probs), len(truths), "probability map")
    cuts = _grid_cuts(grid)
    counts = [cut_counts(p, t, cuts) for p, t in zip(probs, truths, strict=True)]
    return _choose(counts, cuts, objective)


def segmentation_head(model: torch.nn.Module) -> torch.nn.Conv2d:
    """The 1x1 convolution that gives the foreground logit."""
    head = getattr(getattr(model, "decoder", None), "head", None)
    if not isinstance(head, torch.nn.Conv2d) or head.bias is None or head.out_channels != 1:
        raise InputError("this model has no one-channel segmentation head with a bias")
    return head


@torch.no_grad()
def apply_calibration(model: torch.nn.Module, threshold: float) -> float:
    """Fold the cut ``threshold`` into ``model`` in place; returns the bias shift added."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"the cut must be between 0 and 1 (exclusive), got {threshold:g}")
    shift = -logit(threshold)
    bias = segmentation_head(model).bias
    assert bias is not None  # segmentation_head refuses a head without a bias
    bias.add_(torch.tensor(shift, dtype=bias.dtype, device=bias.device))
    return shift


def calibration_record(cal: Calibration, images: Sequence[str] = ()) -> dict[str, Any]:
    """The checkpoint record of a calibration (plain types; scores in %)."""

    def pct(d: dict[str, float]) -> dict[str, float]:
        return {k: round(100 * v, 2) for k, v in d.items()}

    return {
        "threshold": cal.threshold,
        "bias_shift": round(cal.bias_shift, 6),
        "objective": cal.objective,
        "images": list(images) or cal.images,
        "before": pct(cal.before),
        "after": pct(cal.after),
    }


def calibrate(
    model: ResUNet,
    images: Sequence[Any],
    masks: Sequence[np.ndarray],
    *,
    objective: str = "dice+balanced_accuracy",
    config: PseudoLabelConfig | None = None,
    device: str = "auto",
) -> Generator[Progress, None, Calibration]:
    """Choose the cut of ``model`` on annotated images: pseudo-label each (softmax, or the
    method of ``config``) and score every cut of :data:`DEFAULT_GRID` as
    :func:`choose_threshold` does, keeping only the counts. Yields progress (each a cancel
    point); returns the :class:`Calibration`. The model is not changed: fold the cut in
    with :func:`apply_calibration`. ``masks`` are 0/1/255 masks of the images' sizes.
    """
    _check_request(objective, len(images), len(masks), "image")
    cuts = _grid_cuts(DEFAULT_GRID)
    cfg = config or PseudoLabelConfig(method="softmax")
    counts = []  # per image, so no probability map is kept
    n = len(images)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        shape = np.shape(image)[:2]
        if np.shape(mask) != shape:
            raise InputError(
                f"image {i + 1}: the mask has shape {np.shape(mask)} but the image is "
                f"{shape[0]}x{shape[1]}"
            )

        def event(ev: Progress, i: int = i) -> Progress:
            return Progress(i, n, f"image {i + 1}/{n}: {ev.message}", {"phase": "predict"})

        result = yield from relay(pseudo_label(image, model, cfg, device=device), event)
        assert result.probability is not None  # no sinks: the maps are held in memory
        counts.append(cut_counts(result.probability, mask, cuts))
        yield Progress(i + 1, n, f"image {i + 1}/{n} done", {"phase": "predict"})
    return _choose(counts, cuts, objective)
