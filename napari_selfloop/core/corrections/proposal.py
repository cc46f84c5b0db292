"""A new proposal written into a correction layer without losing what the user painted.

A correction layer remembers the last proposal written into it (an array of the layer's
shape) and the pixels known to be the user's (a boolean array, or None). The pixels that
differ from the last proposal are the user's (:func:`user_painted`); a layer with no record
(restored from an old autosave, made by hand) counts every labelled pixel (not 255) as
theirs, so nothing of the user's is ever overwritten.

:func:`apply_proposal` writes a new proposal over such a layer: a nucleus the user touched
is kept whole, with its id, and the new proposal's nuclei go only where they do not overlap
what is kept (:func:`.nuclei.merge_proposal`); it returns the layer's new data and its new
record. :func:`pack_record` and :func:`unpack_record` turn the record into one array to
autosave and back.

Plain numpy: the napari side (the record in a layer's metadata) is
:mod:`napari_selfloop.widgets._layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.pseudolabel import UNCERTAIN
from .nuclei import LABEL_DTYPE, merge_proposal, next_id

#: Value marking the pixels recorded as the user's in a packed record (:func:`pack_record`)
#: of a 0/1/255 layer (uint8); a nucleus layer's record uses the largest value of its
#: dtype (:func:`painted_code`), which no id reaches.
PAINTED_CODE = 2

Box = tuple[int, int, int, int]


def painted_code(dtype: Any) -> int:
    """The value that marks painted pixels in a packed record of ``dtype``."""
    dtype = np.dtype(dtype)
    return PAINTED_CODE if dtype.itemsize == 1 else int(np.iinfo(dtype).max)


def pack_record(proposal: object, painted: object) -> np.ndarray | None:
    """The last ``proposal``, with the ``painted`` pixels set to :func:`painted_code`, as
    one array to autosave (None when there is no proposal; ``painted`` of another shape, or
    not an array, is left out)."""
    if not isinstance(proposal, np.ndarray):
        return None
    record = np.array(proposal, copy=True)
    if isinstance(painted, np.ndarray) and painted.shape == record.shape:
        record[painted] = painted_code(record.dtype)
    return record


def unpack_record(record: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The proposal (as ``dtype``, 255 where painted) and the painted pixels (None when
    there are none) of a record :func:`pack_record` made."""
    painted = record == painted_code(record.dtype)
    proposal = np.where(painted, UNCERTAIN, record).astype(dtype)
    return proposal, (painted if painted.any() else None)


def user_painted(data: np.ndarray, proposal: object, painted: object) -> tuple[np.ndarray, bool]:
    """The pixels of correction layer ``data`` that the user painted, and whether that is known.

    With a last ``proposal`` of ``data``'s shape they are the pixels whose value differs
    from it (plus those recorded as ``painted`` before); without one (``False``), every
    pixel that is not 255 (uncertain) counts as the user's.
    """
    data = np.asarray(data)
    if isinstance(proposal, np.ndarray) and proposal.shape == data.shape:
        mask = data != proposal
        if isinstance(painted, np.ndarray) and painted.shape == data.shape:
            mask |= painted
        return mask, True
    return data != UNCERTAIN, False


@dataclass
class ProposalUpdate:
    """What :func:`apply_proposal` made of a correction layer.

    ``labels``: the layer's new data; ``proposal`` and ``painted``: its new record (what
    this run wrote where the user had not painted, and the user's pixels, None if none);
    ``kept``: painted pixels inside the box, which kept their value; ``recorded``: whether
    the earlier proposal was known (otherwise every labelled pixel counted as painted);
    ``changed``: pixels whose value changed; ``done``: the layer's "done" flag after (it
    stays only when nothing changed).
    """

    labels: np.ndarray
    proposal: np.ndarray
    painted: np.ndarray | None
    kept: int
    recorded: bool
    changed: int
    done: bool


def apply_proposal(
    old: np.ndarray,
    labels: np.ndarray,
    *,
    box: Box | None = None,
    proposal: object = None,
    painted: object = None,
    was_done: bool = False,
) -> ProposalUpdate:
    """Write the new proposal ``labels`` (nucleus labels, :func:`.nuclei.proposal_labels`)
    into the ``box`` (y0, x0, y1, x1; default: ``labels``' size at the origin) of the 2D
    correction layer ``old``, whose record is ``proposal`` and ``painted``.

    Every pixel the user painted (:func:`user_painted`) and every nucleus they touched
    keeps its value; the new nuclei go only where they do not overlap those, with ids above
    every id outside the box (:func:`.nuclei.merge_proposal`).
    """
    old = np.asarray(old)
    full = tuple(old.shape)
    if box is None:
        box = (0, 0, *labels.shape[:2])
    mask, recorded = user_painted(old, proposal, painted)
    last = np.asarray(proposal) if recorded else None
    y0, x0, y1, x1 = box
    inside = (slice(y0, y1), slice(x0, x1))
    outside = np.array(old, copy=True)
    outside[inside] = 0
    merged, _ = merge_proposal(
        old[inside],
        None if last is None else last[inside],
        mask[inside],
        labels,
        start=next_id(outside),
    )
    dtype = np.promote_types(old.dtype, LABEL_DTYPE)
    new = old.astype(dtype, copy=True)
    new[inside] = merged
    record = last.astype(dtype, copy=True) if last is not None else np.full(full, UNCERTAIN, dtype)
    # The record holds what this run wrote where the user had not painted: the pixels
    # of a kept nucleus that the user did not paint count as the proposal's, as before.
    record[inside] = np.where(mask[inside], record[inside], merged)
    changed = int(np.count_nonzero(new != old))
    return ProposalUpdate(
        labels=new,
        proposal=record,
        painted=mask if mask.any() else None,
        kept=int(np.count_nonzero(mask[inside])),
        recorded=recorded,
        changed=changed,
        done=was_done and changed == 0,
    )
