"""Segmentation metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfloop.core.engine.metrics import (
    aji,
    instances,
    object_scores,
    pixel_counts,
    pixel_scores,
    scores_from_counts,
)


def test_pixel_scores_by_hand_with_ignored_pixel():
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    truth = np.array([[1, 0, 0], [1, 1, 255]], dtype=np.uint8)
    # TP (0,0), (1,1); FP (0,1); FN (1,0); TN (0,2); (1,2) ignored.
    assert pixel_counts(pred, truth).tolist() == [2, 1, 1, 1]
    s = pixel_scores(pred, truth)
    assert s["f1"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["specificity"] == pytest.approx(1 / 2)
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["iou"] == pytest.approx(2 / 4)


def test_probabilities_are_thresholded_at_half():
    prob = np.array([[0.2, 0.7], [0.5, 0.9]], dtype=np.float32)
    truth = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    assert pixel_counts(prob, truth).tolist() == [2, 0, 1, 1]


def test_empty_cases_count_as_agreement():
    z = np.zeros((4, 4), np.uint8)
    s = pixel_scores(z, z)
    assert s["f1"] == 1.0 and s["precision"] == 1.0 and s["recall"] == 1.0
    assert s["balanced_accuracy"] == 1.0
    all_fp = scores_from_counts([0, 3, 0, 1])
    assert all_fp["f1"] == 0.0 and all_fp["precision"] == 0.0 and all_fp["recall"] == 0.0
    assert aji(z, z) == 1.0
    assert object_scores(z, z)["object_f1"] == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        pixel_counts(np.zeros((2, 2)), np.zeros((3, 2)))


TRUTH = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 2, 2], [0, 0, 0, 2, 2], [3, 0, 0, 0, 0]])
PRED = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 2, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 4]])


def test_object_f1_by_hand():
    # t1/p1: IoU 3/4 -> matched; t2/p2: IoU 2/4 = 0.5 -> not matched (needs > 0.5);
    # t3 and p4 overlap nothing. TP 1, FP 2, FN 2.
    s = object_scores(TRUTH, PRED)
    assert (s["objects_true"], s["objects_pred"], s["objects_matched"]) == (3, 3, 1)
    assert s["object_f1"] == pytest.approx(2 / 6)
    assert s["object_precision"] == pytest.approx(1 / 3)
    assert s["object_recall"] == pytest.approx(1 / 3)


def test_aji_by_hand():
    # C = 3 + 2; U = (4) + (4 + 2 - 2) + 1 (t3 alone) + 1 (p4 unused) = 10.
    assert aji(TRUTH, PRED) == pytest.approx(5 / 10)
    assert aji(TRUTH, TRUTH) == 1.0


def test_aji_picks_the_best_overlap_per_true_object():
    truth = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 2, 2, 2]])
    # Best for t1 is p2 (IoU 3/4): C = 3, U = 4; p1 unused adds 1 -> 3/5.
    assert aji(truth, pred) == pytest.approx(3 / 5)


def test_instances_connected_components_and_watershed_split():
    yy, xx = np.mgrid[:40, :60]
    two = ((yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 36) ** 2 < 100)
    assert instances(two).max() == 1  # touching discs: one component
    split = instances(two, split=True)
    assert split.max() == 2
    assert set(np.unique(split[two])) == {1, 2} and (split[~two] == 0).all()
    speck = two.copy()
    speck[0, 0] = True
    assert instances(speck).max() == 2
    assert instances(speck, min_size=5).max() == 1
