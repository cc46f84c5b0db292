"""Model panel: use a bundled starter model, load a checkpoint or start a new model, pick
the device, read the model card (in plain words, with the ML details behind *Details*)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.engine.device import DEVICES, resolve_device
from ..core.engine.model import ModelConfig, build_model, count_parameters
from ..core.engine.pretrain import PRETRAIN_KIND
from ..core.errors import SelfloopError
from ..core.store.bundled import BUNDLED, load_any, model_for_array
from ..core.store.checkpoint import Checkpoint
from ..core.store.modelcard import model_card, plain_card
from ._autosave import start_autosave
from ._jigsaw import JigsawPanel
from ._runner import error_message
from ._state import get_state

log = logging.getLogger(__name__)

CHECKPOINT_FILTER = "napari-selfloop checkpoints (*.pt *.pth);;All files (*)"


def card_text(ckpt: Checkpoint) -> str:
    """The core's model card, with the training record's best metric written for people,
    and a jigsaw pre-training record called so (it saw images, not masks)."""
    lines = model_card(ckpt).splitlines()
    metrics = ckpt.meta.get("metrics") or {}
    training = ckpt.meta.get("training") or {}
    if training.get("kind") == PRETRAIN_KIND:
        steps = f" ({training['step']} steps)" if training.get("step") is not None else ""
        renamed = {
            "trained on": f"jigsaw pre-trained{steps} on",
            "fine-tuned from": "pre-trained from",
        }
        for i, line in enumerate(lines):
            for old, new in renamed.items():
                if line.startswith(old):
                    lines[i] = new + line[len(old) :]
    name, value = metrics.get("metric_name"), metrics.get("metric")
    if name and isinstance(value, (int, float)):
        label = {
            "val_f1": "validation F1",
            "val_f1_mean": "validation F1 (mean per image)",
            "train_seg_loss": "training segmentation loss",
        }.get(name, name)
        how = f" ({metrics['framework']})" if metrics.get("framework") else ""
        step = f" at step {metrics['best_step']}" if metrics.get("best_step") is not None else ""
        lines = [ln for ln in lines if not ln.startswith("validation:")]
        lines.insert(2 if len(lines) > 1 else 1, f"best {label} {value:.4g}{step}{how}")
    if training.get("kind") == "bundled":
        name = next(
            (n for n in BUNDLED if ckpt.path is not None and ckpt.path.name == f"{n}.pt"), None
        )
        if name is not None:
            lines[0] = (
                f"bundled model {name}: {BUNDLED[name].title} (ResUNet-18, width {ckpt.config.width})"
            )
            lines.append(f"licence of the weights: {BUNDLED[name].licence}")
    return "\n".join(lines)


class ModelWidget(QWidget):
    """Load a checkpoint, or start a new ResUNet-18; choose the device; show the model card."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        start_autosave(napari_viewer)
        self._build_model_choice()
        self._build_card()
        self.jigsaw = JigsawPanel(napari_viewer, self.state, self)
        self._lay_out()
        self._connect()
        self.device_combo.setCurrentText(self.state.device)
        self._show_card(self.state.checkpoint)
        self._suggest_bundled()

    # -- building ------------------------------------------------------------------------

    def _build_model_choice(self) -> None:
        """Where the model comes from (bundled, a file, new), the device and the ensemble."""
        self.load_button = QPushButton("Load checkpoint…")
        self.load_button.setToolTip(
            "Open a .pt file made by napari-selfloop (init, train or Fine-tune)"
        )
        self.bundled_combo = QComboBox()
        self.bundled_combo.addItems(list(BUNDLED))
        self.bundled_combo.setToolTip("\n".join(f"{m.name}: {m.title}" for m in BUNDLED.values()))
        self.bundled_button = QPushButton("Use bundled model")
        self.bundled_button.setToolTip(
            "A starter model shipped with the plugin, trained on public data (see its licence in the card)"
        )
        self.new_button = QPushButton("New model")
        self.new_button.setToolTip(
            "A freshly initialised ResUNet-18 (untrained: start from a bootstrap mask)"
        )
        self.width_spin = QSpinBox()
        self.width_spin.setRange(4, 128)
        self.width_spin.setValue(ModelConfig().width)
        self.width_spin.setToolTip(
            "Channels of the first stage of a new model; 64 is the real ResUNet-18"
        )
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setToolTip("auto picks CUDA, then Apple MPS, then the CPU")
        self.ensemble_button = QPushButton("Add to ensemble…")
        self.ensemble_button.setToolTip("Extra checkpoints for the 'ensemble' pseudo-label method")
        self.ensemble_label = QLabel("ensemble: current model only")

    def _build_card(self) -> None:
        """The model card in plain words first; the ML card (``self.card``) behind *Details*."""
        self.summary = QLabel("No model yet: load a checkpoint or press New model.")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setObjectName("selfloop_model_summary")
        self.summary.setStyleSheet(
            "QLabel#selfloop_model_summary { padding: 4px; border: 1px solid #555; }"
        )
        self.details_button = QToolButton()
        self.details_button.setText("Details")
        self.details_button.setCheckable(True)
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.setToolTip(
            "The model card for machine-learning readers: architecture, jigsaw, metrics, file"
        )
        self.card = QLabel("No model yet: load a checkpoint or press New model.")
        self.card.setWordWrap(True)
        self.card.setTextFormat(Qt.TextFormat.PlainText)
        self.card.setObjectName("selfloop_model_card")
        self.card.setStyleSheet(
            "QLabel#selfloop_model_card { padding: 4px; border: 1px solid #555; }"
        )
        self.card.setVisible(False)

    def _lay_out(self) -> None:
        # Two rows, so the button is never cut off in a narrow dock (issue 26).
        bundled = QFormLayout()
        bundled.addRow("Bundled model", self.bundled_combo)
        bundled.addRow(self.bundled_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.new_button)
        form = QFormLayout()
        form.addRow("New model width", self.width_spin)
        form.addRow("Device", self.device_combo)
        ens = QHBoxLayout()
        ens.addWidget(self.ensemble_button)
        ens.addWidget(self.ensemble_label, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(bundled)
        layout.addLayout(buttons)
        layout.addLayout(form)
        layout.addLayout(ens)
        layout.addWidget(self.summary)
        layout.addWidget(self.details_button)
        layout.addWidget(self.card)
        layout.addWidget(self.jigsaw)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.load_button.clicked.connect(self._browse)
        self.new_button.clicked.connect(lambda: self.new_model())
        self.bundled_button.clicked.connect(
            lambda: self.load_bundled(self.bundled_combo.currentText())
        )
        self.viewer.layers.selection.events.active.connect(self._suggest_bundled)
        self.device_combo.currentTextChanged.connect(self.set_device)
        self.ensemble_button.clicked.connect(self._browse_ensemble)
        self.details_button.toggled.connect(self.show_details)
        self.state.model_changed.connect(self._show_card)
        self.state.ensemble_changed.connect(self._show_ensemble)

    # -- actions (also called by tests and the gui command) ----------------------------

    def load(self, path: str | Path) -> Checkpoint | None:
        """Load a checkpoint (or a bundled model by name) and make it current; a bad file
        gives a notification."""
        try:
            ckpt = load_any(path)
        except (SelfloopError, OSError) as e:
            show_error(f"Could not load the checkpoint: {error_message(e)}")
            return None
        self.state.set_checkpoint(ckpt)
        show_info(f"Loaded {Path(path).name}")
        return ckpt

    def load_bundled(self, name: str) -> Checkpoint | None:
        """Make bundled model ``name`` current (a missing or damaged file: a notification)."""
        ckpt = self.load(name) if name in BUNDLED else None
        if ckpt is not None:
            self.bundled_combo.setCurrentText(name)
        elif name not in BUNDLED:
            show_error(f"No bundled model called {name!r}: choose one of {', '.join(BUNDLED)}")
        return ckpt

    def _suggest_bundled(self, *_: Any) -> None:
        """Pre-select the bundled model that fits the active image (H&E or dermoscopy)."""
        layer = self.viewer.layers.selection.active
        if (
            layer is None
            or layer.__class__.__name__ != "Image"
            or getattr(layer, "multiscale", False)
        ):
            return
        try:
            name = model_for_array(layer.data, side=512)
            if name is not None:
                self.bundled_combo.setCurrentText(name)
        except (SelfloopError, ValueError) as e:  # a guess, never an error for the user
            log.debug("no bundled model suggestion: %s", e)

    def new_model(self, width: int | None = None, seed: int = 0) -> Checkpoint:
        """Start a freshly initialised model (``width`` 64 is the real ResUNet-18)."""
        width = int(width if width is not None else self.width_spin.value())
        self.width_spin.setValue(width)
        model = build_model(ModelConfig(width=width), seed=seed)
        ckpt = self.state.new_checkpoint(model, note=f"new model (seed {seed})")
        show_info(f"New ResUNet-18 ({count_parameters(model) / 1e6:.2f} M parameters), untrained")
        return ckpt

    def add_to_ensemble(self, path: str | Path) -> Checkpoint | None:
        try:
            ckpt = load_any(path)
        except (SelfloopError, OSError) as e:
            show_error(f"Could not load the checkpoint: {error_message(e)}")
            return None
        if self.state.model is not None and not ckpt.config.same_network(self.state.model.config):
            show_error(
                "Ensemble members must have the same architecture (width) as the current model"
            )
            return None
        self.state.ensemble.append(ckpt)
        self.state.ensemble_changed.emit(self.state.ensemble)
        return ckpt

    def set_device(self, device: str) -> None:
        try:
            resolved = resolve_device(device)
        except SelfloopError as e:
            show_error(error_message(e))
            self.device_combo.blockSignals(True)
            self.device_combo.setCurrentText(self.state.device)
            self.device_combo.blockSignals(False)
            return
        self.state.set_device(device)
        self._show_card(self.state.checkpoint, resolved=str(resolved))

    def show_details(self, on: bool = True) -> None:
        """Show (or hide) the ML details of the model card below its plain words."""
        if self.details_button.isChecked() != on:
            self.details_button.setChecked(on)  # comes back here through toggled
            return
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.card.setVisible(on)

    # -- UI ------------------------------------------------------------------------------

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a napari-selfloop checkpoint", "", CHECKPOINT_FILTER
        )
        if path:
            self.load(path)

    def _browse_ensemble(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Add checkpoints to the ensemble", "", CHECKPOINT_FILTER
        )
        for p in paths:
            self.add_to_ensemble(p)

    def _show_ensemble(self, members: list[Checkpoint]) -> None:
        names = ", ".join(m.path.name for m in members if m.path)
        self.ensemble_label.setText(
            f"ensemble: current + {len(members)} ({names})"
            if members
            else "ensemble: current model only"
        )

    def _show_card(self, ckpt: Checkpoint | None, resolved: str | None = None) -> None:
        if ckpt is None:
            text = (
                "No model yet: use a bundled model (nuclei-he for H&E nuclei, lesion-dermoscopy "
                "for skin lesions), load a checkpoint or press New model.\n"
                "Without a model, use 'Start without a model' for a first mask."
            )
            self.summary.setText(text.replace("\n", "<br>"))
            self.card.setText(text)
            return
        self.summary.setText(plain_card(ckpt.meta, ckpt.config, ckpt.path).html())
        try:
            device = resolved or str(resolve_device(self.state.device))
        except SelfloopError:
            device = self.state.device
        where = (
            str(ckpt.path)
            if ckpt.path
            else "not saved yet (Fine-tune or jigsaw pre-training saves it)"
        )
        params = count_parameters(ckpt.model) / 1e6
        self.card.setText(
            f"{card_text(ckpt)}\n{params:.2f} M parameters · runs on {device}\nfile: {where}"
        )
