"""Start without a model: a first mask from classical image analysis, to correct and train on.

H&E (or IHC): haematoxylin by colour deconvolution, a threshold and a watershed split;
dermoscopy: a luminance threshold and the largest component. The mask goes into the
image's correction layer (the same one Pseudo-label fills), ready to correct.
"""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_error
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.bootstrap import BootstrapResult, bootstrap_mask
from ..core.errors import InputError, SelfloopError
from ..core.imageio import check_image
from ._autosave import autosave_for, key_for
from ._layers import (
    LayerCombo,
    check_labels_shape,
    find_result,
    image_data,
    is_source_image,
    put_result,
)
from ._runner import Runner, error_message
from ._state import get_state

KIND_LABELS = {
    "auto": "Auto (guess from the image)",
    "he": "H&E / IHC nuclei",
    "dermoscopy": "Dermoscopy lesion",
}


class BootstrapWidget(QWidget):
    """Make an initial mask for an image without any model."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        autosave_for(napari_viewer)
        self.image_combo = LayerCombo(napari_viewer, is_source_image, none_text="(open an image)")
        self.kind_combo = QComboBox()
        for key, text in KIND_LABELS.items():
            self.kind_combo.addItem(text, key)
        self.run_button = QPushButton("Create initial mask")
        self.run_button.setToolTip("Replaces this image's correction layer with the new mask")
        self.runner = Runner("Initial mask", self)
        hint = QLabel(
            "No model yet? Make a first mask here, correct it with the brush, mark it done "
            "in Review, then Fine-tune a New model on it."
        )
        hint.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Recipe", self.kind_combo)
        layout = QVBoxLayout(self)
        layout.addWidget(hint)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.runner.make_bar())
        layout.addStretch(1)
        self.run_button.clicked.connect(self.run)
        self.runner.started.connect(lambda: self.run_button.setEnabled(False))
        self.runner.finished.connect(lambda *_: self.run_button.setEnabled(True))

    def set_kind(self, kind: str) -> None:
        self.kind_combo.setCurrentIndex(self.kind_combo.findData(kind))

    def run(self) -> bool:
        try:
            image = self.image_combo.layer()
            if image is None:
                raise InputError("no image layer: open an image (or File > Open Sample) first")
            data = image_data(image)
            existing = find_result(self.viewer, image.name, "labels")
            if existing is not None:
                check_labels_shape(existing, check_image(data))
            key = key_for(image)
        except (SelfloopError, OSError) as e:
            show_error(f"Initial mask: {error_message(e)}")
            return False
        kind = self.kind_combo.currentData()
        name = image.name

        def done(result: BootstrapResult) -> None:
            if name not in self.viewer.layers:
                raise InputError(f"image layer '{name}' was removed during the run")
            labels = put_result(
                self.viewer,
                name,
                "labels",
                result.mask,
                like=self.viewer.layers[name],
                extra_meta={
                    "image_key": key,
                    "bootstrap": result.kind,
                    "done": False,
                    "checkpoint": None,
                },
            )
            self.viewer.layers.selection.active = labels
            what = f"{int(result.labels.max())} nuclei" if result.kind == "he" else "the lesion"
            recipe = KIND_LABELS[result.kind]
            self.runner.status.setText(
                f"{recipe}: found {what}. Correct the mask with the brush "
                "(label 1 paints foreground, 0 erases)."
            )
            self.state.labels_updated.emit(labels.name)

        return self.runner.start(
            lambda: bootstrap_mask(data, kind), on_done=done, message=f"initial mask of {name}…"
        )
