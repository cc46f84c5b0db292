"""Nuclei as objects in a correction mask (core/corrections/nuclei.py): ids, edits, re-run merges."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfloop.core.corrections import nuclei as N
from napari_selfloop.core.engine.pseudolabel import UNCERTAIN
from napari_selfloop.core.errors import InputError


def apply(labels: np.ndarray, edit: N.Edit) -> np.ndarray:
    out = np.array(labels, copy=True)
    out[edit.index] = edit.values
    return out


def two_touching(size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), N.LABEL_DTYPE)
    lab[(yy - 20) ** 2 + (xx - 14) ** 2 <= 36] = 7
    lab[(yy - 20) ** 2 + (xx - 25) ** 2 <= 36] = 7  # one merged blob, id 7
    lab[(yy - 40) ** 2 + (xx - 40) ** 2 <= 9] = 3
    lab[0:3, 0:3] = UNCERTAIN
    return lab


def test_ids_skip_the_uncertain_value():
    assert N.next_id(np.array([[0, 254]])) == 256
    assert N.next_id(np.array([[0, 255, 3]])) == 4  # 255 is not an id
    assert N.next_id(np.zeros((0, 0))) == 1
    assert N.id_sequence(253, 4).tolist() == [253, 254, 256, 257]
    assert not N.has_ids(np.array([[0, 1, 255]], np.uint8))
    assert N.has_ids(np.array([[0, 1, 2]], np.uint8))


def test_proposal_labels_numbers_objects_and_leftover_foreground():
    mask = np.zeros((8, 12), np.uint8)
    mask[1:3, 1:3] = 1
    mask[1:3, 3:5] = 1  # touches the first: kept apart by the instances
    mask[6:8, 9:12] = 1  # no instance covers it: its own id after the others
    mask[5, 0] = UNCERTAIN
    inst = np.zeros((8, 12), np.int32)
    inst[1:3, 1:3] = 40
    inst[1:3, 3:5] = 9
    out = N.proposal_labels(mask, inst)
    assert out.dtype == N.LABEL_DTYPE
    assert out[1, 1] == 2 and out[1, 3] == 1 and out[6, 9] == 3  # ids in order of the objects
    assert out[5, 0] == UNCERTAIN and out[0, 0] == 0
    # without instances the connected pieces are the nuclei
    plain = N.proposal_labels(mask)
    assert sorted(set(np.unique(plain).tolist()) - {0, UNCERTAIN}) == [1, 2]
    with pytest.raises(InputError, match="do not fit"):
        N.proposal_labels(mask, inst[:4])


def test_many_objects_never_get_id_255():
    mask = np.zeros((2, 600), np.uint8)
    mask[0, ::2] = 1
    out = N.proposal_labels(mask)
    ids = set(np.unique(out).tolist()) - {0}
    assert len(ids) == 300 and UNCERTAIN not in ids


def test_labels_instances_keeps_ids_or_numbers_pieces():
    lab = np.zeros((6, 6), np.uint32)
    lab[0:2, 0:2] = 1
    lab[0:2, 2:4] = 2  # touching, its own id
    lab[4:6, 4:6] = 256
    lab[3, 0] = UNCERTAIN
    inst = N.labels_instances(lab)
    assert set(np.unique(inst).tolist()) == {0, 1, 2, 256} and inst[3, 0] == 0
    legacy = np.zeros((6, 6), np.uint8)
    legacy[0:2, 0:2] = 1
    legacy[4:6, 4:6] = 1
    legacy[3, 0] = UNCERTAIN
    assert set(np.unique(N.labels_instances(legacy)).tolist()) == {0, 1, 2}
    with pytest.raises(InputError, match="2D"):
        N.labels_instances(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(InputError, match="integer"):
        N.labels_instances(np.zeros((2, 2), np.float32))


def test_delete_and_mark_uncertain_take_the_piece_under_the_click():
    lab = two_touching()
    out = apply(lab, N.delete(lab, (40, 40)))
    assert 3 not in out and (out == 7).sum() == (lab == 7).sum()
    out = apply(lab, N.mark_uncertain(lab, (20, 14)))
    assert 7 not in out and out[20, 14] == UNCERTAIN
    # A 0/1 mask: only the clicked piece goes, not all of id 1.
    legacy = (lab > 0).astype(np.uint8)
    legacy[lab == UNCERTAIN] = UNCERTAIN
    out = apply(legacy, N.delete(legacy, (40, 40)))
    assert out[40, 40] == 0 and out[20, 14] == 1
    with pytest.raises(InputError, match="no nucleus.*background"):
        N.delete(lab, (10, 40))
    with pytest.raises(InputError, match="uncertain"):
        N.delete(lab, (1, 1))
    with pytest.raises(InputError, match="outside"):
        N.delete(lab, (100, 1))


def test_split_cuts_at_the_neck():
    lab = two_touching()
    edit = N.split(lab, (20, 14), (20, 25))
    out = apply(lab, edit)
    new = edit.ids[0]
    assert new == 8 and set(np.unique(out).tolist()) == {0, 3, 7, 8, UNCERTAIN}
    cut = np.flatnonzero(out[20] == new)[0]
    assert 19 <= cut <= 21  # the discs meet at x 19.5
    assert (out == 7).sum() + (out == 8).sum() == (lab == 7).sum()
    with pytest.raises(InputError, match="not part of it"):
        N.split(lab, (20, 14), (40, 40))
    with pytest.raises(InputError, match="two different points"):
        N.split(lab, (20, 14), (20, 14))


def test_merge_joins_the_second_into_the_first():
    lab = two_touching()
    out = apply(lab, N.merge(lab, (40, 40), (20, 14)))
    assert set(np.unique(out).tolist()) == {0, 3, UNCERTAIN}
    with pytest.raises(InputError, match="both clicks"):
        N.merge(lab, (20, 14), (20, 25))


def test_add_grows_from_probability_off_other_nuclei_else_a_disc():
    lab = two_touching()
    prob = np.zeros(lab.shape, np.float32)
    prob[30:36, 2:8] = 0.8  # the model's missed nucleus, 36 px
    prob[20, 8:14] = 0.8  # joined to nucleus 7 by a thin bridge: stays off it
    edit = N.add(lab, (32, 4), prob)
    out = apply(lab, edit)
    assert (out == edit.ids[0]).sum() == 36 and "probability" in edit.message
    edit = N.add(lab, (10, 40), prob)  # the model sees nothing: a disc of the typical radius
    radius = N.typical_radius(lab)
    assert "disc" in edit.message
    assert abs(edit.size - np.pi * radius**2) < 4 * radius
    with pytest.raises(InputError, match="already nucleus 7"):
        N.add(lab, (20, 14), prob)
    # A blob far larger than a nucleus is kept within twice the typical radius.
    big = np.ones(lab.shape, np.float32)
    edit = N.add(np.zeros_like(lab), (24, 24), big, radius=4)
    assert edit.size <= np.pi * 8.5**2


def test_settle_background_or_nucleus():
    lab = np.zeros((20, 20), N.LABEL_DTYPE)
    lab[5:10, 5:10] = 4
    lab[10:12, 5:10] = UNCERTAIN  # a rim under nucleus 4
    lab[15:18, 15:18] = UNCERTAIN  # a lone uncertain piece
    out = apply(lab, N.settle(lab, (0, 0, 20, 20), nucleus=True))
    assert (out[10:12, 5:10] == 4).all()
    lone = int(out[16, 16])
    assert lone not in (0, 4, UNCERTAIN) and UNCERTAIN not in out
    out = apply(lab, N.settle(lab, (10, 5, 12, 10), nucleus=False))
    assert (out[10:12, 5:10] == 0).all() and (out[15:18, 15:18] == UNCERTAIN).all()


def test_merge_proposal_keeps_touched_nuclei_whole_and_drops_clashing_new_ones():
    proposal = two_touching()
    layer = np.array(proposal, copy=True)
    # The user split the merged pair (the right half gets id 8), deleted nucleus 3.
    layer = apply(layer, N.split(layer, (20, 14), (20, 25)))
    layer = apply(layer, N.delete(layer, (40, 40)))
    painted = layer != proposal
    # A new proposal: the pair merged again (id 1), nucleus 3 back (id 2), one new (id 3).
    new = np.zeros_like(proposal)
    new[proposal == 7] = 1
    new[proposal == 3] = 2
    new[5:9, 40:44] = 3
    merged, kept = N.merge_proposal(layer, proposal, painted, new)
    assert (merged[layer == 7] == 7).all() and (merged[layer == 8] == 8).all()  # both halves
    assert (merged[proposal == 3] == 0).all()  # the deleted nucleus stays deleted
    fresh = int(merged[6, 41])
    assert fresh == 9 and (merged == fresh).sum() == 16  # new nucleus, a fresh id
    assert kept[20, 14] and kept[20, 25] and kept[40, 40]
    # Nothing painted: the new proposal replaces the old one, ids from 1.
    merged, kept = N.merge_proposal(proposal, proposal, np.zeros(proposal.shape, bool), new)
    assert not kept.any() and set(np.unique(merged).tolist()) == {0, 1, 2, 3}


def test_merge_proposal_on_a_plain_mask_keeps_the_touched_piece():
    old = np.zeros((10, 20), np.uint8)
    old[2:6, 2:6] = 1
    old[2:6, 12:16] = 1
    painted = np.zeros(old.shape, bool)
    painted[3, 3] = True
    new = np.zeros(old.shape, N.LABEL_DTYPE)
    new[2:6, 12:16] = 1
    new[2:6, 2:6] = 2
    merged, kept = N.merge_proposal(old, None, painted, new)
    assert merged.dtype == N.LABEL_DTYPE
    assert (merged[2:6, 2:6] == 1).all()  # the user's piece, kept with its value
    assert (merged[2:6, 12:16] == 2).all()  # the untouched piece: the new nucleus, fresh id
