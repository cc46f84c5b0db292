"""The self-loop step size of a model, chosen on validation images and kept with it.

Self-loop pseudo-labelling (Algorithm 1) takes Q jigsaw steps on a copy of the encoder,
one per puzzle, and averages the Q segmentation maps. How far those steps move the
encoder, and with it the segmentation, depends on the model: on a model whose jigsaw is
well learned, the engine's default step (:data:`.pseudolabel.DEFAULT_STEP_LR`) pushed the
nuclei predictions toward background (``docs/models.md``, "Self-loop step"). So a
model carries its own step (:attr:`.model.ModelConfig.selfloop_lr`, used whenever no step
is given), chosen here from a sweep on validation images:

* a step is **eligible** when its pseudo-label loses at most ``tolerance`` points of mean
  Dice and of mean balanced accuracy to the model's softmax pseudo-label;
* of the eligible steps, the one whose uncertainty captures most of the model's errors
  (the mean of the shares of wrong pixels among the 5, 10 and 20 % most uncertain pixels)
  is chosen; on a tie, the smaller step;
* when no step is eligible, none is chosen: the model keeps the default, and its record
  says that self-loop pseudo-labels lost to softmax on its validation images.

The sweep (:func:`sweep_steps`: one pseudo-label per image for softmax, for the puzzles
without steps and for each step) runs in ``napari-selfloop calibrate --selfloop-steps`` and
in the bundled models' recipe (``benchmarks/train_bundled.py --step-lrs``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..progress import Progress, relay
from .metrics import IGNORE, captured_errors, pixel_scores
from .pseudolabel import PseudoLabelConfig, pseudo_label

if TYPE_CHECKING:
    from .model import ResUNet
    from .pseudolabel import PseudoLabelResult

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


def set_selfloop_step(model: ResUNet, step: float | None) -> None:
    """Make ``step`` ``model``'s self-loop step (None: none chosen), in its config (which
    refuses a step outside ``(0, MAX_SELFLOOP_LR]``)."""
    model.config = replace(model.config, selfloop_lr=step)


def step_key(step: float) -> str:
    """How a step size names its sweep row (``1e-05``, ``0.0001``)."""
    return f"{step:g}"


def sweep_steps(
    model: ResUNet,
    images: Sequence[Any],
    masks: Sequence[np.ndarray],
    steps: Sequence[float],
    *,
    q: int = 10,
    config: PseudoLabelConfig | None = None,
    device: str = "auto",
    skip: Collection[str] = (),
    on_row: Callable[[str, dict[str, float]], None] | None = None,
) -> Generator[Progress, None, dict[str, dict[str, float]]]:
    """Score softmax, the puzzles without encoder steps (``no-ss``) and self-loop at each
    of ``steps`` on annotated images, for :func:`choose_selfloop_step`.

    Each row is the mean over the images of the pseudo-label's Dice (``f1``) and balanced
    accuracy and of its uncertainty map's error capture (``top5`` / ``top10`` / ``top20``:
    the share of the softmax prediction's wrong pixels among the most uncertain ones), all
    in %, over the pixels the masks label (255 is not labelled). Rows named in ``skip`` are
    not computed (a rerun that adds steps); ``on_row`` gets each row as it is done. The
    pseudo-labels use ``config``'s patch, precision and seed (Q = ``q``). Yields progress
    (cancel points); returns the rows computed.
    """
    _check_sweep_input(images, masks, steps)
    base = replace(config or PseudoLabelConfig(), q=q, lr=None)
    specs = _sweep_specs(steps, skip)
    want_softmax = "softmax" not in skip
    if not specs and not want_softmax:
        return {}
    truths = _checked_truths(images, masks)
    sweep = _Sweep(model, images, truths, base, device, on_row, len(images) * (len(specs) + 1))
    # Softmax first: its wrong pixels are what every map is measured against.
    yield from sweep.softmax(keep_row=want_softmax)
    for key, method, lr in specs:
        yield from sweep.row(key, method, lr)
    return sweep.rows


def _check_sweep_input(
    images: Sequence[Any], masks: Sequence[np.ndarray], steps: Sequence[float]
) -> None:
    """Refuse a sweep without images, with a mask missing, or with a step that is no
    positive number."""
    if len(images) != len(masks) or not images:
        raise InputError(f"one mask per image is needed, got {len(images)} and {len(masks)}")
    bad = [s for s in steps if isinstance(s, bool) or not 0 < s < math.inf]
    if bad:
        raise InputError(f"self-loop steps must be positive numbers, got {bad}")


def _sweep_specs(
    steps: Sequence[float], skip: Collection[str]
) -> list[tuple[str, str, float | None]]:
    """``(row key, pseudo-label method, step)`` of each row after softmax, those in ``skip``
    left out: the puzzles without steps, then each step."""
    return [
        (key, method, lr)
        for key, method, lr in [
            ("no-ss", "selfloop-no-ss", None),
            *((step_key(s), "selfloop", float(s)) for s in steps),
        ]
        if key not in skip
    ]


def _checked_truths(images: Sequence[Any], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The masks as arrays, each checked to have its image's size (all of them before any
    image is pseudo-labelled)."""
    truths = [np.asarray(m) for m in masks]
    for i, mask in enumerate(truths):
        if mask.shape != np.shape(images[i])[:2]:
            raise InputError(
                f"image {i + 1}: the mask has shape {mask.shape} but the image is "
                f"{np.shape(images[i])[:2]}"
            )
    return truths


class _Sweep:
    """One sweep of :func:`sweep_steps`: the pseudo-labels of its images, their progress
    (``done`` of ``total`` pseudo-labels), the softmax prediction's wrong pixels and the
    rows so far."""

    def __init__(
        self,
        model: ResUNet,
        images: Sequence[Any],
        truths: list[np.ndarray],
        base: PseudoLabelConfig,
        device: str,
        on_row: Callable[[str, dict[str, float]], None] | None,
        total: int,
    ) -> None:
        self.model = model
        self.images = images
        self.truths = truths
        self.labelled = [mask != IGNORE for mask in truths]
        self.base = base
        self.device = device
        self.on_row = on_row
        self.total = total
        self.done = 0
        self.wrong: list[np.ndarray] = []
        self.rows: dict[str, dict[str, float]] = {}

    def run(
        self, i: int, method: str, lr: float | None, what: str
    ) -> Generator[Progress, None, PseudoLabelResult]:
        """One pseudo-label of image ``i``, relaying its progress."""
        message = f"{what}: image {i + 1}/{len(self.images)}"
        result = yield from relay(
            pseudo_label(
                self.images[i],
                self.model,
                replace(self.base, method=method, lr=lr),
                device=self.device,
            ),
            lambda _e: Progress(self.done, self.total, message, {"phase": "sweep"}),
        )
        self.done += 1
        yield Progress(self.done, self.total, message, {"phase": "sweep"})
        return result

    def softmax(self, keep_row: bool) -> Generator[Progress, None, None]:
        """The softmax pseudo-labels: their wrong pixels, and their row if ``keep_row``."""
        per_image, rng = [], np.random.default_rng(0)  # each row's own tie-breaks
        for i, mask in enumerate(self.truths):
            result = yield from self.run(i, "softmax", None, "softmax")
            assert result.probability is not None  # no sinks: the maps are held in memory
            self.wrong.append(((result.probability > 0.5) != (mask > 0))[self.labelled[i]])
            if keep_row:
                per_image.append(self._image_row(result, i, rng))
        if keep_row:
            self._add_row("softmax", per_image)

    def row(self, key: str, method: str, lr: float | None) -> Generator[Progress, None, None]:
        """The row ``key``: pseudo-labels by ``method`` with step ``lr`` (after softmax)."""
        rng = np.random.default_rng(0)
        per_image = []
        for i in range(len(self.images)):
            result = yield from self.run(i, method, lr, key)
            per_image.append(self._image_row(result, i, rng))
        self._add_row(key, per_image)

    def _image_row(self, result: Any, i: int, rng: np.random.Generator) -> dict[str, float]:
        s = pixel_scores(result.probability > 0.5, self.truths[i])
        return {
            "f1": 100 * s["f1"],
            "balanced_accuracy": 100 * s["balanced_accuracy"],
            **captured_errors(result.uncertainty[self.labelled[i]], {"": self.wrong[i]}, rng),
        }

    def _add_row(self, key: str, per_image: list[dict[str, float]]) -> None:
        self.rows[key] = {
            k: round(float(np.mean([r[k] for r in per_image])), 2) for k in per_image[0]
        }
        if self.on_row is not None:
            self.on_row(key, self.rows[key])
