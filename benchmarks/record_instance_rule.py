"""Record the watershed's settings chosen by ``tune_instances.py`` in a checkpoint.

How a model's maps become nuclei (the marker threshold and the smallest object, as a
fraction of the median object) is part of its checkpoint (``ModelConfig.instance_marker``
and ``instance_min_fraction``), and the figures they were chosen by are part of its record
(``metrics["instances"]``, shown by its model card). This writes both from the best rule
of a ``tune_instances.py --split val`` report; the weights (half precision stays half
with ``--half``) and the rest of the record are kept::

    python benchmarks/record_instance_rule.py --checkpoint napari_selfloop/models/nuclei-he.pt \\
        --rule benchmarks/results/instances_rule_val_900.json --half
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from record_certainty import resave  # noqa: E402

from napari_selfloop.core.store.checkpoint import load_checkpoint  # noqa: E402

FIGURES = ("f1", "pq", "aji", "object_f1", "edits_per_100")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument(
        "--rule", type=Path, required=True, help="a tune_instances.py --split val report"
    )
    p.add_argument("--dest", type=Path, help="default: --checkpoint, replaced atomically")
    p.add_argument("--half", action="store_true", help="store the weights in half precision")
    args = p.parse_args()
    report = json.loads(args.rule.read_text())
    if report.get("evaluated_on") != "validation":
        raise SystemExit(f"{args.rule} was not measured on validation images: choose on those")
    row = report["rules"][report["best"]]
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model.float()
    if model.config.instance_output == "none":
        raise SystemExit(f"{args.checkpoint} is a binary model: it has no instance map")
    model.config = replace(
        model.config, instance_marker=row["marker"], instance_min_fraction=row["min_fraction"]
    )
    metrics = dict(ckpt.meta.get("metrics") or {})
    metrics["instances"] = {
        **(metrics.get("instances") or {}),
        "output": model.config.instance_output,
        "marker": row["marker"],
        "min_fraction": row["min_fraction"],
        "chosen_on": f"{len(report['images'])} validation images",
        "validation": {k: row["mean"][k] for k in FIGURES},
        "chosen_by": report["command"],
    }
    print(f"{report['best']}: {metrics['instances']['validation']}")
    resave(ckpt, model, metrics, args.dest or args.checkpoint, half=args.half)
    return 0


if __name__ == "__main__":
    sys.exit(main())
