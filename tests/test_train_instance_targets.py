"""Corrections with one id per nucleus teach a model with an instance output what separates
touching nuclei: `train` reads the ids of a saved correction layer or of an export's
instance file, and the training targets carry them."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_selfloop.cli.train_cmd import _item
from napari_selfloop.core.engine.datasets import check_items, mask_instances, open_mask
from napari_selfloop.core.engine.instances import AUX_HI, AUX_LO
from napari_selfloop.core.engine.pseudolabel import UNCERTAIN
from napari_selfloop.core.io.label_files import write_labels_tiff
from napari_selfloop.core.store.export import export_annotation


def _touching(size: int = 32) -> np.ndarray:
    """Two touching nuclei with ids 3 and 300, an uncertain band."""
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.uint32)
    lab[(yy - 12) ** 2 + (xx - 10) ** 2 <= 25] = 3
    lab[(yy - 12) ** 2 + (xx - 19) ** 2 <= 25] = 300
    lab[28:, :] = UNCERTAIN
    return lab


def test_a_saved_correction_layer_gives_its_ids(tmp_path):
    lab = _touching()
    path = write_labels_tiff(tmp_path / "tile.tif", lab, correction=True)
    pixels, convention = open_mask(path)
    assert convention == "selfloop"
    ids = mask_instances(path, pixels, convention)
    assert set(np.unique(ids).tolist()) == {0, 3, 300} and ids[30, 5] == 0
    # A plain 0/1/255 correction mask says nothing of nuclei.
    plain = write_labels_tiff(tmp_path / "plain.tif", (lab > 0).astype(np.uint8), correction=True)
    assert mask_instances(plain, *open_mask(plain)) is None


def test_an_export_gives_the_instance_file_beside_its_mask(tmp_path):
    lab = _touching()
    entry = export_annotation(tmp_path / "out", "tile.png", lab)
    mask_path = tmp_path / "out" / entry["mask"]
    ids = mask_instances(mask_path, *open_mask(mask_path))
    assert ids is not None
    np.testing.assert_array_equal(ids, tifffile.imread(tmp_path / "out" / entry["instances"]))
    assert len(set(np.unique(ids).tolist()) - {0}) == 2  # the two touching nuclei apart


def test_train_items_carry_instance_targets(tmp_path):
    lab = _touching()
    image = np.full((32, 32, 3), 200, np.uint8)
    tifffile.imwrite(tmp_path / "tile.tif", image)
    image_path = tmp_path / "tile.tif"
    mask_path = write_labels_tiff(tmp_path / "mask.tif", lab, correction=True)
    item = _item("tile", image_path, mask_path)
    assert item.instances is not None
    (prepared,) = check_items([item], "labelled", need_masks=True, instance_output="distance")
    coded = prepared.mask
    assert np.array_equal(prepared.instances, item.instances)  # to choose the watershed on
    fg = lab > 0
    fg &= lab != UNCERTAIN
    assert ((coded[fg] >= AUX_LO) & (coded[fg] <= AUX_HI)).all()  # every nucleus pixel coded
    assert (coded[lab == UNCERTAIN] == UNCERTAIN).all() and (coded[lab == 0] == 0).all()
    # the boundary between the two nuclei is low in the distance target: they are apart
    assert coded[12, 14] < coded[12, 10] and coded[12, 14] < coded[12, 19]
    # A binary model ignores them.
    (binary,) = check_items([item], "labelled", need_masks=True, instance_output="none")
    assert set(np.unique(binary.mask).tolist()) == {0, 1, UNCERTAIN} and binary.instances is None
