"""Nuclei as objects in a correction mask: ids, and the edits a person makes to them.

A correction layer holds one value per pixel:

- ``0``: background;
- ``255`` (:data:`UNCERTAIN`): still uncertain, ignored by training; never a nucleus id;
- any other value: the id of the nucleus the pixel belongs to (``1, 2, ... 254, 256, ...``).

Training sees the union of the nuclei as foreground (:func:`..store.export.labels_to_mask`), so
a plain 0/1/255 mask is still a valid correction layer: it is one where every nucleus has
id 1. :func:`labels_instances` tells the two apart: a layer with any id other than 1
keeps its ids; a layer with only 0, 1 and 255 has its nuclei as connected pieces.

The edits (:func:`delete`, :func:`mark_uncertain`, :func:`split`, :func:`merge`,
:func:`add`, :func:`settle`) take the whole array and a pixel or two and return an
:class:`Edit`: the pixels to change and their new values, which the caller applies in one
step (napari's ``Labels.data_setitem``, so that one undo takes the edit back). They work
on a crop around the nucleus, so their cost does not grow with the image beyond a few
whole-array comparisons. "The nucleus under a pixel" is the 4-connected piece of that
pixel's id that holds it (so a 0/1 mask's nuclei are edited one by one too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..engine.pseudolabel import UNCERTAIN
from ..errors import InputError

#: The dtype of a nucleus correction layer (room for any number of nuclei).
LABEL_DTYPE = np.uint32
#: Fallback radius (pixels) of a nucleus added by a click where the model sees nothing and
#: the layer has no nuclei to measure.
DEFAULT_RADIUS = 6
#: Bounds of the radius of a nucleus added by a click, in pixels.
RADIUS_RANGE = (3, 40)
#: Probability above which a pixel counts as the model's nucleus (for :func:`add`).
PROBABILITY_CUT = 0.5
#: Compactness of the watershed that splits a nucleus (see :func:`split`).
SPLIT_COMPACTNESS = 1.0
#: 4-connectivity, the pieces GeoJSON polygons are made of (``export._polygons``).
FOUR = ndi.generate_binary_structure(2, 1)

Point = tuple[int, int]


@dataclass
class Edit:
    """Pixels to change and their new values; ``message`` says what the edit did in
    words; ``ids``: the nucleus ids it created or kept (the first is the one to select)."""

    index: tuple[np.ndarray, np.ndarray]
    values: np.ndarray
    message: str
    ids: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.index[0].size)


def is_nucleus_id(value: int) -> bool:
    return int(value) != 0 and int(value) != UNCERTAIN


def skip_reserved(value: int) -> int:
    """``value``, or the next id when ``value`` is the reserved uncertain value."""
    return value + 1 if value == UNCERTAIN else value


def next_id(labels: np.ndarray) -> int:
    """The smallest id above every id in ``labels`` (never 255)."""
    data = np.asarray(labels)
    if not data.size:
        return 1
    top = int(data.max())
    if top == UNCERTAIN:  # 255 may be the largest value without being an id
        below = data[data != UNCERTAIN]
        top = int(below.max()) if below.size else 0
    return skip_reserved(top + 1)


def id_sequence(start: int, count: int) -> np.ndarray:
    """``count`` consecutive ids from ``start`` on, skipping 255."""
    ids = np.arange(start, start + count + 1, dtype=np.int64)
    ids = ids[ids != UNCERTAIN][:count]
    return ids


def has_ids(labels: np.ndarray) -> bool:
    """Whether ``labels`` holds nucleus ids (any value other than 0, 1 and 255)."""
    data = np.asarray(labels)
    return bool(((data > 1) & (data != UNCERTAIN)).any())


def labels_instances(labels: np.ndarray) -> np.ndarray:
    """The nuclei of a correction mask as instance labels (0 elsewhere), the user's ids.

    A mask with nucleus ids keeps them (255 becomes 0); a plain 0/1/255 mask has its
    4-connected foreground pieces numbered 1, 2, ... (uint16 when the ids fit, else uint32).
    """
    data = np.asarray(labels)
    if data.ndim != 2:
        raise InputError(f"expected a 2D mask, got shape {data.shape}: pick one plane")
    if data.dtype.kind not in "biu":
        raise InputError(f"a mask must hold integer labels, got {data.dtype}")
    if data.dtype.kind == "i" and data.size and int(data.min()) < 0:
        raise InputError("a correction mask must not hold negative values")
    if has_ids(data):
        inst = np.where(data == UNCERTAIN, 0, data)
    else:
        inst, _ = ndi.label(data == 1, structure=FOUR)
    top = int(inst.max()) if inst.size else 0
    return inst.astype(np.uint16 if top < 65536 else np.uint32)


def proposal_labels(mask: np.ndarray, instances: np.ndarray | None = None) -> np.ndarray:
    """A pseudo-label as a nucleus correction layer (:data:`LABEL_DTYPE`).

    ``mask`` is the 0/1/255 proposal; ``instances`` its objects (0 background), e.g.
    :attr:`..engine.pseudolabel.PseudoLabelResult.instances`. Each object's foreground gets its
    own id (1, 2, ... in the order of the objects' ids, skipping 255); foreground no
    object covers is numbered by 4-connected piece after them; 255 stays uncertain.
    Without ``instances`` the foreground's connected pieces are the nuclei.
    """
    mask = np.asarray(mask)
    out = np.zeros(mask.shape, LABEL_DTYPE)
    out[mask == UNCERTAIN] = UNCERTAIN
    fg = mask == 1
    next_free = 1
    if instances is not None:
        inst = np.asarray(instances)
        if inst.shape != mask.shape:
            raise InputError(f"instances of shape {inst.shape} do not fit the mask {mask.shape}")
        inst = np.where(fg, inst, 0)
        present = np.unique(inst)
        present = present[present != 0]
        if present.size:
            lut = np.zeros(int(present.max()) + 1, np.int64)
            lut[present] = id_sequence(1, present.size)
            out[fg] = lut[inst[fg]]
            next_free = skip_reserved(int(lut.max()) + 1)
        fg = fg & (inst == 0)
    pieces, n = ndi.label(fg, structure=FOUR)
    if n:
        lut = np.concatenate([[0], id_sequence(next_free, n)])
        out[fg] = lut[pieces[fg]]
    return out


# -- finding the nucleus under a pixel ----------------------------------------------------


def _check_point(labels: np.ndarray, point: Point) -> tuple[int, int]:
    y, x = (int(round(float(v))) for v in point)
    h, w = labels.shape[:2]
    if not (0 <= y < h and 0 <= x < w):
        raise InputError(f"pixel ({y}, {x}) is outside the {h}x{w} image")
    return y, x


def _bbox(where: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(where.any(axis=1))
    cols = np.flatnonzero(where.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def nucleus_at(labels: np.ndarray, point: Point) -> tuple[int, tuple[slice, slice], np.ndarray]:
    """The nucleus under ``point``: its id, the crop ``(rows, cols)`` that holds it and its
    pixels in that crop (bool). One-line InputError where there is no nucleus."""
    data = np.asarray(labels)
    y, x = _check_point(data, point)
    value = int(data[y, x])
    if not is_nucleus_id(value):
        what = "uncertain (yellow)" if value == UNCERTAIN else "background"
        raise InputError(f"no nucleus at pixel ({y}, {x}): it is {what}")
    same = data == value
    rows, cols = _bbox(same)
    crop = same[rows, cols]
    pieces, n = ndi.label(crop, structure=FOUR)
    if n > 1:
        piece = pieces == pieces[y - rows.start, x - cols.start]
        sub = _bbox(piece)
        rows = slice(rows.start + sub[0].start, rows.start + sub[0].stop)
        cols = slice(cols.start + sub[1].start, cols.start + sub[1].stop)
        crop = piece[sub]
    return value, (rows, cols), crop


def _global(crop: tuple[slice, slice], where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(where)
    return ys + crop[0].start, xs + crop[1].start


# -- the edits ----------------------------------------------------------------------------


def delete(labels: np.ndarray, point: Point) -> Edit:
    """Make the nucleus under ``point`` background."""
    value, crop, pixels = nucleus_at(labels, point)
    index = _global(crop, pixels)
    return Edit(index, np.zeros(index[0].size, LABEL_DTYPE), f"deleted nucleus {value}")


def mark_uncertain(labels: np.ndarray, point: Point) -> Edit:
    """Make the nucleus under ``point`` uncertain (ignored by training, yellow)."""
    value, crop, pixels = nucleus_at(labels, point)
    index = _global(crop, pixels)
    return Edit(
        index,
        np.full(index[0].size, UNCERTAIN, LABEL_DTYPE),
        f"nucleus {value} marked uncertain",
    )


def split(labels: np.ndarray, first: Point, second: Point) -> Edit:
    """Cut the nucleus under both points in two, between them.

    The nucleus' pixels go to one point or the other by a compact watershed of the
    nucleus' distance transform from the two points, so the cut follows the neck between
    two touching nuclei. The part of ``second`` gets a new id.
    """
    data = np.asarray(labels)
    value, crop, pixels = nucleus_at(data, first)
    y1, x1 = _check_point(data, first)
    y2, x2 = _check_point(data, second)
    ly, lx = y2 - crop[0].start, x2 - crop[1].start
    inside = 0 <= ly < pixels.shape[0] and 0 <= lx < pixels.shape[1] and pixels[ly, lx]
    if not inside:
        raise InputError(
            f"to split nucleus {value}, click twice inside it: pixel ({y2}, {x2}) is not part of it"
        )
    if (y1, x1) == (y2, x2):
        raise InputError("to split a nucleus, click two different points inside it")
    from skimage.segmentation import watershed

    markers = np.zeros(pixels.shape, np.int32)
    markers[y1 - crop[0].start, x1 - crop[1].start] = 1
    markers[ly, lx] = 2
    distance = ndi.distance_transform_edt(np.pad(pixels, 1))[1:-1, 1:-1]
    # Compactness breaks the ties of flat ridges (an oval of two merged nuclei) by the
    # distance to each click, keeping the cut at the neck within a pixel or two.
    parts = watershed(
        -distance, markers, mask=pixels, connectivity=1, compactness=SPLIT_COMPACTNESS
    )
    new = next_id(data)
    index = _global(crop, parts == 2)
    return Edit(
        index,
        np.full(index[0].size, new, LABEL_DTYPE),
        f"split nucleus {value} into {value} and {new}",
        ids=[new, value],
    )


def merge(labels: np.ndarray, first: Point, second: Point) -> Edit:
    """Make the nucleus under ``second`` part of the nucleus under ``first`` (its id)."""
    data = np.asarray(labels)
    keep, keep_crop, keep_pixels = nucleus_at(data, first)
    other, crop, pixels = nucleus_at(data, second)
    if other == keep and keep_crop == crop and np.array_equal(keep_pixels, pixels):
        raise InputError(f"both clicks are on nucleus {keep}: click two different nuclei")
    index = _global(crop, pixels)
    return Edit(
        index,
        np.full(index[0].size, keep, LABEL_DTYPE),
        f"merged nucleus {other} into {keep}",
        ids=[keep],
    )


def typical_radius(labels: np.ndarray) -> float:
    """The radius of a disc of the median nucleus' area (ids other than 1 only, since a
    0/1 mask's id 1 is all of its nuclei), clamped to :data:`RADIUS_RANGE`."""
    data = np.asarray(labels)
    values = data[(data > 1) & (data != UNCERTAIN)]
    if values.size == 0:
        return float(DEFAULT_RADIUS)
    counts = np.bincount(values.astype(np.int64))
    areas = counts[counts > 0]
    radius = float(np.sqrt(np.median(areas) / np.pi))
    return float(np.clip(radius, *RADIUS_RANGE))


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius * radius


def add(
    labels: np.ndarray,
    point: Point,
    probability: np.ndarray | None = None,
    *,
    radius: float | None = None,
) -> Edit:
    """A new nucleus at ``point``, grown from the model's probability around it.

    Like NuClick's click-to-segment, the nucleus is the connected piece of pixels the model
    calls nucleus (probability >= 0.5) that holds the click, kept within twice the typical
    nucleus radius of the layer (:func:`typical_radius`) and off other nuclei, holes
    filled. Where the model sees no nucleus at the click (or there is no probability map)
    it is a disc of the typical radius. It only takes background or uncertain pixels.
    """
    data = np.asarray(labels)
    y, x = _check_point(data, point)
    value = int(data[y, x])
    if is_nucleus_id(value):
        raise InputError(
            f"pixel ({y}, {x}) is already nucleus {value}: click where a nucleus is missing"
        )
    r = float(radius) if radius is not None else typical_radius(data)
    reach = int(np.ceil(2 * r)) + 1
    rows = slice(max(0, y - reach), min(data.shape[0], y + reach + 1))
    cols = slice(max(0, x - reach), min(data.shape[1], x + reach + 1))
    local = data[rows, cols]
    free = (local == 0) | (local == UNCERTAIN)
    centre = (y - rows.start, x - cols.start)
    grown = None
    if probability is not None:
        prob = np.asarray(probability)
        if prob.shape != data.shape:
            raise InputError(
                f"probability map of shape {prob.shape} does not fit the labels {data.shape}"
            )
        near = (prob[rows, cols] >= PROBABILITY_CUT) & free & _disc(local.shape, centre, 2 * r)
        if near[centre]:
            pieces, _ = ndi.label(near, structure=FOUR)
            grown = ndi.binary_fill_holes(pieces == pieces[centre]) & free
    how = "from the model's probability"
    if grown is None:
        grown = _disc(local.shape, centre, r) & free
        how = (
            f"as a disc of radius {r:.0f} px (the model sees no nucleus there)"
            if probability is not None
            else f"as a disc of radius {r:.0f} px"
        )
    new = next_id(data)
    index = _global((rows, cols), grown)
    return Edit(
        index,
        np.full(index[0].size, new, LABEL_DTYPE),
        f"added nucleus {new} ({index[0].size} px, {how})",
        ids=[new],
    )


def settle(labels: np.ndarray, box: tuple[int, int, int, int], nucleus: bool) -> Edit:
    """Settle the uncertain pixels in ``box = (y0, x0, y1, x1)``.

    ``nucleus=False``: they become background. ``nucleus=True``: each connected piece of
    them that touches nuclei joins them (every pixel the nearest nucleus), and a piece
    that touches none becomes a new nucleus.
    """
    data = np.asarray(labels)
    y0, x0, y1, x1 = (int(v) for v in box)
    ry = slice(max(0, y0 - 1), min(data.shape[0], y1 + 1))
    rx = slice(max(0, x0 - 1), min(data.shape[1], x1 + 1))
    local = data[ry, rx]
    unc = np.zeros(local.shape, bool)
    inner = (slice(y0 - ry.start, y1 - ry.start), slice(x0 - rx.start, x1 - rx.start))
    unc[inner] = local[inner] == UNCERTAIN
    if not nucleus:
        index = _global((ry, rx), unc)
        return Edit(index, np.zeros(index[0].size, LABEL_DTYPE), "region set to background")
    ids = np.where((local != 0) & (local != UNCERTAIN), local, 0)
    values = np.zeros(local.shape, np.int64)
    pieces, n = ndi.label(unc, structure=FOUR)
    if ids.any():
        _, (iy, ix) = ndi.distance_transform_edt(ids == 0, return_indices=True)
        nearest = ids[iy, ix]
    else:
        nearest = np.zeros(local.shape, local.dtype)
    touching = ndi.binary_dilation(ids > 0, structure=FOUR)
    # Which pieces touch a nucleus, all at once (one pass, however many pieces there are).
    touches = np.zeros(n + 1, bool)
    touches[np.unique(pieces[touching & unc])] = True
    touches[0] = False
    joins = touches[pieces] & unc
    values[joins] = nearest[joins]
    lone = np.flatnonzero(~touches[1:]) + 1  # the other pieces, in order: new nuclei
    new_ids = [int(v) for v in id_sequence(next_id(data), lone.size)]
    if lone.size:
        lut = np.zeros(n + 1, np.int64)
        lut[lone] = new_ids
        alone = unc & ~joins
        values[alone] = lut[pieces[alone]]
    index = _global((ry, rx), unc)
    joined = n - len(new_ids)
    return Edit(
        index,
        values[unc].astype(LABEL_DTYPE),
        f"region settled as nucleus ({joined} piece(s) joined their nucleus, "
        f"{len(new_ids)} new nucleus/nuclei)",
        ids=new_ids,
    )


def merge_proposal(
    old: np.ndarray,
    old_proposal: np.ndarray | None,
    painted: np.ndarray,
    new: np.ndarray,
    start: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A new proposal written over a correction layer without losing the user's nuclei.

    ``old`` is the layer (or a crop of it), ``old_proposal`` the proposal last written into
    it (None when unknown), ``painted`` the pixels known to be the user's and ``new`` the
    new proposal as nucleus labels (:func:`proposal_labels`). A nucleus the user touched
    (one that holds a painted pixel, or that the last proposal had where the user painted)
    is kept whole, with its id, and so is every painted pixel; a new nucleus that overlaps
    what is kept is left out (its other pixels become background), and the other new
    nuclei get fresh ids from ``start`` (default: above the kept ones; a caller merging
    into a crop passes an id above every id outside it). Returns the merged array (the layer's dtype
    widened to :data:`LABEL_DTYPE`) and the mask of the pixels kept.
    """
    old = np.asarray(old)
    painted = np.asarray(painted, bool)
    if has_ids(old):
        touched = set(np.unique(old[painted]).tolist())
        if old_proposal is not None:
            touched |= set(np.unique(np.asarray(old_proposal)[painted]).tolist())
        touched -= {0, UNCERTAIN}
        kept = painted | np.isin(old, np.fromiter(touched, np.int64, len(touched)))
    else:  # a 0/1 mask: its nuclei are the connected pieces of 1
        pieces, _ = ndi.label(old == 1, structure=FOUR)
        hit = np.unique(pieces[painted])
        kept = painted | np.isin(pieces, hit[hit != 0])
    out = np.array(old, dtype=np.promote_types(old.dtype, LABEL_DTYPE), copy=True)
    new = np.asarray(new)
    blocked = np.unique(new[kept])
    blocked = blocked[(blocked != 0) & (blocked != UNCERTAIN)]
    fresh_region = ~kept
    new_here = new[fresh_region]
    is_id = (new_here != 0) & (new_here != UNCERTAIN)
    if blocked.size:
        is_id &= ~np.isin(new_here, blocked)
    values = np.where(new_here == UNCERTAIN, UNCERTAIN, 0).astype(out.dtype)
    if is_id.any():
        present = np.unique(new_here[is_id])
        # Never an id of a kept nucleus (a caller's start may know only the ids outside).
        kept_next = next_id(np.where(kept, old, 0))
        start = kept_next if start is None else max(int(start), kept_next)
        lut = np.zeros(int(present.max()) + 1, np.int64)
        lut[present] = id_sequence(start, present.size)
        values[is_id] = lut[new_here[is_id]]
    out[fresh_region] = values
    return out, kept
