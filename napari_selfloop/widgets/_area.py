"""Where a panel's run goes: the area of an image, its region, and the correction layer it fills.

The Pseudo-label and Initial mask panels share one flow, kept here:

1. the **area** the user chose (:class:`Area`: the whole image, the current view or a
   rectangle drawn in a Shapes layer) as a level-0 box of the image (:func:`area_box`);
2. for a large image (a slide, see :mod:`._slide`) the **region** of that box to read and
   the resolution to read it at (:func:`region_plan`: the model's pixel size where both
   pixel sizes are known);
3. the check that an existing correction layer fits, and the image's content key;

all in one :func:`plan_target`, which returns a :class:`Target`. The correction layer's
record (its image's key, the key a region's layer autosaves under, the region's pixel
size) is built by :func:`correction_record`, which the autosave uses too when it restores
a layer; :func:`tell_merge` says in one notification what writing a proposal over the
user's corrections kept (:func:`._layers.propose_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from napari.layers import Image, Shapes
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QComboBox

from ..core.errors import InputError
from ..core.io.images import check_image
from ..core.io.windows import Window, choose_window, region_key
from ._image_key import key_for
from ._layers import (
    LayerCombo,
    ProposalMerge,
    camera,
    check_labels_shape,
    find_result,
    image_data,
)
from ._slide import MAX_REGION_PIXELS, level_shapes, pixel_size_um, works_by_region
from ._state import SelfloopState

#: A box of an image in level-0 pixels: (y0, x0, y1, x1), half-open.
Box = tuple[int, int, int, int]


class Area(Enum):
    """What a panel works on; the value is the text of its choice."""

    WHOLE = "Whole image"
    VIEW = "Current view"
    SHAPES = "Rectangle (Shapes layer)"


class AreaCombo(QComboBox):
    """The choice of :class:`Area`, in its order."""

    def __init__(self) -> None:
        super().__init__()
        for area in Area:
            self.addItem(area.value, area)

    def area(self) -> Area:
        return Area(self.currentText())

    def set_area(self, area: Area) -> None:
        self.setCurrentIndex(list(Area).index(area))


def shapes_combo(viewer: Any) -> LayerCombo:
    """The picker of the Shapes layer whose rectangle is the area."""
    return LayerCombo(
        viewer, lambda layer: isinstance(layer, Shapes), none_text="(add a Shapes layer)"
    )


def view_box(viewer: Any, image: Image) -> Box:
    """The part of ``image`` (data pixels, y0, x0, y1, x1) visible in the canvas."""
    h, w = (float(s) for s in viewer.canvas.size)  # (height, width) in screen pixels
    cam = camera(viewer)
    zoom = float(cam.zoom)
    cy, cx = (float(c) for c in cam.center[-2:])
    corners = [
        (cy - h / (2 * zoom), cx - w / (2 * zoom)),
        (cy + h / (2 * zoom), cx + w / (2 * zoom)),
    ]
    return _world_box(image, corners)


def _world_box(image: Image, world_points: list[tuple[float, float]]) -> Box:
    pts = []
    for y, x in world_points:
        world = np.zeros(image.ndim)
        world[-2:] = (y, x)
        pts.append(np.asarray(image.world_to_data(world))[-2:])
    arr = np.asarray(pts)
    return _clip_box(arr.min(0), arr.max(0), image)


def _clip_box(lo: np.ndarray, hi: np.ndarray, image: Image) -> Box:
    data = image.data[0] if image.multiscale else image.data
    height, width = int(data.shape[0]), int(data.shape[1])
    y0, x0 = max(0, int(np.floor(lo[0]))), max(0, int(np.floor(lo[1])))
    y1, x1 = min(height, int(np.ceil(hi[0]))), min(width, int(np.ceil(hi[1])))
    if y1 - y0 < 8 or x1 - x0 < 8:
        raise InputError(
            "the chosen area does not overlap the image (or is under 8 pixels): "
            "move the view or draw the rectangle over the image"
        )
    return y0, x0, y1, x1


def shapes_box(shapes: Shapes, image: Image) -> Box:
    """The bounding box (image pixels) of the selected shape, or of the last one drawn."""
    if len(shapes.data) == 0:
        raise InputError(f"Shapes layer '{shapes.name}' is empty: draw a rectangle in it first")
    index = max(shapes.selected_data) if shapes.selected_data else len(shapes.data) - 1
    verts = np.asarray(shapes.data[index])[:, -2:]
    world = [tuple(shapes.data_to_world(v)[-2:]) for v in verts]
    return _world_box(image, world)


def area_box(viewer: Any, image: Image, area: Area, shapes: Shapes | None) -> Box:
    """The level-0 box of ``image`` that ``area`` covers (``shapes``: the rectangle's layer)."""
    if area is Area.VIEW:
        return view_box(viewer, image)
    if area is Area.SHAPES:
        if shapes is None:
            raise InputError(
                "no Shapes layer: add one and draw a rectangle, or choose another area"
            )
        return shapes_box(shapes, image)
    data = image_data(image)
    return 0, 0, int(data.shape[0]), int(data.shape[1])


def region_plan(image: Image, box: Box, model_um: float | None) -> tuple[Window, str]:
    """The window of ``image`` to process for level-0 ``box``, and a note for the user.

    At the model's pixel size when both the model's and the image's are known (else at
    full resolution, and the note says why). Refuses a region too large to hold.
    """
    image_um = pixel_size_um(image)
    note = ""
    factor = 1.0
    if model_um and image_um:
        factor = model_um / image_um
    elif model_um:
        note = (
            f"'{image.name}' has no pixel size, so it is processed at full resolution; "
            f"the model was trained at {model_um:.3g} µm/px: if the slide's is different, "
            "results will be poor"
        )
    elif image.multiscale and not image_um:
        note = f"'{image.name}' has no pixel size: processing it at full resolution"
    window = choose_window(level_shapes(image), box, factor)
    if window.pixels > MAX_REGION_PIXELS:
        side = int(MAX_REGION_PIXELS**0.5)
        raise InputError(
            f"the region {window.label} is {window.width}x{window.height} pixels at the "
            f"resolution it is processed at, more than the panel holds ({side}x{side}): zoom in "
            "or draw a smaller rectangle, or run 'napari-selfloop pseudo-label' on the whole "
            "slide and open its output"
        )
    return window, note


def correction_record(
    image_key: str,
    window: Window | None = None,
    *,
    autosave_key: str | None = None,
    pixel_size_um: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The record of a correction layer (its ``extra_meta``, see :func:`._layers.put_result`).

    ``image_key``: its image's content key (:func:`._image_key.key_for`). A layer of a
    region ``window`` also records the key it autosaves under (``autosave_key``; default
    the region's, :func:`~napari_selfloop.core.io.windows.region_key`) and its own pixel
    size (None: not known). ``fields`` are added as they are (``checkpoint``, the method,
    ``restored``, ...).
    """
    record: dict[str, Any] = {"image_key": image_key, **fields}
    if window is not None:
        record["autosave_key"] = (
            region_key(image_key, window) if autosave_key is None else autosave_key
        )
        record["pixel_size_um"] = pixel_size_um
    return record


@dataclass(frozen=True)
class Target:
    """Where a panel's run reads and what correction layer it fills (:func:`plan_target`).

    ``name``: the image layer; ``data``: its full-resolution array; ``box``: the level-0
    box of the chosen area; ``window``: the region worked on (None: the image's full-size
    layers); ``note``: what to tell the user about the resolution (or ""); ``key``: the
    image's content key; ``pixel_size_um``: the pixel size of the region's layer (None for
    a full-size layer, or when the image's is not known).
    """

    name: str
    data: Any
    box: Box
    window: Window | None
    note: str
    key: str
    pixel_size_um: float | None = None

    @property
    def whole(self) -> bool:
        """Whether the box is all of the image."""
        return self.box == (0, 0, *self.data.shape[:2])

    @property
    def where(self) -> str:
        """`` [y0:y1, x0:x1]`` (with the factor for a region), or "" for the whole image."""
        if self.window is not None:
            return f" {self.window.label}"
        y0, x0, y1, x1 = self.box
        return "" if self.whole else f" [{y0}:{y1}, {x0}:{x1}]"

    def crop(self) -> Any:
        """The box's pixels of a full-size target (call it in the worker: slicing a lazy
        array reads it)."""
        y0, x0, y1, x1 = self.box
        return self.data if self.whole else self.data[y0:y1, x0:x1]

    def placed(self) -> dict[str, Any]:
        """Where the results go: ``window=`` (a region's own layers) or ``box=`` (the part
        of the full-size layers), as :func:`._layers.put_result` and
        :func:`._layers.propose_labels` take it."""
        return {"window": self.window} if self.window is not None else {"box": self.box}

    def record(self, **fields: Any) -> dict[str, Any]:
        """The correction layer's record (:func:`correction_record`) plus ``fields``."""
        return correction_record(self.key, self.window, pixel_size_um=self.pixel_size_um, **fields)


def plan_target(
    viewer: Any,
    image: Image,
    area: Area,
    shapes: Shapes | None,
    model_um: float | None,
) -> Target:
    """Where a run on ``area`` of ``image`` reads and writes (raises with what to do).

    The box of the area; for an image worked on by region (:func:`._slide.works_by_region`)
    the window to read, at ``model_um`` µm/px where the image's pixel size is known
    (:func:`region_plan`); a window that is all of the image at full resolution becomes
    the usual full-size layers. An existing correction layer must fit; then the image's
    content key (may hash the image, or wait for its background hash).
    """
    data = image_data(image)
    box = area_box(viewer, image, area, shapes)
    window, note = None, ""
    if works_by_region(image):
        window, note = region_plan(image, box, model_um)
        if window == Window(0, 0, *data.shape[:2]):
            window = None  # all of it at full resolution: one full-size set, as usual
    existing = find_result(viewer, image.name, "labels", window)
    if existing is not None:
        check_labels_shape(existing, window.shape if window is not None else check_image(data))
    key = key_for(image)
    region_um = None
    if window is not None:
        image_um = pixel_size_um(image)
        region_um = None if image_um is None else image_um * window.factor
    return Target(image.name, data, box, window, note, key, region_um)


def merge_notes(merge: ProposalMerge, what: str = "proposal") -> list[str]:
    """What writing a new ``what`` over a correction layer kept and changed, in words."""
    name = merge.layer.name
    notes = []
    if merge.kept:
        why = (
            ""
            if merge.recorded
            else " (no record of the earlier proposal, so every labelled pixel counted as yours)"
        )
        notes.append(
            f"kept the {merge.kept} pixel(s) you had painted in '{name}'{why}; the new {what} "
            "went only where you had not painted (delete the layer to start over)"
        )
    if merge.done_cleared:
        notes.append(
            f"{merge.changed} pixel(s) changed, so '{name}' is no longer marked done: review "
            "it and mark it done again"
        )
    return notes


def tell_merge(state: SelfloopState, merge: ProposalMerge, panel: str, what: str) -> None:
    """After :func:`._layers.propose_labels`: tell the panels a cleared "done" flag (the
    merge cleared it already) and the user, in one notification, what was kept."""
    if merge.done_cleared:
        state.set_done(merge.layer, False)
    notes = merge_notes(merge, what)
    if notes:
        show_info(f"{panel}: " + "; ".join(notes))
