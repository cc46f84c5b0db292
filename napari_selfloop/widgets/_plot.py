"""A small live line plot drawn with QPainter (napari does not ship matplotlib).

Series are added point by point; each series is scaled to its own range (``loss``
auto-scaled, metrics in [0, 1]) and drawn in its own colour with a legend and last value.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

COLORS = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8")


class LivePlot(QWidget):
    """Line plot of named series against step.

    Parameters
    ----------
    fixed_ranges
        Series with a fixed y range, e.g. ``{"val F1": (0, 1)}``; others are auto-scaled.
    """

    def __init__(
        self,
        fixed_ranges: dict[str, tuple[float, float]] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.fixed = dict(fixed_ranges or {})
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def add(self, name: str, step: float, value: float | None) -> None:
        if value is None or not math.isfinite(float(value)):
            return
        self.series.setdefault(name, []).append((float(step), float(value)))
        self.update()

    def values(self, name: str) -> list[float]:
        return [v for _, v in self.series.get(name, [])]

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        rect = QRectF(self.rect()).adjusted(34, 16, -8, -14)
        p.fillRect(self.rect(), QColor(0, 0, 0, 40))
        p.setPen(QPen(QColor(128, 128, 128, 160), 1))
        p.drawRect(rect)
        font = p.font()
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        p.setFont(font)
        points = [pt for s in self.series.values() for pt in s]
        if not points:
            p.setPen(QColor(160, 160, 160))
            p.drawText(rect, Qt.AlignCenter, "loss and validation appear here during fine-tuning")
            p.end()
            return
        x0 = min(x for x, _ in points)
        x1 = max(x for x, _ in points)
        xspan = (x1 - x0) or 1.0
        legend_x = rect.left()
        for i, (name, pts) in enumerate(self.series.items()):
            color = QColor(COLORS[i % len(COLORS)])
            lo, hi = self.fixed.get(name, (min(v for _, v in pts), max(v for _, v in pts)))
            if hi - lo < 1e-12:
                lo, hi = lo - 0.5, hi + 0.5
            path = QPainterPath()
            for j, (x, v) in enumerate(pts):
                pt = QPointF(
                    rect.left() + (x - x0) / xspan * rect.width(),
                    rect.bottom() - (v - lo) / (hi - lo) * rect.height(),
                )
                if j == 0:
                    path.moveTo(pt)
                else:
                    path.lineTo(pt)
            p.setPen(QPen(color, 1.6))
            p.drawPath(path)
            if len(pts) == 1:
                p.drawEllipse(path.currentPosition(), 2, 2)
            label = f"{name} {pts[-1][1]:.3g}"
            p.drawText(QPointF(legend_x, rect.top() - 4), label)
            legend_x += p.fontMetrics().horizontalAdvance(label) + 12
            if i == 0:  # axis labels of the first series
                p.setPen(QColor(170, 170, 170))
                p.drawText(QRectF(0, rect.top() - 6, 32, 12), Qt.AlignRight, f"{hi:.2g}")
                p.drawText(QRectF(0, rect.bottom() - 6, 32, 12), Qt.AlignRight, f"{lo:.2g}")
        p.setPen(QColor(170, 170, 170))
        p.drawText(
            QRectF(rect.left(), rect.bottom() + 1, rect.width(), 12),
            Qt.AlignRight,
            f"step {int(x1)}",
        )
        p.end()
