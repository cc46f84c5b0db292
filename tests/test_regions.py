"""Uncertain regions ranked by summed uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfloop.core.corrections.regions import uncertain_regions
from napari_selfloop.core.errors import InputError


def test_ranked_by_summed_uncertainty():
    mask = np.zeros((60, 60), np.uint8)
    unc = np.zeros((60, 60), np.float32)
    mask[5:10, 5:10] = 255  # 25 px at 0.1 -> 2.5
    unc[5:10, 5:10] = 0.1
    mask[30:33, 30:33] = 255  # 9 px at 0.5 -> 4.5
    unc[30:33, 30:33] = 0.5
    mask[50:58, 40:58] = 255  # 144 px at 0.01 -> 1.44
    unc[50:58, 40:58] = 0.01
    regions = uncertain_regions(mask, unc)
    assert [r.bbox for r in regions] == [(30, 30, 33, 33), (5, 5, 10, 10), (50, 40, 58, 58)]
    assert regions[0].score == pytest.approx(4.5)
    assert regions[0].centroid == pytest.approx((31.0, 31.0))
    assert regions[0].area == 9
    # Without an uncertainty map, area ranks.
    assert uncertain_regions(mask)[0].bbox == (50, 40, 58, 58)
    assert len(uncertain_regions(mask, unc, limit=2)) == 2


def test_nearby_specks_merge_and_tiny_regions_drop():
    mask = np.zeros((20, 20), np.uint8)
    mask[5, 5] = mask[5, 7] = mask[6, 6] = mask[7, 5] = 255
    mask[15, 15] = 255
    regions = uncertain_regions(mask, min_area=2)
    assert len(regions) == 1 and regions[0].area == 4


def test_no_uncertainty_and_bad_shapes():
    assert uncertain_regions(np.zeros((5, 5), np.uint8)) == []
    with pytest.raises(InputError):
        uncertain_regions(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(InputError, match="differ in shape"):
        uncertain_regions(np.full((5, 5), 255, np.uint8), np.zeros((4, 5)))
