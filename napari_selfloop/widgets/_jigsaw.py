"""The Model panel's jigsaw section: is the self-supervised task learned, and pre-train it.

Self-loop uncertainty weights its maps by the jigsaw losses and adapts the encoder on them;
with a jigsaw head at chance both carry no information. This section measures the jigsaw
of the current model on one open image (:func:`~napari_selfloop.core.engine.pretrain.evaluate_jigsaw`,
128 fixed-seed puzzles, in the background) whenever the model changes or *Check on this
image* is pressed, warns in plain words when it is at chance, and runs
:func:`~napari_selfloop.core.engine.pretrain.pretrain_jigsaw` on the open images. Pre-training
trains a copy of the current model and writes a new checkpoint version (named like
Fine-tune's: ``model_v2.pt`` beside the current one, or ``PROJECT/checkpoints/``), which
becomes the current model; *Cancel* keeps the steps done so far (the core writes a complete
checkpoint when it is stopped), and a run stopped before its first step changes nothing.
"""

from __future__ import annotations

import copy
import logging
import math
import weakref
from pathlib import Path
from typing import Any

from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.engine.datasets import TrainItem
from ..core.engine.pretrain import (
    PRETRAIN_KIND,
    PretrainConfig,
    PretrainResult,
    at_chance,
    default_jigsaw_patch,
    evaluate_jigsaw,
    pretrain_jigsaw,
)
from ..core.engine.pseudolabel import PATCH_MULTIPLE
from ..core.errors import InputError, SelfloopError
from ..core.progress import Progress
from ..core.store.checkpoint import Checkpoint, load_checkpoint
from ..core.store.project import release, reserve_version
from ._form import Field, build_controls, read_values
from ._layers import image_data, is_source_image, source_of
from ._runner import Outcome, Runner, Status, error_message
from ._state import SelfloopState

log = logging.getLogger(__name__)

TITLE = "Jigsaw (self-supervised task)"
#: Fixed-seed puzzles scored per check: a second or two on a CPU for the real model.
CHECK_PUZZLES = 128
CHECK_SEED = 0
AT_CHANCE_WARNING = (
    "Self-loop uncertainty will not be informative with this model: "
    "pre-train it on your images first."
)

#: The pre-training settings: ``PretrainConfig`` fields, shown with its defaults.
PRETRAIN_FIELDS = {
    "iterations": Field(
        QSpinBox,
        "Pre-training iterations",
        range=(1, 1_000_000),
        tooltip="Optimiser steps of jigsaw pre-training",
    ),
    "freeze_encoder": Field(
        QCheckBox,
        "Keep segmentation (train the jigsaw head only)",
        tooltip="Checked: only the jigsaw head learns; the model segments exactly as before.\n"
        "Unchecked: the encoder learns too (best for a new model; it changes the "
        "segmentation of a trained one).",
    ),
}


def segmentation_trained(meta: dict[str, Any] | None) -> bool:
    """Whether a checkpoint's encoder/decoder were trained to segment (so worth keeping).

    A model is trained when its record lists data it saw, except a model that only went
    through jigsaw pre-training with its encoder free: its decoder is still the random one.
    """
    meta = meta or {}
    data = meta.get("data") or []
    if not data:
        return False
    training = meta.get("training") or {}
    if training.get("kind") == PRETRAIN_KIND and all(
        isinstance(d, dict) and d.get("role") == "jigsaw" for d in data
    ):
        # Head-only pre-training kept an encoder that came from elsewhere: assume trained.
        return bool((training.get("config") or {}).get("freeze_encoder"))
    return True


def check_patch(meta: dict[str, Any] | None, height: int, width: int) -> int:
    """The side to check the jigsaw at: the side it was trained at, or less on a smaller
    image (puzzles of mostly padding say little), never under 96."""
    fits = max(PATCH_MULTIPLE, min(height, width) // PATCH_MULTIPLE * PATCH_MULTIPLE)
    return min(default_jigsaw_patch(meta), fits)


def usable_image(layer: Any) -> bool:
    """An open 2D RGB or grayscale image (not a stack, not one of our result maps)."""
    if not is_source_image(layer):
        return False
    try:
        image_data(layer)
    except SelfloopError:
        return False
    return True


def jigsaw_image(viewer: Any) -> Image | None:
    """The image to check the jigsaw on: the active one (or the image of an active result
    layer), else the first open 2D image."""
    active = viewer.layers.selection.active
    if active is not None:
        if usable_image(active):
            return active
        source = source_of(active)
        if source is not None and source in viewer.layers and usable_image(viewer.layers[source]):
            return viewer.layers[source]
    for layer in viewer.layers:
        if usable_image(layer):
            return layer
    return None


def describe(result: dict[str, Any], image: str) -> str:
    """The jigsaw line for an :func:`evaluate_jigsaw` result."""
    loss, chance, top1 = result["loss"], result["chance_loss"], result["top1"]
    chance_top1 = math.exp(-chance) if chance > 0 else 1.0
    verdict = (
        "at chance, so not learned"
        if at_chance(loss, chance)
        else "learned, so self-loop uncertainty can use it"
    )
    return (
        f"{TITLE} on '{image}': L_SS {loss:.2f} (chance {chance:.2f}), "
        f"top-1 {100 * top1:.0f}% (chance {100 * chance_top1:.0f}%) on "
        f"{result['puzzles']} puzzles of {result['patch_size']} px; {verdict}."
    )


class JigsawPanel(QWidget):
    """Jigsaw line, at-chance warning, *Check on this image* and *Pre-train on open images*."""

    def __init__(self, viewer: Any, state: SelfloopState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        #: The last check: the core's result dict, the checkpoint and image it was for.
        self.result: dict[str, Any] | None = None
        self.result_for: tuple[Checkpoint, str] | None = None
        self.last_pretrain: PretrainResult | None = None
        self.last_checkpoint: Path | None = None
        self._recheck = False
        self._no_image = False
        self._out: Path | None = None
        self._steps = 0
        # Warn about a model at chance once: saved ones by file hash, others by object.
        self._warned_files: set[str] = set()
        self._warned_models: weakref.WeakSet = weakref.WeakSet()
        self._build_check()
        self._build_pretrain()
        self._lay_out()
        self._connect()
        self._model_changed(self.state.checkpoint)

    # -- building --------------------------------------------------------------------------

    def _build_check(self) -> None:
        """The jigsaw line, the at-chance warning and *Check on this image*."""
        self.label = QLabel(f"{TITLE}: no model yet")
        self.label.setWordWrap(True)
        self.label.setObjectName("selfloop_jigsaw_line")
        self.warning = QLabel(AT_CHANCE_WARNING)
        self.warning.setWordWrap(True)
        self.warning.setObjectName("selfloop_jigsaw_warning")
        self.warning.setStyleSheet(
            "QLabel#selfloop_jigsaw_warning { color: #ffa000; font-weight: bold; }"
        )
        self.warning.setVisible(False)
        self.check_button = QPushButton("Check on this image")
        self.check_button.setToolTip(
            f"Score the jigsaw of the current model on {CHECK_PUZZLES} fixed puzzles of the "
            "selected image (the first open image if none is selected)"
        )
        self.check_runner = Runner("Jigsaw check", self)

    def _build_pretrain(self) -> None:
        """The :data:`PRETRAIN_FIELDS` controls (``PretrainConfig``'s defaults) and *Pre-train*."""
        self.pretrain_controls = build_controls(PRETRAIN_FIELDS, PretrainConfig())
        self.iterations_spin = self.pretrain_controls["iterations"]
        self.freeze_check = self.pretrain_controls["freeze_encoder"]
        self.pretrain_button = QPushButton("Pre-train on open images")
        self.pretrain_button.setToolTip(
            "Teach the model the jigsaw task on all open images (no masks needed); saves a "
            "new checkpoint version and makes it the current model"
        )
        self.pretrain_runner = Runner("Jigsaw pre-training", self)
        self.pretrain_runner.cancel_button.setToolTip(
            "Stop after the current step; the steps done so far are kept as a new version"
        )
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)

    def _lay_out(self) -> None:
        check_row = QHBoxLayout()
        check_row.addWidget(self.check_button)
        check_row.addWidget(self.check_runner.progress, 1)
        form = QFormLayout()
        form.addRow(PRETRAIN_FIELDS["iterations"].label, self.iterations_spin)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.warning)
        layout.addLayout(check_row)
        layout.addLayout(form)
        layout.addWidget(self.freeze_check)
        layout.addWidget(self.pretrain_button)
        layout.addWidget(self.pretrain_runner.make_bar())
        layout.addWidget(self.result_label)

    def _connect(self) -> None:
        self.check_button.clicked.connect(lambda: self.check())
        self.pretrain_button.clicked.connect(lambda: self.pretrain())
        self.check_runner.finished.connect(self._check_finished)
        self.pretrain_runner.started.connect(lambda: self.pretrain_button.setEnabled(False))
        self.pretrain_runner.finished.connect(lambda *_: self.pretrain_button.setEnabled(True))
        self.state.model_changed.connect(self._model_changed)
        self.viewer.layers.events.inserted.connect(self._layer_inserted)

    # -- checking --------------------------------------------------------------------------

    def _model_changed(self, ckpt: Checkpoint | None) -> None:
        self.result, self.result_for = None, None
        self.warning.setVisible(False)
        if ckpt is None:
            self.label.setText(f"{TITLE}: no model yet")
            return
        if not self.pretrain_runner.running:
            self.freeze_check.setChecked(segmentation_trained(ckpt.meta))
        self.check(quiet=True)

    def _layer_inserted(self, *_: Any) -> None:
        # A model chosen before any image was open: check it on the first image.
        if self._no_image and self.state.checkpoint is not None:
            self.check(quiet=True)

    def check(self, quiet: bool = False) -> bool:
        """Score the current model's jigsaw on the chosen image in the background.

        ``quiet``: say why nothing started in the jigsaw line only (automatic checks).
        Returns whether a check started (or was queued behind one in progress).
        """
        ckpt = self.state.checkpoint
        if ckpt is None:
            self.label.setText(f"{TITLE}: no model yet")
            if not quiet:
                show_info("Jigsaw check: load a checkpoint or press New model first")
            return False
        layer = jigsaw_image(self.viewer)
        self._no_image = layer is None
        if layer is None:
            self.label.setText(f"{TITLE}: open an image, then press Check on this image.")
            if not quiet:
                show_info("Jigsaw check: open a 2D RGB or grayscale image first")
            return False
        if self.check_runner.running:
            self._recheck = True  # checked again as soon as the run in progress ends
            return True
        data = image_data(layer)
        model = copy.deepcopy(ckpt.model)  # never moved or switched to eval under another run
        patch = check_patch(ckpt.meta, int(data.shape[0]), int(data.shape[1]))
        device, name = self.state.device, layer.name
        self.label.setText(f"{TITLE}: checking on '{name}'…")

        def done(result: dict[str, Any]) -> None:
            if self.state.checkpoint is not ckpt:
                return  # the model changed meanwhile; its own check is queued
            self.result, self.result_for = result, (ckpt, name)
            self.label.setText(describe(result, name))
            chance = at_chance(result["loss"], result["chance_loss"])
            self.warning.setVisible(chance)
            if chance and not self._warned(ckpt):
                show_warning(AT_CHANCE_WARNING)

        return self.check_runner.start(
            lambda: evaluate_jigsaw(
                model,
                [data],
                puzzles=CHECK_PUZZLES,
                seed=CHECK_SEED,
                patch_size=patch,
                device=device,
            ),
            on_done=done,
            message=f"jigsaw check on '{name}'…",
            interrupt=[model],
        )

    def _warned(self, ckpt: Checkpoint) -> bool:
        """Whether the at-chance notification was shown for ``ckpt`` (and note it now)."""
        if ckpt.sha256:
            seen = ckpt.sha256 in self._warned_files
            self._warned_files.add(ckpt.sha256)
        else:
            seen = ckpt.model in self._warned_models
            self._warned_models.add(ckpt.model)
        return seen

    def _check_finished(self, outcome: Outcome) -> None:
        if outcome.status is Status.ERROR and self.result is None:
            message = error_message(outcome.error) if outcome.error else "failed"
            self.label.setText(f"{TITLE}: the check failed ({message}).")
        if self._recheck:
            self._recheck = False
            self.check(quiet=True)

    # -- pre-training ----------------------------------------------------------------------

    def config(self) -> PretrainConfig:
        return PretrainConfig(**read_values(PRETRAIN_FIELDS, self.pretrain_controls))

    def _images(self) -> list[TrainItem]:
        items = []
        for layer in self.viewer.layers:
            if not is_source_image(layer):
                continue
            try:
                items.append(TrainItem(name=layer.name, image=image_data(layer)))
            except SelfloopError as e:
                show_warning(f"Jigsaw pre-training: skipping '{layer.name}': {error_message(e)}")
        if not items:
            raise InputError(
                "no image is open: open the images to pre-train on (2D RGB or grayscale)"
            )
        return items

    def pretrain(self) -> bool:
        """Start jigsaw pre-training on the open images (False, with a notification, if not)."""
        if self.pretrain_runner.running:
            show_info("Jigsaw pre-training is already running: wait for it or press Cancel")
            return False
        try:
            ckpt = self.state.checkpoint
            if ckpt is None:
                raise InputError("no model: load a checkpoint or press New model first")
            items = self._images()
            config = self.config()
            out = reserve_version(ckpt.path, self.state.project_dir)
        except (SelfloopError, OSError) as e:
            show_error(f"Jigsaw pre-training: {error_message(e)}")
            return False
        model = copy.deepcopy(ckpt.model)  # the current model is never touched
        device, parent = self.state.device, ckpt.sha256
        self._out, self._steps = out, 0
        self.result_label.setText("")
        started = self.pretrain_runner.start(
            lambda: pretrain_jigsaw(
                model,
                items,
                config,
                device=device,
                out=out,
                parent=parent,
                pixel_size_um=ckpt.pixel_size_um,
            ),
            on_progress=self._pretrain_progress,
            on_done=self._pretrain_done,
            on_end=self._pretrain_end,
            message=f"jigsaw pre-training on {len(items)} open image(s)…",
        )
        if not started:
            release(out)
        return started

    def _pretrain_progress(self, event: Progress) -> None:
        self._steps = int(event.data.get("step", event.done))

    def _pretrain_done(self, result: PretrainResult) -> None:
        self.last_pretrain = result
        self.result_label.setText(
            f"Pre-trained {result.steps} steps in {result.seconds:.0f} s: L_SS {result.loss:.2f} "
            f"(chance {result.chance_loss:.2f}), top-1 {100 * result.top1:.0f}% on the "
            "training puzzles."
        )

    def _pretrain_end(self, outcome: Outcome) -> None:
        out, self._out = self._out, None
        release(out)
        written = out is not None and out.exists()
        if outcome.status is Status.ERROR:
            if written:
                self.result_label.setText(
                    f"Pre-training failed; the steps done before it are in {out.name} "
                    "(not made current: load it to use it)."
                )
            return
        if not written:
            self.result_label.setText(
                "Stopped before the first step: the model is unchanged."
                if outcome.status is Status.CANCELLED
                else "Nothing was written: the model is unchanged."
            )
            return
        ckpt = load_checkpoint(out)
        self.last_checkpoint = out
        if outcome.status is Status.CANCELLED:
            steps = (ckpt.meta.get("training") or {}).get("step", self._steps)
            text = f"Stopped after {steps} steps; kept them as {out.name} (now the current model)."
            note = "stopped; kept"
        else:
            text = (
                f"{self.result_label.text()} Saved as {out.name} (now the current model).".strip()
            )
            note = "saved"
        self.state.set_checkpoint(ckpt)  # the jigsaw line is checked again for it
        self.result_label.setText(text)
        show_info(f"Jigsaw pre-training: {note} {out}, now the current model")
