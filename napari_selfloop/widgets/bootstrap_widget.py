"""Start without a model: a first mask from classical image analysis, to correct and train on.

H&E (or IHC): haematoxylin by colour deconvolution, a threshold and a watershed split;
dermoscopy: a luminance threshold and the largest component. The mask goes into the
image's correction layer (the same one Pseudo-label fills), ready to correct; pixels the
user already painted there keep their value (as with a pseudo-label,
:func:`._layers.propose_labels`).

Area: the whole image, the current view or a rectangle, as in the Pseudo-label panel. A
large image (a slide: a pyramid, or more than 4 Mpx; see :mod:`._slide`) is worked on by
region with the Pseudo-label panel's rule (:func:`._area.plan_target`): only the
view or rectangle is read, in the worker thread, and its mask goes into a correction layer of
that region's size, placed over it and named like the Pseudo-label panel's, so Review, Export,
Fine-tune and autosave treat it like any region. The region is read at full resolution, or at
the current model's pixel size when both the model's and the slide's are known (so the mask
lines up with that model's pseudo-labels and fine-tuning).
"""

from __future__ import annotations

from typing import Any

from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.engine.bootstrap import BootstrapResult, bootstrap_mask
from ..core.errors import InputError, SelfloopError
from ..core.io.windows import read_window
from ..core.progress import Progress
from ._area import Area, AreaCombo, Box, Target, area_box, plan_target, shapes_combo, tell_merge
from ._autosave import start_autosave
from ._layers import KEY, LayerCombo, is_source_image, propose_labels
from ._runner import Runner, error_message
from ._slide import levels_of, pixel_size_um, works_by_region
from ._state import get_state

KIND_LABELS = {
    "auto": "Auto (guess from the image)",
    "he": "H&E / IHC nuclei",
    "dermoscopy": "Dermoscopy lesion",
}


class BootstrapWidget(QWidget):
    """Make an initial mask for an image (or a region of a slide) without any model."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        start_autosave(napari_viewer)
        self.image_combo = LayerCombo(napari_viewer, is_source_image, none_text="(open an image)")
        self.kind_combo = QComboBox()
        for key, text in KIND_LABELS.items():
            self.kind_combo.addItem(text, key)
        self.area_combo = AreaCombo()
        self.area_combo.setToolTip(
            "A slide is worked on by region: the view or a rectangle gets a correction layer "
            "of its own size"
        )
        self.shapes_combo = shapes_combo(napari_viewer)
        self.run_button = QPushButton("Create initial mask")
        self.run_button.setToolTip(
            "Fills this image's (or region's) correction layer with the new mask; pixels you "
            "painted there are kept"
        )
        self.runner = Runner("Initial mask", self)
        hint = QLabel(
            "No model yet? Make a first mask here, correct it with the brush, mark it done "
            "in Review, then Fine-tune a New model on it. On a slide, zoom in on some tissue "
            "(or draw a rectangle) first."
        )
        hint.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Recipe", self.kind_combo)
        form.addRow("Area", self.area_combo)
        form.addRow("Rectangle in", self.shapes_combo)
        layout = QVBoxLayout(self)
        layout.addWidget(hint)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.runner.make_bar())
        layout.addStretch(1)
        self.area_combo.currentIndexChanged.connect(self._area_changed)
        self.image_combo.currentIndexChanged.connect(self._image_changed)
        self.run_button.clicked.connect(self.run)
        self.runner.started.connect(lambda: self.run_button.setEnabled(False))
        self.runner.finished.connect(lambda *_: self.run_button.setEnabled(True))
        self._image_changed()
        self._area_changed()

    def set_kind(self, kind: str) -> None:
        self.kind_combo.setCurrentIndex(self.kind_combo.findData(kind))

    def _area_changed(self, *_: Any) -> None:
        self.shapes_combo.setEnabled(self.area_combo.area() is Area.SHAPES)

    def _image_changed(self, *_: Any) -> None:
        """A slide chosen with "Whole image": offer the current view instead."""
        image = self.image_combo.layer()
        if image is not None and self.area_combo.area() is Area.WHOLE and works_by_region(image):
            self.area_combo.set_area(Area.VIEW)

    def box(self, image: Image) -> Box:
        """The level-0 box of ``image`` the chosen area covers."""
        return area_box(self.viewer, image, self.area_combo.area(), self.shapes_combo.layer())

    def run(self) -> bool:
        """Start making the initial mask (returns False, with a notification, if it cannot)."""
        try:
            image = self.image_combo.layer()
            if image is None:
                raise InputError("no image layer: open an image (or File > Open Sample) first")
            # The model's pixel size only where the slide's is known: no model is used here,
            # so a slide without one is read at full resolution without a warning.
            model_um = (
                getattr(self.state.checkpoint, "pixel_size_um", None)
                if works_by_region(image) and pixel_size_um(image)
                else None
            )
            target = plan_target(
                self.viewer, image, self.area_combo.area(), self.shapes_combo.layer(), model_um
            )
        except (SelfloopError, OSError) as e:
            show_error(f"Initial mask: {error_message(e)}")
            return False
        if target.note:
            show_info(f"Initial mask: {target.note}")
        kind = self.kind_combo.currentData()
        name, where, window = target.name, target.where, target.window
        if window is None:

            def job():  # in the worker: slicing a lazy array reads it
                return bootstrap_mask(target.crop(), kind)
        else:
            levels = levels_of(image)

            def job():
                yield Progress(0, 0, f"reading region {window.label}…")
                crop = read_window(levels, window)  # in the worker: only the region is read
                yield Progress(0, 0, f"initial mask of {name}{where}…")
                return bootstrap_mask(crop, kind)

        def done(result: BootstrapResult) -> None:
            self._show(target, result)

        return self.runner.start(job, on_done=done, message=f"initial mask of {name}{where}…")

    def _show(self, target: Target, result: BootstrapResult) -> None:
        name, window = target.name, target.window
        if name not in self.viewer.layers:
            raise InputError(f"image layer '{name}' was removed during the run")
        image = self.viewer.layers[name]
        merge = propose_labels(
            self.viewer,
            name,
            result.mask,
            instances=result.labels,
            like=image,
            extra_meta=target.record(bootstrap=result.kind, checkpoint=None),
            **target.placed(),
        )
        labels = merge.layer
        tell_merge(self.state, merge, "Initial mask", "mask")
        self.viewer.layers.selection.active = labels
        what = f"{int(result.labels.max())} nuclei" if result.kind == "he" else "the lesion"
        recipe = KIND_LABELS[result.kind]
        where = "" if window is None else f" {window.label}"
        resolution = ""
        if window is not None:
            um = labels.metadata[KEY].get("pixel_size_um")
            resolution = f" at {um:.3g} µm/px" if um else " at full resolution"
        self.runner.status.setText(
            f"{recipe} on '{name}'{where} ({result.mask.shape[1]}x{result.mask.shape[0]}"
            f"{resolution}): found {what}. Correct the mask with the brush "
            "(label 1 paints foreground, 0 erases)."
        )
        self.state.labels_updated.emit(labels.name)
