"""All panels in one dock widget, in the order of the work: the *Self-loop assistant*.

Each panel is also available on its own from ``Plugins > napari-selfloop``.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from ._runner import Outcome, Status
from .bootstrap_widget import BootstrapWidget
from .export_widget import ExportWidget
from .finetune_widget import FineTuneWidget
from .model_widget import ModelWidget
from .pseudolabel_widget import PseudoLabelWidget
from .review_widget import ReviewWidget

#: (tab title, panel class) in workflow order.
PANELS = (
    ("Model", ModelWidget),
    ("Start", BootstrapWidget),
    ("Pseudo-label", PseudoLabelWidget),
    ("Review", ReviewWidget),
    ("Fine-tune", FineTuneWidget),
    ("Export", ExportWidget),
)


class AssistantWidget(QWidget):
    """Tabs with every panel of napari-selfloop, sharing one state per viewer."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.tabs = QTabWidget()
        self.tabs.setUsesScrollButtons(True)
        self.panels: dict[str, QWidget] = {}
        for title, cls in PANELS:
            panel = cls(napari_viewer)
            self.panels[title] = panel
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(panel)
            self.tabs.addTab(scroll, title)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        # After a run, the natural next step is to review it.
        panels = self.panels
        panels["Pseudo-label"].runner.finished.connect(lambda o: self._after_run(o, "Review"))
        panels["Start"].runner.finished.connect(lambda o: self._after_run(o, "Review"))

    def _after_run(self, outcome: Outcome, tab: str) -> None:
        if outcome.status is Status.DONE:
            self.show_tab(tab)

    def show_tab(self, title: str) -> None:
        self.tabs.setCurrentIndex([t for t, _ in PANELS].index(title))

    def panel(self, title: str) -> QWidget:
        return self.panels[title]
