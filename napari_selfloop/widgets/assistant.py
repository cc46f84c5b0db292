"""All panels in one dock widget, in the order of the work: the *Self-loop assistant*.

Above the panels, the nucleus tools and their legend (:mod:`.nuclei_tools`).

Each panel is also available on its own from ``Plugins > napari-selfloop``.

The dock asks for the width of its widest panel (combo boxes are kept compact, so no
panel scrolls sideways), and docking it refits the view when the whole image was in view
before: the canvas gets narrower, and the tile would otherwise be cropped until the user
presses Home (issue 26).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize, QTimer
from qtpy.QtWidgets import QComboBox, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from ._layers import camera
from ._runner import Outcome, Status
from .bootstrap_widget import BootstrapWidget
from .export_widget import ExportWidget
from .finetune_widget import FineTuneWidget
from .model_widget import ModelWidget
from .nuclei_tools import NucleusTools
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

#: Characters a combo box shows at least; its list still shows every item in full.
COMBO_CHARS = 10
#: Widest the dock asks to be (a panel wider than this scrolls sideways instead).
MAX_DOCK_WIDTH = 520
#: Delays (ms) after docking at which the view is refitted, while the window settles.
REFIT_MS = (0, 150, 400)


def compact_combos(widget: QWidget) -> None:
    """Let every combo box in ``widget`` be narrower than its longest item."""
    for combo in widget.findChildren(QComboBox):
        if (
            combo.sizeAdjustPolicy()
            != QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        ):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(COMBO_CHARS)


def whole_view(viewer: Any) -> bool:
    """Whether every layer is inside the canvas at the current camera (2D; True when empty)."""
    if len(viewer.layers) == 0:
        return True
    try:
        extent = viewer.layers.extent.world[:, -2:]
        h, w = (float(s) for s in viewer.canvas.size)
        cam = camera(viewer)
        zoom = float(cam.zoom)
        cy, cx = (float(c) for c in cam.center[-2:])
    except (AttributeError, TypeError, ValueError):
        return False
    half = (h / (2 * zoom), w / (2 * zoom))
    tol = 1.0 / zoom
    return bool(
        cy - half[0] <= extent[0, 0] + tol
        and extent[1, 0] <= cy + half[0] + tol
        and cx - half[1] <= extent[0, 1] + tol
        and extent[1, 1] <= cx + half[1] + tol
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
        # The nucleus tools and their legend stay in view whichever panel is open.
        self.tools = NucleusTools(napari_viewer)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tools)
        layout.addWidget(self.tabs)
        compact_combos(self)
        # Was the whole image in view before the dock took its share of the window?
        self._refit = whole_view(napari_viewer)
        self._fitted: tuple | None = None
        # After a run, the natural next step is to review it.
        panels = self.panels
        panels["Pseudo-label"].runner.finished.connect(lambda o: self._after_run(o, "Review"))
        panels["Start"].runner.finished.connect(lambda o: self._after_run(o, "Review"))

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        """As wide as the widest panel needs (plus its scroll bar), so none scrolls sideways."""
        hint = super().sizeHint()
        bar = self.style().pixelMetric(self.style().PixelMetric.PM_ScrollBarExtent)
        need = max(p.minimumSizeHint().width() for p in self.panels.values()) + bar + 12
        return QSize(min(max(hint.width(), need), MAX_DOCK_WIDTH), hint.height())

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self._refit:
            self._refit = False
            for ms in REFIT_MS:
                QTimer.singleShot(ms, self.fit_view)

    def fit_view(self) -> None:
        """Fit the view to the image after docking, unless the user moved it since."""
        cam = camera(self.viewer)
        now = (float(cam.zoom), tuple(float(c) for c in cam.center))
        if self._fitted is not None and now != self._fitted:
            return  # the user zoomed or panned in between: leave their view
        self.viewer.reset_view()
        self._fitted = (float(cam.zoom), tuple(float(c) for c in cam.center))

    def _after_run(self, outcome: Outcome, tab: str) -> None:
        if outcome.status is Status.DONE:
            self.show_tab(tab)

    def show_tab(self, title: str) -> None:
        self.tabs.setCurrentIndex([t for t, _ in PANELS].index(title))

    def panel(self, title: str) -> QWidget:
        return self.panels[title]
