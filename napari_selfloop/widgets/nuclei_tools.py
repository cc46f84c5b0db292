"""Correct nuclei, not pixels: one-click tools on the correction layer, and their legend.

Each tool is one click (two for split and merge) on a nucleus of the correction layer
chosen in the viewer (the active one, else the newest), with a keyboard shortcut on that
layer; each edit is one step of napari's undo (Ctrl+Z), written with
``Labels.data_setitem`` so autosave and the Review panel see it at once. The edits
themselves are :mod:`..core.corrections.nuclei`'s.

=========  ====  ===========================================================================
Tool       Key   What a click does
=========  ====  ===========================================================================
Delete     D     the nucleus under the cursor becomes background
Split      S     two clicks inside one nucleus cut it in two between them (the second part
                 gets a new id)
Merge      J     two clicks on two nuclei: the second becomes part of the first
Add        A     a new nucleus where one is missing, grown from the model's probability
                 around the click (NuClick-style), a small disc where the model sees nothing
Uncertain  U     the nucleus under the cursor becomes uncertain (yellow, ignored by training)
=========  ====  ===========================================================================

Two brushes hand over to napari's own painting: **New nucleus** (N) paints a new id (the
next free one; redraw a boundary with it), **Uncertain brush** (K) paints 255. A tool is
switched off by its key or button again, or by choosing any napari painting mode.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import numpy as np
from napari.layers import Labels, Layer
from qtpy.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.corrections import nuclei
from ..core.engine.pseudolabel import UNCERTAIN
from ..core.errors import InputError
from ._layers import (
    UNCERTAIN_COLOR,
    companion,
    ensure_colors,
    is_correction,
    nucleus_color,
)

#: (name, button text, key, what a click does) of each click tool.
TOOLS = (
    ("delete", "Delete", "D", "Click a nucleus to delete it (it becomes background)."),
    (
        "split",
        "Split",
        "S",
        "Click twice inside a nucleus: it is cut in two between the clicks.",
    ),
    ("merge", "Merge", "J", "Click two nuclei: the second becomes part of the first."),
    (
        "add",
        "Add",
        "A",
        "Click where a nucleus is missing: it grows from the model's probability around "
        "the click (a small disc where the model sees nothing).",
    ),
    (
        "uncertain",
        "Uncertain",
        "U",
        "Click a nucleus to mark it uncertain (yellow: training ignores it).",
    ),
)
#: (name, button text, key, what it does) of the two brushes (napari's own painting).
BRUSHES = (
    (
        "new",
        "New nucleus brush",
        "N",
        "Paint a new nucleus (the next free id) with napari's brush: redraw a boundary.",
    ),
    (
        "uncertain_brush",
        "Uncertain brush",
        "K",
        "Paint pixels uncertain (yellow, ignored by training) with napari's brush.",
    ),
)
#: Tools that need two clicks.
TWO_CLICKS = ("split", "merge")


def _hex(color: tuple[float, ...]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in color[:3])


def legend_html() -> str:
    """The legend's text: nucleus colours, yellow = uncertain, what the tools do."""
    swatches = "".join(f"<span style='color:{_hex(nucleus_color(i))}'>■</span>" for i in (1, 2, 3))
    return (
        f"{swatches} each nucleus has a colour of its own · "
        f"<span style='color:{_hex(UNCERTAIN_COLOR)}'>■</span> yellow = uncertain "
        "(ignored by training) · clear = background.<br>"
        "Tools: a click on a nucleus (two for Split and Merge); "
        "the key in brackets on the correction layer; Ctrl+Z undoes."
    )


class NucleusTools(QWidget):
    """The nucleus tools, their legend and a status line (see the module docstring)."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.tool: str | None = None
        self._first: tuple[Any, tuple[int, int], int] | None = None  # layer, point, id
        self._attached: weakref.WeakSet = weakref.WeakSet()
        #: Seconds the last edit took (computing and writing it), for the benchmark.
        self.last_seconds: float | None = None

        self.buttons: dict[str, QPushButton] = {}
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        for i, (name, text, key, tip) in enumerate(TOOLS):
            button = QPushButton(f"{text} [{key}]")
            button.setCheckable(True)
            button.setToolTip(f"{tip}\nShortcut: {key} (on the correction layer)")
            button.clicked.connect(lambda on, n=name: self.set_tool(n if on else None))
            self.buttons[name] = button
            grid.addWidget(button, 0, i)
        brushes = QHBoxLayout()
        for name, text, key, tip in BRUSHES:
            button = QPushButton(f"{text} [{key}]")
            button.setToolTip(f"{tip}\nShortcut: {key} (on the correction layer)")
            button.clicked.connect(lambda _=False, n=name: self.brush(n))
            self.buttons[name] = button
            brushes.addWidget(button)
        brushes.addStretch(1)
        self.legend = QLabel(legend_html())
        self.legend.setWordWrap(True)
        self.legend.setToolTip(
            "\n".join(f"{text} [{key}]: {tip}" for _, text, key, tip in TOOLS + BRUSHES)
        )
        self.status = QLabel("Choose a tool, then click a nucleus.")
        self.status.setWordWrap(True)
        title = QLabel("<b>Correct nuclei</b>")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addWidget(title)
        layout.addLayout(grid)
        layout.addLayout(brushes)
        layout.addWidget(self.legend)
        layout.addWidget(self.status)

        napari_viewer.layers.events.inserted.connect(self._inserted)
        for layer in napari_viewer.layers:
            self.attach(layer)

    # -- layers ----------------------------------------------------------------------------

    def _inserted(self, event: Any) -> None:
        self.attach(event.value)

    def attach(self, layer: Layer) -> None:
        """Give a correction layer the tools' click handler and shortcuts (once)."""
        if not is_correction(layer) or layer in self._attached:
            return
        self._attached.add(layer)
        me = weakref.ref(self)

        def on_click(layer: Labels, event: Any) -> None:
            tools = me()
            if tools is not None:
                tools._clicked(layer, event)

        layer.mouse_drag_callbacks.append(on_click)
        for name, _, key, _ in TOOLS:
            layer.bind_key(key, _key_handler(me, name, tool=True), overwrite=True)
        for name, _, key, _ in BRUSHES:
            layer.bind_key(key, _key_handler(me, name, tool=False), overwrite=True)
        layer.events.mode.connect(lambda event: (t := me()) and t._mode_changed(layer))

    def target(self) -> Labels | None:
        """The correction layer the tools act on: the active layer if it is one, else the
        newest correction layer."""
        active = self.viewer.layers.selection.active
        if active is not None and is_correction(active):
            return active
        for layer in reversed(self.viewer.layers):
            if is_correction(layer):
                return layer
        return None

    # -- choosing a tool -------------------------------------------------------------------

    def set_tool(self, name: str | None) -> None:
        """Switch to tool ``name`` (None: off). The layer goes to pan/zoom mode, so that a
        click edits a nucleus instead of painting."""
        self.tool = name
        self._first = None
        for key, button in self.buttons.items():
            if button.isCheckable():
                button.blockSignals(True)
                button.setChecked(key == name)
                button.blockSignals(False)
        if name is None:
            self.status.setText("Choose a tool, then click a nucleus.")
            return
        layer = self.target()
        if layer is None:
            self.status.setText("No correction layer yet: run Pseudo-label or Start first.")
            return
        if layer.mode != "pan_zoom":
            layer.mode = "pan_zoom"
        self.viewer.layers.selection.active = layer
        tip = next(t for n, _, _, t in TOOLS if n == name)
        self.status.setText(tip)

    def toggle(self, name: str) -> None:
        self.set_tool(None if self.tool == name else name)

    def brush(self, name: str) -> None:
        """Hand over to napari's brush with a new nucleus id, or with the uncertain value."""
        self.set_tool(None)
        layer = self.target()
        if layer is None:
            self.status.setText("No correction layer yet: run Pseudo-label or Start first.")
            return
        self.viewer.layers.selection.active = layer
        if name == "new":
            label = nuclei.next_id(np.asarray(layer.data))
            ensure_colors(layer, label)
            layer.selected_label = label
            self.status.setText(f"Painting new nucleus {label} (napari's brush; M gives another).")
        else:
            layer.selected_label = UNCERTAIN
            self.status.setText("Painting uncertain pixels (yellow).")
        layer.mode = "paint"

    def _mode_changed(self, layer: Labels) -> None:
        if self.tool is not None and layer.mode != "pan_zoom":
            self.set_tool(None)  # the user picked one of napari's own tools

    # -- clicks ----------------------------------------------------------------------------

    def _clicked(self, layer: Labels, event: Any) -> None:
        if self.tool is None or getattr(event, "type", "mouse_press") != "mouse_press":
            return
        if getattr(event, "button", 1) not in (1, None):
            return
        point = tuple(float(v) for v in layer.world_to_data(event.position)[-2:])
        self.click(layer, point)

    def click(self, layer: Labels, point: tuple[float, float]) -> nuclei.Edit | None:
        """What the current tool does at data pixel ``point`` of ``layer`` (the edit made,
        None when it waits for a second click or could not act: the status says why)."""
        start = time.perf_counter()
        y, x = (int(round(v)) for v in point)
        data = np.asarray(layer.data)
        try:
            if self.tool in TWO_CLICKS and (self._first is None or self._first[0] is not layer):
                label = nuclei.nucleus_at(data, (y, x))[0]
                self._first = (layer, (y, x), label)
                what = "inside the same nucleus" if self.tool == "split" else "on the other nucleus"
                self.status.setText(f"{self.tool.title()}: nucleus {label}; now click {what}.")
                return None
            edit = self._edit(layer, data, (y, x))
        except InputError as e:
            self._first = None
            self.status.setText(f"{(self.tool or '').title()}: {e}")
            return None
        self._first = None
        self.apply(layer, edit)
        self.last_seconds = time.perf_counter() - start
        return edit

    def _edit(self, layer: Labels, data: np.ndarray, point: tuple[int, int]) -> nuclei.Edit:
        if self.tool == "delete":
            return nuclei.delete(data, point)
        if self.tool == "uncertain":
            return nuclei.mark_uncertain(data, point)
        if self.tool == "add":
            return nuclei.add(data, point, self._probability(layer, data.shape))
        first = self._first[1] if self._first is not None else point
        if self.tool == "split":
            return nuclei.split(data, first, point)
        if self.tool == "merge":
            return nuclei.merge(data, first, point)
        raise InputError(f"unknown tool {self.tool!r}")

    def _probability(self, layer: Labels, shape: tuple[int, ...]) -> np.ndarray | None:
        prob = companion(self.viewer, layer, "probability")
        if prob is None or tuple(prob.data.shape) != tuple(shape):
            return None
        return np.asarray(prob.data)

    def apply(self, layer: Labels, edit: nuclei.Edit) -> None:
        """Write ``edit`` into ``layer`` as one undoable step."""
        if edit.size:
            if edit.ids:
                ensure_colors(layer, max(edit.ids))
            layer.data_setitem(edit.index, edit.values)
        if edit.ids:
            layer.selected_label = edit.ids[0]
        self.status.setText(f"{edit.message[:1].upper()}{edit.message[1:]} (Ctrl+Z undoes).")


def _key_handler(me: weakref.ref, name: str, *, tool: bool) -> Any:
    def handler(layer: Labels) -> None:
        tools = me()
        if tools is None:
            return
        tools.viewer.layers.selection.active = layer
        if tool:
            tools.toggle(name)
        else:
            tools.brush(name)

    handler.__doc__ = f"napari-selfloop: {name}"
    return handler
