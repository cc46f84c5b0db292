"""Pseudo-label panel: run self-loop (or a baseline) on an image, the view or a rectangle.

Results become three layers per image (updated in place on a re-run): the probability map,
the uncertainty map, and the correction Labels layer (1 confident foreground, 0 confident
background, 255 = uncertain, drawn in yellow so it stands out).

A large image (a slide: a pyramid, or more than 4 Mpx, see :mod:`._slide`) is worked on
region by region: the view or rectangle gets three layers of its own size, placed over it,
one set per region, and is read at the model's pixel size where both pixel sizes are known
(the nearest pyramid level, resampled the rest of the way; see :mod:`..core.io.windows`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.engine.device import resolve_device
from ..core.engine.plausibility import plausibility_warning, record_of
from ..core.engine.pseudolabel import (
    METHODS,
    Q_METHODS,
    UNCERTAIN,
    PseudoLabelConfig,
    PseudoLabelResult,
    pseudo_label,
)
from ..core.errors import InputError, SelfloopError
from ..core.io.windows import read_window
from ..core.progress import Progress
from ._area import Area, AreaCombo, Box, Target, area_box, plan_target, shapes_combo, tell_merge
from ._autosave import start_autosave
from ._layers import (
    KEY,
    LayerCombo,
    image_data,
    is_source_image,
    propose_labels,
    put_result,
)
from ._runner import Runner, error_message
from ._slide import levels_of, works_by_region
from ._state import get_state

log = logging.getLogger(__name__)


#: Patches of 288 px, one at a time on CPU, keep each step (a Cancel point) to ~1-2 s.
GUI_PATCH = 288

#: Most Q the panel offers (the core allows up to :data:`..core.engine.pseudolabel.MAX_Q`).
GUI_MAX_Q = 50


class PseudoLabelWidget(QWidget):
    """Pseudo-label an image with the current model and show results as layers."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        start_autosave(napari_viewer)
        defaults = PseudoLabelConfig()
        self.image_combo = LayerCombo(napari_viewer, is_source_image, none_text="(open an image)")
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setCurrentText(defaults.method)
        self.method_combo.setToolTip(
            "mc-dropout (default): Q passes with dropout; its uncertain regions held the\n"
            "  model's errors best in our benchmarks\n"
            "selfloop: jigsaw-weighted self-loop (the paper's method; needs a model whose\n"
            "  jigsaw is learned, see the Model tab; steps of the size chosen for the model,\n"
            "  which its card shows)\n"
            "selfloop-no-ss: jigsaw maps averaged, no encoder updates\n"
            "softmax: one forward pass\n"
            "ensemble: mean of the current model and the checkpoints added in the Model panel"
        )
        self.q_spin = QSpinBox()
        self.q_spin.setRange(1, GUI_MAX_Q)
        self.q_spin.setValue(defaults.q)
        self.q_spin.setToolTip("Jigsaw permutations (self-loop) or dropout passes (MC dropout)")
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.51, 0.99)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(defaults.threshold)
        self.threshold_spin.setToolTip(
            "Probability above this is confident foreground, below 1 - this "
            "confident background; the rest is marked uncertain"
        )
        self.area_combo = AreaCombo()
        self.shapes_combo = shapes_combo(napari_viewer)
        self.run_button = QPushButton("Pseudo-label")
        self.runner = Runner("Pseudo-label", self)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Method", self.method_combo)
        form.addRow("Q", self.q_spin)
        form.addRow("Threshold", self.threshold_spin)
        form.addRow("Area", self.area_combo)
        form.addRow("Rectangle in", self.shapes_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.runner.make_bar())
        layout.addStretch(1)

        self.area_combo.currentIndexChanged.connect(self._area_changed)
        self.method_combo.currentTextChanged.connect(self._method_changed)
        self.run_button.clicked.connect(self.run)
        self.runner.started.connect(lambda: self.run_button.setEnabled(False))
        self.runner.finished.connect(lambda *_: self.run_button.setEnabled(True))
        self._area_changed()
        self._method_changed(self.method_combo.currentText())

    def area(self) -> Area:
        """The chosen area."""
        return self.area_combo.area()

    def _area_changed(self, *_: Any) -> None:
        self.shapes_combo.setEnabled(self.area() is Area.SHAPES)

    def _method_changed(self, method: str) -> None:
        self.q_spin.setEnabled(method in Q_METHODS)

    def config(self) -> PseudoLabelConfig:
        try:
            cuda = resolve_device(self.state.device).type == "cuda"
        except SelfloopError:
            cuda = False
        return PseudoLabelConfig(
            method=self.method_combo.currentText(),
            q=self.q_spin.value(),
            threshold=round(self.threshold_spin.value(), 4),
            patch_size=GUI_PATCH,
            batch_size=PseudoLabelConfig.batch_size if cuda else 1,
        )

    def box(self, image: Image) -> Box:
        """The level-0 box of ``image`` the chosen area covers."""
        return area_box(self.viewer, image, self.area(), self.shapes_combo.layer())

    def run(self) -> bool:
        """Start a pseudo-label run (returns False, with a notification, if it cannot)."""
        try:
            image = self.image_combo.layer()
            if image is None:
                raise InputError("no image layer: open an image (or File > Open Sample) first")
            image_data(image)  # a stack is refused before anything else
            models = self._models()
            config = self.config()
            model_um = (
                getattr(self.state.checkpoint, "pixel_size_um", None)
                if works_by_region(image)
                else None
            )
            target = plan_target(
                self.viewer, image, self.area(), self.shapes_combo.layer(), model_um
            )
        except (SelfloopError, OSError) as e:
            show_error(f"Pseudo-label: {error_message(e)}")
            return False
        if target.note:
            show_info(f"Pseudo-label: {target.note}")
        device = self.state.device
        ckpt = self.state.checkpoint
        checkpoint = {"path": str(ckpt.path) if ckpt.path else None, "sha256": ckpt.sha256}
        window = target.window
        if window is None:
            source_shape = target.data.shape[:2]

            def job():  # called in the worker: slicing a zarr array reads it
                # a model with a work size sees the area at the whole image's scale
                return pseudo_label(
                    target.crop(), models, config, device=device, source_shape=source_shape
                )
        else:
            levels = levels_of(image)

            def job():
                yield Progress(0, 0, f"reading region {window.label}…")
                crop = read_window(levels, window)  # in the worker: only the region is read
                return (yield from pseudo_label(crop, models, config, device=device))

        def done(result: PseudoLabelResult) -> None:
            self._show(target, result, checkpoint)

        return self.runner.start(
            job,
            on_done=done,
            message=f"{config.method} on {target.name}{target.where}…",
            interrupt=models,
        )

    def _plausibility(self, result: PseudoLabelResult) -> str | None:
        """The plain-words warning when the proposal looks unlike the current model's
        training tissue (:mod:`..core.engine.plausibility`); None for an ensemble."""
        ckpt = self.state.checkpoint
        if ckpt is None or result.config.method == "ensemble":
            return None
        return plausibility_warning(result.info.get("figures"), record_of(ckpt.meta))

    def _models(self) -> list:
        if self.state.model is None:
            raise InputError(
                "no model: load a checkpoint or press New model in the Model panel "
                "(or use 'Start without a model')"
            )
        models = [self.state.model]
        if self.method_combo.currentText() == "ensemble":
            models += [c.model for c in self.state.ensemble]
        return models

    def _show(self, target: Target, result: PseudoLabelResult, checkpoint: dict) -> None:
        name, window, note = target.name, target.window, target.note
        if name not in self.viewer.layers:
            show_error(f"Pseudo-label: image layer '{name}' was removed during the run")
            return
        image = self.viewer.layers[name]
        meta = {
            "method": result.config.method,
            "q": result.config.q,
            "threshold": result.config.threshold,
        }
        for kind, values in (
            ("probability", result.probability),
            ("uncertainty", result.uncertainty),
        ):
            put_result(
                self.viewer,
                name,
                kind,
                values.astype(np.float32, copy=False),
                like=image,
                extra_meta=meta,
                **target.placed(),
            )
        # The user's painted pixels are kept: the proposal only goes where they have not
        # painted, and "done" is cleared only when pixels changed, and then with a note.
        merge = propose_labels(
            self.viewer,
            name,
            result.mask,
            instances=result.instances,
            like=image,
            extra_meta=target.record(**meta, checkpoint=checkpoint),
            **target.placed(),
        )
        labels = merge.layer
        tell_merge(self.state, merge, "Pseudo-label", "proposal")
        warning = self._plausibility(result)
        if warning:
            show_warning(f"Pseudo-label of '{name}': {warning}")
        self.viewer.layers.selection.active = labels
        mask = result.mask
        fg = float((mask == 1).mean()) * 100
        unc = float((mask == UNCERTAIN).mean()) * 100
        extra = ""
        if result.losses is not None and result.losses.size:
            extra = f" · mean jigsaw loss {float(np.mean(result.losses)):.2f}"
        where = "" if window is None else f" {window.label}"
        resolution = ""
        if window is not None:
            um = labels.metadata[KEY].get("pixel_size_um")
            resolution = f" at {um:.3g} µm/px" if um else " at full resolution"
        self.runner.status.setText(
            f"{result.config.method} on '{name}'{where} ({mask.shape[1]}x{mask.shape[0]}"
            f"{resolution}) in {result.seconds:.1f} s on {result.info.get('device', '?')}: "
            f"{fg:.0f}% foreground, {unc:.0f}% uncertain (yellow){extra}. "
            f"Correct the mask, then Review.{(' Note: ' + note) if note else ''}"
            f"{(' ' + warning) if warning else ''}"
        )
        self.state.labels_updated.emit(labels.name)
