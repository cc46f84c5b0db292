"""The self-loop step size of a model, chosen on validation images and kept with it.

Self-loop pseudo-labelling (Algorithm 1) takes Q jigsaw steps on a copy of the encoder,
one per puzzle, and averages the Q segmentation maps. How far those steps move the
encoder, and with it the segmentation, depends on the model: on a model whose jigsaw is
well learned, the engine's default step (:data:`.pseudolabel.DEFAULT_STEP_LR`) pushed the
nuclei predictions toward background (README, "Bundled models"). So a model carries its
own step (:attr:`.model.ModelConfig.selfloop_lr`, used whenever no step is given), chosen
here from a sweep on validation images:

* a step is **eligible** when its pseudo-label loses at most ``tolerance`` points of mean
  Dice and of mean balanced accuracy to the model's softmax pseudo-label;
* of the eligible steps, the one whose uncertainty captures most of the model's errors
  (the mean of the shares of wrong pixels among the 5, 10 and 20 % most uncertain pixels)
  is chosen; on a tie, the smaller step;
* when no step is eligible, none is chosen: the model keeps the default, and its record
  says that self-loop pseudo-labels lost to softmax on its validation images.

The sweep itself (one self-loop pseudo-label per step and image) is the benchmark's work
(``benchmarks/train_bundled.py --step-lrs``); this module only decides and records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from .errors import InputError

#: Points of Dice and of balanced accuracy a step may lose to softmax and stay eligible.
STEP_TOLERANCE = 0.5

#: The error-capture figures (in %) a sweep row must have, averaged into one score.
CAPTURE_KEYS = ("top5", "top10", "top20")

#: The scores (in %) a sweep row must have.
SCORE_KEYS = ("f1", "balanced_accuracy")


def capture_score(row: Mapping[str, float]) -> float:
    """Mean share (%) of the errors among the 5 / 10 / 20 % most uncertain pixels."""
    return sum(float(row[k]) for k in CAPTURE_KEYS) / len(CAPTURE_KEYS)


def _step_of(key: str) -> float | None:
    """The step size a sweep key names (``"1e-04"``, ``"0.001"``), or None for other rows."""
    try:
        step = float(key)
    except ValueError:
        return None
    return step if math.isfinite(step) and step > 0 else None


def choose_selfloop_step(
    rows: Mapping[str, Mapping[str, float]], tolerance: float = STEP_TOLERANCE
) -> dict[str, Any]:
    """Choose a model's self-loop step from a validation sweep (the rule in the module notes).

    ``rows`` maps ``"softmax"`` and step sizes written as numbers (``"1e-04"``) to mean
    scores in %: ``f1`` (Dice) and ``balanced_accuracy`` of the pseudo-label, and
    ``top5`` / ``top10`` / ``top20``, the error capture of its uncertainty. Other rows
    (``"no-ss"``, puzzles without steps) are context, never chosen. Returns the record
    kept with the model: ``step`` (None when no step is eligible), the rule's
    ``tolerance``, the softmax capture and each candidate's capture and eligibility.
    """
    if not 0 <= tolerance < 100:
        raise InputError(f"tolerance must be in [0, 100) points, got {tolerance:g}")
    if "softmax" not in rows:
        raise InputError("the sweep has no softmax row to compare the steps with")
    for key, row in rows.items():
        missing = [k for k in (*SCORE_KEYS, *CAPTURE_KEYS) if k not in row]
        if missing:
            raise InputError(f"sweep row {key!r} lacks {', '.join(missing)}")
    soft = rows["softmax"]
    candidates: dict[str, dict[str, Any]] = {}
    for key, row in rows.items():
        step = _step_of(key)
        if step is None:
            continue
        losses = {k: float(soft[k]) - float(row[k]) for k in SCORE_KEYS}
        candidates[key] = {
            "step": step,
            "eligible": all(v <= tolerance for v in losses.values()),
            "capture": round(capture_score(row), 3),
            "f1": float(row["f1"]),
            "balanced_accuracy": float(row["balanced_accuracy"]),
        }
    if not candidates:
        raise InputError("the sweep has no step sizes to choose from")
    eligible = [c for c in candidates.values() if c["eligible"]]
    best = max(eligible, key=lambda c: (c["capture"], -c["step"]), default=None)
    return {
        "step": None if best is None else best["step"],
        "tolerance": tolerance,
        "softmax": {
            "f1": float(soft["f1"]),
            "balanced_accuracy": float(soft["balanced_accuracy"]),
            "capture": round(capture_score(soft), 3),
        },
        "candidates": candidates,
    }


def set_selfloop_step(model: torch.nn.Module, step: float | None) -> None:
    """Make ``step`` ``model``'s self-loop step (None: none chosen), in its config (which
    refuses a step outside ``(0, MAX_SELFLOOP_LR]``)."""
    model.config = replace(model.config, selfloop_lr=step)
