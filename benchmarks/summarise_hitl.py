"""The human-in-the-loop bar over several held-out organs, from ``bench_hitl.py``'s results.

Reads one results file per held-out organ and the same arm of each, and reports what the
bar asks for:

- the **mean cut** in edits per 100 nuclei (on the rest of the corrected image and the
  organ's other images, ``all`` in the results), averaged over each organ's corrected
  images and then **over the organs** (each organ counts once, whatever its image count);
  per organ also the mean cut on each of those two parts alone;
- every corrected image whose base proposal needed **more than 100 edits per 100 nuclei**,
  with its edits after the fine-tune as a share of before (the bar: at most 0.40);
- the median seconds of the fine-tune processes (as measured by ``bench_hitl.py``: at its
  ``--threads``, possibly beside other jobs; a round timed alone is
  ``bench_finetune_round.py``'s figure).

::

    python benchmarks/summarise_hitl.py --arm defaults \\
        --results benchmarks/results/hitl_prostate_rule.json \\
        benchmarks/results/hitl_kidney_rule.json \\
        --out benchmarks/results/hitl_summary.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from napari_selfloop.core.io.atomic import write_json  # noqa: E402

#: Base proposals needing more edits than this per 100 nuclei must come to at most
#: :data:`HEAVY_SHARE` of before.
HEAVY_EDITS = 100.0
HEAVY_SHARE = 0.40
MEAN_CUT_BAR = 0.25
#: The parts ``bench_hitl.py`` scores: the bar's (``all``) and the two it is made of.
PARTS = ("all", "rest_of_image", "other_images")


def summarise(results: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """The bar's figures for ``arm`` over the organs of ``results`` (``bench_hitl`` JSON)."""
    organs: dict[str, Any] = {}
    heavy: list[dict[str, Any]] = []
    seconds: list[float] = []
    for report in results:
        organ = report["organ"]
        if organ in organs:
            raise ValueError(f"two results files for {organ}")
        per = report.get("arms", {}).get(arm, {}).get("per_image", {})
        if not per:
            raise ValueError(f"{organ}: no corrected image in arm {arm!r}")
        cuts: dict[str, list[float]] = {part: [] for part in PARTS}
        for name, row in per.items():
            edits = {
                part: (
                    float(row["before"][part]["edits_per_100"]),
                    float(row["after"][part]["edits_per_100"]),
                )
                for part in PARTS
                if part in row["before"] and part in row["after"]
            }
            for part, (b, a) in edits.items():
                cuts[part].append(1.0 - a / max(b, 1e-9))
            before, after = edits["all"]
            seconds.append(float(row["finetune_seconds"]))
            if before > HEAVY_EDITS:
                heavy.append(
                    {
                        "organ": organ,
                        "image": name,
                        "before": before,
                        "after": after,
                        "share_of_before": round(after / before, 4),
                    }
                )
        organs[organ] = {
            "corrected_images": len(per),
            "of_images": len(report.get("images", per)),
            "mean_cut": round(sum(cuts["all"]) / len(cuts["all"]), 4),
            **{
                f"mean_cut_{part}": round(sum(values) / len(values), 4)
                for part, values in cuts.items()
                if part != "all" and values
            },
        }
    if not organs:
        raise ValueError("no results given")
    mean_cut = sum(o["mean_cut"] for o in organs.values()) / len(organs)
    return {
        "arm": arm,
        "organs": organs,
        "mean_cut_over_organs": round(mean_cut, 4),
        "mean_cut_met": mean_cut >= MEAN_CUT_BAR,
        "heavy_images": heavy,
        "heavy_met": all(h["share_of_before"] <= HEAVY_SHARE for h in heavy),
        "median_finetune_seconds": round(statistics.median(seconds), 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, nargs="+", required=True, help="bench_hitl JSON")
    p.add_argument("--arm", default="defaults")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    reports = [json.loads(path.read_text()) for path in args.results]
    summary = summarise(reports, args.arm)
    summary["results"] = [str(path) for path in args.results]
    summary["command"] = " ".join(["python", "benchmarks/summarise_hitl.py", *sys.argv[1:]])
    for organ, row in summary["organs"].items():
        print(
            f"{organ}: mean cut {row['mean_cut']:.1%} ({row['corrected_images']} images; "
            f"rest of the corrected image {row.get('mean_cut_rest_of_image', float('nan')):.1%}, "
            f"other images {row.get('mean_cut_other_images', float('nan')):.1%})"
        )
    print(f"mean over {len(summary['organs'])} organs: {summary['mean_cut_over_organs']:.1%}")
    for h in summary["heavy_images"]:
        print(f"  {h['image']}: {h['before']:.1f} -> {h['after']:.1f} ({h['share_of_before']:.0%})")
    if args.out:
        write_json(args.out, summary)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
