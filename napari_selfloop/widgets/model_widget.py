"""Model panel: load a checkpoint or start a new model, pick the device, read the model card."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.checkpoint import Checkpoint, load_checkpoint, model_card
from ..core.device import DEVICES, resolve_device
from ..core.errors import SelfloopError
from ..core.model import ModelConfig, build_model, count_parameters
from ..core.pretrain import PRETRAIN_KIND
from ._autosave import autosave_for
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
        renamed = {"trained on": f"jigsaw pre-trained{steps} on", "fine-tuned from": "pre-trained from"}
        for i, line in enumerate(lines):
            for old, new in renamed.items():
                if line.startswith(old):
                    lines[i] = new + line[len(old):]
    name, value = metrics.get("metric_name"), metrics.get("metric")
    if name and isinstance(value, (int, float)):
        label = {"val_f1": "validation F1", "train_seg_loss": "training segmentation loss"}.get(
            name, name
        )
        how = f" ({metrics['framework']})" if metrics.get("framework") else ""
        step = f" at step {metrics['best_step']}" if metrics.get("best_step") is not None else ""
        lines = [ln for ln in lines if not ln.startswith("validation:")]
        lines.insert(2 if len(lines) > 1 else 1, f"best {label} {value:.4g}{step}{how}")
    return "\n".join(lines)


class ModelWidget(QWidget):
    """Load a checkpoint, or start a new ResUNet-18; choose the device; show the model card."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        autosave_for(napari_viewer)

        self.load_button = QPushButton("Load checkpoint…")
        self.load_button.setToolTip(
            "Open a .pt file made by napari-selfloop (init, train or Fine-tune)"
        )
        self.new_button = QPushButton("New model")
        self.new_button.setToolTip(
            "A freshly initialised ResUNet-18 (untrained: start from a bootstrap mask)"
        )
        self.width_spin = QSpinBox()
        self.width_spin.setRange(4, 128)
        self.width_spin.setValue(64)
        self.width_spin.setToolTip(
            "Channels of the first stage of a new model; 64 is the real ResUNet-18"
        )
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setToolTip("auto picks CUDA, then Apple MPS, then the CPU")
        self.ensemble_button = QPushButton("Add to ensemble…")
        self.ensemble_button.setToolTip("Extra checkpoints for the 'ensemble' pseudo-label method")
        self.ensemble_label = QLabel("ensemble: current model only")
        self.card = QLabel("No model yet: load a checkpoint or press New model.")
        self.card.setWordWrap(True)
        self.card.setObjectName("selfloop_model_card")
        self.card.setStyleSheet(
            "QLabel#selfloop_model_card { padding: 4px; border: 1px solid #555; }"
        )
        self.jigsaw = JigsawPanel(napari_viewer, self.state, self)

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
        layout.addLayout(buttons)
        layout.addLayout(form)
        layout.addLayout(ens)
        layout.addWidget(self.card)
        layout.addWidget(self.jigsaw)
        layout.addStretch(1)

        self.load_button.clicked.connect(self._browse)
        self.new_button.clicked.connect(lambda: self.new_model())
        self.device_combo.currentTextChanged.connect(self.set_device)
        self.ensemble_button.clicked.connect(self._browse_ensemble)
        self.state.model_changed.connect(self._show_card)
        self.state.ensemble_changed.connect(self._show_ensemble)
        self.device_combo.setCurrentText(self.state.device)
        self._show_card(self.state.checkpoint)

    # -- actions (also called by tests and the gui command) ----------------------------

    def load(self, path: str | Path) -> Checkpoint | None:
        """Load a checkpoint and make it current; a bad file gives a notification."""
        try:
            ckpt = load_checkpoint(path)
        except (SelfloopError, OSError) as e:
            show_error(f"Could not load the checkpoint: {error_message(e)}")
            return None
        self.state.set_checkpoint(ckpt)
        show_info(f"Loaded {Path(path).name}")
        return ckpt

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
            ckpt = load_checkpoint(path)
        except (SelfloopError, OSError) as e:
            show_error(f"Could not load the checkpoint: {error_message(e)}")
            return None
        if self.state.model is not None and ckpt.config != self.state.model.config:
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
            self.card.setText(
                "No model yet: load a checkpoint or press New model.\n"
                "Without a model, use 'Start without a model' for a first mask."
            )
            return
        try:
            device = resolved or str(resolve_device(self.state.device))
        except SelfloopError:
            device = self.state.device
        where = str(ckpt.path) if ckpt.path else "not saved yet (Fine-tune or jigsaw pre-training saves it)"
        params = count_parameters(ckpt.model) / 1e6
        self.card.setText(
            f"{card_text(ckpt)}\n{params:.2f} M parameters · runs on {device}\nfile: {where}"
        )
