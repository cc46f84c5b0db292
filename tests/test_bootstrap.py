"""Bootstrap masks from classical image analysis, on the seeded sample images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfloop._sample_data import make_lesion, make_nuclei
from napari_selfloop.core.engine.bootstrap import bootstrap_mask, guess_kind
from napari_selfloop.core.errors import InputError


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_sample_data_is_reproducible():
    a, la = make_nuclei(size=128, seed=3)
    b, lb = make_nuclei(size=128, seed=3)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert a.dtype == np.uint8 and a.shape == (128, 128, 3)
    assert not np.array_equal(a, make_nuclei(size=128, seed=4)[0])
    img, mask = make_lesion(size=128, seed=1)
    assert img.shape == (128, 128, 3) and set(np.unique(mask)) == {0, 1}


def test_he_nuclei_found_and_split():
    image, truth = make_nuclei(size=192, seed=1)
    result = bootstrap_mask(image)
    assert result.kind == "he"
    assert result.mask.dtype == np.uint8 and result.mask.shape == truth.shape
    assert dice(result.mask, truth) > 0.85
    # The watershed gives roughly one label per nucleus.
    assert 0.7 * truth.max() <= result.labels.max() <= 1.3 * truth.max()


def test_dermoscopy_lesion_is_one_component():
    image, truth = make_lesion(size=160, seed=2)
    result = bootstrap_mask(image)
    assert result.kind == "dermoscopy"
    assert result.labels.max() == 1
    assert dice(result.mask, truth) > 0.9


def test_explicit_kind_and_grayscale():
    image, truth = make_lesion(size=96, seed=0)
    gray = image.mean(-1).astype(np.uint8)
    result = bootstrap_mask(gray, kind="dermoscopy")
    assert result.kind == "dermoscopy" and dice(result.mask, truth) > 0.85
    assert bootstrap_mask(image, kind="he").kind == "he"


def test_ihc_is_treated_as_stained_tissue():
    from skimage import data

    assert guess_kind(data.immunohistochemistry() / 255.0) == "he"


def test_flat_image_gives_empty_mask():
    result = bootstrap_mask(np.full((40, 50, 3), 200, np.uint8))
    assert result.mask.sum() == 0


@pytest.mark.parametrize("bad", [np.zeros((3, 32, 32, 3), np.uint8), np.zeros((32, 32), np.int32)])
def test_bad_input_is_refused(bad):
    with pytest.raises(InputError):
        bootstrap_mask(bad)
    with pytest.raises(InputError, match="unknown kind"):
        bootstrap_mask(np.zeros((8, 8), np.uint8), kind="mri")
