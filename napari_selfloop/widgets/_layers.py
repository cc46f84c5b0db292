"""Layer helpers shared by the panels: pickers, result layers found by role, checks.

Result layers carry ``layer.metadata["selfloop"] = {"role": ..., "source": IMAGE_NAME, ...}``
with role ``probability``, ``uncertainty`` or ``labels`` (the correction layer), so a
re-run updates them in place (found by role and source, whatever they were renamed to)
instead of piling up new layers. Results of one region of a large image (see
:mod:`._slide`) also carry ``"window"`` (a :class:`~napari_selfloop.core.io.windows.Window`'s
metadata): they are sized to that region and placed over it, and each region has its own
set of layers (:func:`find_result` with ``window``, :func:`companion`).

The correction Labels layer holds nuclei as objects (:mod:`..core.corrections.nuclei`): 0 =
background, 255 = uncertain, and every other value the id of one nucleus, each drawn in a
colour of its own (:func:`correction_colormap`); training sees their union as foreground.
A plain 0/1/255 layer (older autosaves, hand-made layers) is still one.

A pseudo-label run over a correction layer never discards what the user painted
(:func:`propose_labels`): the layer's metadata keeps the last proposal written into it
(``"proposal"``) and the pixels known to be the user's (``"painted"``), so the pixels that
differ from the last proposal are the user's; a nucleus the user touched is kept whole,
with its id, and the new proposal's nuclei go only where they do not overlap what is kept.
A layer without that record (restored from autosave, made by hand) counts every labelled
pixel (not 255) as the user's. The arrays' side of this is
:mod:`..core.corrections.proposal`; this module reads and writes the layers.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer, Shapes
from napari.utils.colormaps import Colormap, DirectLabelColormap
from qtpy.QtWidgets import QComboBox

from ..core.corrections.nuclei import next_id, proposal_labels
from ..core.corrections.proposal import apply_proposal, pack_record, unpack_record
from ..core.corrections.proposal import user_painted as core_user_painted
from ..core.engine.pseudolabel import UNCERTAIN
from ..core.errors import InputError
from ..core.io.images import ImageInfo, check_image
from ..core.io.windows import Window
from ..core.store.project import DONE_KEY, is_done
from ._slide import placement

KEY = "selfloop"
ROLES = ("probability", "uncertainty", "labels")
SUFFIX = {"probability": "probability", "uncertainty": "uncertainty", "labels": "corrections"}
FOREGROUND, BACKGROUND = 1, 0
#: Correction colours: cyan foreground, half transparent so the nucleus shows through, and
#: opaque bright yellow uncertain pixels: at the layer's full opacity they read on pink
#: eosin and purple haematoxylin as on skin and brown lesions (at the old 0.55 opacity the
#: yellow blended into orange on eosin and thin uncertain rims vanished; issue 26).
FOREGROUND_COLOR = (0.0, 0.9, 1.0, 0.5)
#: Each nucleus has a colour of its own (:func:`nucleus_color`), this opaque.
NUCLEUS_ALPHA = 0.5
#: Hues (0-1) no nucleus colour takes: the yellow band of uncertain pixels.
NO_YELLOW = (0.1, 0.22)
#: Ids past the largest one that a new colour map already colours (see ensure_colors).
COLOR_HEADROOM = 1024
#: Metadata key: the largest id the layer's colour map colours.
COLORED_KEY = "colored_up_to"
UNCERTAIN_COLOR = (1.0, 0.9, 0.0, 1.0)
#: Opacity of a new correction layer (its colours carry their own transparency).
CORRECTION_OPACITY = 1.0
#: The uncertainty map: transparent where the model is sure, rising to opaque yellow (the
#: uncertain pixels' colour) where it is least sure; it reads on any stain, where an
#: additive magenta map vanished into pink eosin.
UNCERTAINTY_COLORS = ((1.0, 0.9, 0.0, 0.0), (1.0, 0.9, 0.0, 0.35), (1.0, 0.9, 0.0, 1.0))
#: A kernel of 4x4 image pixels, so thin rims survive being drawn at half size and below.
UNCERTAINTY_INTERPOLATION = "spline36"


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def role_of(layer: Layer) -> str | None:
    meta = layer.metadata.get(KEY) if isinstance(layer.metadata, dict) else None
    return meta.get("role") if isinstance(meta, dict) else None


def meta_of(layer: Layer) -> dict[str, Any]:
    """The layer's napari-selfloop metadata (created empty if missing)."""
    meta = layer.metadata.get(KEY)
    if not isinstance(meta, dict):
        meta = {}
        layer.metadata[KEY] = meta
    return meta


def source_of(layer: Layer) -> str | None:
    meta = layer.metadata.get(KEY)
    return meta.get("source") if isinstance(meta, dict) else None


def is_source_image(layer: Layer) -> bool:
    """An Image layer that is not one of our result maps."""
    return isinstance(layer, Image) and role_of(layer) is None


def is_correction(layer: Layer) -> bool:
    return isinstance(layer, Labels) and role_of(layer) == "labels"


def window_of(layer: Layer) -> Window | None:
    """The region of the image a result layer covers (None: the whole image, full size)."""
    meta = layer.metadata.get(KEY) if isinstance(layer.metadata, dict) else None
    return Window.from_meta(meta.get("window")) if isinstance(meta, dict) else None


def find_result(viewer: Any, source: str, role: str, window: Window | None = None) -> Layer | None:
    """The ``role`` layer of image ``source`` (of its region ``window``, if given)."""
    for layer in viewer.layers:
        if role_of(layer) == role and source_of(layer) == source and window_of(layer) == window:
            return layer
    return None


def companion(viewer: Any, layer: Layer, role: str) -> Layer | None:
    """The ``role`` layer of the same image and region as result layer ``layer``."""
    return find_result(viewer, source_of(layer) or "", role, window_of(layer))


def result_name(source: str, role: str, window: Window | None = None) -> str:
    """``IMAGE [corrections]``, or ``IMAGE [y0:y1, x0:x1] [corrections]`` for a region."""
    where = "" if window is None else f" {window.label}"
    return f"{source}{where} [{SUFFIX[role]}]"


def image_for(viewer: Any, labels: Layer) -> Image | None:
    """The image a correction layer belongs to (by recorded source name)."""
    src = source_of(labels)
    if src is not None and src in viewer.layers:
        layer = viewer.layers[src]
        return layer if isinstance(layer, Image) else None
    return None


def image_data(layer: Image) -> Any:
    """The full-resolution array of an Image layer, checked to be a 2D gray/RGB(A) image."""
    data = layer.data[0] if layer.multiscale else layer.data
    shape = tuple(int(s) for s in data.shape)
    if not layer.rgb and len(shape) != 2:
        planes = " x ".join(str(s) for s in shape[:-2])
        raise InputError(
            f"layer '{layer.name}' is a stack of shape {shape} ({planes} planes of "
            f"{shape[-2]}x{shape[-1]}); expected a 2D RGB or grayscale image: pick one plane "
            "(e.g. add layer.data[0] as a new image)"
        )
    try:
        check_image(data)
    except InputError as e:
        raise InputError(f"layer '{layer.name}': {e}") from None
    return data


def image_info(layer: Image) -> ImageInfo:
    return check_image(image_data(layer))


def nucleus_color(label: int) -> tuple[float, float, float, float]:
    """The colour of nucleus ``label``: hues spread by the golden ratio, never near the
    yellow of uncertain pixels, half transparent so the nucleus shows through."""
    hue = (int(label) * 0.618033988749895) % 1.0
    hue = NO_YELLOW[1] + hue * (1.0 - (NO_YELLOW[1] - NO_YELLOW[0]))  # skip the yellow band
    return (*colorsys.hsv_to_rgb(hue % 1.0, 0.85, 1.0), NUCLEUS_ALPHA)


def correction_colormap(top: int = 0) -> DirectLabelColormap:
    """0 transparent, 255 opaque yellow, and a colour of its own for every nucleus id up to
    ``top`` plus :data:`COLOR_HEADROOM` (ids above get one cyan until
    :func:`ensure_colors` extends the map)."""
    colors: dict[Any, tuple[float, ...]] = {
        None: FOREGROUND_COLOR,
        BACKGROUND: (0.0, 0.0, 0.0, 0.0),
        UNCERTAIN: UNCERTAIN_COLOR,
    }
    for label in range(1, max(int(top), 0) + COLOR_HEADROOM + 1):
        if label != UNCERTAIN:
            colors[label] = nucleus_color(label)
    return DirectLabelColormap(color_dict=colors)


def colored_up_to(layer: Layer) -> int:
    """The largest id :func:`correction_colormap` gave the layer's colour map a colour."""
    return int(meta_of(layer).get(COLORED_KEY, 0))


def ensure_colors(layer: Layer, top: int | None = None) -> None:
    """Give every nucleus id up to ``top`` (default: the layer's largest) its own colour,
    rebuilding the colour map only when an id is past the colours it has (rarely: each
    rebuild leaves :data:`COLOR_HEADROOM` ids of room)."""
    if top is None:
        data = np.asarray(layer.data)
        top = next_id(data) - 1 if data.size else 0
    if top <= colored_up_to(layer):
        return
    layer.colormap = correction_colormap(top)
    meta_of(layer)[COLORED_KEY] = int(top) + COLOR_HEADROOM


def uncertainty_colormap() -> Colormap:
    """Transparent to opaque yellow (see :data:`UNCERTAINTY_COLORS`)."""
    return Colormap(
        colors=np.asarray(UNCERTAINTY_COLORS),
        controls=np.linspace(0.0, 1.0, len(UNCERTAINTY_COLORS)),
        name="selfloop uncertainty",
    )


def keep_corrections_on_top(viewer: Any, layer: Layer) -> None:
    """Put map ``layer`` just under its image's correction layer, if that is below it.

    A correction layer restored from autosave is added when its image opens, before any
    map; without this a later pseudo-label would put the maps over the corrections
    (issue 26). Layers the user moved elsewhere are otherwise left where they are.
    """
    labels = companion(viewer, layer, "labels")
    if labels is None:
        return
    here, there = viewer.layers.index(layer), viewer.layers.index(labels)
    if here > there:
        viewer.layers.move(here, there)


def correction_mask(labels: Layer) -> np.ndarray:
    """The correction layer's data as a 2D array, checked."""
    data = np.asarray(labels.data)
    if data.ndim != 2:
        raise InputError(f"Labels layer '{labels.name}' has shape {data.shape}; expected a 2D mask")
    return data


def check_labels_shape(labels: Layer, info: ImageInfo | tuple[int, int]) -> None:
    """Refuse a correction layer whose shape is not the image's (or its region's)."""
    shape = tuple(labels.data.shape)
    want = (info.height, info.width) if isinstance(info, ImageInfo) else tuple(info)
    if shape != want:
        what = "its image" if isinstance(info, ImageInfo) else "its region"
        raise InputError(
            f"Labels layer '{labels.name}' has shape {shape} but {what} is "
            f"{want[0]}x{want[1]}: delete or rename that layer and run again"
        )


def put_result(
    viewer: Any,
    source: str,
    role: str,
    data: np.ndarray,
    *,
    box: tuple[int, int, int, int] | None = None,
    extra_meta: dict[str, Any] | None = None,
    like: Image | None = None,
    window: Window | None = None,
    **kwargs: Any,
) -> Layer:
    """Create or update the ``role`` layer of image ``source`` (main thread only).

    With ``box = (y0, x0, y1, x1)`` only that window is replaced by ``data`` (the rest of
    an existing layer is kept); the full shape then comes from ``like``. With ``window``
    the layer is that region's own (``data`` is all of it), placed over the region of
    ``like``.
    """
    layer = find_result(viewer, source, role, window)
    if window is not None:
        if tuple(data.shape[:2]) != window.shape:
            raise InputError(f"a result of shape {data.shape} does not fit region {window.label}")
        box = None
    full_shape = tuple(data.shape) if box is None else _image_shape(like)
    if layer is not None and tuple(layer.data.shape) != full_shape:
        if role == "labels":
            raise InputError(
                f"Labels layer '{layer.name}' has shape {tuple(layer.data.shape)} but the image is "
                f"{full_shape}: delete that layer and run again"
            )
        viewer.layers.remove(layer)
        layer = None
    new = data if box is None else _pasted(layer, data, box, full_shape, role)
    meta = {"role": role, "source": source, **(extra_meta or {})}
    if window is not None:
        meta["window"] = window.to_meta()
    if layer is not None:
        _update_result(layer, new, role, meta)
        return layer
    name = result_name(source, role, window)
    spatial = {} if like is None else placement(like, window)
    if role == "labels":
        return _add_corrections(viewer, new, name, meta, **spatial, **kwargs)
    return _add_map(viewer, new, name, role, meta, **spatial, **kwargs)


def _image_shape(like: Image | None) -> tuple[int, ...] | None:
    """Height and width of image ``like`` (its full resolution), None without one."""
    if like is None:
        return None
    base = like.data[0] if like.multiscale else like.data
    return tuple(int(s) for s in base.shape[:2])


def _pasted(
    layer: Layer | None,
    data: np.ndarray,
    box: tuple[int, int, int, int],
    full_shape: tuple[int, ...] | None,
    role: str,
) -> np.ndarray:
    """A copy of the layer's data (without a layer: ``full_shape`` of uncertain labels, or
    zeros for a map) with ``data`` written into window ``box``."""
    y0, x0, y1, x1 = box
    if layer is not None:
        new = np.array(layer.data, copy=True)
    else:
        fill = UNCERTAIN if role == "labels" else 0
        new = np.full(full_shape, fill, dtype=data.dtype)
    new[y0:y1, x0:x1] = data
    return new


def _add_corrections(
    viewer: Any, data: np.ndarray, name: str, meta: dict[str, Any], /, **kwargs: Any
) -> Layer:
    """A new correction layer: nuclei coloured, uncertain pixels yellow, a new id to paint."""
    free = next_id(data)
    layer = viewer.add_labels(
        data,
        name=name,
        colormap=correction_colormap(free - 1),
        opacity=CORRECTION_OPACITY,
        metadata={KEY: meta},
        **kwargs,
    )
    meta_of(layer)[COLORED_KEY] = free - 1 + COLOR_HEADROOM
    layer.selected_label = free
    layer.brush_size = 8
    return layer


def _add_map(
    viewer: Any,
    data: np.ndarray,
    name: str,
    role: str,
    meta: dict[str, Any],
    /,
    **kwargs: Any,
) -> Layer:
    """A new probability or uncertainty map, under the corrections."""
    uncertainty = role == "uncertainty"
    top = _display_top(data) if uncertainty else 1.0
    layer = viewer.add_image(
        data,
        name=name,
        colormap=uncertainty_colormap() if uncertainty else "viridis",
        contrast_limits=(0.0, top),
        blending="translucent" if uncertainty else "additive",
        opacity=1.0 if uncertainty else 0.6,
        # Shown under the corrections: zoomed out to a whole tile, their one- or
        # two-pixel uncertain rims fall between screen pixels, while this map, drawn
        # with a wide kernel, still shows where they are (issue 26).
        visible=uncertainty,
        interpolation2d=UNCERTAINTY_INTERPOLATION if uncertainty else "nearest",
        metadata={KEY: meta},
        **kwargs,
    )
    keep_corrections_on_top(viewer, layer)
    return layer


def _update_result(layer: Layer, data: np.ndarray, role: str, meta: dict[str, Any]) -> None:
    """Give an existing result layer its new data and record."""
    meta_of(layer).update(meta)
    layer.data = data
    if role == "labels":
        ensure_colors(layer)
    if role == "uncertainty":
        layer.contrast_limits = (0.0, _display_top(data))


#: Metadata keys of a correction layer: the last proposal written into it (an array of the
#: layer's shape) and the pixels known to be the user's (a boolean array, or None).
PROPOSAL, PAINTED = "proposal", "painted"


def proposal_record(layer: Layer) -> np.ndarray | None:
    """The layer's last proposal, with the pixels recorded as the user's marked, as one
    array to autosave (None when there is no proposal); see
    :func:`..core.corrections.proposal.pack_record`."""
    meta = meta_of(layer)
    return pack_record(meta.get(PROPOSAL), meta.get(PAINTED))


def set_proposal_record(layer: Layer, record: np.ndarray) -> bool:
    """Give a (restored) correction layer the proposal record :func:`proposal_record` made;
    False, and nothing changed, when it does not fit the layer."""
    data = np.asarray(layer.data)
    if record.shape != data.shape:
        return False
    meta = meta_of(layer)
    meta[PROPOSAL], meta[PAINTED] = unpack_record(record, data.dtype)
    return True


def user_painted(layer: Layer) -> tuple[np.ndarray, bool]:
    """The pixels of a correction layer that the user painted, and whether that is known
    (:func:`..core.corrections.proposal.user_painted` on the layer's record)."""
    meta = meta_of(layer)
    return core_user_painted(np.asarray(layer.data), meta.get(PROPOSAL), meta.get(PAINTED))


@dataclass
class ProposalMerge:
    """What :func:`propose_labels` did to the correction layer.

    ``kept``: pixels the user had painted, inside the proposal's box, that kept their
    value; ``recorded``: whether the earlier proposal was known (otherwise every labelled
    pixel counted as painted); ``changed``: pixels whose value changed; ``was_done`` and
    ``done``: the layer's "done" flag before and after.
    """

    layer: Layer
    kept: int = 0
    recorded: bool = True
    changed: int = 0
    was_done: bool = False
    done: bool = False

    @property
    def done_cleared(self) -> bool:
        return self.was_done and not self.done


def propose_labels(
    viewer: Any,
    source: str,
    data: np.ndarray,
    *,
    instances: np.ndarray | None = None,
    box: tuple[int, int, int, int] | None = None,
    like: Image | None = None,
    extra_meta: dict[str, Any] | None = None,
    window: Window | None = None,
) -> ProposalMerge:
    """Write a pseudo-label proposal into the correction layer of image ``source``.

    ``data`` is the 0/1/255 proposal and ``instances`` its nuclei (0 elsewhere; None: the
    foreground's connected pieces); the layer gets each nucleus with an id of its own
    (:func:`..core.corrections.nuclei.proposal_labels`). A new layer takes it as it is (in ``box``;
    255 elsewhere). An existing layer keeps every pixel the user painted
    (:func:`user_painted`) and every nucleus they touched, whole and with its id; the
    proposal's nuclei go only where they do not overlap those, with fresh ids, in ``box``
    (:func:`..core.corrections.nuclei.merge_proposal`). The proposal is recorded so the next run can
    tell the user's pixels apart. The "done" flag stays as it was unless pixels changed,
    and then it is cleared (the caller says so: ``ProposalMerge.done_cleared``). With
    ``window`` this is the correction layer of that region of the image (``data`` covers
    all of it).
    """
    data = proposal_labels(data, instances)
    meta = dict(extra_meta or {})
    meta.pop(DONE_KEY, None)
    layer = find_result(viewer, source, "labels", window)
    if layer is None:
        layer = put_result(
            viewer,
            source,
            "labels",
            data,
            box=box,
            like=like,
            extra_meta={**meta, DONE_KEY: False},
            window=window,
        )
        own = meta_of(layer)
        own[PROPOSAL] = np.array(layer.data, copy=True)
        own[PAINTED] = None
        return ProposalMerge(layer=layer, changed=int(data.size))
    old = np.asarray(layer.data)
    full = tuple(old.shape)
    if box is None or window is not None:
        box = (0, 0, *data.shape[:2])
    if window is not None:
        if window.shape != full:
            raise InputError(
                f"Labels layer '{layer.name}' has shape {full} but its region is "
                f"{window.height}x{window.width}: delete that layer and run again"
            )
    elif like is not None:
        base = like.data[0] if like.multiscale else like.data
        if tuple(int(s) for s in base.shape[:2]) != full:
            raise InputError(
                f"Labels layer '{layer.name}' has shape {full} but the image is "
                f"{tuple(int(s) for s in base.shape[:2])}: delete that layer and run again"
            )
    if old.ndim != 2:
        raise InputError(f"Labels layer '{layer.name}' has shape {full}; expected a 2D mask")
    own = meta_of(layer)
    was_done = is_done(own)
    update = apply_proposal(
        old,
        data,
        box=box,
        proposal=own.get(PROPOSAL),
        painted=own.get(PAINTED),
        was_done=was_done,
    )
    own.update({"role": "labels", "source": source, **meta, DONE_KEY: update.done})
    own[PROPOSAL] = update.proposal
    own[PAINTED] = update.painted
    layer.data = update.labels
    ensure_colors(layer)
    return ProposalMerge(
        layer=layer,
        kept=update.kept,
        recorded=update.recorded,
        changed=update.changed,
        was_done=was_done,
        done=update.done,
    )


def _display_top(values: np.ndarray) -> float:
    """Upper contrast limit of an uncertainty map: its 99.5th percentile (outliers saturate)."""
    finite = values[np.isfinite(values)]
    return max(1e-3, float(np.percentile(finite, 99.5))) if finite.size else 1.0


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers that pass ``accept``, kept up to date.

    The current layer is remembered by name across refreshes; newest layers come first.
    """

    def __init__(
        self, viewer: Any, accept: Callable[[Layer], bool], *, none_text: str = "(none)"
    ) -> None:
        super().__init__()
        self._viewer = viewer
        self._accept = accept
        self._none_text = none_text
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            ev.connect(self.refresh)
        events.inserted.connect(self._watch)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _watch(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        names = [layer.name for layer in reversed(self._viewer.layers) if self._accept(layer)]
        self.blockSignals(True)
        self.clear()
        if names:
            self.addItems(names)
        else:
            self.addItem(self._none_text)
        if current in names:
            self.setCurrentIndex(names.index(current))
        self.blockSignals(False)
        if current not in names:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self) -> Layer | None:
        name = self.currentText()
        if name in self._viewer.layers and self._accept(self._viewer.layers[name]):
            return self._viewer.layers[name]
        return None

    def set_layer(self, name: str) -> None:
        self.refresh()
        i = self.findText(name)
        if i >= 0:
            self.setCurrentIndex(i)


def shapes_layers(layer: Layer) -> bool:
    return isinstance(layer, Shapes)
