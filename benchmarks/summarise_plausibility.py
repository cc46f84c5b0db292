"""Does the plausibility warning fire where a model is badly wrong *because it has not seen the
tissue*? From ``bench_plausibility.py``'s leave-one-organ-out results.

Each results file holds one leave-one-organ-out base model scored on the six images of its
held-out organ and on its 24 training images (edits per 100 nuclei, Dice, and whether the
warning fired). With four such files every image of the four organs is held out once and is
a training image of the three other models. So each held-out proposal can be compared with
what models that *were* trained on the image need there:

- **own-tissue edits**: the mean edits per 100 nuclei of the other models on the image,
  which saw it in training (some MoNuSeg images are hard whatever the model saw: dense,
  blurred, or annotated in another style);
- **ratio**: the held-out edits over the own-tissue edits. A proposal is **badly wrong
  from unseen tissue** when it needs at least ``--ratio`` (1.5) times the own-tissue edits,
  and ``--extra`` (20) more edits per 100 nuclei: the part of its error that knowing the
  tissue removes is large.

The warning should fire on those and stay quiet on the training images (tissue like the
training tissue). Reported as well, for comparison: the held-out proposals needing more
edits than every training image of their model, the plain reading of "badly wrong".

::

    python benchmarks/summarise_plausibility.py \\
        --results benchmarks/results/plausibility_loo_{prostate,kidney,breast,liver}.json \\
        --out benchmarks/results/plausibility_summary.json
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

HELD_OUT, TRAINING = "held-out organ", "training organs"
#: Held-out edits at least this many times the own-tissue edits ...
RATIO = 1.5
#: ... and at least this many more per 100 nuclei make a proposal badly wrong from unseen tissue.
EXTRA = 20.0


def summarise(
    results: list[dict[str, Any]], ratio: float = RATIO, extra: float = EXTRA
) -> dict[str, Any]:
    """Every held-out image's figures beside its own-tissue edits, and the counts."""
    by_organ: dict[str, dict[str, Any]] = {}
    for report in results:
        organ = report["organ"]
        if organ in by_organ:
            raise ValueError(f"two results files for {organ}")
        by_organ[organ] = report["sets"]
    images: list[dict[str, Any]] = []
    for organ, sets in by_organ.items():
        training_edits = [r["edits_per_100"] for r in sets[TRAINING]["per_image"].values()]
        for name, row in sets[HELD_OUT]["per_image"].items():
            own = [
                other[TRAINING]["per_image"][name]
                for o, other in by_organ.items()
                if o != organ and name in other[TRAINING]["per_image"]
            ]
            if not own:
                raise ValueError(f"{name} ({organ}) is a training image of no other model")
            own_edits = statistics.fmean(r["edits_per_100"] for r in own)
            edits = row["edits_per_100"]
            images.append(
                {
                    "organ": organ,
                    "image": name,
                    "edits_per_100": edits,
                    "dice": row["dice"],
                    "fired": bool(row["fired"]),
                    "own_tissue_edits_per_100": round(own_edits, 1),
                    "own_tissue_dice": round(statistics.fmean(r["dice"] for r in own), 4),
                    "own_tissue_models": len(own),
                    "ratio": round(edits / max(own_edits, 1e-9), 3),
                    "badly_wrong": edits >= ratio * own_edits and edits - own_edits >= extra,
                    "above_every_training_image": edits > max(training_edits),
                }
            )
    training = [r for sets in by_organ.values() for r in sets[TRAINING]["per_image"].values()]

    def fired_of(rows: list[dict[str, Any]]) -> dict[str, int]:
        return {"images": len(rows), "fired": sum(r["fired"] for r in rows)}

    bad = [r for r in images if r["badly_wrong"]]
    rest = [r for r in images if not r["badly_wrong"]]
    plain = [r for r in images if r["above_every_training_image"]]
    return {
        "benchmark": "summarise_plausibility",
        "organs": list(by_organ),
        "criterion": {"ratio": ratio, "extra_edits_per_100": extra},
        "badly_wrong": fired_of(bad),
        "not_badly_wrong": fired_of(rest),
        "training_images": fired_of(training),
        "above_every_training_image": fired_of(plain),
        "fires_where_badly_wrong": all(r["fired"] for r in bad) and bool(bad),
        "quiet_on_training_images": not any(r["fired"] for r in training),
        "per_image": images,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, nargs="+", required=True)
    p.add_argument("--ratio", type=float, default=RATIO)
    p.add_argument("--extra", type=float, default=EXTRA)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        summary = summarise(
            [json.loads(f.read_text()) for f in args.results], args.ratio, args.extra
        )
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary["command"] = " ".join(
        ["python", "benchmarks/summarise_plausibility.py", *(argv or sys.argv[1:])]
    )
    write_json(args.out, summary)
    for key in ("badly_wrong", "not_badly_wrong", "training_images", "above_every_training_image"):
        print(f"{key}: fired on {summary[key]['fired']} of {summary[key]['images']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
