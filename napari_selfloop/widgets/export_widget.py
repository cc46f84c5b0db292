"""Export panel: corrected masks for retraining (TIFF, GeoJSON, manifest) and autosave.

Export writes ``STEM_mask.tif``, ``STEM_instances.tif``, ``STEM.geojson`` (QuPath) and
updates ``manifest.json`` in the chosen folder as a set (see
:mod:`napari_selfloop.core.store.export`): the manifest is checked first, nothing replaces the
previous set unless all four files were written, different images never share files (a
short hash is added to a name that would be ambiguous) and exports into one folder take
turns. GeoJSON objects are QuPath *detections* (nuclei) or *annotations* (a lesion), as
chosen; they get UUIDs. The correction layer of a region of a slide is exported as that
region (``STEM`` names it), its masks at the resolution it was processed at with their
pixel size, its GeoJSON in slide coordinates. The autosave section sets the project folder
where corrections are saved every 30 seconds and restored when an image is reopened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError, SelfloopError
from ..core.store.export import OBJECT_TYPES, UNCERTAIN_POLICIES, export_annotation
from ._autosave import start_autosave
from ._layers import (
    LayerCombo,
    correction_mask,
    image_data,
    image_for,
    is_correction,
    meta_of,
    source_of,
    window_of,
)
from ._runner import Runner, error_message
from ._slide import pixel_size_um
from ._state import get_state

UNCERTAIN_TEXT = {
    "keep": "keep as 255 (ignored by training)",
    "background": "count as background",
    "foreground": "count as foreground",
}
OBJECT_TEXT = {
    "detection": "detections (nuclei, cells: many objects)",
    "annotation": "annotations (editable: a lesion, regions)",
}
#: The object type that suits a QuPath class, by the start of its name.
CLASS_OBJECTS = {"nucle": "detection", "cell": "detection", "lesion": "annotation"}


def _folder_row(edit: QLineEdit, button: QPushButton) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row


class ExportWidget(QWidget):
    """Export corrections and manage the project folder used for autosave."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.autosave = start_autosave(napari_viewer)

        self.labels_combo = LayerCombo(
            napari_viewer, is_correction, none_text="(no corrections yet)"
        )
        self.folder_edit = QLineEdit(str(self.state.project_dir / "exports"))
        self.folder_button = QPushButton("…")
        self.uncertain_combo = QComboBox()
        for key in UNCERTAIN_POLICIES:
            self.uncertain_combo.addItem(UNCERTAIN_TEXT[key], key)
        self.class_edit = QLineEdit("Nucleus")
        self.class_edit.setToolTip("QuPath class of the exported objects (Nucleus, Lesion, ...)")
        self.object_combo = QComboBox()
        for key in OBJECT_TYPES:
            self.object_combo.addItem(OBJECT_TEXT[key], key)
        self.object_combo.setToolTip(
            "QuPath object type of the GeoJSON features: detections are light and meant for\n"
            "numerous objects such as nuclei; annotations can be edited (a lesion)"
        )
        self.export_button = QPushButton("Export")
        self.export_done_button = QPushButton("Export all done")
        self.runner = Runner("Export", self)

        self.project_edit = QLineEdit(str(self.state.project_dir))
        self.project_button = QPushButton("…")
        self.autosave_check = QCheckBox("Autosave corrections every 30 s")
        self.autosave_check.setChecked(self.autosave.enabled)
        self.save_now_button = QPushButton("Save now")
        self.autosave_status = QLabel(
            "Corrections are restored when the same image is opened again."
        )
        self.autosave_status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Corrections", self.labels_combo)
        form.addRow("Folder", _folder_row(self.folder_edit, self.folder_button))
        form.addRow("Uncertain", self.uncertain_combo)
        form.addRow("Class", self.class_edit)
        form.addRow("QuPath objects", self.object_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.export_done_button)
        box = QGroupBox("Autosave")
        auto = QFormLayout(box)
        auto.addRow("Project", _folder_row(self.project_edit, self.project_button))
        row = QHBoxLayout()
        row.addWidget(self.autosave_check, 1)
        row.addWidget(self.save_now_button)
        auto.addRow(row)
        auto.addRow(self.autosave_status)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.runner.make_bar())
        layout.addWidget(box)
        layout.addStretch(1)

        self.folder_button.clicked.connect(lambda: self._browse(self.folder_edit))
        self.project_button.clicked.connect(lambda: self._browse(self.project_edit, project=True))
        self.project_edit.editingFinished.connect(self._project_edited)
        self.export_button.clicked.connect(lambda: self.export())
        self.export_done_button.clicked.connect(self.export_done)
        self.autosave_check.toggled.connect(self.autosave.set_enabled)
        self.save_now_button.clicked.connect(lambda: self.autosave.save_now(force=True))
        self.autosave.saved.connect(self._saved)
        self.state.project_changed.connect(self._project_changed)
        self.labels_combo.currentIndexChanged.connect(self._guess_class)
        self.class_edit.textEdited.connect(self._class_edited)
        self._guess_class()

    # -- export ----------------------------------------------------------------------------

    def export(self, names: list[str] | None = None) -> bool:
        """Export the chosen correction layer (or the layers ``names``) in the background."""
        try:
            layers = (
                [self.viewer.layers[n] for n in names] if names else [self.labels_combo.layer()]
            )
            if not layers or layers[0] is None:
                raise InputError(
                    "no correction layer: run Pseudo-label or Start without a model first"
                )
            out = Path(self.folder_edit.text()).expanduser()
            if not str(self.folder_edit.text()).strip():
                raise InputError("choose a folder to export into")
            policy = self.uncertain_combo.currentData()
            cls = self.class_edit.text().strip() or "Nucleus"
            objects = self.object_combo.currentData()
            jobs = [self._job(layer, policy, cls, objects) for layer in layers]
        except (SelfloopError, OSError, KeyError) as e:
            show_error(f"Export: {error_message(e)}")
            return False

        def work() -> list[dict]:
            return [export_annotation(out, **job) for job in jobs]

        def done(entries: list[dict]) -> None:
            objects = sum(e["objects"] for e in entries)
            files = f" as {entries[0]['mask']} ..." if len(entries) == 1 else ""
            self.runner.status.setText(
                f"Exported {len(entries)} image(s), {objects} objects, to {out}{files}"
            )
            show_info(f"Exported {len(entries)} image(s) to {out}")

        return self.runner.start(work, on_done=done, message=f"exporting to {out}…")

    def _job(self, layer: Any, policy: str, cls: str, objects: str) -> dict[str, Any]:
        """The arguments of :func:`export_annotation` for one correction layer (checked)."""
        data = np.array(correction_mask(layer), copy=True)  # a snapshot for the thread
        image = image_for(self.viewer, layer)
        meta = meta_of(layer)
        window = window_of(layer)
        name = source_of(layer) or layer.name
        um = meta.get("pixel_size_um")
        if image is not None:
            height, width = (int(s) for s in image_data(image).shape[:2])
            if window is None and (height, width) != data.shape:
                raise InputError(
                    f"Labels layer '{layer.name}' has shape {data.shape} but its image "
                    f"'{image.name}' is {height}x{width}"
                )
            if window is not None and (
                data.shape != window.shape or window.y0 >= height or window.x0 >= width
            ):
                raise InputError(
                    f"Labels layer '{layer.name}' ({data.shape[0]}x{data.shape[1]}) does not "
                    f"fit its region {window.label} of '{image.name}' ({height}x{width})"
                )
            image_um = pixel_size_um(image)
            if um is None and image_um is not None:
                um = image_um * (window.factor if window is not None else 1.0)
        if window is not None:
            name = f"{name}_{window.stem}"
        src = getattr(image, "source", None)
        return dict(
            name=name,
            labels=data,
            image_sha256=meta.get("image_key"),
            image_path=str(src.path) if src is not None and src.path else None,
            checkpoint=meta.get("checkpoint"),
            classification=cls,
            uncertain=policy,
            object_type=objects,
            window=window,
            pixel_size_um=um,
        )

    def export_done(self) -> bool:
        names = [
            layer.name
            for layer in self.viewer.layers
            if is_correction(layer) and self.state.is_done(layer)
        ]
        if not names:
            show_error(
                "Export: no corrections are marked done (tick 'done' in Review or Fine-tune)"
            )
            return False
        return self.export(names)

    # -- folders and autosave ------------------------------------------------------------

    def _browse(self, edit: QLineEdit, project: bool = False) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text())
        if path:
            edit.setText(path)
            if project:
                self._project_edited()

    def _project_edited(self) -> None:
        text = self.project_edit.text().strip()
        if text:
            self.state.set_project_dir(text)

    def _project_changed(self, path: Path) -> None:
        old_default = self.folder_edit.text()
        self.project_edit.setText(str(path))
        if old_default.endswith("exports"):
            self.folder_edit.setText(str(Path(path) / "exports"))

    def _saved(self, count: int) -> None:
        when = (
            self.autosave.last_saved_at.strftime("%H:%M:%S") if self.autosave.last_saved_at else "?"
        )
        self.autosave_status.setText(
            f"Autosaved {count} layer(s) at {when} to {self.state.project_dir / 'autosave'}"
        )

    def _guess_class(self, *_: Any) -> None:
        layer = self.labels_combo.layer()
        if layer is not None and meta_of(layer).get("bootstrap") == "dermoscopy":
            self.class_edit.setText("Lesion")
        self._class_edited(self.class_edit.text())

    def _class_edited(self, text: str) -> None:
        """Follow the class with the object type that suits it (the user may change it)."""
        for start, kind in CLASS_OBJECTS.items():
            if text.strip().lower().startswith(start):
                self.object_combo.setCurrentIndex(self.object_combo.findData(kind))
                return
