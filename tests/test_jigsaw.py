import numpy as np
import pytest
import torch

from napari_selfloop.core.engine import jigsaw as J


def test_pool_is_reproducible_and_well_spread():
    pool = J.permutation_pool()
    assert pool.shape == (100, 9)
    assert all(sorted(row) == list(range(9)) for row in pool.tolist())
    assert len({tuple(r) for r in pool.tolist()}) == 100
    J._pool.cache_clear()
    again = J.permutation_pool()
    assert np.array_equal(pool, again)
    # Greedy maximal Hamming distance: every pair differs in at least 6 of 9 slots.
    assert J.min_hamming_distance(pool) == 6
    # The fingerprint stored in checkpoints is stable across runs and machines.
    assert J.pool_hash(pool) == "dce3fd70f15ff394"
    assert J.pool_hash(J.permutation_pool(100, seed=1)) != J.pool_hash(pool)


def test_min_hamming_distance_counts_slots():
    pool = np.array([list(range(9)), [1, 0, *range(2, 9)], [8, 7, 6, 5, 4, 3, 2, 1, 0]])
    assert J.min_hamming_distance(pool) == 2


@pytest.mark.parametrize("rotation", [0, 1, 2, 3, "random"])
def test_inverse_undoes_every_permutation(rotation):
    pool = torch.tensor(J.permutation_pool())
    x = torch.rand(len(pool), 2, 12, 12)
    if rotation == "random":
        rots = torch.randint(0, 4, (len(pool), 9))
    else:
        rots = torch.full((len(pool), 9), rotation)
    y = J.jigsaw(x, pool, rots)
    assert y.shape == x.shape
    assert torch.equal(J.unjigsaw(y, pool, rots), x)
    # Every puzzle really moves something.
    assert not any(torch.equal(y[i], x[i]) for i in range(len(pool)))


def test_slot_shows_the_named_tile_rotated():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    perm = torch.tensor([[8, 7, 6, 5, 4, 3, 2, 1, 0]])
    rots = torch.zeros(1, 9, dtype=torch.long)
    rots[0, 0] = 1
    y = J.jigsaw(x, perm, rots)
    tile8 = x[0, 0, 4:6, 4:6]
    assert torch.equal(y[0, 0, 0:2, 0:2], torch.rot90(tile8, 1))
    assert torch.equal(y[0, 0, 4:6, 4:6], x[0, 0, 0:2, 0:2])


def test_identity_with_no_rotation_is_identity():
    x = torch.rand(1, 3, 9, 9)
    perm = torch.arange(9)[None]
    assert torch.equal(J.jigsaw(x, perm, torch.zeros(1, 9)), x)


def test_refuses_non_square_or_indivisible():
    with pytest.raises(ValueError, match="square"):
        J.jigsaw(torch.rand(1, 3, 9, 12), torch.arange(9)[None], torch.zeros(1, 9))
    with pytest.raises(ValueError, match="divisible"):
        J.unjigsaw(torch.rand(1, 3, 10, 10), torch.arange(9)[None], torch.zeros(1, 9))


def test_sample_puzzles_draws_distinct_classes():
    pool = J.permutation_pool()
    pz = J.sample_puzzles(np.random.default_rng(0), 3, 10, pool, "random")
    assert pz.classes.shape == (3, 10) and pz.perms.shape == pz.rots.shape == (3, 10, 9)
    assert all(len(set(row)) == 10 for row in pz.classes.tolist())
    assert np.array_equal(pz.perms.numpy(), pool[pz.classes.numpy()])
    assert pz.rots.any()
    assert not J.sample_puzzles(np.random.default_rng(0), 1, 2, pool).rots.any()  # default: none
    assert not pz.shifts.any()  # no patch given: no grid phase
    with pytest.raises(ValueError, match="Q must be"):
        J.sample_puzzles(np.random.default_rng(0), 1, 101, pool)
    with pytest.raises(ValueError, match="rotation mode"):
        J.sample_puzzles(np.random.default_rng(0), 1, 2, pool, "sideways")


def test_per_class_rotations_are_a_fixed_pattern_of_the_class():
    pool = J.permutation_pool()
    a = J.sample_puzzles(np.random.default_rng(0), 4, 20, pool, "per-class")
    b = J.sample_puzzles(np.random.default_rng(5), 4, 20, pool, "per-class")
    patterns = J.rotation_patterns(len(pool))
    for pz in (a, b):
        assert np.array_equal(pz.rots.numpy(), patterns[pz.classes.numpy()])
    assert patterns.shape == (100, 9) and len(np.unique(patterns)) == 4


@pytest.mark.parametrize("rotation", J.ROTATIONS)
def test_grid_phase_round_trip_and_moves_the_seams(rotation):
    pool = J.permutation_pool()
    pz = J.sample_puzzles(np.random.default_rng(3), 2, 5, pool, rotation, patch=12)
    assert pz.shifts.shape == (2, 5, 2) and int(pz.shifts.min()) >= 0 and int(pz.shifts.max()) < 4
    assert len({tuple(s) for s in pz.shifts.reshape(-1, 2).tolist()}) > 1
    x = torch.rand(2, 1, 12, 12)
    for i in range(pz.q):
        y = pz.apply(x, i)
        assert torch.equal(pz.undo(y, i), x)
    # Rolling by (dy, dx) before cutting moves the tile boundaries by the same amount.
    shifted = J.roll(x, torch.tensor([[1, 2], [0, 0]]))
    assert torch.equal(shifted[0], torch.roll(x[0], (1, 2), dims=(-2, -1)))
    assert torch.equal(shifted[1], x[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_round_trip_on_cuda():
    pool = torch.tensor(J.permutation_pool()).cuda()
    x = torch.rand(len(pool), 3, 96, 96, device="cuda")
    rots = torch.randint(0, 4, (len(pool), 9), device="cuda")
    assert torch.equal(J.unjigsaw(J.jigsaw(x, pool, rots), pool, rots), x)
