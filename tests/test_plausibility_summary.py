"""Where the warning fires against what knowing the tissue removes
(benchmarks/summarise_plausibility.py), on hand-made leave-one-organ-out results."""

from __future__ import annotations

import json

import pytest
from benchmark_support import import_benchmark


@pytest.fixture(scope="module")
def script():
    return import_benchmark("summarise_plausibility")


def _row(edits: float, fired: bool = False, dice: float = 0.8) -> dict:
    return {"edits_per_100": edits, "dice": dice, "fired": fired}


def _report(organ: str, held: dict, training: dict) -> dict:
    return {
        "organ": organ,
        "sets": {
            "held-out organ": {"per_image": held},
            "training organs": {"per_image": training},
        },
    }


def _three_organs(fired_on_a1: bool = True) -> list[dict]:
    # Image a1 needs 150 edits held out and 50 where models saw it: badly wrong (x3, +100).
    # Image a2 needs 120 held out and 110 where seen: hard, not from unseen tissue.
    # Image b1 needs 60 held out against 30 seen (x2, +30): badly wrong; c1 98 against 70
    # (x1.4): not.
    return [
        _report(
            "a",
            {"a1": _row(150, fired_on_a1), "a2": _row(120)},
            {"b1": _row(30), "c1": _row(70)},
        ),
        _report("b", {"b1": _row(60, True)}, {"a1": _row(40), "a2": _row(100), "c1": _row(70)}),
        _report("c", {"c1": _row(98)}, {"a1": _row(60), "a2": _row(120), "b1": _row(30)}),
    ]


def test_held_out_edits_against_the_models_that_saw_the_image(script):
    s = script.summarise(_three_organs())
    rows = {r["image"]: r for r in s["per_image"]}
    assert rows["a1"]["own_tissue_edits_per_100"] == 50.0 and rows["a1"]["ratio"] == 3.0
    assert rows["a1"]["badly_wrong"] and rows["a1"]["own_tissue_models"] == 2
    assert not rows["a2"]["badly_wrong"]  # 120 against 110: the image is hard anyway
    assert rows["a2"]["above_every_training_image"]  # though above model a's training images
    assert rows["b1"]["badly_wrong"]  # 60 against 30: x2 and +30
    assert not rows["c1"]["badly_wrong"]  # 98 against 70: x1.4
    assert s["badly_wrong"] == {"images": 2, "fired": 2}
    assert s["not_badly_wrong"] == {"images": 2, "fired": 0}
    assert s["training_images"] == {"images": 8, "fired": 0}
    assert s["fires_where_badly_wrong"] and s["quiet_on_training_images"]
    # A stricter criterion drops b1 (only +30 per 100 nuclei).
    strict = script.summarise(_three_organs(), extra=40.0)
    assert strict["badly_wrong"] == {"images": 1, "fired": 1}


def test_a_missed_case_or_a_false_alarm_fails_the_flags(script):
    assert not script.summarise(_three_organs(fired_on_a1=False))["fires_where_badly_wrong"]
    results = _three_organs()
    results[0]["sets"]["training organs"]["per_image"]["b1"]["fired"] = True
    assert not script.summarise(results)["quiet_on_training_images"]


def test_errors_and_command_line(script, tmp_path, capsys):
    a = _three_organs()[0]
    with pytest.raises(ValueError, match="two results files"):
        script.summarise([a, a])
    with pytest.raises(ValueError, match="training image of no other model"):
        script.summarise([a])
    files = []
    for report in _three_organs():
        path = tmp_path / f"{report['organ']}.json"
        path.write_text(json.dumps(report))
        files.append(str(path))
    out = tmp_path / "summary.json"
    assert script.main(["--results", *files, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["badly_wrong"] == {"images": 2, "fired": 2}
    assert "badly_wrong: fired on 2 of 2" in capsys.readouterr().out
    assert script.main(["--results", str(tmp_path / "none.json"), "--out", str(out)]) == 2
