"""The human-in-the-loop bar over organs (benchmarks/summarise_hitl.py), on hand-made results."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("summarise_hitl")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _row(before: float, after: float, seconds: float = 80.0) -> dict:
    return {
        "before": {"all": {"edits_per_100": before}},
        "after": {"all": {"edits_per_100": after}},
        "finetune_seconds": seconds,
    }


def _report(organ: str, rows: dict[str, dict], arm: str = "defaults") -> dict:
    return {"organ": organ, "images": list(rows), "arms": {arm: {"per_image": rows}}}


def test_each_organ_counts_once_and_heavy_images_are_listed(script):
    # organ a: cuts 0.5 and 0.1 (mean 0.3); organ b: one image, cut 0.0
    a = _report("a", {"x": _row(120.0, 60.0, 70.0), "y": _row(50.0, 45.0, 90.0)})
    b = _report("b", {"z": _row(80.0, 80.0, 100.0)})
    s = script.summarise([a, b], "defaults")
    assert s["organs"]["a"]["mean_cut"] == pytest.approx(0.3)
    assert s["organs"]["b"]["mean_cut"] == pytest.approx(0.0)
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
