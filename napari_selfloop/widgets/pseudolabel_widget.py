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
from enum import Enum
from typing import Any

import numpy as np
from napari.layers import Image, Shapes
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
from ..core.io.windows import Window, choose_window, read_window, region_key
from ..core.progress import Progress
from ._autosave import key_for
from ._layers import (
    KEY,
    LayerCombo,
    camera,
    check_labels_shape,
    find_result,
    image_data,
    is_source_image,
    propose_labels,
    put_result,
)
from ._runner import Runner, error_message
from ._slide import (
    MAX_REGION_PIXELS,
    level_shapes,
    levels_of,
    pixel_size_um,
    works_by_region,
)
from ._state import get_state

log = logging.getLogger(__name__)


class Area(Enum):
    """What the panel pseudo-labels; the value is the text of its choice."""

    IMAGE = "Whole image"
    VIEW = "Current view"
    RECTANGLE = "Rectangle (Shapes layer)"


AREAS = tuple(area.value for area in Area)
#: Patches of 288 px, one at a time on CPU, keep each step (a Cancel point) to ~1-2 s.
GUI_PATCH = 288

#: Most Q the panel offers (the core allows up to :data:`..core.engine.pseudolabel.MAX_Q`).
GUI_MAX_Q = 50

Box = tuple[int, int, int, int]


def view_box(viewer: Any, image: Image) -> Box:
    """The part of ``image`` (data pixels, y0, x0, y1, x1) visible in the canvas."""
    h, w = (float(s) for s in viewer.canvas.size)  # (height, width) in screen pixels
    cam = camera(viewer)
    zoom = float(cam.zoom)
    cy, cx = (float(c) for c in cam.center[-2:])
    corners = [
        (cy - h / (2 * zoom), cx - w / (2 * zoom)),
        (cy + h / (2 * zoom), cx + w / (2 * zoom)),
    ]
    return _world_box(image, corners)


def _world_box(image: Image, world_points: list[tuple[float, float]]) -> Box:
    pts = []
    for y, x in world_points:
        world = np.zeros(image.ndim)
        world[-2:] = (y, x)
        pts.append(np.asarray(image.world_to_data(world))[-2:])
    arr = np.asarray(pts)
    return _clip_box(arr.min(0), arr.max(0), image)


def _clip_box(lo: np.ndarray, hi: np.ndarray, image: Image) -> Box:
    data = image.data[0] if image.multiscale else image.data
    height, width = int(data.shape[0]), int(data.shape[1])
    y0, x0 = max(0, int(np.floor(lo[0]))), max(0, int(np.floor(lo[1])))
    y1, x1 = min(height, int(np.ceil(hi[0]))), min(width, int(np.ceil(hi[1])))
    if y1 - y0 < 8 or x1 - x0 < 8:
        raise InputError(
            "the chosen area does not overlap the image (or is under 8 pixels): "
            "move the view or draw the rectangle over the image"
        )
    return y0, x0, y1, x1


def region_plan(image: Image, box: Box, model_um: float | None) -> tuple[Window, str]:
    """The window of ``image`` to process for level-0 ``box``, and a note for the user.

    At the model's pixel size when both the model's and the image's are known (else at
    full resolution, and the note says why). Refuses a region too large to hold.
    """
    image_um = pixel_size_um(image)
    note = ""
    factor = 1.0
    if model_um and image_um:
        factor = model_um / image_um
    elif model_um:
        note = (
            f"'{image.name}' has no pixel size, so it is processed at full resolution; "
            f"the model was trained at {model_um:.3g} µm/px: if the slide's is different, "
            "results will be poor"
        )
    elif image.multiscale and not image_um:
        note = f"'{image.name}' has no pixel size: processing it at full resolution"
    window = choose_window(level_shapes(image), box, factor)
    if window.pixels > MAX_REGION_PIXELS:
        side = int(MAX_REGION_PIXELS**0.5)
        raise InputError(
            f"the region {window.label} is {window.width}x{window.height} pixels at the "
            f"resolution it is processed at, more than the panel holds ({side}x{side}): zoom in "
            "or draw a smaller rectangle, or run 'napari-selfloop pseudo-label' on the whole "
            "slide and open its output"
        )
    return window, note


def shapes_box(shapes: Shapes, image: Image) -> Box:
    """The bounding box (image pixels) of the selected shape, or of the last one drawn."""
    if len(shapes.data) == 0:
        raise InputError(f"Shapes layer '{shapes.name}' is empty: draw a rectangle in it first")
    index = max(shapes.selected_data) if shapes.selected_data else len(shapes.data) - 1
    verts = np.asarray(shapes.data[index])[:, -2:]
    world = [tuple(shapes.data_to_world(v)[-2:]) for v in verts]
    return _world_box(image, world)


class PseudoLabelWidget(QWidget):
    """Pseudo-label an image with the current model and show results as layers."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer, autosave=True)
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
        self.area_combo = QComboBox()
        for choice in Area:
            self.area_combo.addItem(choice.value, choice)
        self.shapes_combo = LayerCombo(
            napari_viewer, lambda layer: isinstance(layer, Shapes), none_text="(add a Shapes layer)"
        )
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
        return Area(self.area_combo.currentText())

    def _area_changed(self, *_: Any) -> None:
        self.shapes_combo.setEnabled(self.area() is Area.RECTANGLE)

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
        area = self.area()
        if area is Area.VIEW:
            return view_box(self.viewer, image)
        if area is Area.RECTANGLE:
            shapes = self.shapes_combo.layer()
            if shapes is None:
                raise InputError(
                    "no Shapes layer: add one and draw a rectangle, or choose another area"
                )
            return shapes_box(shapes, image)
        data = image_data(image)
        return 0, 0, int(data.shape[0]), int(data.shape[1])

    def run(self) -> bool:
        """Start a pseudo-label run (returns False, with a notification, if it cannot)."""
        try:
            image = self.image_combo.layer()
            if image is None:
                raise InputError("no image layer: open an image (or File > Open Sample) first")
            data = image_data(image)
            models = self._models()
            config = self.config()
            y0, x0, y1, x1 = box = self.box(image)
            window, note = None, ""
            if works_by_region(image):
                model_um = getattr(self.state.checkpoint, "pixel_size_um", None)
                window, note = region_plan(image, box, model_um)
                if window == Window(0, 0, *data.shape[:2]):
                    window = None  # all of it at full resolution: one full-size set, as usual
            if window is not None:
                existing = find_result(self.viewer, image.name, "labels", window)
                if existing is not None:
                    check_labels_shape(existing, window.shape)
            else:
                existing = find_result(self.viewer, image.name, "labels")
                if existing is not None:
                    from ..core.io.images import check_image

                    check_labels_shape(existing, check_image(data))
            key = key_for(image)
        except (SelfloopError, OSError) as e:
            show_error(f"Pseudo-label: {error_message(e)}")
            return False
        if note:
            show_info(f"Pseudo-label: {note}")
        device = self.state.device
        ckpt = self.state.checkpoint
        checkpoint = {"path": str(ckpt.path) if ckpt.path else None, "sha256": ckpt.sha256}
        name = image.name
        if window is None:
            whole = box == (0, 0, *data.shape[:2])
            where = "" if whole else f" [{y0}:{y1}, {x0}:{x1}]"

            def job():  # called in the worker: slicing a zarr array reads it
                crop = data if whole else data[y0:y1, x0:x1]
                # a model with a work size sees the area at the whole image's scale
                return pseudo_label(
                    crop, models, config, device=device, source_shape=data.shape[:2]
                )
        else:
            levels = levels_of(image)
            where = f" {window.label}"

            def job():
                yield Progress(0, 0, f"reading region {window.label}…")
                crop = read_window(levels, window)  # in the worker: only the region is read
                return (yield from pseudo_label(crop, models, config, device=device))

        def done(result: PseudoLabelResult) -> None:
            self._show(name, box, result, key, checkpoint, window, note)

        return self.runner.start(
            job,
            on_done=done,
            message=f"{config.method} on {name}{where}…",
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

    def _show(
        self,
        name: str,
        box: Box,
        result: PseudoLabelResult,
        key: str,
        checkpoint: dict,
        window: Window | None = None,
        note: str = "",
    ) -> None:
        if name not in self.viewer.layers:
            show_error(f"Pseudo-label: image layer '{name}' was removed during the run")
            return
        image = self.viewer.layers[name]
        meta = {
            "method": result.config.method,
            "q": result.config.q,
            "threshold": result.config.threshold,
        }
        target = {"window": window} if window is not None else {"box": box}
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
                **target,
            )
        labels_meta = {**meta, "image_key": key, "checkpoint": checkpoint}
        if window is not None:
            labels_meta["autosave_key"] = region_key(key, window)
            image_um = pixel_size_um(image)
            labels_meta["pixel_size_um"] = None if image_um is None else image_um * window.factor
        # The user's painted pixels are kept: the proposal only goes where they have not
        # painted, and "done" is cleared only when pixels changed, and then with a note.
        merge = propose_labels(
            self.viewer,
            name,
            result.mask,
            instances=result.instances,
            like=image,
            extra_meta=labels_meta,
            **target,
        )
        labels = merge.layer
        notes = []
        if merge.kept:
            why = (
                ""
                if merge.recorded
                else (
                    " (no record of the earlier proposal, so every labelled pixel counted as yours)"
                )
            )
            notes.append(
                f"kept the {merge.kept} pixel(s) you had painted in '{labels.name}'{why}; the new "
                "proposal went only where you had not painted (delete the layer to start over)"
            )
        if merge.done_cleared:
            self.state.set_done(labels, False)  # already cleared by the merge; tells the panels
            notes.append(
                f"{merge.changed} pixel(s) changed, so '{labels.name}' is no longer marked "
                "done: review it and mark it done again"
            )
        if notes:
            show_info("Pseudo-label: " + "; ".join(notes))
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
