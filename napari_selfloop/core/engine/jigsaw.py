"""Jigsaw puzzles: the permutation pool and the transforms ``T`` and ``T^-1``.

A square patch is cut into a 3x3 grid of tiles. Slot ``j`` of the puzzled image shows
input tile ``perm[j]`` rotated by ``rot[j] * 90`` degrees (counter-clockwise, as
``torch.rot90``). The class the jigsaw head predicts is the index of ``perm`` in the pool.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

GRID = 3
NUM_TILES = GRID * GRID
DEFAULT_POOL_SIZE = 100
DEFAULT_POOL_SEED = 2016


@lru_cache(maxsize=4)
def _all_permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.uint8)


@lru_cache(maxsize=8)
def _pool(k: int, seed: int) -> np.ndarray:
    perms = _all_permutations(NUM_TILES)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(perms)))]
    min_dist = (perms != perms[chosen[0]]).sum(axis=1).astype(np.int16)
    for _ in range(k - 1):
        best = np.flatnonzero(min_dist == min_dist.max())
        pick = int(best[rng.integers(len(best))])
        chosen.append(pick)
        np.minimum(min_dist, (perms != perms[pick]).sum(axis=1), out=min_dist)
    pool = perms[chosen].astype(np.int64)
    pool.setflags(write=False)
    return pool


def permutation_pool(k: int = DEFAULT_POOL_SIZE, seed: int = DEFAULT_POOL_SEED) -> np.ndarray:
    """The K permutations of 9 tiles chosen greedily for maximal Hamming distance.

    Follows Noroozi & Favaro (2016): start from a random permutation, then repeatedly
    add the permutation of all ``9!`` whose smallest Hamming distance to those already
    chosen is largest (ties broken by the seeded generator). The result is read-only and
    reproducible for a given ``(k, seed)``.

    Returns
    -------
    np.ndarray
        ``(k, 9)`` int64 array.
    """
    if not 2 <= k <= 1000:
        raise ValueError(f"pool size must be between 2 and 1000, got {k}")
    return _pool(int(k), int(seed))


def pool_hash(pool: np.ndarray) -> str:
    """A short stable fingerprint of a pool, stored in checkpoints."""
    data = np.ascontiguousarray(pool, dtype=np.uint8).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def min_hamming_distance(pool: np.ndarray) -> int:
    """Smallest Hamming distance between any two permutations of the pool."""
    d = (pool[:, None, :] != pool[None, :, :]).sum(-1)
    np.fill_diagonal(d, NUM_TILES + 1)
    return int(d.min())


def _check_square(x: torch.Tensor) -> int:
    h, w = x.shape[-2:]
    if h != w or h % GRID:
        raise ValueError(f"jigsaw needs square patches with sides divisible by {GRID}, got {h}x{w}")
    return h // GRID


def _to_tiles(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 9, C, t, t), tiles in row-major order."""
    b, c, h, _ = x.shape
    t = h // GRID
    return (
        x.reshape(b, c, GRID, t, GRID, t).permute(0, 2, 4, 1, 3, 5).reshape(b, NUM_TILES, c, t, t)
    )


def _from_tiles(tiles: torch.Tensor) -> torch.Tensor:
    b, _, c, t, _ = tiles.shape
    x = tiles.reshape(b, GRID, GRID, c, t, t).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, GRID * t, GRID * t)


def _rotate_tiles(tiles: torch.Tensor, rots: torch.Tensor) -> torch.Tensor:
    out = tiles.clone()
    for k in (1, 2, 3):
        sel = rots == k
        if bool(sel.any()):
            out[sel] = torch.rot90(tiles[sel], k, dims=(-2, -1))
    return out


def _as_index(a: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).to(
        device=device, dtype=torch.long
    )


def jigsaw(x: torch.Tensor, perms: torch.Tensor, rots: torch.Tensor) -> torch.Tensor:
    """Apply ``T``: shuffle and rotate the 3x3 tiles of each image in the batch.

    Parameters
    ----------
    x
        ``(B, C, H, W)`` with ``H == W`` divisible by 3.
    perms
        ``(B, 9)``: slot ``j`` of image ``b`` shows input tile ``perms[b, j]``.
    rots
        ``(B, 9)`` in 0..3: that tile is rotated by ``rots[b, j] * 90`` degrees.
    """
    _check_square(x)
    perms, rots = _as_index(perms, x.device), _as_index(rots, x.device) % 4
    tiles = _to_tiles(x)
    idx = perms[:, :, None, None, None].expand_as(tiles)
    return _from_tiles(_rotate_tiles(torch.gather(tiles, 1, idx), rots))


def unjigsaw(y: torch.Tensor, perms: torch.Tensor, rots: torch.Tensor) -> torch.Tensor:
    """Apply ``T^-1``: undo :func:`jigsaw` on a (prediction) map of the same layout."""
    _check_square(y)
    perms, rots = _as_index(perms, y.device), _as_index(rots, y.device) % 4
    tiles = _rotate_tiles(_to_tiles(y), (-rots) % 4)
    idx = perms[:, :, None, None, None].expand_as(tiles)
    return _from_tiles(torch.empty_like(tiles).scatter_(1, idx, tiles))


#: How the tiles of a puzzle are rotated: ``none`` (the default: the task the network
#: learns), ``per-class`` (each pool entry carries a fixed pattern of tile rotations, so the
#: rotations are part of the class) and ``random`` (the paper's literal reading: every tile
#: rotated by a random multiple of 90 degrees, which makes the task near-unlearnable on
#: histology, where continuity across seams is the only cue to a tile's slot).
ROTATIONS = ("none", "per-class", "random")
ROTATION_PATTERN_SEED = 2017


@lru_cache(maxsize=8)
def _rotation_patterns(k: int, seed: int) -> np.ndarray:
    pats = np.random.default_rng(seed).integers(0, 4, size=(k, NUM_TILES))
    pats.setflags(write=False)
    return pats


def rotation_patterns(k: int = DEFAULT_POOL_SIZE, seed: int = ROTATION_PATTERN_SEED) -> np.ndarray:
    """The fixed tile rotations (``(k, 9)`` in 0..3) of each pool class for ``per-class``."""
    return _rotation_patterns(int(k), int(seed))


@dataclass(frozen=True)
class Puzzles:
    """Q puzzles for each image of a batch (torch tensors on one device).

    ``classes`` ``(B, Q)`` pool indices (the jigsaw targets); ``perms`` and ``rots``
    ``(B, Q, 9)`` the permutations and tile rotations; ``shifts`` ``(B, Q, 2)`` the grid
    phase: the patch is rolled by ``(dy, dx)`` before it is cut into tiles and the map rolled
    back after ``T^-1``, so the tile seams of different puzzles fall on different pixels.
    """

    classes: torch.Tensor
    perms: torch.Tensor
    rots: torch.Tensor
    shifts: torch.Tensor

    @property
    def q(self) -> int:
        return int(self.classes.shape[1])

    def to(self, device: torch.device | str) -> Puzzles:
        return Puzzles(*(t.to(device) for t in (self.classes, self.perms, self.rots, self.shifts)))

    def apply(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """``T_i`` on a batch ``(B, C, P, P)``: roll by the grid phase, then shuffle and rotate."""
        return jigsaw(roll(x, self.shifts[:, i]), self.perms[:, i], self.rots[:, i])

    def undo(self, y: torch.Tensor, i: int) -> torch.Tensor:
        """``T_i^-1`` on a map of the puzzled batch's layout."""
        return roll(unjigsaw(y, self.perms[:, i], self.rots[:, i]), -self.shifts[:, i])


def roll(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll each image ``x[b]`` (cyclically) by ``shifts[b] = (dy, dx)`` pixels."""
    s = shifts.detach().cpu().tolist()
    if not any(dy or dx for dy, dx in s):
        return x
    return torch.stack(
        [
            torch.roll(xb, (int(dy), int(dx)), dims=(-2, -1))
            for xb, (dy, dx) in zip(x, s, strict=True)
        ]
    )


def sample_puzzles(
    rng: np.random.Generator,
    batch: int,
    q: int,
    pool: np.ndarray,
    rotation: str = "none",
    *,
    patch: int | None = None,
) -> Puzzles:
    """Draw ``q`` distinct pool classes per image, their tile rotations and grid phases.

    Parameters
    ----------
    rotation
        One of :data:`ROTATIONS`.
    patch
        The patch side; when given, each puzzle gets a random grid phase in
        ``[0, patch / 3)`` on both axes (None: no shift, the tiles lie on the fixed grid).

    Returns
    -------
    Puzzles
        CPU tensors.
    """
    k = len(pool)
    if not 1 <= q <= k:
        raise ValueError(f"Q must be between 1 and the pool size {k}, got {q}")
    if rotation not in ROTATIONS:
        raise ValueError(
            f"unknown rotation mode {rotation!r}: choose one of {', '.join(ROTATIONS)}"
        )
    classes = np.stack([rng.choice(k, size=q, replace=False) for _ in range(batch)])
    perms = pool[classes]
    if rotation == "random":
        rots = rng.integers(0, 4, size=(batch, q, NUM_TILES))
    elif rotation == "per-class":
        rots = rotation_patterns(k)[classes]
    else:
        rots = np.zeros_like(perms)
    if patch:
        shifts = rng.integers(0, max(patch // GRID, 1), size=(batch, q, 2))
    else:
        shifts = np.zeros((batch, q, 2), dtype=np.int64)
    return Puzzles(
        *(torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in (classes, perms, rots, shifts))
    )
