"""What the Review tab lists: uncertain regions and unsure nuclei, by mean uncertainty."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_selfloop.core.corrections.review_items import (
    NUCLEI_MAX,
    review_items,
    unsure_nuclei,
)
from napari_selfloop.core.errors import InputError


def _layer():
    """Six square nuclei (ids 1-5 and 300) of known mean uncertainty, and two regions."""
    labels = np.zeros((60, 80), np.uint32)
    unc = np.full((60, 80), 0.05, np.float32)
    means = {1: 0.1, 2: 0.1, 3: 0.1, 4: 0.3, 5: 0.1, 300: 0.5}
    for k, (nid, mean) in enumerate(means.items()):
        y, x = 5 + 25 * (k // 4), 5 + 18 * (k % 4)
        labels[y : y + 6, x : x + 6] = nid
        unc[y : y + 6, x : x + 6] = mean
    labels[45:49, 60:70] = 255  # 40 px at 0.4
    unc[45:49, 60:70] = 0.4
    labels[2:4, 74:78] = 255  # 8 px at 0.9
    unc[2:4, 74:78] = 0.9
    return labels, unc


def test_regions_and_unsure_nuclei_in_one_list_most_uncertain_first():
    labels, unc = _layer()
    items = review_items(labels, unc)
    # mean unc. of nucleus pixels = (4*0.1 + 0.3 + 0.5) / 6 = 0.2: 300 and 4 are above it;
    # the most uncertain 10 % of 6 nuclei is less than NUCLEI_MIN (3), so 3 may be
    # listed, but the third (0.1) is not above the average.
    assert [(it.kind, it.number) for it in items] == [
        ("region", 0),
        ("nucleus", 300),
        ("region", 0),
        ("nucleus", 4),
    ]
    assert [it.mean for it in items] == pytest.approx([0.9, 0.5, 0.4, 0.3])
    region, n300 = items[0], items[1]
    assert region.bbox == (2, 74, 4, 78) and region.area == 8 and region.label == 0
    assert n300.bbox == (30, 23, 36, 29) and n300.area == 36 and n300.label == 300
    assert n300.centroid == pytest.approx((32.5, 25.5))
    assert labels[n300.point] == 300
    assert n300.pixels.shape == (6, 6) and n300.pixels.all()
    assert n300.score == pytest.approx(36 * 0.5)


def test_without_a_map_only_the_regions_largest_first():
    labels, _ = _layer()
    items = review_items(labels)
    assert [(it.kind, it.area) for it in items] == [("region", 40), ("region", 8)]
    assert all(it.mean is None for it in items)


def test_which_nuclei_share_cap_and_average():
    rng = np.random.default_rng(0)
    labels = np.zeros((200, 200), np.uint32)
    unc = np.zeros((200, 200), np.float32)
    nid = 1
    for y in range(0, 200, 10):
        for x in range(0, 200, 10):
            labels[y : y + 5, x : x + 5] = nid
            unc[y : y + 5, x : x + 5] = rng.random()
            nid += 2 if nid == 254 else 1  # ids skip 255
    # 400 nuclei: 10 % is 40, capped at NUCLEI_MAX, the most uncertain first.
    found = unsure_nuclei(labels, unc)
    assert len(found) == NUCLEI_MAX
    means = [it.mean for it in found]
    assert means == sorted(means, reverse=True)
    ids = labels[labels != 0]
    all_means = np.bincount(ids, unc[labels != 0])[np.unique(ids)] / 25
    assert means[-1] == pytest.approx(np.sort(all_means)[::-1][NUCLEI_MAX - 1])
    assert 255 not in {it.number for it in found}
    assert len(unsure_nuclei(labels, unc, share=0.05)) == 20
    # Equally sure nuclei: none is above the average, none is listed.
    assert unsure_nuclei(labels, np.full(unc.shape, 0.3, np.float32)) == []
    # One nucleus: nothing to compare it with.
    one = np.zeros((20, 20), np.uint32)
    one[5:9, 5:9] = 7
    assert unsure_nuclei(one, np.random.default_rng(1).random((20, 20))) == []


def test_plain_mask_pieces_only_on_request_and_huge_ids():
    mask = np.zeros((30, 30), np.uint8)
    unc = np.full((30, 30), 0.1, np.float32)
    mask[2:6, 2:6] = 1
    mask[2:6, 20:26] = 1
    unc[2:6, 20:26] = 0.6
    mask[20:24, 10:14] = 1
    mask[25:28, 25:28] = 255
    assert unsure_nuclei(mask, unc) == []
    (piece,) = unsure_nuclei(mask, unc, pieces=True)
    assert piece.label == 1 and piece.number == 2 and piece.bbox == (2, 20, 6, 26)
    assert [it.kind for it in review_items(mask, unc)] == ["region"]
    # Ids far above the number of pixels are renumbered to count them, and kept.
    big = mask.astype(np.uint64)
    big[2:6, 2:6], big[2:6, 20:26], big[20:24, 10:14] = 10**12, 10**12 + 5, 3
    (top,) = unsure_nuclei(big, unc)
    assert top.number == top.label == 10**12 + 5 and top.bbox == (2, 20, 6, 26)


def test_checks():
    with pytest.raises(InputError, match="differ in shape"):
        review_items(np.zeros((5, 5), np.uint8), np.zeros((4, 5)))
    with pytest.raises(InputError, match="2D"):
        review_items(np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(InputError, match="negative"):
        review_items(np.full((5, 5), -1, np.int32), np.zeros((5, 5)))
    assert review_items(np.zeros((5, 5), np.uint32), np.zeros((5, 5))) == []


def test_a_large_layer_ranks_in_well_under_a_second():
    rng = np.random.default_rng(0)
    size = 2000
    labels = np.zeros((size, size), np.uint32)
    yy, xx = np.mgrid[0:size:36, 0:size:36]
    centres = np.stack([yy.ravel(), xx.ravel()], 1)[:3000] + 8
    disc = (np.mgrid[-6:7, -6:7] ** 2).sum(0) <= 36
    dy, dx = np.nonzero(disc)
    for k, (y, x) in enumerate(centres, start=1):
        labels[y + dy - 6, x + dx - 6] = k if k < 255 else k + 1
    rim = (labels == 0) & (np.roll(labels, 1, 0) != 0)
    labels[rim] = 255
    unc = rng.random((size, size), dtype=np.float32)
    review_items(labels[:100, :100], unc[:100, :100])  # warm up
    start = time.perf_counter()
    items = review_items(labels, unc)
    took = time.perf_counter() - start
    assert sum(it.kind == "nucleus" for it in items) == NUCLEI_MAX
    assert took < 1.0, f"ranking took {took:.2f} s"
