"""Export of a mask or labels file of any size: read, labelled and written in bands of rows.

What ``napari-selfloop export`` runs for every input. The outputs are those of
:func:`.export.export_annotation` (``STEM_mask.tif``, ``STEM_instances.tif``,
``STEM.geojson`` and the manifest entry, written as a set), but the file is never held
whole: it is read in bands of about :data:`BAND_PIXELS` pixels, three times.

1. **Check** (:func:`plan_export`): every band is checked (pixel type, negative ids, values
   of a mask) and what decides how the file is read is gathered (a 0/255 binary mask, a
   correction mask with nucleus ids, or instance labels), so a bad file is refused in one
   line before anything is written.
2. **Label**: the foreground of a plain mask is labelled band by band (4-connected, as
   :func:`.export.instance_labels`); pieces that touch across the border of two bands are
   joined (union-find), so objects crossing band borders stay whole, and objects are
   numbered as if the whole mask had been labelled at once (row by row, top to bottom).
   Nucleus ids (a correction mask, :mod:`..corrections.nuclei`) and given instance labels keep their
   ids, which are global already (renumbered only past :data:`.export.MAX_KEPT_ID`); with
   ``--uncertain foreground`` the pieces of uncertain pixels of a mask with ids are
   labelled and joined the same way first, and settled as :func:`..corrections.nuclei.settle` settles
   the whole mask (a piece touching a nucleus: each pixel its nearest nucleus, found from
   the rows around it; any other: a new id), as :func:`.export.nuclei_instances` does.
   The bounding box and area of every object are kept: a few numbers per object.
3. **Write** (:func:`write_export`): each band is labelled again and its rows are streamed into
   the two tiled TIFFs; the objects whole in a band are outlined together; the pixels of an
   object crossing band borders (all of one id's, wherever they lie) are kept in a boolean
   crop of its bounding box from the first band it touches to the last, then outlined.
   Features are streamed into the GeoJSON band by band, in the order their objects end.

Memory: a few bands and the crops of the objects open at a band border. Those are known
after the labelling pass; a file whose open objects would need more than
:data:`MAX_OUTLINE_BYTES` to outline (an object the size of a slide at full resolution) is
refused in one line, with what to do instead. PNG files and single-strip TIFFs cannot be read
in bands and are read whole (1 byte per pixel for a uint8 mask); their labelling is still
streamed. Measured in ``docs/slides-and-batch.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from scipy import ndimage as ndi

from ..corrections.nuclei import FOUR, id_sequence, skip_reserved
from ..engine.datasets import SELFLOOP_MASK_TAG
from ..engine.pseudolabel import UNCERTAIN
from ..errors import InputError
from ..io.atomic import atomic_path
from ..io.tiled_tiff import TiledTiffWriter
from ..io.windows import Window
from .export import (
    MANIFEST,
    MAX_KEPT_ID,
    UNCERTAIN_POLICIES,
    _files,
    _gc_paused,
    _read_manifest,
    choose_stem,
    folder_lock,
    label_features,
    labels_to_mask,
    manifest_entry,
    manifest_text_with,
    object_feature,
)

log = logging.getLogger(__name__)

#: Pixels per band read and labelled at once (about 4 M: 200 rows of a 20000-px wide mask).
BAND_PIXELS = 2**22
#: Most bytes the crops of the objects open at one band border, and the outlining of the
#: largest object, may take.
MAX_OUTLINE_BYTES = 512 * 2**20
#: Bytes per pixel of an object's bounding box while it is outlined (crop, padded copy,
#: edge maps), and per pixel edge of its outline (the walk along its edges, in Python).
_OUTLINE_BYTES_PER_PIXEL = 6
_OUTLINE_BYTES_PER_EDGE = 300
_MASK_VALUES = (0, 1, 255)


class Rows:
    """A 2D plane read in bands of rows: a numpy array, or a lazily read TIFF plane."""

    def __init__(self, array: Any, chunk_rows: int | None = None) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape[:2])
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = chunk_rows

    def __call__(self, y0: int, y1: int) -> np.ndarray:
        block = np.asarray(self.array[y0:y1])
        return block[..., 0] if block.ndim == 3 else block


def band_rows(rows: Rows, pixels: int = BAND_PIXELS) -> int:
    """Rows per band: about ``pixels`` pixels, a whole number of the file's chunks."""
    height, width = rows.shape
    band = max(1, pixels // max(width, 1))
    chunk = rows.chunk_rows or 0
    if 0 < chunk <= band:
        band = band // chunk * chunk
    elif chunk > band:
        band = chunk
    return max(1, min(band, height))


@dataclass
class Plan:
    """How one input is read and labelled, and its objects (see the module notes)."""

    rows: Rows
    name: str
    kind: str  # mask | instances
    rule: str  # masks: plain (0/1/255 as stored), binary (255 foreground), ids (nucleus ids)
    uncertain: str
    band: int
    objects: int = 0
    foreground: int = 0
    uncertain_pixels: int = 0
    out_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint16))
    #: Mask: provisional id of each band's first piece, and provisional id -> final id.
    offsets: list[int] = field(default_factory=list)
    lut: np.ndarray | None = None
    #: Final ids (sorted), and per final id its bounding box (y0, y1, x0, x1) and area.
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    edges: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: Instances: given ids (sorted) are renumbered 1, 2, ... (ids past MAX_KEPT_ID).
    renumber: bool = False
    given: np.ndarray | None = None
    #: Nucleus ids (rule ``ids``): the largest id (not 255), and for ``--uncertain
    #: foreground`` the pieces of uncertain pixels: provisional id of each band's first
    #: piece, and provisional id -> the new nucleus id of a piece touching no nucleus, -1
    #: for one whose pixels join their nearest nucleus (0: none).
    top_id: int = 0
    settle: bool = False
    unc_offsets: list[int] = field(default_factory=list)
    unc_lut: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape  # type: ignore[return-value]

    def bands(self) -> Iterator[tuple[int, np.ndarray]]:
        height = self.shape[0]
        for y0 in range(0, height, self.band):
            yield y0, self.rows(y0, min(y0 + self.band, height))

    def mask(self, raw: np.ndarray) -> np.ndarray:
        """The 0/1/255 training mask of a band (the uncertain policy applied)."""
        if self.kind == "instances":
            return (raw > 0).astype(np.uint8)
        if raw.dtype == bool:
            labels = raw.astype(np.uint8)
        elif self.rule == "binary":
            labels = (raw == UNCERTAIN).astype(np.uint8)
        elif self.rule == "plain":
            labels = raw.astype(np.uint8)
        else:
            labels = raw
        return labels_to_mask(labels, self.uncertain)

    def final(self, raw: np.ndarray, index: int, mask: np.ndarray) -> np.ndarray:
        """The final object ids (int64) of band number ``index``."""
        if self.kind == "instances":
            inst = np.where(mask == 1, raw, 0).astype(np.int64)
        elif self.rule == "ids":
            inst = self.nuclei(raw, index)
        else:
            assert self.lut is not None
            local, _ = ndi.label(mask == 1)
            provisional = np.where(local > 0, local.astype(np.int64) + self.offsets[index], 0)
            return self.lut[provisional]
        if self.renumber:
            assert self.given is not None
            inst = np.where(inst > 0, np.searchsorted(self.given, inst) + 1, 0)
        return inst

    def nuclei(self, raw: np.ndarray, index: int) -> np.ndarray:
        """A band's nucleus ids (rule ``ids``), its uncertain pixels settled as
        :func:`..corrections.nuclei.settle` settles the whole mask when they count as foreground."""
        ids = raw.astype(np.int64)
        unc = ids == UNCERTAIN
        ids[unc] = 0
        if not self.settle or not unc.any():
            return ids
        assert self.unc_lut is not None
        local, _ = ndi.label(unc, structure=FOUR)
        value = self.unc_lut[local[unc].astype(np.int64) + self.unc_offsets[index]]
        join = np.zeros(unc.shape, bool)
        join[unc] = value < 0
        value[value < 0] = 0
        ids[unc] = value
        if join.any():
            y0 = index * self.band
            ids[join] = _nearest(self, y0, y0 + raw.shape[0], join)
        return ids


def _bad(name: str, message: str) -> InputError:
    return InputError(f"{name}: {message}")


def _check_band(plan: Plan, raw: np.ndarray, wanted: str, seen: dict[str, Any]) -> None:
    """Check one band and gather what decides how the file is read (see :func:`plan_export`)."""
    kind = raw.dtype.kind
    if kind == "b":
        return
    if kind == "f":
        if wanted == "instances" or not np.isin(raw, _MASK_VALUES).all():
            raise _bad(
                plan.name,
                f"pixel type {raw.dtype} with values other than 0, 1 and 255 is not a mask "
                "or labels: save masks and labels as integers (0 background)",
            )
        seen["present"] |= set(np.unique(raw).tolist())
        return
    if kind not in "iu":
        raise _bad(
            plan.name, f"pixel type {raw.dtype} is not a mask or labels: save them as integers"
        )
    if kind == "i" and raw.size and int(raw.min()) < 0:
        raise _bad(
            plan.name, "holds negative values; labels must be 0 (background) or positive ids"
        )
    values = np.unique(raw)
    usual = np.isin(values, _MASK_VALUES)
    seen["present"] |= set(values[usual].tolist())
    seen["other"] = seen["other"] or not usual.all()
    ids = values[values != UNCERTAIN]
    if ids.size:
        seen["top"] = max(seen["top"], int(ids[-1]))


def plan_export(
    rows: Rows,
    name: str,
    *,
    input_type: str = "auto",
    convention: str = "auto",
    uncertain: str = "keep",
    band: int | None = None,
) -> Plan:
    """Check and label one input band by band (passes 1 and 2 of the module notes).

    Parameters
    ----------
    rows
        The input's pixels (:class:`Rows`).
    name
        The file name, for messages.
    input_type
        ``auto``, ``mask`` or ``instances`` (as ``export --input-type``).
    convention
        ``selfloop`` for the plugin's own 0/1/255 masks (255 never foreground), else ``auto``.
    uncertain
        What pixels still 255 in a mask become (:data:`.export.UNCERTAIN_POLICIES`).
    band
        Rows per band (default: :func:`band_rows`).

    Raises
    ------
    InputError
        One line naming the file: not a mask or labels, negative ids, or objects too large to
        outline in bounded memory.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise InputError(f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}")
    plan = Plan(rows, name, "mask", "plain", uncertain, band or band_rows(rows))
    seen: dict[str, Any] = {"present": set(), "other": False, "top": 0}
    for _, raw in plan.bands():
        _check_band(plan, raw, input_type, seen)
    present, other = seen["present"], seen["other"]
    if rows.dtype.kind in "iu":
        if input_type != "auto":
            plan.kind = input_type
        elif other and convention != "selfloop":
            plan.kind = "instances"  # another tool's labels: every id an object, 255 too
    if plan.kind == "mask" and rows.dtype != bool:
        if other:
            # Nucleus ids (a correction mask saved from the plugin, or --input-type mask):
            # each id a nucleus, kept; 255 uncertain.
            plan.rule = "ids"
            plan.top_id = seen["top"]
        elif convention == "auto" and present == {UNCERTAIN}:
            log.info(
                "%s: the mask is 255 everywhere: read as not labelled (0/1/255); if 255 "
                "means foreground here, write foreground as 1",
                name,
            )
        elif convention == "auto" and UNCERTAIN in present and 1 not in present:
            plan.rule = "binary"
            log.info(
                "%s: the mask holds only 0 and 255: read as binary (255 = foreground); "
                "to mark pixels as not labelled, use 1 for foreground and 255 for those",
                name,
            )
    if plan.rule == "ids" and uncertain == "foreground" and UNCERTAIN in present:
        _label_uncertain(plan)
    if plan.kind == "instances" or plan.rule == "ids":
        _label_instances(plan)
    else:
        _label_mask(plan)
    _check_outline_memory(plan)
    return plan


def _boxes(labels: np.ndarray, y0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounding boxes (y0, y1, x0, x1; image rows), areas and outline edges (pixel sides
    facing another label; a band's top and bottom count as outline) of labels 1 ... max."""
    n = int(labels.max()) if labels.size else 0
    slices = ndi.find_objects(labels, max_label=n)
    boxes = np.array(
        [
            (s[0].start + y0, s[0].stop + y0, s[1].start, s[1].stop)
            if s is not None
            else (0, 0, 0, 0)
            for s in slices
        ],
        np.int64,
    ).reshape(-1, 4)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    p = np.pad(labels, 1)
    inner = p[1:-1, 1:-1]
    sides = np.zeros(labels.shape, np.uint8)
    for other in (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]):
        sides += other != inner
    edges = np.bincount(labels.ravel(), weights=sides.ravel(), minlength=n + 1)[1:]
    return boxes, areas, edges.astype(np.int64)


def _reduce(
    plan: Plan, keys: np.ndarray, boxes: np.ndarray, areas: np.ndarray, edges: np.ndarray
) -> None:
    """Per final id (``keys``, one per piece): the union of the boxes and the summed areas."""
    ids, inverse = np.unique(keys, return_inverse=True)
    n = ids.size
    out = np.empty((n, 4), np.int64)
    out[:, 0] = out[:, 2] = np.iinfo(np.int64).max
    out[:, 1] = out[:, 3] = -1
    np.minimum.at(out[:, 0], inverse, boxes[:, 0])
    np.maximum.at(out[:, 1], inverse, boxes[:, 1])
    np.minimum.at(out[:, 2], inverse, boxes[:, 2])
    np.maximum.at(out[:, 3], inverse, boxes[:, 3])
    plan.ids, plan.boxes = ids, out
    plan.areas = np.bincount(inverse, weights=areas, minlength=n).astype(np.int64)
    plan.edges = np.bincount(inverse, weights=edges, minlength=n).astype(np.int64)
    plan.objects = int(n)
    top = int(ids[-1]) if n else 0
    plan.out_dtype = np.dtype(np.uint16 if top < 65536 else np.uint32)


def _join(pairs: list[np.ndarray], count: int) -> np.ndarray:
    """Provisional piece ids 0 ... ``count`` -> final ids, the pieces in ``pairs`` (2 x k
    arrays of provisional ids touching across a band border) joined (union-find): objects
    numbered 1, 2, ... in the order of their first piece, as if labelled at once."""
    parent = np.arange(count + 1, dtype=np.int64)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = int(parent[root])
        while parent[i] != root:  # path compression
            parent[i], i = root, int(parent[i])
        return root

    for a, b in np.concatenate(pairs, axis=1).T.tolist() if pairs else []:
        ra, rb = find(a), find(b)
        if ra != rb:  # the smaller id (the piece that starts first) is the root
            parent[max(ra, rb)] = min(ra, rb)
    root = parent
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    is_root = root == np.arange(count + 1)
    is_root[0] = False
    rank = np.zeros(count + 1, np.int64)
    rank[is_root] = np.arange(1, int(is_root.sum()) + 1)
    return rank[root]


def _label_mask(plan: Plan) -> None:
    """Connected components of the foreground, band by band, joined across band borders."""
    boxes, areas, edges, pairs = [], [], [], []
    offset = 0
    previous: np.ndarray | None = None  # provisional ids of the last row of the band above
    for y0, raw in plan.bands():
        mask = plan.mask(raw)
        plan.foreground += int(np.count_nonzero(mask == 1))
        plan.uncertain_pixels += int(np.count_nonzero(mask == UNCERTAIN))
        local, n = ndi.label(mask == 1)
        plan.offsets.append(offset)
        if n:
            b, a, e = _boxes(local, y0)
            boxes.append(b)
            areas.append(a)
            edges.append(e)
            if previous is not None:
                touch = (previous > 0) & (local[0] > 0)
                if touch.any():
                    pair = np.stack([previous[touch], local[0][touch].astype(np.int64) + offset])
                    pairs.append(np.unique(pair, axis=1))
        last = local[-1].astype(np.int64)
        previous = np.where(last > 0, last + offset, 0)
        offset += n
    plan.lut = _join(pairs, offset)
    if offset:
        _reduce(
            plan,
            plan.lut[1:],
            np.concatenate(boxes),
            np.concatenate(areas),
            np.concatenate(edges),
        )
    plan.out_dtype = np.dtype(np.uint16 if plan.objects < 65536 else np.uint32)


def _label_instances(plan: Plan) -> None:
    """Given ids or nucleus ids (:meth:`Plan.final`), band by band: which ids there are,
    their boxes and areas."""
    keys, boxes, areas, edges = [], [], [], []
    for index, (y0, raw) in enumerate(plan.bands()):
        mask = plan.mask(raw)
        plan.foreground += int(np.count_nonzero(mask == 1))
        plan.uncertain_pixels += int(np.count_nonzero(mask == UNCERTAIN))
        inst = plan.final(raw, index, mask)
        ids = np.unique(inst)
        ids = ids[ids > 0]
        if not ids.size:
            continue
        local = np.where(inst > 0, np.searchsorted(ids, inst) + 1, 0).astype(np.int32)
        b, a, e = _boxes(local, y0)
        keys.append(ids)
        boxes.append(b)
        areas.append(a)
        edges.append(e)
    if not keys:
        return
    _reduce(
        plan,
        np.concatenate(keys),
        np.concatenate(boxes),
        np.concatenate(areas),
        np.concatenate(edges),
    )
    top = int(plan.ids[-1])
    if top >= MAX_KEPT_ID:
        plan.renumber, plan.given = True, plan.ids
        plan.ids = np.arange(1, plan.objects + 1, dtype=np.int64)
        log.info("instance ids up to %d renumbered 1..%d", top, plan.objects)
        plan.out_dtype = np.dtype(np.uint16 if plan.objects < 65536 else np.uint32)


def _label_uncertain(plan: Plan) -> None:
    """The pieces of uncertain pixels of a mask with nucleus ids, when they count as
    foreground: labelled band by band (4-connected) and joined across band borders, in the
    order :func:`..corrections.nuclei.settle` numbers them (row by row); a piece that touches a nucleus
    anywhere (4-connected) will join its nearest nucleus, pixel by pixel, and any other
    becomes a new nucleus with the next free id (after the largest id, skipping 255)."""
    pairs: list[np.ndarray] = []
    touched: list[np.ndarray] = []
    offset = 0
    above: np.ndarray | None = None  # provisional ids of the last row of the band above
    above_nucleus: np.ndarray | None = None  # its nucleus pixels
    for _, raw in plan.bands():
        unc = raw == UNCERTAIN
        nucleus = (raw != 0) & ~unc
        local, n = ndi.label(unc, structure=FOUR)
        plan.unc_offsets.append(offset)
        ids = local.astype(np.int64)
        ids[local > 0] += offset
        if n:
            near = unc & ndi.binary_dilation(nucleus, structure=FOUR)
            touched.append(ids[near])
            if above_nucleus is not None:
                touched.append(ids[0][unc[0] & above_nucleus])
        if above is not None:
            touched.append(above[(above > 0) & nucleus[0]])
            touch = (above > 0) & (ids[0] > 0)
            if touch.any():
                pairs.append(np.unique(np.stack([above[touch], ids[0][touch]]), axis=1))
        above, above_nucleus = ids[-1], nucleus[-1]
        offset += n
    rank = _join(pairs, offset)
    count = int(rank.max()) if rank.size else 0
    joins = np.zeros(count + 1, bool)
    if touched:
        joins[rank[np.concatenate(touched)]] = True
    value = np.zeros(count + 1, np.int64)
    value[joins] = -1
    new = np.flatnonzero(~joins)[1:]
    value[new] = id_sequence(skip_reserved(plan.top_id + 1), new.size)
    plan.unc_lut = value[rank]
    plan.settle = True


#: Rows read above and below a band to find the nucleus nearest to each of its uncertain
#: pixels (more where that is not enough, see :func:`_nearest`).
NEAREST_HALO = 64


def _nearest(plan: Plan, y0: int, y1: int, where: np.ndarray) -> np.ndarray:
    """The id of the nucleus nearest to each pixel ``where`` of rows ``y0`` ... ``y1 - 1``
    (Euclidean, ties as :func:`..corrections.nuclei.settle` breaks them), from the rows around them: a
    nucleus found at distance ``d`` is the nearest of the whole mask when every row within
    ``d`` of the pixel was read; where one was not, more rows are read."""
    height = plan.shape[0]
    rows = np.nonzero(where)[0] + y0
    halo = NEAREST_HALO
    while True:
        a, b = max(0, y0 - halo), min(height, y1 + halo)
        ids = plan.rows(a, b).astype(np.int64)
        ids[ids == UNCERTAIN] = 0
        need = float(2 * halo)
        if ids.any():
            dist, (iy, ix) = ndi.distance_transform_edt(ids == 0, return_indices=True)
            part = slice(y0 - a, y1 - a)
            d = dist[part][where]
            ok = ((rows - d >= a) | (a == 0)) & ((rows + d <= b - 1) | (b == height))
            if ok.all():
                return ids[iy[part][where], ix[part][where]]
            need = float(d[~ok].max())
        elif a == 0 and b == height:  # never: these pixels touch a nucleus
            raise RuntimeError("no nucleus for uncertain pixels to join")
        halo = max(2 * halo, int(math.ceil(need)) + 1)


def _check_outline_memory(plan: Plan) -> None:
    """Refuse a file whose objects could not be outlined within :data:`MAX_OUTLINE_BYTES`."""
    if not plan.objects:
        return
    b = plan.boxes
    box = (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])
    # Objects open at the end of band k: they start before it and end after it.
    first = b[:, 0] // plan.band
    last = (b[:, 1] - 1) // plan.band
    crossing = last > first
    open_bytes = np.zeros(int(math.ceil(plan.shape[0] / plan.band)) + 1, np.int64)
    np.add.at(open_bytes, first[crossing], box[crossing])
    np.add.at(open_bytes, last[crossing], -box[crossing])
    outline = _OUTLINE_BYTES_PER_PIXEL * box + _OUTLINE_BYTES_PER_EDGE * plan.edges
    need = int(np.cumsum(open_bytes).max()) + int(outline.max())
    if need > MAX_OUTLINE_BYTES:
        k = int(np.argmax(outline))
        y0, y1, x0, x1 = (int(v) for v in b[k])
        raise InputError(
            f"{plan.name}: outlining its objects for the GeoJSON would take about "
            f"{need / 2**30:.1f} GB of memory (the largest object spans {y1 - y0}x{x1 - x0} pixels at "
            f"row {y0}, column {x0}): export a downsampled mask (e.g. every 4th pixel, with "
            "--downsample 4) or split the mask into regions (with --offset)"
        )


def _features(
    plan: Plan,
    labels: np.ndarray,
    y0: int,
    held: dict[int, np.ndarray],
    **style: Any,
) -> Iterator[dict[str, Any]]:
    """The features of the objects that end in this band; crops of the others kept in ``held``.

    The objects whole in this band are outlined together (:func:`.export.label_features`),
    by id; then those that end here after crossing band borders, from their crops.
    """
    present = np.unique(labels)
    present = present[present > 0]
    if not present.size:
        return
    local = np.where(labels > 0, np.searchsorted(present, labels) + 1, 0).astype(np.int32)
    boxes = plan.boxes[np.searchsorted(plan.ids, present)]
    y1 = y0 + labels.shape[0]
    whole = (boxes[:, 0] >= y0) & (boxes[:, 1] <= y1)
    if whole.any():
        inside = np.r_[False, whole][local]
        yield from label_features(np.where(inside, labels, 0), y0, 0, **style)
    if whole.all():
        return
    crossing = np.r_[False, ~whole][local]
    pieces = np.where(crossing, local, 0)
    for k, sl in enumerate(ndi.find_objects(pieces)):
        if sl is None:
            continue
        by0, by1, bx0, bx1 = (int(v) for v in boxes[k])
        label = int(present[k])
        if label not in held:
            held[label] = np.zeros((by1 - by0, bx1 - bx0), bool)
        buf = held[label]
        ys = slice(sl[0].start + y0 - by0, sl[0].stop + y0 - by0)
        xs = slice(sl[1].start - bx0, sl[1].stop - bx0)
        buf[ys, xs] |= pieces[sl] == k + 1
        if by1 > y1:
            continue
        feature = object_feature(held.pop(label), by0, bx0, label, **style)
        if feature is not None:
            yield feature


def write_export(
    out_dir: str | Path,
    name: str,
    plan: Plan,
    *,
    image_sha256: str | None = None,
    classification: str = "Nucleus",
    object_type: str = "detection",
    window: Window | None = None,
    pixel_size_um: float | None = None,
) -> dict[str, Any]:
    """Write the outputs of a planned input as a set (pass 3 of the module notes).

    The same files, manifest entry and guarantees as :func:`.export.export_annotation`
    (the manifest is checked first, every file is written to a temporary and all are renamed
    only when all are complete, exports into one folder take turns). Returns the entry.
    """
    out = Path(out_dir)
    _check_destination(out, plan, window)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    style = {"classification": classification, "object_type": object_type, "window": window}
    with folder_lock(out):
        manifest = _read_manifest(manifest_path)
        stem = choose_stem(out, str(name), image_sha256, manifest["entries"])
        files = _files(stem)
        entry = _planned_entry(
            name,
            plan,
            files,
            image_sha256=image_sha256,
            object_type=object_type,
            pixel_size_um=pixel_size_um,
            window=window,
        )
        manifest_text = manifest_text_with(manifest, entry)
        order = ["mask", "instances", "geojson"]
        with contextlib.ExitStack() as stack:
            # Entered last first: leaving the stack renames mask, instances, GeoJSON, manifest.
            manifest_tmp = stack.enter_context(atomic_path(manifest_path))
            tmp = {key: stack.enter_context(atomic_path(out / files[key])) for key in order[::-1]}
            mask_w, inst_w = _open_tiffs(stack, tmp, plan, pixel_size_um)
            geojson = stack.enter_context(open(tmp["geojson"], "w", encoding="utf-8"))
            _write_bands(plan, mask_w, inst_w, geojson, style)
            manifest_tmp.write_text(manifest_text, encoding="utf-8")
    log.info("exported %s: %d objects -> %s", name, entry["objects"], out)
    return entry


def _check_destination(out: Path, plan: Plan, window: Window | None) -> None:
    """Refuse a file as the export folder, and labels that do not fit their ``window``."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder: choose a folder to export into")
    height, width = plan.shape
    if window is not None and (height, width) != window.shape:
        raise InputError(f"labels of shape {(height, width)} do not fit region {window.label}")


def _planned_entry(
    name: str,
    plan: Plan,
    files: dict[str, str],
    *,
    image_sha256: str | None,
    object_type: str,
    pixel_size_um: float | None,
    window: Window | None,
) -> dict[str, Any]:
    """The manifest entry of a planned input written to ``files`` (its counts from the plan)."""
    height, width = plan.shape
    return manifest_entry(
        name=str(name),
        image=None,
        image_sha256=image_sha256,
        files=files,
        shape=[height, width],
        checkpoint=None,
        foreground_pixels=plan.foreground,
        uncertain_pixels=plan.uncertain_pixels,
        objects=plan.objects,
        uncertain_policy=plan.uncertain,
        object_type=object_type,
        pixel_size_um=pixel_size_um,
        window=window,
    )


def _open_tiffs(
    stack: contextlib.ExitStack,
    tmp: dict[str, Path],
    plan: Plan,
    pixel_size_um: float | None,
) -> tuple[TiledTiffWriter, TiledTiffWriter]:
    """The mask and instance TIFF writers, opened on their temporaries ``tmp`` in ``stack``
    (in that order)."""
    height, width = plan.shape
    tiff: dict[str, Any] = {"pixel_size_um": pixel_size_um, "ome": False}
    mask_w = stack.enter_context(
        TiledTiffWriter(
            tmp["mask"],
            height,
            width,
            np.uint8,
            metadata={SELFLOOP_MASK_TAG: "0/1/255"},
            **tiff,
        )
    )
    inst_w = stack.enter_context(
        TiledTiffWriter(tmp["instances"], height, width, plan.out_dtype, **tiff)
    )
    return mask_w, inst_w


def _write_bands(
    plan: Plan,
    mask_w: TiledTiffWriter,
    inst_w: TiledTiffWriter,
    geojson: TextIO,
    style: dict[str, Any],
) -> None:
    """Band by band: the training mask and the instance labels into their TIFFs, and the
    features of the objects that end in the band into the GeoJSON ``FeatureCollection``."""
    geojson.write('{"type": "FeatureCollection", "features": [')
    held: dict[int, np.ndarray] = {}
    first = True
    for index, (y0, raw) in enumerate(plan.bands()):
        mask = plan.mask(raw)
        labels = plan.final(raw, index, mask)
        mask_w.write_rows(y0, mask)
        inst_w.write_rows(y0, labels.astype(plan.out_dtype))
        with _gc_paused():
            features = list(_features(plan, labels, y0, held, **style))
        for feature in features:
            geojson.write(("" if first else ", ") + json.dumps(feature, ensure_ascii=False))
            first = False
        del features
    geojson.write("]}\n")
    if held:  # never: every object ends in some band
        raise RuntimeError(f"{len(held)} object(s) were never outlined")
