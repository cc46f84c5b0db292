"""Review panel: walk through the uncertain regions, most uncertain first.

*Next region* centres and zooms the view on the next region still to settle; the counter
says how many are left. A region counts as reviewed once it is **settled**: none of its
pixels is uncertain (yellow) any more, whether it was settled in one click (*Region is
foreground / background*, which then moves on to the next region) or painted with
napari's brush. Visiting a region does not settle it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError, SelfloopError
from ..core.pseudolabel import UNCERTAIN
from ..core.regions import Region, uncertain_regions
from ._layers import (
    BACKGROUND,
    FOREGROUND,
    LayerCombo,
    camera,
    companion,
    correction_mask,
    is_correction,
    role_of,
    source_of,
)
from ._runner import error_message
from ._state import get_state

#: A region fills about this fraction of the smaller side of the canvas after *Next*.
FILL = 0.4
MIN_WINDOW = 48  # pixels: never zoom closer than this many image pixels across


class ReviewWidget(QWidget):
    """Ranked uncertain regions of a correction layer, with Next / Previous navigation."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer, autosave=True)
        self.regions: list[Region] = []
        self.settled: set[int] = set()  # regions with no uncertain pixel left
        self.current: int | None = None
        self._watched: Any = None  # the correction layer whose edits are followed
        self._has_uncertainty = False  # the regions were ranked by an uncertainty map
        self._recheck = QTimer(self)
        self._recheck.setSingleShot(True)
        self._recheck.setInterval(0)  # after napari has written the stroke
        self._recheck.timeout.connect(self._refresh_settled)

        self.labels_combo = LayerCombo(
            napari_viewer, is_correction, none_text="(run Pseudo-label first)"
        )
        self.find_button = QPushButton("Find uncertain regions")
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next region ▶")
        self.next_button.setToolTip(
            "Centre and zoom on the next region still to settle (most uncertain first)"
        )
        self.fg_button = QPushButton("Region is foreground")
        self.bg_button = QPushButton("Region is background")
        for b in (self.fg_button, self.bg_button):
            b.setToolTip(
                "Set this region's remaining uncertain (yellow) pixels, then go to the next region"
            )
        self.counter = QLabel("No regions yet")
        self.counter.setWordWrap(True)
        self.region_list = QListWidget()
        self.region_list.setMaximumHeight(140)
        self.region_list.setToolTip(
            "Uncertain regions, most uncertain first: how many pixels are still undecided, "
            "and how unsure the model is about them on average (0 = sure, 1 = a coin toss)"
        )
        self.done_check = QCheckBox("These corrections are done (use them to fine-tune)")

        form = QFormLayout()
        form.addRow("Corrections", self.labels_combo)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        settle = QHBoxLayout()
        settle.addWidget(self.fg_button)
        settle.addWidget(self.bg_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.find_button)
        layout.addWidget(self.counter)
        layout.addLayout(nav)
        layout.addLayout(settle)
        layout.addWidget(self.region_list)
        layout.addWidget(self.done_check)
        layout.addStretch(1)

        self.find_button.clicked.connect(self.find_regions)
        self.next_button.clicked.connect(self.next_region)
        self.prev_button.clicked.connect(self.previous_region)
        self.fg_button.clicked.connect(lambda: self.settle(FOREGROUND))
        self.bg_button.clicked.connect(lambda: self.settle(BACKGROUND))
        self.region_list.currentRowChanged.connect(self._row_chosen)
        self.labels_combo.currentIndexChanged.connect(self._layer_changed)
        self.done_check.toggled.connect(self._done_toggled)
        self.state.labels_updated.connect(self._labels_updated)
        self.state.done_changed.connect(lambda *_: self._layer_changed(keep_regions=True))
        self._layer_changed()

    # -- data ------------------------------------------------------------------------------

    def _labels(self):
        layer = self.labels_combo.layer()
        if layer is None:
            raise InputError("no correction layer: run Pseudo-label or Start without a model first")
        return layer

    def find_regions(self) -> list[Region]:
        """Rank the uncertain regions of the chosen correction layer (resets the review)."""
        try:
            labels = self._labels()
            mask = correction_mask(labels)
            unc_layer = companion(self.viewer, labels, "uncertainty")  # of the same region
            unc = None
            if unc_layer is not None and tuple(unc_layer.data.shape) == mask.shape:
                unc = np.asarray(unc_layer.data)
            self.regions = uncertain_regions(mask, unc)
        except SelfloopError as e:
            show_error(f"Review: {error_message(e)}")
            self.regions = []
        self.settled.clear()
        self.current = None
        self._has_uncertainty = bool(self.regions) and unc is not None
        self.region_list.blockSignals(True)
        self.region_list.clear()
        for i in range(len(self.regions)):
            self.region_list.addItem(self.describe(i))
        self.region_list.blockSignals(False)
        self._update_counter()
        return self.regions

    def describe(self, index: int) -> str:
        """The list's line for region ``index``, in words."""
        r = self.regions[index]
        text = f"#{index + 1}  {r.area} px undecided"
        if self._has_uncertainty and r.area:
            text += f"  ·  model {r.score / r.area:.0%} unsure"
        return text + ("  ·  settled ✓" if index in self.settled else "")

    @property
    def left(self) -> int:
        """Regions still to settle."""
        return len(self.regions) - len(self.settled)

    def is_settled(self, index: int) -> bool:
        """Whether region ``index`` has no uncertain (255) pixel left in its box."""
        labels = self.labels_combo.layer()
        if labels is None:
            return False
        y0, x0, y1, x1 = self.regions[index].bbox
        return not bool((np.asarray(labels.data[y0:y1, x0:x1]) == UNCERTAIN).any())

    def _refresh_settled(self) -> None:
        """Re-check which regions are settled (after a click, a brush stroke or an undo)."""
        settled = {i for i in range(len(self.regions)) if self.is_settled(i)}
        if settled != self.settled:
            self.settled = settled
            for i in range(min(len(self.regions), self.region_list.count())):
                self.region_list.item(i).setText(self.describe(i))
        self._update_counter()

    def _update_counter(self) -> None:
        n = len(self.regions)
        if n == 0:
            self.counter.setText(
                "No uncertain regions: the mask is ready (or press Find after a run)."
            )
        else:
            at = "" if self.current is None else f"Region {self.current + 1} of {n} · "
            self.counter.setText(f"{at}{len(self.settled)} reviewed (settled), {self.left} left")
        self.next_button.setEnabled(self.left > 0)
        self.prev_button.setEnabled(self.current is not None and self.current > 0)
        has = self.current is not None
        self.fg_button.setEnabled(has)
        self.bg_button.setEnabled(has)

    # -- navigation ------------------------------------------------------------------------

    def next_region(self) -> Region | None:
        """Go to the most uncertain region not settled yet."""
        if not self.regions:
            self.find_regions()
        todo = [i for i in range(len(self.regions)) if i not in self.settled]
        if not todo:
            show_info("All uncertain regions are settled: tick 'These corrections are done'")
            self._update_counter()
            return None
        after = [i for i in todo if self.current is None or i > self.current]
        return self.go_to((after or todo)[0])

    def previous_region(self) -> Region | None:
        if self.current is None or self.current == 0:
            return None
        return self.go_to(self.current - 1)

    def go_to(self, index: int) -> Region:
        region = self.regions[index]
        self.current = index
        self._centre_on(region)
        self.region_list.blockSignals(True)
        self.region_list.setCurrentRow(index)
        self.region_list.blockSignals(False)
        self._update_counter()
        return region

    def _row_chosen(self, row: int) -> None:
        if 0 <= row < len(self.regions):
            self.go_to(row)

    def _highlight(self, labels: Any, region: Region) -> None:
        """A magenta rectangle around the current region (one Shapes layer, reused)."""
        y0, x0, y1, x1 = region.bbox
        pad = 2
        rect = (
            np.array(
                [
                    [y0 - pad, x0 - pad],
                    [y0 - pad, x1 + pad],
                    [y1 + pad, x1 + pad],
                    [y1 + pad, x0 - pad],
                ],
                float,
            )
            - 0.5
        )
        layer = next((la for la in self.viewer.layers if role_of(la) == "review"), None)
        if layer is None:
            layer = self.viewer.add_shapes(
                [rect],
                shape_type="rectangle",
                edge_color="magenta",
                face_color="transparent",
                edge_width=max(1.0, (y1 - y0 + x1 - x0) / 40),
                name="review region",
                scale=tuple(labels.scale[-2:]),
                translate=tuple(labels.translate[-2:]),
                metadata={"selfloop": {"role": "review", "source": source_of(labels)}},
            )
        else:
            layer.data = [rect]
            layer.edge_width = max(1.0, (y1 - y0 + x1 - x0) / 40)
            layer.edge_color = "magenta"
            layer.visible = True

    def _centre_on(self, region: Region) -> None:
        labels = self.labels_combo.layer()
        if labels is None:
            return
        self._highlight(labels, region)
        y0, x0, y1, x1 = region.bbox
        centre = np.asarray(labels.data_to_world(np.array(region.centroid, float)))
        scale = np.abs(np.asarray(labels.scale[-2:], float))
        extent = max(MIN_WINDOW, y1 - y0, x1 - x0) * float(scale.max())
        cam = camera(self.viewer)
        cam.center = tuple(float(c) for c in centre[-2:])
        canvas = min(float(s) for s in self.viewer.canvas.size)
        cam.zoom = max(1e-3, FILL * canvas / extent)
        self.viewer.layers.selection.active = labels

    # -- settling a region -----------------------------------------------------------------

    def settle(self, value: int, advance: bool = True) -> int:
        """Set the current region's uncertain pixels to ``value`` and, with ``advance``, go
        to the next region still to settle; returns how many pixels changed.

        Written like a brush stroke (undoable with Ctrl+Z, seen by autosave at once).
        """
        labels = self.labels_combo.layer()
        if labels is None or self.current is None:
            return 0
        y0, x0, y1, x1 = self.regions[self.current].bbox
        ys, xs = np.nonzero(np.asarray(labels.data[y0:y1, x0:x1]) == UNCERTAIN)
        if ys.size:
            labels.data_setitem((ys + y0, xs + x0), value)
        self._refresh_settled()
        if advance:
            self.next_region()
        return int(ys.size)

    # -- reacting to other panels ----------------------------------------------------------

    def _labels_updated(self, name: str) -> None:
        self.labels_combo.set_layer(name)
        self.find_regions()

    def _watch(self, layer: Any) -> None:
        """Follow ``layer``'s edits (brush, fill, undo), so painted regions count as settled."""
        if layer is self._watched:
            return
        if self._watched is not None:
            for emitter in (self._watched.events.paint, self._watched.events.data):
                emitter.disconnect(self._labels_edited)
        self._watched = layer
        if layer is not None:
            layer.events.paint.connect(self._labels_edited)
            layer.events.data.connect(self._labels_edited)

    def _labels_edited(self, *_: Any) -> None:
        if self.regions:
            self._recheck.start()

    def _layer_changed(self, *_: Any, keep_regions: bool = False) -> None:
        layer = self.labels_combo.layer()
        self._watch(layer)
        self.done_check.blockSignals(True)
        self.done_check.setChecked(layer is not None and self.state.is_done(layer))
        self.done_check.setEnabled(layer is not None)
        self.done_check.blockSignals(False)
        if keep_regions:
            return
        self.regions, self.settled, self.current = [], set(), None
        self.region_list.clear()
        self._update_counter()

    def _done_toggled(self, on: bool) -> None:
        layer = self.labels_combo.layer()
        if layer is not None:
            self.state.set_done(layer, on)
