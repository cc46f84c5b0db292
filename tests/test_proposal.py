"""The proposal merge on plain arrays (core/corrections/proposal.py): no Qt, no napari."""

import numpy as np

from napari_selfloop.core.corrections.nuclei import LABEL_DTYPE, proposal_labels
from napari_selfloop.core.corrections.proposal import (
    PAINTED_CODE,
    apply_proposal,
    pack_record,
    painted_code,
    unpack_record,
    user_painted,
)
from napari_selfloop.core.engine.pseudolabel import UNCERTAIN


def _first_mask() -> np.ndarray:
    """Two nuclei on confident background, an uncertain bottom row."""
    mask = np.zeros((12, 12), np.uint8)
    mask[2:5, 2:5] = 1  # nucleus 1
    mask[7:10, 7:10] = 1  # nucleus 2
    mask[11] = UNCERTAIN
    return mask


def _first() -> tuple[np.ndarray, np.ndarray]:
    """The layer and its record after a first proposal into a fresh (all-255) layer."""
    labels = proposal_labels(_first_mask())
    fresh = np.full(labels.shape, UNCERTAIN, LABEL_DTYPE)
    update = apply_proposal(fresh, labels)
    return update.labels, update.proposal


def test_a_first_proposal_goes_in_whole():
    labels = proposal_labels(_first_mask())
    assert set(np.unique(labels).tolist()) == {0, 1, 2, UNCERTAIN}
    fresh = np.full(labels.shape, UNCERTAIN, LABEL_DTYPE)
    update = apply_proposal(fresh, labels)
    # No record: only labelled (not 255) pixels would count as the user's, and there are none.
    assert not update.recorded and update.kept == 0 and update.painted is None
    np.testing.assert_array_equal(update.labels, labels)
    np.testing.assert_array_equal(update.proposal, labels)  # the record: what was written
    assert update.changed == int((labels != UNCERTAIN).sum())
    assert not update.done  # was not done: stays not done


def test_a_user_edit_is_what_differs_from_the_record():
    layer, record = _first()
    mine, known = user_painted(layer, record, None)
    assert known and not mine.any()
    layer[5, 2:5] = 1  # the user grows nucleus 1 by a row
    mine, known = user_painted(layer, record, None)
    assert known and mine.sum() == 3 and mine[5, 2:5].all()
    before = np.zeros(layer.shape, bool)
    before[0, 0] = True  # painted earlier, same value as the proposal now
    mine, _ = user_painted(layer, record, before)
    assert mine.sum() == 4 and mine[0, 0]
    # No record (or one of another shape): every labelled pixel counts as the user's.
    for missing in (None, record[:5], [[0]]):
        mine, known = user_painted(layer, missing, None)
        assert not known
        np.testing.assert_array_equal(mine, layer != UNCERTAIN)


def _second_labels() -> np.ndarray:
    """A re-run: nucleus 1 smaller, nucleus 2 the same, a new one at the top right."""
    mask = np.zeros((12, 12), np.uint8)
    mask[2:4, 2:5] = 1
    mask[7:10, 7:10] = 1
    mask[1:3, 9:11] = 1
    mask[11] = UNCERTAIN
    return proposal_labels(mask)


def test_a_rerun_keeps_the_users_nucleus_whole():
    layer, record = _first()
    layer[5, 2:5] = 1  # the user's edit of nucleus 1
    update = apply_proposal(layer, _second_labels(), proposal=record, was_done=True)
    assert update.recorded and update.kept == 3
    np.testing.assert_array_equal(update.labels[2:6, 2:5], 1)  # whole, with its id
    assert (update.labels[7:10, 7:10] != 0).all()  # the untouched nucleus: the new proposal's
    assert (update.labels[1:3, 9:11] != 0).all()  # the new nucleus is in
    assert (update.labels[11] == UNCERTAIN).all()
    assert update.labels.dtype == LABEL_DTYPE
    assert update.changed == int((update.labels != layer).sum()) > 0
    assert not update.done  # pixels changed: no longer done
    # The record: the user's pixels stay out of it (as before), the rest is this run's.
    np.testing.assert_array_equal(update.proposal[5, 2:5], 0)
    np.testing.assert_array_equal(update.proposal[1:3, 9:11], update.labels[1:3, 9:11])
    assert update.painted is not None and update.painted.sum() == 3


def test_the_same_proposal_again_changes_nothing_and_keeps_done():
    layer, record = _first()
    again = apply_proposal(layer, proposal_labels(_first_mask()), proposal=record, was_done=True)
    assert again.changed == 0 and again.done and again.kept == 0 and again.recorded
    np.testing.assert_array_equal(again.labels, layer)
    np.testing.assert_array_equal(again.proposal, record)


def test_a_rerun_never_gives_a_new_nucleus_a_kept_nucleus_id():
    layer, record = _first()
    layer[5, 2:5] = 1
    update = apply_proposal(layer, _second_labels(), proposal=record)
    assert int(update.labels[1, 9]) != 1  # 1 is the id of the user's nucleus
    # ... so a second identical run counts the new nucleus as the user's and renumbers
    # the other one (9 pixels change) instead of changing nothing.
    again = apply_proposal(
        update.labels, _second_labels(), proposal=update.proposal, painted=update.painted
    )
    assert again.changed == 0


def test_a_rerun_in_a_box_gives_ids_above_those_outside_it():
    layer, record = _first()
    labels = np.zeros((4, 4), LABEL_DTYPE)
    labels[1:3, 1:3] = 1
    update = apply_proposal(layer, labels, box=(6, 0, 10, 4), proposal=record)
    assert set(np.unique(update.labels[7:9, 1:3]).tolist()) == {3}  # above 1 and 2
    np.testing.assert_array_equal(update.labels[:6], layer[:6])  # outside the box: as it was
    assert update.kept == 0 and update.changed == 4


def test_the_record_round_trips():
    rng = np.random.default_rng(0)
    # A legacy 0/1/255 layer (uint8): painted pixels are coded 2.
    legacy = rng.choice(np.array([0, 1, UNCERTAIN], np.uint8), size=(6, 7))
    painted = rng.random((6, 7)) < 0.3
    assert painted_code(np.uint8) == PAINTED_CODE == 2
    record = pack_record(legacy, painted)
    assert record.dtype == np.uint8 and (record[painted] == 2).all()
    np.testing.assert_array_equal(record[~painted], legacy[~painted])
    proposal, back = unpack_record(record, np.uint8)
    np.testing.assert_array_equal(back, painted)
    np.testing.assert_array_equal(proposal, np.where(painted, UNCERTAIN, legacy))
    # A nucleus layer (uint32): the largest uint32 marks them, never an id.
    ids = rng.integers(0, 300, size=(6, 7)).astype(LABEL_DTYPE)
    code = painted_code(LABEL_DTYPE)
    assert code == 2**32 - 1
    record = pack_record(ids, painted)
    assert (record[painted] == code).all() and (record[~painted] == ids[~painted]).all()
    proposal, back = unpack_record(record, LABEL_DTYPE)
    assert proposal.dtype == LABEL_DTYPE
    np.testing.assert_array_equal(back, painted)
    np.testing.assert_array_equal(proposal, np.where(painted, UNCERTAIN, ids))
    # Nothing painted: None back; no proposal: no record; a misfit painted mask is left out.
    assert unpack_record(pack_record(ids, None), LABEL_DTYPE)[1] is None
    assert pack_record(None, painted) is None
    np.testing.assert_array_equal(pack_record(ids, painted[:3]), ids)
