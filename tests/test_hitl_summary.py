"""The human-in-the-loop bar over organs (benchmarks/summarise_hitl.py), on hand-made results."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from benchmark_support import BENCHMARKS, import_benchmark


@pytest.fixture(scope="module")
def script():
    return import_benchmark("summarise_hitl")


def _row(before: float, after: float, seconds: float = 80.0, rest=None) -> dict:
    row = {
        "before": {"all": {"edits_per_100": before}},
        "after": {"all": {"edits_per_100": after}},
        "finetune_seconds": seconds,
    }
    if rest is not None:  # (before, after) on the rest of the corrected image
        row["before"]["rest_of_image"] = {"edits_per_100": rest[0]}
        row["after"]["rest_of_image"] = {"edits_per_100": rest[1]}
    return row


def _report(organ: str, rows: dict[str, dict], arm: str = "defaults") -> dict:
    return {"organ": organ, "images": list(rows), "arms": {arm: {"per_image": rows}}}


def test_each_organ_counts_once_and_heavy_images_are_listed(script):
    # organ a: cuts 0.5 and 0.1 (mean 0.3); organ b: one image, cut 0.0
    a = _report("a", {"x": _row(120.0, 60.0, 70.0, rest=(40.0, 30.0)), "y": _row(50.0, 45.0, 90.0)})
    b = _report("b", {"z": _row(80.0, 80.0, 100.0)})
    s = script.summarise([a, b], "defaults")
    assert s["organs"]["a"]["mean_cut"] == pytest.approx(0.3)
    assert s["organs"]["b"]["mean_cut"] == pytest.approx(0.0)
    # a part is averaged over the images that have it; a part no image has is left out
    assert s["organs"]["a"]["mean_cut_rest_of_image"] == pytest.approx(0.25)
    assert "mean_cut_other_images" not in s["organs"]["a"]
    # (0.3 + 0.0) / 2, not (0.5 + 0.1 + 0.0) / 3
    assert s["mean_cut_over_organs"] == pytest.approx(0.15)
    assert not s["mean_cut_met"]
    assert [h["image"] for h in s["heavy_images"]] == ["x"]
    assert s["heavy_images"][0]["share_of_before"] == pytest.approx(0.5)
    assert not s["heavy_met"]
    assert s["median_finetune_seconds"] == pytest.approx(90.0)


def test_bar_met_when_every_figure_is(script):
    a = _report("a", {"x": _row(150.0, 45.0), "y": _row(60.0, 40.0)})
    b = _report("b", {"z": _row(80.0, 56.0)})
    s = script.summarise([a, b], "defaults")
    assert s["heavy_met"] and s["mean_cut_met"]


def test_missing_arm_or_duplicate_organ_is_an_error(script):
    a = _report("a", {"x": _row(100.0, 50.0)})
    with pytest.raises(ValueError, match="no corrected image"):
        script.summarise([a], "other-arm")
    with pytest.raises(ValueError, match="two results files"):
        script.summarise([a, a], "defaults")


def test_command_line_writes_json(tmp_path):
    files = []
    for organ, rows in {"a": {"x": _row(120.0, 36.0)}, "b": {"y": _row(40.0, 30.0)}}.items():
        path = tmp_path / f"hitl_{organ}.json"
        path.write_text(json.dumps(_report(organ, rows)))
        files.append(str(path))
    out = tmp_path / "summary.json"
    subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "summarise_hitl.py"),
            "--results",
            *files,
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    summary = json.loads(out.read_text())
    assert summary["mean_cut_over_organs"] == pytest.approx((0.7 + 0.25) / 2)
    assert summary["heavy_met"] and summary["mean_cut_met"]


def test_bench_hitl_splits_the_other_images_by_tissue_source_site():
    bench = import_benchmark("bench_hitl")
    truth = np.zeros((8, 8), np.int32)
    truth[1:3, 1:3] = 1  # in the corrected 4x4 region
    truth[5:7, 5:7] = 2  # in the rest of the image
    names = [
        "TCGA-A7-0001-01Z-00-DX1.png",
        "TCGA-A7-0002-01Z-00-DX1.png",
        "TCGA-E2-0003-01Z-00-DX1.png",
    ]
    images = [{"name": n, "labels": truth} for n in names]
    # right on the corrected image and its site's other image, nothing on the other site's
    scores = bench.score_rest(images, [truth, truth, np.zeros_like(truth)], 0, 4)
    assert scores["rest_of_image"]["edits_per_100"] == 0.0
    assert scores["same_site"]["edits_per_100"] == 0.0
    assert scores["other_sites"]["edits_per_100"] == 100.0  # 2 adds for 2 nuclei
    assert scores["other_images"]["edits_per_100"] == 50.0
    assert scores["all"]["edits"] == 2
    # no image of another site: no such part
    assert "other_sites" not in bench.score_rest(images[:2], [truth, truth], 0, 4)
