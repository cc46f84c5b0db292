"""Fine-tune panel: train the current model on the corrections marked done (Eq. 2 of the paper).

Labelled = the correction layers ticked *done* (their image and mask; 255 = not labelled);
unlabelled = the other open images and, optionally, the images in a folder. A correction
layer of a region of a slide brings that region (read at the resolution it was
pseudo-labelled at, in the worker thread); a slide itself is never used whole as unlabelled
data, only its regions not marked done are. Training runs
on a copy of the current model in a background thread with a live loss / validation plot.
Each run writes a new checkpoint version next to the current one (``model_v2.pt``, ...; a
new model, or a bundled one, goes to ``PROJECT/checkpoints/``) and makes it the current model. *Stop* ends the
run early and keeps the best checkpoint found so far; the model that was current before
the run is never modified.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.corrections.nuclei import has_ids, labels_instances
from ..core.engine.datasets import TrainItem
from ..core.engine.pseudolabel import PATCH_MULTIPLE
from ..core.engine.training import FINETUNE_BLEND, FRAMEWORKS, TrainConfig, TrainResult, train
from ..core.errors import InputError, SelfloopError
from ..core.io.images import check_image
from ..core.io.windows import Window, WindowArray
from ..core.progress import Progress
from ..core.store.checkpoint import load_checkpoint
from ..core.store.export import labels_to_mask
from ..core.store.project import folder_images, release, reserve_version
from ._autosave import start_autosave
from ._form import Field, add_rows, build_controls, read_values
from ._layers import (
    correction_mask,
    image_data,
    image_for,
    is_correction,
    is_source_image,
    window_of,
)
from ._plot import LivePlot
from ._runner import Outcome, Runner, Status, error_message
from ._slide import levels_of, works_by_region
from ._state import get_state

log = logging.getLogger(__name__)

#: Most Q the panel offers (the core allows more, see ``TrainConfig``).
GUI_MAX_Q = 20
#: Patch sides offered: PATCH_MULTIPLE times 1 .. this.
GUI_PATCH_STEPS = 4

#: The training form: ``TrainConfig`` fields, shown with its defaults (the CLI's).
TRAIN_FIELDS = {
    "framework": Field(QComboBox, "Framework", choices=FRAMEWORKS),
    "iterations": Field(QSpinBox, "Iterations", range=(1, 100_000)),
    "q": Field(QSpinBox, "Q", range=(1, GUI_MAX_Q)),
    "lr": Field(QDoubleSpinBox, "Learning rate", range=(1e-5, 1e-1), step=1e-4, decimals=5),
    "patch_size": Field(
        QComboBox,
        "Patch size",
        choices=tuple(k * PATCH_MULTIPLE for k in range(1, GUI_PATCH_STEPS + 1)),
        tooltip=f"Side of the training patches (multiples of {PATCH_MULTIPLE})",
    ),
    "blend": Field(
        QDoubleSpinBox,
        "Blend",
        range=(0.0, 1.0),
        step=0.05,
        decimals=2,
        none_text="auto",
        tooltip="How much of what the fine-tune learns the model keeps: 1 keeps the "
        "fine-tuned weights; lower values end nearer the model you started from, which "
        f"changes less on slides unlike the ones you corrected. auto: {FINETUNE_BLEND:g} "
        "for a trained model, 1 for a new one",
    ),
}


def _check_region(layer: Any, image: Any, window: Window, shape: tuple[int, ...]) -> None:
    height, width = (int(s) for s in image_data(image).shape[:2])
    if shape != window.shape or window.y0 >= height or window.x0 >= width:
        raise InputError(
            f"Labels layer '{layer.name}' ({shape[0]}x{shape[1]}) does not fit its region "
            f"{window.label} of '{image.name}' ({height}x{width}): delete it and run "
            "Pseudo-label on that region again"
        )


class FineTuneWidget(QWidget):
    """Fine-tune the current model on the finished corrections."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        start_autosave(napari_viewer)
        self.last_result: TrainResult | None = None
        self.last_checkpoint: Path | None = None
        self._out: Path | None = None
        self._build_data_controls()
        self._build_training_form()
        self._build_run_controls()
        self._lay_out()
        self._connect()
        self.refresh()

    # -- building --------------------------------------------------------------------------

    def _build_data_controls(self) -> None:
        """The labelled list and where unlabelled data comes from."""
        self.labelled_list = QListWidget()
        self.labelled_list.setMaximumHeight(90)
        self.labelled_list.setToolTip("Tick the correction layers that are finished")
        self.unlabelled_check = QCheckBox("Other open images as unlabelled data")
        self.unlabelled_check.setChecked(True)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("optional folder of unlabelled images")
        self.folder_button = QPushButton("…")

    def _build_training_form(self) -> None:
        """The :data:`TRAIN_FIELDS` controls, showing ``TrainConfig``'s defaults (the CLI's)."""
        self.train_controls = build_controls(TRAIN_FIELDS, TrainConfig())
        self.framework_combo = self.train_controls["framework"]
        self.iterations_spin = self.train_controls["iterations"]
        self.q_spin = self.train_controls["q"]
        self.lr_spin = self.train_controls["lr"]
        self.patch_combo = self.train_controls["patch_size"]
        self.holdout_check = QCheckBox("Hold out one labelled image for validation")
        self.holdout_check.setToolTip(
            "With two or more done images, the last one chooses the best checkpoint "
            "(validation F1); otherwise the lowest segmentation loss does"
        )

    def _build_run_controls(self) -> None:
        """Start and Stop, the progress bar, the live plot and the result line."""
        self.start_button = QPushButton("Fine-tune")
        self.runner = Runner("Fine-tune", self)
        self.runner.cancel_button.setText("Stop")
        self.runner.cancel_button.setToolTip(
            "Stop after the current step and keep the best checkpoint so far"
        )
        self.plot = LivePlot({"val F1": (0.0, 1.0)})
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)

    def _lay_out(self) -> None:
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(self.folder_button)
        form = QFormLayout()
        add_rows(form, TRAIN_FIELDS, self.train_controls)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Labelled: corrections marked done"))
        layout.addWidget(self.labelled_list)
        layout.addWidget(self.unlabelled_check)
        layout.addLayout(folder_row)
        layout.addLayout(form)
        layout.addWidget(self.holdout_check)
        layout.addWidget(self.start_button)
        layout.addWidget(self.runner.make_bar())
        layout.addWidget(self.plot)
        layout.addWidget(self.result_label)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.folder_button.clicked.connect(self._browse)
        self.start_button.clicked.connect(self.start)
        self.labelled_list.itemChanged.connect(self._item_changed)
        self.runner.started.connect(lambda: self.start_button.setEnabled(False))
        self.runner.finished.connect(lambda *_: self.start_button.setEnabled(True))
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed):
            ev.connect(self.refresh)
        self.state.labels_updated.connect(self.refresh)
        self.state.done_changed.connect(self.refresh)

    # -- the labelled list -------------------------------------------------------------------

    def refresh(self, *_: Any) -> None:
        self.labelled_list.blockSignals(True)
        self.labelled_list.clear()
        for layer in self.viewer.layers:
            if not is_correction(layer):
                continue
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if self.state.is_done(layer) else Qt.Unchecked)
            self.labelled_list.addItem(item)
        if self.labelled_list.count() == 0:
            item = QListWidgetItem("(no corrections yet)")
            item.setFlags(Qt.NoItemFlags)
            self.labelled_list.addItem(item)
        self.labelled_list.blockSignals(False)

    def _item_changed(self, item: QListWidgetItem) -> None:
        name = item.text()
        if name in self.viewer.layers:
            self.state.set_done(self.viewer.layers[name], item.checkState() == Qt.Checked)

    def set_done(self, name: str, done: bool = True) -> None:
        self.state.set_done(self.viewer.layers[name], done)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Folder of unlabelled images", self.folder_edit.text()
        )
        if path:
            self.folder_edit.setText(path)

    # -- gathering data (main thread: reads layers) ----------------------------------------

    def _labelled(self) -> list[TrainItem]:
        items = []
        for layer in self.viewer.layers:
            if not (is_correction(layer) and self.state.is_done(layer)):
                continue
            image = image_for(self.viewer, layer)
            if image is None:
                raise InputError(
                    f"the image of '{layer.name}' is not open: open it again or untick the layer"
                )
            data = image_data(image)
            labels = correction_mask(layer)
            mask = labels_to_mask(labels)
            # One id per nucleus: a model with an instance output also learns from them
            # what separates touching nuclei (a plain 0/1 layer says nothing of that).
            instances = labels_instances(labels) if has_ids(labels) else None
            window = window_of(layer)
            if window is not None:
                _check_region(layer, image, window, mask.shape)
                data = WindowArray(levels_of(image), window)  # read in the worker thread
            info = check_image(data)
            if mask.shape != (info.height, info.width):
                raise InputError(
                    f"Labels layer '{layer.name}' has shape {mask.shape} but its image "
                    f"'{image.name}' is {info.height}x{info.width}"
                )
            # The mask rule of train and evaluate (core.datasets.normalise_mask), with the
            # convention known: in a correction layer 255 is "uncertain" (drawn yellow),
            # never foreground, even when the user erased every foreground pixel.
            name = image.name if window is None else layer.name
            items.append(
                TrainItem(
                    name=name,
                    image=data,
                    mask=mask,
                    mask_convention="selfloop",
                    instances=instances,
                )
            )
        if not items:
            raise InputError(
                "no corrections are marked done: tick a correction layer above "
                "(or 'done' in Review) after correcting it"
            )
        return items

    def _unlabelled(self, labelled: list[TrainItem]) -> list[TrainItem]:
        if not self.unlabelled_check.isChecked():
            return []
        used = {it.name for it in labelled}
        items = []
        for layer in self.viewer.layers:
            if is_correction(layer) and window_of(layer) is not None and layer.name not in used:
                image = image_for(self.viewer, layer)
                window = window_of(layer)
                if image is not None and not self.state.is_done(layer):
                    items.append(
                        TrainItem(name=layer.name, image=WindowArray(levels_of(image), window))
                    )
                continue
            if not is_source_image(layer) or layer.name in used or works_by_region(layer):
                continue  # a slide is used by its regions, never whole
            try:
                items.append(TrainItem(name=layer.name, image=image_data(layer)))
            except SelfloopError as e:
                show_warning(
                    f"Fine-tune: skipping '{layer.name}' as unlabelled data: {error_message(e)}"
                )
        return items

    def config(self) -> TrainConfig:
        values = read_values(TRAIN_FIELDS, self.train_controls)
        return TrainConfig(**values, validate_every=max(1, min(50, values["iterations"] // 4)))

    # -- running ---------------------------------------------------------------------------

    def start(self) -> bool:
        """Start fine-tuning (returns False, with a notification, if it cannot)."""
        if self.runner.running:
            show_info("Fine-tune is already running: wait for it or press Stop")
            return False
        try:
            ckpt = self.state.checkpoint
            if ckpt is None:
                raise InputError(
                    "no model: load a checkpoint or press New model in the Model panel"
                )
            labelled = self._labelled()
            validation = None
            if self.holdout_check.isChecked() and len(labelled) >= 2:
                validation = [labelled.pop()]
            unlabelled = self._unlabelled(labelled)
            folder_text = self.folder_edit.text().strip()
            folder = Path(folder_text).expanduser() if folder_text else None
            if folder is not None and not folder.is_dir():
                raise InputError(f"unlabelled folder {folder} does not exist")
            config = self.config()
            out = reserve_version(ckpt.path, self.state.project_dir)
        except (SelfloopError, OSError) as e:
            show_error(f"Fine-tune: {error_message(e)}")
            return False
        model = copy.deepcopy(ckpt.model)  # the current model is never touched
        device, parent = self.state.device, ckpt.sha256
        self._out = out
        self.plot.clear()
        self.result_label.setText("")

        def job():
            extra = folder_images(folder) if folder is not None else []
            return train(
                model,
                labelled,
                unlabelled + extra,
                config,
                validation=validation,
                device=device,
                out=out,
                parent=parent,
                pixel_size_um=ckpt.pixel_size_um,
            )

        started = self.runner.start(
            job,
            on_progress=self._progress,
            on_done=self._done,
            on_end=self._end,
            message=f"fine-tuning on {len(labelled)} labelled image(s)…",
            interrupt=[model],
        )
        if not started:
            release(out)
        return started

    def _progress(self, event: Progress) -> None:
        data = event.data
        if data.get("phase") == "train":
            step = data.get("step", event.done)
            self.plot.add("loss", step, data.get("loss"))
            self.plot.add("seg loss", step, data.get("loss_seg"))
        if "val_f1" in data:
            self.plot.add("val F1", data.get("step", event.done), data["val_f1"])

    def _done(self, result: TrainResult) -> None:
        self.last_result = result
        metric = (
            "" if result.best_metric is None else f"{result.metric_name} {result.best_metric:.4f} "
        )
        drifted = ""
        if result.unlabelled_until is not None:
            drifted = (
                f" The pseudo-labels drifted at step {result.unlabelled_until}: the model went "
                "back to where the unlabelled images joined and learned from the labelled "
                "images alone from there."
            )
        self.result_label.setText(
            f"Finished {result.steps} iterations in {result.seconds:.0f} s; "
            f"best {metric}at step {result.best_step}.{drifted}"
        )

    def _end(self, outcome: Outcome) -> None:
        out = self._out
        release(out)
        if outcome.status is Status.ERROR or out is None or not out.exists():
            if outcome.status is Status.CANCELLED:
                self.result_label.setText(
                    "Stopped before the first evaluation: the model is unchanged."
                )
            return
        ckpt = load_checkpoint(out)
        self.state.set_checkpoint(ckpt)
        self.last_checkpoint = out
        note = "Stopped; kept" if outcome.status is Status.CANCELLED else "Saved"
        self.result_label.setText(
            f"{self.result_label.text()} {note} the best checkpoint as {out.name} "
            "(now the current model).".strip()
        )
        show_info(f"Fine-tune: {note.lower()} {out}, now the current model")
