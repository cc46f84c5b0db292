"""Review panel: walk through the uncertain regions and unsure nuclei, most uncertain first.

*Find* lists what to review (:func:`~napari_selfloop.core.corrections.review_items.review_items`):
the uncertain (yellow) regions of the correction layer and, where the layer holds nucleus
ids and there is an uncertainty map, the nuclei the model is least sure of, in one list by
mean uncertainty. *Next* centres and zooms the view on the next item still to settle; the
counter says how many are left. Each item is settled in one click, which then moves on to
the next one:

- a region: *Region is nucleus* (each piece of it touching a nucleus joins that nucleus,
  a piece apart becomes a new nucleus; :func:`~napari_selfloop.core.corrections.nuclei.settle`) or
  *Region is background*;
- a nucleus: *Keep nucleus* (marks it reviewed, no pixel changes) or *Not a nucleus*
  (deletes it, :func:`~napari_selfloop.core.corrections.nuclei.delete`).

Every click is one undoable step (Ctrl+Z). A region counts as settled once none of its
pixels is uncertain any more, a nucleus once kept, or once its id is gone from any of its
pixels (deleted, split, merged, painted over); brush strokes and undo re-check that.
Visiting an item does not settle it. In a plain 0/1/255 layer a region settled as nucleus
is painted 1 (its nuclei are the connected pieces of 1).

Keys, while the canvas has the focus: **Y** settles the current item as nucleus (Region is
nucleus / Keep nucleus), **R** as background (Region is background / Not a nucleus),
**G** goes to the next item.
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

from ..core.corrections import nuclei
from ..core.corrections.review_items import ReviewItem, review_items
from ..core.engine.pseudolabel import UNCERTAIN
from ..core.errors import InputError, SelfloopError
from ._autosave import start_autosave
from ._layers import (
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

#: An item fills about this fraction of the smaller side of the canvas after *Next*.
FILL = 0.4
MIN_WINDOW = 48  # pixels: never zoom closer than this many image pixels across
#: Keys (on the canvas) of the two settle buttons and Next; clear of napari's Labels keys
#: and of the nucleus tools' (D, S, J, A, U, N, K).
KEY_NUCLEUS, KEY_BACKGROUND, KEY_NEXT = "Y", "R", "G"
#: The settle buttons' texts for the current item's kind.
BUTTON_TEXT = {
    "region": ("Region is nucleus", "Region is background"),
    "nucleus": ("Keep nucleus", "Not a nucleus"),
}
BUTTON_TIP = {
    "region": (
        "Settle this region's uncertain (yellow) pixels as nucleus: a piece touching a "
        "nucleus joins it, a piece apart becomes a new nucleus; then go to the next item",
        "Settle this region's uncertain (yellow) pixels as background, then go to the next item",
    ),
    "nucleus": (
        "This nucleus is right: count it as reviewed (nothing changes), then go to the next item",
        "This is not a nucleus: delete it (background), then go to the next item",
    ),
}


class ReviewWidget(QWidget):
    """Ranked uncertain regions and unsure nuclei of a correction layer: Next / Previous
    navigation and one-click settling."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        start_autosave(napari_viewer)
        self.items: list[ReviewItem] = []
        self.settled: set[int] = set()  # items settled (see is_settled)
        self.kept: set[int] = set()  # nuclei kept with "Keep nucleus"
        self.current: int | None = None
        self._watched: Any = None  # the correction layer whose edits are followed
        self._has_uncertainty = False  # the items were ranked by an uncertainty map
        self._recheck = QTimer(self)
        self._recheck.setSingleShot(True)
        self._recheck.setInterval(0)  # after napari has written the stroke
        self._recheck.timeout.connect(self._refresh_settled)

        self.labels_combo = LayerCombo(
            napari_viewer, is_correction, none_text="(run Pseudo-label first)"
        )
        self.find_button = QPushButton("Find uncertain regions and nuclei")
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip(
            "Centre and zoom on the next region or nucleus still to settle (most uncertain "
            f"first)  [{KEY_NEXT}]"
        )
        self.fg_button = QPushButton()
        self.bg_button = QPushButton()
        self.counter = QLabel("Nothing listed yet")
        self.counter.setWordWrap(True)
        self.region_list = QListWidget()
        self.region_list.setMaximumHeight(140)
        self.region_list.setToolTip(
            "Uncertain regions and the nuclei the model is least sure of, most uncertain "
            "first: how many pixels of a region are still undecided, and how unsure the "
            "model is on average (0 = sure, 1 = a coin toss)"
        )
        self.done_check = QCheckBox("These corrections are done (use them to fine-tune)")
        self._set_button_texts("region")

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
        self.fg_button.clicked.connect(lambda: self.settle(True))
        self.bg_button.clicked.connect(lambda: self.settle(False))
        self.region_list.currentRowChanged.connect(self._row_chosen)
        self.labels_combo.currentIndexChanged.connect(self._layer_changed)
        self.done_check.toggled.connect(self._done_toggled)
        self.state.labels_updated.connect(self._labels_updated)
        self.state.done_changed.connect(lambda *_: self._layer_changed(keep_regions=True))
        self._bind_keys()
        self._layer_changed()

    # -- data ------------------------------------------------------------------------------

    @property
    def regions(self) -> list[ReviewItem]:
        """The listed items (regions and nuclei; the name is kept for scripts)."""
        return self.items

    def _labels(self):
        layer = self.labels_combo.layer()
        if layer is None:
            raise InputError("no correction layer: run Pseudo-label or Start without a model first")
        return layer

    def find_regions(self) -> list[ReviewItem]:
        """Rank the uncertain regions and unsure nuclei of the chosen correction layer
        (resets the review)."""
        unc = None
        try:
            labels = self._labels()
            mask = correction_mask(labels)
            unc_layer = companion(self.viewer, labels, "uncertainty")  # of the same region
            if unc_layer is not None and tuple(unc_layer.data.shape) == mask.shape:
                unc = np.asarray(unc_layer.data)
            self.items = review_items(mask, unc)
        except SelfloopError as e:
            show_error(f"Review: {error_message(e)}")
            self.items = []
        self.settled.clear()
        self.kept.clear()
        self.current = None
        self._has_uncertainty = bool(self.items) and unc is not None
        self.region_list.blockSignals(True)
        self.region_list.clear()
        for i in range(len(self.items)):
            self.region_list.addItem(self.describe(i))
        self.region_list.blockSignals(False)
        self._set_button_texts("region")
        self._update_counter()
        return self.items

    find_items = find_regions

    def describe(self, index: int) -> str:
        """The list's line for item ``index``, in words."""
        item = self.items[index]
        if item.is_nucleus:
            text = f"#{index + 1}  nucleus {item.number}"
        else:
            text = f"#{index + 1}  region  ·  {item.area} px undecided"
        if self._has_uncertainty and item.mean is not None:
            text += f"  ·  model {item.mean:.0%} unsure"
        if index in self.kept:
            return text + "  ·  kept ✓"
        return text + ("  ·  settled ✓" if index in self.settled else "")

    def what(self, index: int) -> str:
        item = self.items[index]
        return f"nucleus {item.number}" if item.is_nucleus else "region"

    @property
    def left(self) -> int:
        """Items still to settle."""
        return len(self.items) - len(self.settled)

    def is_settled(self, index: int) -> bool:
        """Whether item ``index`` is settled: a region with no uncertain (255) pixel left in
        its box; a nucleus kept, or whose id is gone from any of its pixels."""
        labels = self.labels_combo.layer()
        if labels is None:
            return False
        item = self.items[index]
        crop = np.asarray(labels.data[item.slices])
        if not item.is_nucleus:
            return not bool((crop == UNCERTAIN).any())
        if index in self.kept:
            return True
        if item.pixels is None or crop.shape != item.pixels.shape:
            return True
        return bool((crop[item.pixels] != item.label).any())

    def _refresh_settled(self) -> None:
        """Re-check which items are settled (after a click, a brush stroke or an undo)."""
        settled = {i for i in range(len(self.items)) if self.is_settled(i)}
        if settled != self.settled:
            self.settled = settled
            for i in range(min(len(self.items), self.region_list.count())):
                self.region_list.item(i).setText(self.describe(i))
        self._update_counter()

    def _update_counter(self) -> None:
        n = len(self.items)
        if n == 0:
            self.counter.setText(
                "Nothing to review: no uncertain regions or unsure nuclei (press Find after a run)."
            )
        else:
            at = (
                ""
                if self.current is None
                else f"Item {self.current + 1} of {n}: {self.what(self.current)} · "
            )
            self.counter.setText(f"{at}{len(self.settled)} reviewed (settled), {self.left} left")
        self.next_button.setEnabled(self.left > 0)
        self.prev_button.setEnabled(self.current is not None and self.current > 0)
        has = self.current is not None
        self.fg_button.setEnabled(has)
        self.bg_button.setEnabled(has)

    def _set_button_texts(self, kind: str) -> None:
        keys = (KEY_NUCLEUS, KEY_BACKGROUND)
        for button, text, tip, key in zip(
            (self.fg_button, self.bg_button), BUTTON_TEXT[kind], BUTTON_TIP[kind], keys
        ):
            button.setText(text)
            button.setToolTip(f"{tip}  [{key}]")

    # -- navigation ------------------------------------------------------------------------

    def next_region(self) -> ReviewItem | None:
        """Go to the most uncertain item not settled yet (after the current one)."""
        if not self.items:
            self.find_regions()
        todo = [i for i in range(len(self.items)) if i not in self.settled]
        if not todo:
            show_info(
                "All uncertain regions and nuclei are settled: tick 'These corrections are done'"
            )
            self._update_counter()
            return None
        after = [i for i in todo if self.current is None or i > self.current]
        return self.go_to((after or todo)[0])

    next_item = next_region

    def previous_region(self) -> ReviewItem | None:
        if self.current is None or self.current == 0:
            return None
        return self.go_to(self.current - 1)

    def go_to(self, index: int) -> ReviewItem:
        item = self.items[index]
        self.current = index
        self._centre_on(item)
        self.region_list.blockSignals(True)
        self.region_list.setCurrentRow(index)
        self.region_list.blockSignals(False)
        self._set_button_texts(item.kind)
        self._update_counter()
        return item

    def _row_chosen(self, row: int) -> None:
        if 0 <= row < len(self.items):
            self.go_to(row)

    def _highlight(self, labels: Any, item: ReviewItem) -> None:
        """A magenta rectangle around the current item (one Shapes layer, reused)."""
        y0, x0, y1, x1 = item.bbox
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

    def _centre_on(self, item: ReviewItem) -> None:
        labels = self.labels_combo.layer()
        if labels is None:
            return
        self._highlight(labels, item)
        y0, x0, y1, x1 = item.bbox
        centre = np.asarray(labels.data_to_world(np.array(item.centroid, float)))
        scale = np.abs(np.asarray(labels.scale[-2:], float))
        extent = max(MIN_WINDOW, y1 - y0, x1 - x0) * float(scale.max())
        cam = camera(self.viewer)
        cam.center = tuple(float(c) for c in centre[-2:])
        canvas = min(float(s) for s in self.viewer.canvas.size)
        cam.zoom = max(1e-3, FILL * canvas / extent)
        self.viewer.layers.selection.active = labels

    # -- settling an item ------------------------------------------------------------------

    def settle(self, nucleus: bool | int, advance: bool = True) -> int:
        """Settle the current item and, with ``advance``, go to the next item still to
        settle; returns how many pixels changed.

        ``nucleus`` true: a region's uncertain pixels become nucleus (they join the nucleus
        they touch, else a new one), a nucleus is kept as it is; false: a region's
        uncertain pixels become background, a nucleus is deleted. Written in one step like
        a brush stroke (one Ctrl+Z takes it back, autosave sees it at once).
        """
        labels = self.labels_combo.layer()
        if labels is None or self.current is None:
            return 0
        index = self.current
        item = self.items[index]
        try:
            if item.is_nucleus and nucleus:
                self.kept.add(index)
                edit = None
            elif item.is_nucleus:
                edit = self._delete_nucleus(labels, item)
            else:
                edit = self._settle_region(labels, item, bool(nucleus))
            if edit is not None and edit.size:
                labels.data_setitem(edit.index, edit.values)
        except SelfloopError as e:
            show_error(f"Review: {error_message(e)}")
            return 0
        self._refresh_settled()
        if advance:
            self.next_region()
        return 0 if edit is None else edit.size

    def _settle_region(self, labels: Any, item: ReviewItem, nucleus: bool) -> nuclei.Edit:
        data = np.asarray(labels.data)
        edit = nuclei.settle(data, item.bbox, nucleus=nucleus)
        if nucleus and edit.size and not nuclei.has_ids(data):
            # A plain 0/1/255 mask: its nuclei are the connected pieces of 1, so 1 joins the
            # nucleus a piece touches and makes a piece apart a nucleus of its own.
            edit.values = np.ones(edit.size, data.dtype)
        return _fitted(edit, data.dtype)

    def _delete_nucleus(self, labels: Any, item: ReviewItem) -> nuclei.Edit | None:
        """Delete what is left of the item's nucleus (all its pieces, as listed)."""
        data = np.asarray(labels.data)
        rows, cols = item.slices
        ry = slice(max(0, rows.start - 1), min(data.shape[0], rows.stop + 1))
        rx = slice(max(0, cols.start - 1), min(data.shape[1], cols.stop + 1))
        crop = np.array(data[ry, rx], copy=True)
        inner = (slice(rows.start - ry.start, rows.stop - ry.start),)
        inner += (slice(cols.start - rx.start, cols.stop - rx.start),)
        listed = np.zeros(crop.shape, bool)
        if item.pixels is not None and item.pixels.shape == crop[inner].shape:
            listed[inner] = item.pixels
        ys, xs = [], []
        while True:
            left = listed & (crop == item.label)
            if not left.any():
                break
            y, x = (int(v[0]) for v in np.nonzero(left))
            edit = nuclei.delete(crop, (y, x))
            crop[edit.index] = 0
            ys.append(edit.index[0])
            xs.append(edit.index[1])
        if not ys:
            raise InputError(f"nucleus {item.number} is not there any more: nothing to delete")
        index = (np.concatenate(ys) + ry.start, np.concatenate(xs) + rx.start)
        return nuclei.Edit(
            index,
            np.zeros(index[0].size, data.dtype),
            f"deleted nucleus {item.number}",
        )

    # -- keys ------------------------------------------------------------------------------

    def _bind_keys(self) -> None:
        """Y / R / G on the canvas: settle as nucleus / as background, next item."""
        for key, action in (
            (KEY_NUCLEUS, lambda: self.settle(True)),
            (KEY_BACKGROUND, lambda: self.settle(False)),
            (KEY_NEXT, self.next_region),
        ):
            self.viewer.bind_key(key, self._key_handler(action), overwrite=True)

    def showEvent(self, event: Any) -> None:
        """The panel being shown takes the keys (where a viewer has more than one)."""
        super().showEvent(event)
        self._bind_keys()

    def _key_handler(self, action):
        def handler(_viewer: Any) -> None:
            try:
                if self.isHidden():  # another tab of the assistant is showing
                    return
            except RuntimeError:  # the panel was closed
                return
            action()

        return handler

    # -- reacting to other panels ----------------------------------------------------------

    def _labels_updated(self, name: str) -> None:
        self.labels_combo.set_layer(name)
        self.find_regions()

    def _watch(self, layer: Any) -> None:
        """Follow ``layer``'s edits (brush, fill, undo), so edited items count as settled."""
        if layer is self._watched:
            return
        if self._watched is not None:
            for emitter in self._emitters(self._watched):
                emitter.disconnect(self._labels_edited)
        self._watched = layer
        if layer is not None:
            for emitter in self._emitters(layer):
                emitter.connect(self._labels_edited)

    @staticmethod
    def _emitters(layer: Any) -> list[Any]:
        # paint: brush, fill, data_setitem; data: new data; set_data: undo and redo.
        return [layer.events.paint, layer.events.data, layer.events.set_data]

    def _labels_edited(self, *_: Any) -> None:
        if self.items:
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
        self.items, self.settled, self.kept, self.current = [], set(), set(), None
        self.region_list.clear()
        self._set_button_texts("region")
        self._update_counter()

    def _done_toggled(self, on: bool) -> None:
        layer = self.labels_combo.layer()
        if layer is not None:
            self.state.set_done(layer, on)


def _fitted(edit: nuclei.Edit, dtype: np.dtype) -> nuclei.Edit:
    """``edit`` with its values in the layer's dtype; a one-line error where a new nucleus
    id does not fit it (an 8-bit layer holds ids up to 254)."""
    dtype = np.dtype(dtype)
    if edit.size and dtype.kind in "iu":
        top = int(np.max(edit.values))
        if top > np.iinfo(dtype).max:
            raise InputError(
                f"a new nucleus would need id {top}, more than this {dtype} layer holds: "
                "settle the region with the brush, or convert the layer to 32-bit labels"
            )
    edit.values = np.asarray(edit.values).astype(dtype, copy=False)
    return edit
