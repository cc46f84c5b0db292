"""Export corrected masks for retraining and for other tools.

For an image and its correction mask (:mod:`..corrections.nuclei`: 0 background, 255 uncertain, any
other value the id of one nucleus; a plain 0/1/255 mask is one whose nuclei all have id 1),
:func:`export_annotation` writes into one folder, as a set:

``STEM_mask.tif``
    uint8: 1 foreground, 0 background, 255 still uncertain (ignored by training), the
    convention of :mod:`..engine.pseudolabel` and the training code; its TIFF metadata says so
    (:data:`~..engine.datasets.SELFLOOP_MASK_TAG`), so ``train`` and ``evaluate`` never read a mask
    without foreground as a 0/255 binary one.
``STEM_instances.tif``
    uint16 (uint32 past id 65535) instance labels, 0 elsewhere: each nucleus as the user
    sees it (:func:`nuclei_instances`): the mask's own ids, so touching nuclei stay apart
    (a plain 0/1/255 mask: one id per 4-connected foreground piece), or the instance ids
    given.
``STEM.geojson``
    One feature per instance id, in QuPath's GeoJSON flavour (``FeatureCollection`` of
    ``Feature`` with a UUID ``id``, ``objectType``, ``classification``, the id as ``name``
    and ``Label`` measurement), in pixel coordinates where pixel ``(row, col)`` covers
    ``[col, col + 1) x [row, row + 1)``; outlines follow pixel edges, so a polygon's area
    is its object's pixel count, and an id in separate pieces is one ``MultiPolygon``.
    Objects are ``detection`` by default (what QuPath advises for numerous objects such as
    nuclei) or ``annotation`` (editable; for a lesion).

Both TIFFs are tiled and compressed, with a pyramid when large, and carry the pixel size
when it is known (:func:`..io.tiled_tiff.write_tiled_tiff`). The masks of a **region** of a slide
(``window``, see :mod:`..io.windows`) are the region's own, at the resolution it was processed
at; its GeoJSON is in slide coordinates (full-resolution pixels, as QuPath expects): the
region's corner is added and its downsampling undone.
``manifest.json``
    One entry per exported image (image, its hash, the files above, the checkpoint used,
    the date, counts: ``objects`` is the number of distinct nuclei); re-exporting an image
    replaces its entry.

``STEM`` is the image's readable name (:func:`safe_stem`), with a short hash added when
that would be ambiguous (:func:`choose_stem`): different images never share files, and an
earlier export of another image is never overwritten.

Guarantees: the manifest is checked before anything is written; the four files are written
to temporaries and renamed onto their names only once all are written, so a full disk or
any error leaves the previous set untouched (a crash in the moment of the renames, which
need no space, can still leave a mix); exports into one folder take turns under a lock, so
concurrent exports keep every manifest entry.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ... import __version__
from ..corrections import nuclei
from ..engine.datasets import SELFLOOP_MASK_TAG
from ..engine.pseudolabel import UNCERTAIN
from ..errors import InputError
from ..io.atomic import atomic_path
from ..io.tiled_tiff import write_tiled_tiff
from ..io.windows import Window

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: exports in one process still take turns
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "napari-selfloop-export"
UNCERTAIN_POLICIES = ("keep", "background", "foreground")
#: QuPath object types: ``detection`` (light, for numerous objects such as nuclei) and
#: ``annotation`` (editable, for a few large objects such as a lesion).
OBJECT_TYPES = ("detection", "annotation")


def labels_to_mask(labels: np.ndarray, uncertain: str = "keep") -> np.ndarray:
    """A correction Labels array as a uint8 training mask (1 / 0 / 255).

    0 stays background, 255 is uncertain, and any other label (1, or instance ids a user
    painted) is foreground. ``uncertain`` says what to do with 255: ``keep`` it,
    or count it as ``background`` or ``foreground``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"expected a 2D mask, got shape {labels.shape}: pick one plane")
    if uncertain not in UNCERTAIN_POLICIES:
        raise InputError(
            f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {uncertain!r}"
        )
    if labels.dtype.kind not in "biu":
        raise InputError(f"a mask must hold integer labels, got {labels.dtype}")
    mask = (labels != 0).astype(np.uint8)
    unc = labels == UNCERTAIN
    mask[unc] = {"keep": UNCERTAIN, "background": 0, "foreground": 1}[uncertain]
    return mask


def instance_labels(mask: np.ndarray) -> np.ndarray:
    """Connected foreground objects (mask == 1, 4-connected) as instance labels."""
    fg = np.asarray(mask) == 1
    labels, n = ndi.label(fg)
    return labels.astype(np.uint16 if n < 65536 else np.uint32)


#: Instance ids from this one up are renumbered (see :func:`given_instances`).
MAX_KEPT_ID = 2**24


def given_instances(instances: Any, mask: np.ndarray) -> np.ndarray:
    """Instance ids given by the caller, checked and kept only on the foreground of ``mask``.

    Ids are kept as they are (so they match the caller's file), in uint16 when they fit,
    else uint32; ids from :data:`MAX_KEPT_ID` up are renumbered 1, 2, ... (the GeoJSON's
    bookkeeping is per id). One-line InputError for a shape other than ``mask``'s, or
    non-integer or negative values.
    """
    inst = np.asarray(instances)
    if inst.shape != mask.shape:
        raise InputError(f"instance labels of shape {inst.shape} do not fit the mask {mask.shape}")
    if inst.dtype.kind not in "biu":
        raise InputError(f"instance labels must be integers, got {inst.dtype}")
    if inst.size and inst.dtype.kind == "i" and int(inst.min()) < 0:
        raise InputError("instance labels must not be negative (0 is background)")
    inst = np.where(mask == 1, inst, 0)
    top = int(inst.max()) if inst.size else 0
    if top >= MAX_KEPT_ID:
        from skimage.segmentation import relabel_sequential

        inst = relabel_sequential(inst)[0]
        log.info("instance ids up to %d renumbered 1..%d", top, int(inst.max()))
        top = int(inst.max())
    return inst.astype(np.uint16 if top < 65536 else np.uint32)


def nuclei_instances(labels: np.ndarray, uncertain: str = "keep") -> np.ndarray:
    """The nuclei of a correction mask as instance labels: each nucleus as the user sees it.

    A mask holding nucleus ids (:mod:`..corrections.nuclei`: 0 background, 255 uncertain, any other
    value a nucleus' id) keeps them (:func:`..corrections.nuclei.labels_instances`): one instance per id,
    touching nuclei apart, an id in separate pieces still one. A plain 0/1/255 mask (every
    nucleus id 1, the legacy form) has its 4-connected foreground pieces numbered 1, 2, ...
    (:func:`instance_labels`). Uncertain pixels follow ``uncertain``: ``keep`` and
    ``background`` leave them out; ``foreground`` makes them nuclei as
    :func:`..corrections.nuclei.settle` does over the whole mask (a piece of them touching nuclei joins
    the nearest nucleus, pixel by pixel; any other piece is a new nucleus with the next free
    id), and in a legacy mask joins the foreground before it is cut into pieces. Checked and
    typed as :func:`given_instances` (uint16 when the ids fit, else uint32).
    """
    return _nuclei_instances(labels, labels_to_mask(labels, uncertain), uncertain)


def _nuclei_instances(labels: np.ndarray, mask: np.ndarray, uncertain: str) -> np.ndarray:
    data = np.asarray(labels)
    if not nuclei.has_ids(data):
        return instance_labels(mask)
    if uncertain == "foreground" and (data == UNCERTAIN).any():
        height, width = data.shape
        edit = nuclei.settle(data, (0, 0, height, width), nucleus=True)
        data = data.astype(np.promote_types(data.dtype, nuclei.LABEL_DTYPE), copy=True)
        data[edit.index] = edit.values
    instances = nuclei.labels_instances(data)  # nonzero only where ``mask`` is 1
    if instances.size and int(instances.max()) >= MAX_KEPT_ID:
        instances = given_instances(instances, mask)  # renumbered
    return instances


#: Edge directions are numbered 0 east, 1 south, 2 west, 3 north (``y`` pointing down).
#: Where several edges leave one vertex, the order in which they start a ring (east, west,
#: south, north): the order the walk this replaced found rings in, kept so outputs match.
_RANK = np.array([0, 2, 1, 3], np.int64)
#: At the vertex an edge of each direction ends in: the pixel ahead on its left, ahead on
#: its right, and (at its start) the pixel on its right that owns it, as indices into the
#: 2x2 pixels around a vertex (NW, NE, SW, SE).
_AHEAD_LEFT = np.array([1, 3, 2, 0], np.int64)
_AHEAD_RIGHT = np.array([3, 2, 0, 1], np.int64)
_OWNER = np.array([3, 2, 0, 1], np.int64)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of small lists (vertices, features) are
    made: none of them is garbage, and the collector's passes over them took most of the
    time (``tolist`` of 1.4 M vertices: 0.9 s, 0.13 s without)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class _Rings:
    """The rings of every label of an array (:func:`_trace`), sorted by label, then by area
    (the largest, an outline, first), then in the order they were found."""

    labels: np.ndarray  # per ring: its label
    areas: np.ndarray  # per ring: twice its signed area (outlines > 0, holes < 0)
    boxes: np.ndarray  # per ring: x0, x1, y0, y1 of its vertices in the array's own pixels
    points: list[list[Any]]  # the rings' vertices, each ring closed, one ring after another
    offsets: np.ndarray  # ring k is points[offsets[k]:offsets[k + 1]]
    pinched: np.ndarray  # labels two of whose pixels touch only at a corner somewhere

    def ring(self, k: int) -> list[list[Any]]:
        return self.points[int(self.offsets[k]) : int(self.offsets[k + 1])]


def _trace(labels: np.ndarray, y0: int = 0, x0: int = 0, window: Window | None = None) -> _Rings:
    """Closed rings along the pixel edges of every label of ``labels`` (0: none), at once.

    Every edge between a pixel of a label and a pixel of another value is walked with the
    label on its right (``y`` down), so in the raw ``(x, y)`` numbers an outline turns
    counter-clockwise (positive shoelace area) and holes clockwise, as GeoJSON (RFC 7946)
    wants; the areas of a label's rings add up to its pixel count. Where two pixels of a
    label touch only at a corner the walk turns left, joining them, so a ring never passes a
    vertex twice (a hole may touch the outline at one point, which is a valid polygon); such
    labels are listed in ``pinched`` (the walk may have joined pieces there). Collinear
    vertices are dropped. Vertices are ``[x, y]`` pixel corners plus ``(x0, y0)``, then in
    slide coordinates for a ``window`` (ints where exact).

    Vectorised: each edge's successor comes from the 2x2 pixels at its end, the rings are
    the cycles of that permutation (found by pointer doubling), and each ring starts at its
    first edge in the raster order of vertices (east, west, south, north at one vertex).
    The steps: :func:`_edge_keys` (the edges), :func:`_link_edges` (each one's successor),
    :func:`_ring_minima` and :func:`_walking_order` (the rings, each as walked),
    :func:`_ring_measures` and :func:`_closed_rings` (areas, boxes and vertices).
    """
    lab = np.asarray(labels)
    if lab.dtype == bool:
        lab = lab.view(np.uint8)
    q = np.pad(lab, 1)
    keys = _edge_keys(q)
    if not keys.size:
        empty = np.zeros(0, np.int64)
        return _Rings(empty, empty, np.zeros((0, 4), np.int64), [], np.zeros(1, np.int64), empty)
    vertex, d = np.divmod(keys, 4)
    vy, vx = np.divmod(vertex, lab.shape[1] + 1)
    owner, nxt, pinched = _link_edges(q, keys, vertex, d, vy, vx)
    start = vertex * 4 + _RANK[d]
    del q, keys, vertex
    low = _ring_minima(start, nxt)
    walk = _walking_order(start, low, nxt)
    walk = walk[_turns(d, nxt)[walk]]  # the corners, ring by ring, in walking order
    del start, nxt
    ring_key = low[walk]
    first = np.flatnonzero(np.r_[True, ring_key[1:] != ring_key[:-1]])
    count = np.diff(np.r_[first, walk.size])
    px, py = vx[walk], vy[walk]
    areas, boxes = _ring_measures(px, py, first, count)
    ring_label = owner[walk[first]]
    order = np.lexsort((ring_key[first], -areas, ring_label))
    offsets, points = _closed_rings(px, py, first[order], count[order], y0, x0, window)
    return _Rings(
        labels=ring_label[order],
        areas=areas[order],
        boxes=boxes[order],
        points=points,
        offsets=offsets,
        pinched=pinched,
    )


def _edge_keys(q: np.ndarray) -> np.ndarray:
    """Every pixel edge of the padded labels ``q`` with a label on its right and another
    value on its left, as sorted keys ``4 * vertex + direction``: its start vertex (in the
    raster order of the unpadded array's ``(h + 1) x (w + 1)`` pixel corners) and its
    direction (0 east, 1 south, 2 west, 3 north)."""
    nw, ne, sw, se = q[:-1, :-1], q[:-1, 1:], q[1:, :-1], q[1:, 1:]
    return np.sort(
        np.concatenate(
            [
                np.flatnonzero((se != 0) & (ne != se)) * 4,  # east: top edges
                np.flatnonzero((sw != 0) & (se != sw)) * 4 + 1,  # south: right edges
                np.flatnonzero((nw != 0) & (sw != nw)) * 4 + 2,  # west: bottom edges
                np.flatnonzero((ne != 0) & (nw != ne)) * 4 + 3,  # north: left edges
            ]
        ).astype(np.int64, copy=False)
    )


def _link_edges(
    q: np.ndarray,
    keys: np.ndarray,
    vertex: np.ndarray,
    d: np.ndarray,
    vy: np.ndarray,
    vx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the edges ``keys`` of the padded labels ``q`` (:func:`_edge_keys`; start ``vertex``
    at row ``vy`` and column ``vx`` of the vertex grid, direction ``d``): each edge's label
    (the pixel on its right), the index of the edge that follows it on its ring, and the
    labels two of whose pixels touch only at a corner."""
    qw = q.shape[1]  # row length of the padded pixels
    vw = qw - 1  # row length of the vertex grid
    quad = np.array([0, 1, qw, qw + 1], np.int64)  # NW, NE, SW, SE of a vertex, in q
    flat = q.ravel()
    owner = flat[vy * qw + vx + quad[_OWNER[d]]]
    end = vertex + np.array([1, vw, -1, -vw], np.int64)[d]
    ey, ex = np.divmod(end, vw)
    at = ey * qw + ex
    left = flat[at + quad[_AHEAD_LEFT[d]]] == owner
    right = flat[at + quad[_AHEAD_RIGHT[d]]] == owner
    del ey, ex, at
    # Turn left where the pixel ahead on the left is the label's (joining a corner touch),
    # else go straight where the one ahead on the right is, else turn right.
    turn = np.where(left, (d + 3) % 4, np.where(right, d, (d + 1) % 4))
    nxt = np.searchsorted(keys, end * 4 + turn)
    pinched = np.unique(owner[left & ~right])
    return owner, nxt, pinched


def _ring_minima(start: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Per edge: the smallest ``start`` on its cycle of ``nxt``, which names its ring and
    marks the ring's first edge (pointer doubling)."""
    low, jump = start, nxt
    while True:
        lower = np.minimum(low, low[jump])
        if np.array_equal(lower, low):
            return low
        low, jump = lower, jump[jump]


def _walking_order(start: np.ndarray, low: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """The edges' indices ring by ring (by their first edges' ``start``), each ring from its
    first edge as walked along ``nxt``: the steps from each edge to the last edge of its ring
    are counted by list ranking."""
    index = np.arange(start.size)
    last = (start == low)[nxt]
    jump = np.where(last, index, nxt)
    togo = (~last).astype(np.int64)
    while True:
        further = jump[jump]
        if np.array_equal(further, jump):
            break
        togo, jump = togo + togo[jump], further
    heads = np.flatnonzero(start == low)  # each ring's first edge
    heads = heads[np.argsort(start[heads])]
    length = togo[heads] + 1
    ring = np.searchsorted(start[heads], low)
    walk = np.empty_like(index)
    walk[(np.cumsum(length) - 1)[ring] - togo] = index  # rings in order, each as walked
    return walk


def _turns(d: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Per edge: whether its direction ``d`` differs from that of the edge before it on its
    ring (``nxt``), that is whether its start vertex is a corner."""
    before = np.empty_like(nxt)
    before[nxt] = np.arange(nxt.size)
    return d != d[before]


def _ring_measures(
    px: np.ndarray, py: np.ndarray, first: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Twice the signed area and the box (x0, x1, y0, y1) of each ring whose ``count``
    corners are ``px, py[first:first + count]``."""
    following = np.arange(px.size) + 1
    following[first + count - 1] = first
    areas = np.add.reduceat(px * py[following] - px[following] * py, first)
    boxes = np.stack(
        [
            np.minimum.reduceat(px, first),
            np.maximum.reduceat(px, first),
            np.minimum.reduceat(py, first),
            np.maximum.reduceat(py, first),
        ],
        axis=1,
    )
    return areas, boxes


def _closed_rings(
    px: np.ndarray,
    py: np.ndarray,
    first: np.ndarray,
    count: np.ndarray,
    y0: int,
    x0: int,
    window: Window | None,
) -> tuple[np.ndarray, list[list[Any]]]:
    """The rings whose corners are ``px, py[first:first + count]``, in the order given, each
    closed (its corners, then its first corner again), as ``[x, y]`` vertices plus
    ``(x0, y0)``, then in slide coordinates for a ``window``; with the offsets of the rings
    in that list."""
    size = count + 1
    offsets = np.r_[0, np.cumsum(size)]
    ring_of = np.repeat(np.arange(first.size), size)
    source = first[ring_of] + np.arange(int(offsets[-1])) - offsets[:-1][ring_of]
    source[offsets[1:] - 1] = first
    xs, ys = px[source] + x0, py[source] + y0
    if window is not None:
        f = window.factor
        xs, ys = window.x0 + xs * f, window.y0 + ys * f
        if float(f).is_integer():
            xs, ys = xs.astype(np.int64), ys.astype(np.int64)
    with _gc_paused():
        points = np.stack([xs, ys], axis=1).tolist()
    return offsets, points


def ring_area(ring: list[list[int]]) -> float:
    """Signed shoelace area of a closed ring in raw ``(x, y)`` numbers (outer rings > 0)."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:-1, 0], xy[:-1, 1]
    x1, y1 = xy[1:, 0], xy[1:, 1]
    return float(np.sum(x * y1 - x1 * y)) / 2.0


Polygons = list[list[list[list[Any]]]]


def _piece_polygons(rings: _Rings) -> Polygons:
    """One polygon per label of ``rings`` (labels that are one 4-connected piece each), in
    the order of the labels: the outline, then the holes."""
    if not rings.labels.size:
        return []
    bounds = np.flatnonzero(np.r_[True, rings.labels[1:] != rings.labels[:-1], True])
    return [[rings.ring(k) for k in range(a, b)] for a, b in zip(bounds[:-1], bounds[1:])]


def _polygons(region: np.ndarray, y0: int, x0: int, window: Window | None = None) -> Polygons:
    """One polygon (outline, then holes) per 4-connected piece of an object's binary crop,
    in the raster order of the pieces' first pixels."""
    pieces, _ = ndi.label(np.asarray(region, dtype=bool))
    return _piece_polygons(_trace(pieces, y0, x0, window))


def _label_polygons(
    labels: np.ndarray, y0: int = 0, x0: int = 0, window: Window | None = None
) -> Iterator[tuple[int, int, Polygons]]:
    """``(label, pixel count, polygons)`` of every label of ``labels``, by label: one polygon
    per 4-connected piece (:func:`_polygons`), traced all at once.

    A label that is one piece whose pixels never touch only at a corner is outlined by the
    whole-array walk as it is; any other (several pieces, or a corner touch that may join
    two of them) is outlined again from its own crop, piece by piece.
    """
    lab = np.asarray(labels)
    rings = _trace(lab, y0, x0, window)
    if not rings.labels.size:
        return
    ids, first, count = np.unique(rings.labels, return_index=True, return_counts=True)
    outlines = np.add.reduceat((rings.areas > 0).astype(np.int64), first)
    redo = (outlines != 1) | np.isin(ids, rings.pinched)
    for k, label in enumerate(ids.tolist()):
        a, b = int(first[k]), int(first[k] + count[k])
        area = int(rings.areas[a:b].sum()) // 2
        if not redo[k]:
            yield label, area, [[rings.ring(j) for j in range(a, b)]]
            continue
        box = rings.boxes[a:b]
        cx0, cx1, cy0, cy1 = (
            int(box[:, 0].min()),
            int(box[:, 1].max()),
            int(box[:, 2].min()),
            int(box[:, 3].max()),
        )
        crop = lab[cy0:cy1, cx0:cx1] == label
        yield label, area, _polygons(crop, y0 + cy0, x0 + cx0, window)


def _feature(
    label: int,
    area: int,
    polygons: Polygons,
    *,
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (0, 200, 200),
    object_type: str = "detection",
) -> dict[str, Any]:
    """One object's GeoJSON feature (see :func:`mask_to_geojson`)."""
    geometry = (
        {"type": "Polygon", "coordinates": polygons[0]}
        if len(polygons) == 1
        else {"type": "MultiPolygon", "coordinates": polygons}
    )
    properties: dict[str, Any] = {
        "objectType": object_type,
        "name": str(label),
        "classification": {"name": classification, "color": list(color)},
        "measurements": {"Area px": int(area), "Label": int(label)},
    }
    if object_type == "annotation":
        properties["isLocked"] = False
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": geometry,
        "properties": properties,
    }


def object_feature(
    region: np.ndarray,
    y0: int,
    x0: int,
    label: int,
    *,
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (0, 200, 200),
    object_type: str = "detection",
    window: Window | None = None,
) -> dict[str, Any] | None:
    """One object's GeoJSON feature (see :func:`mask_to_geojson`): ``region`` is the boolean
    crop of its pixels whose top-left pixel is ``(y0, x0)``; None when it has no pixels."""
    polygons = _polygons(region, y0, x0, window)
    if not polygons:
        return None
    style: dict[str, Any] = {
        "classification": classification,
        "color": color,
        "object_type": object_type,
    }
    return _feature(label, int(np.count_nonzero(region)), polygons, **style)


def label_features(
    labels: np.ndarray,
    y0: int = 0,
    x0: int = 0,
    *,
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (0, 200, 200),
    object_type: str = "detection",
    window: Window | None = None,
) -> Iterator[dict[str, Any]]:
    """The features of every label of ``labels`` (whose top-left pixel is ``(y0, x0)``), by
    label: what :func:`mask_to_geojson` lists. Outlined band by band (:func:`_trace_bands`)."""
    style: dict[str, Any] = {
        "classification": classification,
        "color": color,
        "object_type": object_type,
    }
    outlined: list[tuple[int, int, Polygons]] = []
    bands = 0
    for start, band in _trace_bands(np.asarray(labels)):
        outlined.extend(_label_polygons(band, y0 + start, x0, window))
        bands += 1
    if bands > 1:
        outlined.sort(key=lambda item: item[0])
    for label, area, polygons in outlined:
        yield _feature(label, area, polygons, **style)


#: Pixels outlined at once by :func:`label_features`: bands of about this many, each widened
#: to hold the objects that start in it whole. Bounds the memory of the outlining (some 30
#: bytes per pixel of a band where nuclei are dense) whatever the size of the array.
TRACE_PIXELS = 2**22


def _trace_bands(labels: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, labels)`` of bands of rows that hold every label once, whole: a band
    holds the labels whose first row is in its :data:`TRACE_PIXELS` (the others set to 0),
    down to the last row of any of them. One band where the array is small or its ids too
    large to index."""
    height, width = labels.shape
    rows = max(1, TRACE_PIXELS // max(width, 1))
    top = int(labels.max()) if labels.size else 0
    if height <= rows or labels.dtype.kind not in "iu" or top >= MAX_KEPT_ID:
        yield 0, labels
        return
    boxes = ndi.find_objects(labels)
    present = np.array([k for k, box in enumerate(boxes, start=1) if box is not None])
    starts = np.array([boxes[k - 1][0].start for k in present.tolist()], np.int64)
    stops = np.array([boxes[k - 1][0].stop for k in present.tolist()], np.int64)
    for y0 in range(0, height, rows):
        here = (starts >= y0) & (starts < y0 + rows)
        if not here.any():
            continue
        keep = np.zeros(top + 1, bool)
        keep[present[here]] = True
        band = labels[y0 : int(stops[here].max())]
        yield y0, np.where(keep[band], band, 0)


def mask_to_geojson(
    instances: np.ndarray,
    *,
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (0, 200, 200),
    object_type: str = "detection",
    window: Window | None = None,
) -> dict[str, Any]:
    """QuPath-compatible GeoJSON ``FeatureCollection``: one feature per instance id.

    Each feature is one nucleus (or object) as the user sees it: its id is the feature's
    ``name`` (what QuPath shows for an object) and its ``Label`` measurement, beside
    ``Area px``; its class is ``classification``. The polygons follow pixel edges: an
    object's polygon area (outline minus holes) is its pixel count (times
    ``window.factor ** 2`` for a downsampled window), 1 for a single pixel. An id made of
    several separate (4-connected) pieces is one ``MultiPolygon``. Every feature has a
    random UUID as its ``id`` (QuPath drops other ids). Features come in the order of the
    ids.

    Parameters
    ----------
    instances
        ``(H, W)`` integer instance labels (0 = background).
    classification
        QuPath class name of every object (``Nucleus``, ``Lesion`` ...).
    color
        The class colour as QuPath stores it (RGB 0-255).
    object_type
        ``detection`` (default: light, for numerous objects such as nuclei) or
        ``annotation`` (editable in QuPath: a lesion).
    window
        Where ``instances`` lie in a slide (:class:`~..io.windows.Window`): coordinates are then
        the slide's full-resolution pixels. None: ``instances``' own pixels.
    """
    if object_type not in OBJECT_TYPES:
        raise InputError(
            f"object type must be one of {', '.join(OBJECT_TYPES)}, got {object_type!r}"
        )
    instances = np.asarray(instances)
    with _gc_paused():
        features = list(
            label_features(
                instances,
                classification=classification,
                color=color,
                object_type=object_type,
                window=window,
            )
        )
    return {"type": "FeatureCollection", "features": features}


#: Extensions taken off an image name to make its stem (others, like ``.001``, are kept).
_IMAGE_SUFFIXES = (
    ".ome.tiff",
    ".ome.tif",
    ".tiff",
    ".tif",
    ".png",
    ".jpeg",
    ".jpg",
    ".bmp",
    ".gif",
    ".webp",
    ".jp2",
    ".svs",
    ".ndpi",
    ".scn",
    ".mrxs",
    ".czi",
    ".vsi",
    ".npy",
    ".zarr",
)
#: Longest readable part of an exported file name (the rest of a longer name is hashed).
MAX_STEM = 100


def _readable_stem(name: str) -> tuple[str, bool]:
    """:func:`safe_stem` and whether it says all the name said (not cut short, not empty)."""
    text = str(name).strip()
    lower = text.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(text) > len(suffix):
            text = re.split(r"[\\/]", text[: -len(suffix)])[-1]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if not stem:
        return "image", False
    if len(stem) > MAX_STEM:
        return stem[:MAX_STEM].rstrip("._") or "image", False
    return stem, True


def safe_stem(name: str) -> str:
    """A file-name-safe, readable stem for a layer or image name (not necessarily unique).

    A known image extension (``.tif``, ``.png`` ...) and any folder are dropped, characters
    other than ASCII letters, digits, ``.``, ``_`` and ``-`` become ``_``; a name with none
    left becomes ``image``. :func:`choose_stem` adds a short hash where this stem alone
    would be ambiguous.
    """
    return _readable_stem(name)[0]


def _identity_hash(name: str, image_sha256: str | None, length: int = 8) -> str:
    text = f"{name}\0{image_sha256 or ''}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _files(stem: str) -> dict[str, str]:
    return {
        "mask": f"{stem}_mask.tif",
        "instances": f"{stem}_instances.tif",
        "geojson": f"{stem}.geojson",
    }


def manifest_entry(
    *,
    name: str,
    image: str | None,
    image_sha256: str | None,
    files: dict[str, str],
    shape: list[int],
    checkpoint: dict[str, Any] | None,
    foreground_pixels: int,
    uncertain_pixels: int,
    objects: int,
    uncertain_policy: str,
    object_type: str,
    pixel_size_um: float | None,
    window: Window | None,
) -> dict[str, Any]:
    """One image's entry of an export folder's manifest (the whole-array and the banded
    export write the same)."""
    return {
        "name": name,
        "image": image,
        "image_sha256": image_sha256,
        **files,
        "shape": shape,
        "checkpoint": checkpoint,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "foreground_pixels": foreground_pixels,
        "uncertain_pixels": uncertain_pixels,
        "objects": objects,
        "uncertain_policy": uncertain_policy,
        "object_type": object_type,
        "pixel_size_um": pixel_size_um,
        "region": None if window is None else window.to_meta(),
        "package_version": __version__,
    }


def manifest_text_with(manifest: dict[str, Any], entry: dict[str, Any]) -> str:
    """``manifest`` with ``entry`` in place of any earlier entry of the same image or mask
    file (``manifest`` is updated), as the text to write."""
    manifest["entries"] = [
        e
        for e in manifest["entries"]
        if not _same_image(e, entry["name"], entry["image_sha256"])
        and e.get("mask") != entry["mask"]
    ] + [entry]
    return json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _same_image(entry: dict[str, Any], name: str, image_sha256: str | None) -> bool:
    """Whether a manifest entry is an earlier export of this image (same name and pixels)."""
    if entry.get("name") != str(name):
        return False
    theirs = entry.get("image_sha256")
    return not image_sha256 or not theirs or theirs == image_sha256


def _stem_of(entry: dict[str, Any]) -> str | None:
    mask = entry.get("mask")
    if not isinstance(mask, str) or not mask.endswith("_mask.tif"):
        return None
    stem = mask[: -len("_mask.tif")]
    return stem if stem and re.fullmatch(r"[A-Za-z0-9._-]+", stem) else None


def choose_stem(
    out: Path, name: str, image_sha256: str | None, entries: list[dict[str, Any]]
) -> str:
    """The stem of an image's export files in ``out``: never one of another image's.

    An image exported before (same name and, where both are known, the same pixels) keeps
    its stem. Otherwise the readable :func:`safe_stem` is used when no other manifest entry
    and no file in ``out`` has it (compared without regard to case); else, and always when
    the name had no readable part or was cut short, the stem gets ``-`` and 8 hex digits of
    a hash of the name and image hash (``img.001`` and ``img_001``, or two names in another
    script, never share files).
    """
    for entry in reversed(entries):
        stem = _stem_of(entry) if _same_image(entry, name, image_sha256) else None
        if stem is not None:
            return stem
    taken = {
        f.lower()
        for e in entries
        if not _same_image(e, name, image_sha256)
        for f in (e.get("mask"), e.get("instances"), e.get("geojson"))
        if isinstance(f, str)
    }
    with contextlib.suppress(OSError):
        taken |= {p.lower() for p in os.listdir(out)}
    readable, whole = _readable_stem(name)
    candidates = [readable] if whole else []
    candidates += [f"{readable}-{_identity_hash(name, image_sha256, n)}" for n in (8, 16, 64)]
    for stem in candidates:
        if not any(f.lower() in taken for f in _files(stem).values()):
            return stem
    raise InputError(
        f"could not find a free file name for {name!r} in {out}: choose another folder"
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which JSON does not allow")


def _read_manifest(path: Path) -> dict[str, Any]:
    """The folder's manifest (a new one if there is none), checked; one-line InputError."""
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "version": 1, "entries": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{path} is not valid JSON ({e}); move it away and export again") from None
    except OSError as e:
        raise InputError(f"could not read {path}: {e.strerror or e}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} is not a napari-selfloop export manifest; choose another folder")
    entries = data.setdefault("entries", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        kind = type(entries).__name__ if not isinstance(entries, list) else "list of non-objects"
        raise InputError(
            f"{path} is damaged: its 'entries' is a {kind}, not a list of entries; "
            "move it away and export again"
        )
    return data


def check_export_folder(out_dir: str | Path) -> None:
    """Refuse, before any work, a folder :func:`export_annotation` would refuse.

    A path that is a file, or a folder whose ``manifest.json`` is foreign or damaged
    (one-line InputError). Nothing is written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder: choose a folder to export into")
    if out.is_dir():
        _read_manifest(out / MANIFEST)


_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the export folder exclusively: one export at a time, across threads and processes.

    A ``flock`` on the folder itself (no lock file is left behind) where the platform and
    file system have it, and a lock per folder within this process in any case.
    """
    key = os.path.realpath(folder)
    with _process_locks_guard:
        lock = _process_locks.setdefault(key, threading.Lock())
    with lock:
        fd = None
        if fcntl is not None:
            try:
                fd = os.open(folder, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a file system without flock: this process's lock only
                if fd is not None:
                    os.close(fd)
                fd = None
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock


def _write_set(writes: list[tuple[Path, Callable[[Path], object]]]) -> None:
    """Write every file to a temporary first; rename them all only once all are written.

    A failure while writing (a full disk ...) removes every temporary and leaves every
    earlier file as it was. The renames come last, in the order given.
    """
    with contextlib.ExitStack() as stack:
        temporaries = [
            (stack.enter_context(atomic_path(path)), write) for path, write in reversed(writes)
        ]
        for tmp, write in reversed(temporaries):
            write(tmp)
    # Leaving the stack renamed the temporaries in the order of ``writes``.


def export_annotation(
    out_dir: str | Path,
    name: str,
    labels: np.ndarray,
    *,
    image_sha256: str | None = None,
    image_path: str | None = None,
    checkpoint: dict[str, Any] | None = None,
    classification: str = "Nucleus",
    uncertain: str = "keep",
    object_type: str = "detection",
    window: Window | None = None,
    pixel_size_um: float | None = None,
    instances: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write the mask, instance labels, GeoJSON and manifest entry for one image, as a set.

    The folder's manifest is checked before anything is written (a foreign or damaged one
    is refused). All four files are written to temporaries first and renamed onto their
    names only when all are written, so a full disk or an error leaves the previous export
    as it was. Exports into one folder from several threads or processes take turns (see
    :func:`folder_lock`), so none loses another's manifest entry.

    Parameters
    ----------
    out_dir
        Folder to write into (created if missing).
    name
        The image's name; the files are called ``STEM_mask.tif`` etc. after it, with STEM
        from :func:`choose_stem` (never the files of another image).
    labels
        ``(H, W)`` correction Labels array (0 background, 255 uncertain, any other value a
        nucleus id; the mask file is their union).
    image_sha256, image_path
        Identify the image in the manifest.
    checkpoint
        ``{"path": ..., "sha256": ...}`` of the model that made the pseudo-label, if any.
    classification
        The QuPath class of the objects.
    uncertain
        What to do with pixels still uncertain (:data:`UNCERTAIN_POLICIES`): ``keep`` them
        as 255 in the mask (not in any instance), make them ``background``, or
        ``foreground``: nuclei, as :func:`..corrections.nuclei.settle` makes them (see
        :func:`nuclei_instances`).
    object_type
        QuPath object type of the GeoJSON features (:data:`OBJECT_TYPES`).
    window
        The region of a slide ``labels`` covers: the GeoJSON is then in slide coordinates
        and the manifest entry records the region.
    pixel_size_um
        Microns per pixel of ``labels`` (for a region: at its resolution), written into
        both TIFFs; None when unknown.
    instances
        Instance ids of the objects (``labels``' shape, 0 background), kept as they are on
        the foreground (:func:`given_instances`); None: the nuclei of ``labels``, their ids
        kept (:func:`nuclei_instances`).

    Returns
    -------
    dict
        The manifest entry (file names relative to ``out_dir``); ``objects`` is the number
        of distinct instance ids (nuclei).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder: choose a folder to export into")
    mask = labels_to_mask(labels, uncertain)
    if window is not None and mask.shape != window.shape:
        raise InputError(f"labels of shape {mask.shape} do not fit region {window.label}")
    if instances is None:
        instances = _nuclei_instances(labels, mask, uncertain)
    else:
        instances = given_instances(instances, mask)
    collection = mask_to_geojson(
        instances, classification=classification, object_type=object_type, window=window
    )
    objects = len(collection["features"])  # one per id present
    geojson = json.dumps(collection, ensure_ascii=False) + "\n"
    del collection
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    with folder_lock(out):
        manifest = _read_manifest(manifest_path)  # refuse a foreign one before writing
        stem = choose_stem(out, str(name), image_sha256, manifest["entries"])
        files = _files(stem)
        entry = manifest_entry(
            name=str(name),
            image=image_path,
            image_sha256=image_sha256,
            files=files,
            shape=[int(s) for s in mask.shape],
            checkpoint=checkpoint,
            foreground_pixels=int((mask == 1).sum()),
            uncertain_pixels=int((mask == UNCERTAIN).sum()),
            objects=objects,
            uncertain_policy=uncertain,
            object_type=object_type,
            pixel_size_um=pixel_size_um,
            window=window,
        )
        manifest_text = manifest_text_with(manifest, entry)

        def tiff(array: np.ndarray, **kwargs: Any) -> Callable[[Path], object]:
            return lambda tmp: write_tiled_tiff(
                tmp, array, pixel_size_um=pixel_size_um, ome=False, **kwargs
            )

        def text(content: str) -> Callable[[Path], object]:
            return lambda tmp: tmp.write_text(content, encoding="utf-8")

        _write_set(
            [
                (out / files["mask"], tiff(mask, metadata={SELFLOOP_MASK_TAG: "0/1/255"})),
                (out / files["instances"], tiff(instances)),
                (out / files["geojson"], text(geojson)),
                (manifest_path, text(manifest_text)),
            ]
        )
    log.info("exported %s: %d objects -> %s", name, entry["objects"], out)
    return entry
