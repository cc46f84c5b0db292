"""Adversarial files and conditions (issue 11): ambiguous masks, a full disk during an
export, concurrent exports into one folder, and every bad input answered in one line.

The full-disk case runs on a small tmpfs where the test runs as root and may mount one
(skipped with the reason otherwise); the same case also runs everywhere on POSIX with a
real failing write, through ``RLIMIT_FSIZE``.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_selfloop.cli import main
from napari_selfloop.core.engine.datasets import (
    TrainItem,
    check_items,
    load_mask,
    normalise_mask,
)
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.io.images import open_image
from napari_selfloop.core.store.export import export_annotation

# -- masks: one rule for train, the Fine-tune panel and evaluate -----------------------------


def _one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


def test_mask_rule(caplog):
    binary = np.array([[0, 255], [255, 0]], np.uint8)
    with caplog.at_level("INFO"):
        assert np.array_equal(normalise_mask(binary, "m"), binary // 255)
    assert "read as binary (255 = foreground)" in caplog.text
    partial = np.array([[0, 1], [255, 1]], np.uint8)
    assert np.array_equal(normalise_mask(partial, "m"), partial)  # 255 = not labelled
    # The plugin's own masks: 255 is always "not labelled", even with no 1 in them.
    assert np.array_equal(normalise_mask(binary, "m", convention="selfloop"), binary)
    assert np.array_equal(normalise_mask(binary.astype(bool), "m"), binary // 255)
    gray_rgb = np.repeat(binary[..., None], 3, axis=2)
    assert np.array_equal(normalise_mask(gray_rgb, "m"), binary // 255)
    colour = gray_rgb.copy()
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(InputError, match="colour .RGB. image; masks are one channel") as info:
        normalise_mask(colour, "m.png")
    assert "\n" not in str(info.value)
    everywhere = np.full((3, 3), 255, np.uint8)  # no 0: not binary, nothing labelled
    assert np.array_equal(normalise_mask(everywhere, "m"), everywhere)
    with pytest.raises(InputError, match="values 7"):
        normalise_mask(np.array([[0, 7]], np.uint8), "m")
    # A correction layer of the plugin saved with one id per nucleus: the nuclei are
    # foreground, 255 not labelled.
    ids = np.array([[0, 7, 256], [255, 1, 3]], np.uint32)
    want = np.array([[0, 1, 1], [255, 1, 1]], np.uint8)
    assert np.array_equal(normalise_mask(ids, "m", convention="selfloop"), want)


def test_train_reads_0_255_and_1_bit_masks_as_binary(tmp_path):
    image = np.zeros((6, 8, 3), np.uint8)
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "gray.png")
    Image.fromarray(mask > 0).save(tmp_path / "onebit.png")  # mode "1"
    Image.fromarray(np.repeat(mask[..., None], 3, axis=2)).save(tmp_path / "rgb.png")
    assert Image.open(tmp_path / "onebit.png").mode == "1"
    for name in ("gray.png", "onebit.png", "rgb.png"):
        item = TrainItem(name=name, image=image, mask=np.asarray(open_image(tmp_path / name)))
        (prepared,) = check_items([item], "labelled", need_masks=True)
        assert np.array_equal(prepared.mask, mask // 255), name  # foreground, not "unlabelled"
        assert prepared.labelled_pixels == mask.size
        assert np.array_equal(load_mask(tmp_path / name), mask // 255)
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[2:4, 2:6] = (255, 0, 0)
    with pytest.raises(InputError, match="colour"):
        check_items([TrainItem("c", image, colour)], "labelled", need_masks=True)
    # A correction of the plugin's (Fine-tune panel): 0 and 255 only means background and
    # uncertain, not binary.
    (panel,) = check_items(
        [TrainItem("p", image, mask, mask_convention="selfloop")], "labelled", need_masks=True
    )
    assert np.array_equal(panel.mask, mask) and panel.labelled_pixels == int((mask == 0).sum())


@pytest.fixture
def folders(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    return pred, truth


def _prob(shape=(6, 8)):
    p = np.zeros(shape, np.float32)
    p[2:4, 2:6] = 1.0000001  # a probability a hair above 1 still counts as foreground
    return p


def test_evaluate_truth_follows_the_mask_rule(folders, capsys, tmp_path):
    pred, truth = folders
    tifffile.imwrite(pred / "a_prob.tif", _prob())
    t = np.zeros((6, 8), np.uint8)
    t[2:4, 2:6] = 255
    Image.fromarray(np.repeat(t[..., None], 3, axis=2)).save(truth / "a.png")  # gray as RGB
    out = tmp_path / "s.json"
    assert (
        main(["-q", "evaluate", "--pred", str(pred), "--truth", str(truth), "--json", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["images"]["a"]["f1"] == 1.0
    assert "read as binary" in capsys.readouterr().err  # the note
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[2:4, 2:6] = (0, 255, 0)  # foreground in the green channel only
    Image.fromarray(colour).save(truth / "a.png")
    _one_line_error(capsys, ["evaluate", "--pred", str(pred), "--truth", str(truth)], "colour")
    Image.fromarray(np.full((6, 8), 255, np.uint8)).save(truth / "a.png")
    _one_line_error(
        capsys,
        ["-q", "evaluate", "--pred", str(pred), "--truth", str(truth)],
        "no truth file",
        "labelled pixel",
    )


def test_an_export_folder_is_usable_as_truth(folders, tmp_path):
    pred, truth = folders
    lab = np.zeros((6, 8), np.uint8)
    lab[2:4, 2:6] = 1
    lab[0, :] = 255  # uncertain: ignored
    export_annotation(truth, "tile 1.png", lab, image_path="/data/tile 1.png")
    empty = np.zeros((6, 8), np.uint8)
    empty[:3] = 255  # no foreground: 0/255, still 0/1/255 (the manifest and the tag say so)
    export_annotation(truth, "b", empty)
    tifffile.imwrite(pred / "tile 1_prob.tif", _prob())
    tifffile.imwrite(pred / "b_prob.tif", np.zeros((6, 8), np.float32))
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "-q",
                "evaluate",
                "--pred",
                str(pred),
                "--truth",
                str(truth),
                "--objects",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["count"] == 2
    assert (
        report["images"]["tile 1"]["f1"] == 1.0 and report["images"]["tile 1"]["object_f1"] == 1.0
    )
    assert report["images"]["b"]["truth"] == "b_mask.tif"
    assert report["images"]["b"]["specificity"] == 1.0 and report["pooled"]["f1"] == 1.0


def test_evaluate_refuses_bad_options_in_one_line(folders, capsys):
    pred, truth = folders
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(truth / "a.png")
    tifffile.imwrite(pred / "a_uncertainty.tif", np.zeros((4, 4), np.float32))
    base = ["evaluate", "--pred", str(pred), "--truth", str(truth)]
    _one_line_error(capsys, base, "only uncertainty maps")
    tifffile.imwrite(pred / "a_prob.tif", np.zeros((4, 4), np.float32))
    for bad in ("2", "0", "1", "-0.5", "nan"):
        _one_line_error(capsys, [*base, "--threshold", bad], "--threshold")
    _one_line_error(capsys, [*base, "--split"], "--objects")
    assert main(["-q", *base, "--split", "--objects"]) == 0


# -- export as a set: a full disk leaves the previous set intact -----------------------------


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _many_objects():
    """32 comb-shaped objects: a mask and instances of a few hundred bytes, a GeoJSON of
    about 190 KB (so a full disk strikes part way through the set)."""
    lab = np.zeros((160, 256), np.uint8)
    for y in range(0, 160, 5):
        lab[y] = 1
        lab[y + 1 : y + 4, ::2] = 1
    return lab


def _check_full_disk_keeps_the_set(folder, export):
    small = np.zeros((8, 8), np.uint8)
    small[2:5, 2:5] = 1
    first = export_annotation(folder, "tile", small)
    before = _snapshot(folder)
    assert set(before) == {first["mask"], first["instances"], first["geojson"], "manifest.json"}
    with pytest.raises(OSError) as info:
        export()
    after = _snapshot(folder)
    assert after == before  # the old mask, instances, GeoJSON and manifest, byte for byte
    return info.value


def test_a_full_tmpfs_during_an_export_keeps_the_previous_set(tiny_tmpfs):
    error = _check_full_disk_keeps_the_set(
        tiny_tmpfs, lambda: export_annotation(tiny_tmpfs, "tile", _many_objects())
    )
    assert error.errno in (errno.ENOSPC, errno.EDQUOT) or "full" in str(error)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_failing_write_during_an_export_keeps_the_previous_set(tmp_path):
    import resource
    import signal

    folder = tmp_path / "out"
    folder.mkdir()

    def export_with_a_file_size_limit():
        # Writes past 8 KB fail for real (EFBIG): the mask fits, the instances do not.
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))
        try:
            export_annotation(folder, "tile", _many_objects())
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    _check_full_disk_keeps_the_set(folder, export_with_a_file_size_limit)


# -- concurrent exports into one folder keep every manifest entry ----------------------------


def _blob(i: int) -> np.ndarray:
    lab = np.zeros((24, 24), np.uint8)
    lab[i : i + 3, 2:5] = 1
    return lab


def test_concurrent_exports_keep_every_entry(tmp_path):
    start = threading.Barrier(8)
    errors = []

    def export(i):
        try:
            start.wait()
            export_annotation(tmp_path, f"img{i}", _blob(i))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=export, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    entries = json.loads((tmp_path / "manifest.json").read_text())["entries"]
    assert sorted(e["name"] for e in entries) == [f"img{i}" for i in range(8)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_concurrent_export_processes_keep_every_entry(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_export_some, args=(str(tmp_path), k, start)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    entries = json.loads((tmp_path / "manifest.json").read_text())["entries"]
    assert sorted(e["name"] for e in entries) == sorted(
        f"p{k}-{j}" for k in range(4) for j in range(4)
    )


def _export_some(folder: str, k: int, start) -> None:
    start.wait()
    for j in range(4):
        export_annotation(folder, f"p{k}-{j}", _blob(k + j))
